"""The wheel, as a platform team installs it: `python -m build` on a clean copy
of the tree, the wheel installed into a fresh venv, and the installed
`portcullis` run from a directory that holds no policies of its own."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from portcullis import __version__
from tests.conftest import POLICIES, ROOT
from tests.gateway_stack import free_port

EXAMPLE_TERRAFORM = ROOT / "examples" / "terraform"
PYTHON_DIR = f"python{sys.version_info.major}.{sys.version_info.minor}"


@dataclass(frozen=True)
class Installed:
    wheel: Path
    sdist: Path
    venv: Path
    workdir: Path  # empty: no ./policies to fall back on

    def run(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [str(self.venv / "bin" / "portcullis"), *args],
            capture_output=True, text=True, cwd=self.workdir, timeout=timeout, env=clean_env(),
        )  # fmt: skip
        assert "Traceback" not in result.stderr, result.stderr
        return result


def clean_env() -> dict[str, str]:
    """The environment minus anything that would let the repository leak in."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    return env


def source_copy(target: Path) -> Path:
    """The files a fresh clone has (tracked, plus new files not yet ignored)."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=ROOT, capture_output=True, check=True,
    ).stdout.decode().split("\0")  # fmt: skip
    for name in filter(None, listed):
        source = ROOT / name
        if source.is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)
    return target


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    base = tmp_path_factory.mktemp("packaging")
    tree = source_copy(base / "src")
    dist = base / "dist"
    # sdist first, then the wheel from the sdist (what `python -m build` does),
    # so a file missing from the sdist is missing from the wheel too. The build
    # requirements are dev extras of .venv, so no isolated env is downloaded.
    build = subprocess.run(
        [sys.executable, "-m", "build", "--no-isolation", "--outdir", str(dist), str(tree)],
        capture_output=True, text=True, timeout=300, env=clean_env(),
    )  # fmt: skip
    assert build.returncode == 0, build.stdout + build.stderr
    venv = base / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    (wheel,) = dist.glob("portcullis-*.whl")
    (sdist,) = dist.glob("portcullis-*.tar.gz")
    # Dependencies resolve from the registry (or pip's local cache), as for a user.
    install = subprocess.run(
        [str(venv / "bin" / "pip"), "install", "--quiet", str(wheel)],
        capture_output=True, text=True, timeout=600, env=clean_env(),
    )  # fmt: skip
    assert install.returncode == 0, install.stdout + install.stderr
    workdir = base / "work"
    workdir.mkdir()
    return Installed(wheel, sdist, venv, workdir)


def shipped_policy_files() -> set[str]:
    return {
        str(p.relative_to(POLICIES))
        for p in POLICIES.rglob("*")
        if p.is_file() and p.suffix in (".rego", ".yaml", ".yml", ".json")
    }


def test_wheel_carries_the_shipped_policy_set_as_package_data(installed: Installed) -> None:
    names = zipfile.ZipFile(installed.wheel).namelist()
    packaged = {n.removeprefix("portcullis/policies/") for n in names
                if n.startswith("portcullis/policies/")}  # fmt: skip
    assert packaged == shipped_policy_files()
    # Only the project's packages: no tests, fixtures, examples or dev tools.
    top = {n.split("/")[0] for n in names if not n.startswith("portcullis-")}
    assert top == {"portcullis", "policy_engine", "gateway", "iac_scanner"}
    size = installed.wheel.stat().st_size
    print(f"wheel {installed.wheel.name}: {size / 1024:.0f} KiB")
    assert size < 1_000_000


def test_installed_portcullis_reports_its_version(installed: Installed) -> None:
    result = installed.run("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"portcullis {__version__}"


def test_installed_portcullis_finds_the_packaged_policy_set_without_a_path(
    installed: Installed,
) -> None:
    where = subprocess.run(
        [str(installed.venv / "bin" / "python"), "-c",
         "from portcullis.paths import default_policy_dir; print(default_policy_dir())"],
        capture_output=True, text=True, cwd=installed.workdir, env=clean_env(), check=True,
    ).stdout.strip()  # fmt: skip
    # The Dockerfile links /opt/portcullis/policies to exactly this place.
    expected = installed.venv / "lib" / PYTHON_DIR / "site-packages" / "portcullis" / "policies"
    assert Path(where) == expected
    result = installed.run("policy", "test")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "PASS: " in result.stdout and "FAIL" not in result.stdout
    tests = sum(p.read_text().count("\ntest_") for p in POLICIES.rglob("*_test.rego"))
    assert f"PASS: {tests}/{tests}" in result.stdout
    assert installed.run("policy", "check").returncode == 0


def test_installed_portcullis_scans_the_sample_terraform(installed: Installed) -> None:
    result = installed.run("scan", str(EXAMPLE_TERRAFORM), "--output", "json", "--no-cache")
    assert result.returncode == 1, result.stderr  # findings: the sample has mistakes
    report = json.loads(result.stdout)
    assert {f["rule_id"] for f in report["findings"]} == {"PC-TF-001", "PC-TF-002", "PC-TF-008"}
    passing = installed.run("scan", str(EXAMPLE_TERRAFORM), "--fail-on", "critical",
                            "--output", "sarif", "--no-cache")  # fmt: skip
    assert passing.returncode == 1 and json.loads(passing.stdout)["version"] == "2.1.0"


def test_installed_portcullis_runs_the_gateway_demo(installed: Installed) -> None:
    """The gateway's modules and the packaged policy set load from the wheel
    (what the Docker image runs)."""
    port = free_port()
    demo = subprocess.Popen(
        [str(installed.venv / "bin" / "portcullis"), "demo", "--port", str(port),
         "--base-port", "0", "--state-dir", "state"],
        cwd=installed.workdir, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=clean_env(),
    )  # fmt: skip
    try:
        ready = wait_ready(f"http://127.0.0.1:{port}/readyz", demo)
        assert ready["ready"] is True
        token = installed.run(
            "demo", "token", "--state-dir", "state", "--sub", "alice", "--groups", "warehouse",
            "--amr", "pwd,otp",
        ).stdout.strip()  # fmt: skip
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/wms/stock", headers={"Authorization": f"Bearer {token}"}
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            assert response.status == 200
    finally:
        demo.send_signal(signal.SIGTERM)
        out, err = demo.communicate(timeout=30)
    assert demo.returncode == 0, err
    assert "site-packages/portcullis/policies" in out


def wait_ready(url: str, process: subprocess.Popen[str], timeout: float = 30) -> dict[str, object]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"exited {process.returncode}: {process.communicate()[1]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                return dict(json.loads(response.read()))
        except (urllib.error.URLError, ConnectionError, TimeoutError):  # a slow answer too
            time.sleep(0.1)
    raise AssertionError(f"{url} not ready after {timeout} s")


def test_source_checkout_still_uses_the_repository_policy_set(tmp_path: Path) -> None:
    """`make setup` installs editable: there the repository's policies/ is the set."""
    where = subprocess.run(
        [sys.executable, "-c",
         "from portcullis.paths import default_policy_dir; print(default_policy_dir())"],
        capture_output=True, text=True, cwd=tmp_path, check=True,
    ).stdout.strip()  # fmt: skip
    assert Path(where) == POLICIES
