"""The README's commands, run as a reader would run them, against the demo.

A shell block preceded by `<!-- runnable -->` is executed with bash (-e -o
pipefail) from a scratch directory holding the repository's policies/,
examples/ and helm/, with .venv/bin and .tools on PATH, while `portcullis
demo` runs there (its ports replace the README's 8080 and admin 9090). The
marker may say
`exit=N` (the block's expected exit code) and `expect="TEXT"` (repeatable:
text its output must contain). Every other shell block must say why it isn't
run: `<!-- not runnable: reason -->`. The Rego examples load beside the
shipped policy set and do what the text says; the Python snippet verifies a
real assertion from the demo."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import POLICIES, ROOT
from tests.gateway_stack import free_port
from tests.test_gateway_transport import make_cert

README = ROOT / "README.md"
BIN = Path(sys.executable).parent
SHELLS = {"sh", "bash", "shell", "console"}
MARKER = re.compile(r"^\s*<!--\s*(runnable|not runnable:)(.*?)-->\s*$")
ATTRIBUTE = re.compile(r'(exit|expect)=(?:"((?:[^"\\]|\\.)*)"|(\S+))')


@dataclass
class Block:
    line: int  # of the opening fence, 1-based
    language: str
    code: str
    marker: str | None = None  # "runnable", "not runnable:" or None
    note: str = ""
    exit: int = 0
    expect: list[str] = field(default_factory=list)

    @property
    def id(self) -> str:
        return f"README.md:{self.line}"


def blocks() -> list[Block]:
    found = []
    lines = README.read_text().splitlines()
    index = 0
    while index < len(lines):
        fence = re.match(r"^(\s*)```(\S*)", lines[index])
        if not fence:
            index += 1
            continue
        indent, language = fence.group(1), fence.group(2)
        end = index + 1
        while not lines[end].startswith(f"{indent}```"):
            end += 1
        code = "\n".join(line.removeprefix(indent) for line in lines[index + 1 : end]) + "\n"
        block = Block(index + 1, language, code)
        previous = next((lines[i] for i in range(index - 1, -1, -1) if lines[i].strip()), "")
        marker = MARKER.match(previous)
        if marker:
            block.marker, block.note = marker.group(1), marker.group(2).strip()
            for name, quoted, bare in ATTRIBUTE.findall(block.note):
                value = bytes(quoted, "utf-8").decode("unicode_escape") if quoted else bare
                if name == "exit":
                    block.exit = int(value)
                else:
                    block.expect.append(value)
        found.append(block)
        index = end + 1
    return found


SHELL_BLOCKS = [b for b in blocks() if b.language in SHELLS]
RUNNABLE = [b for b in SHELL_BLOCKS if b.marker == "runnable"]


def test_every_shell_block_says_whether_a_test_runs_it() -> None:
    for block in SHELL_BLOCKS:
        assert block.marker, f"{block.id}: mark it <!-- runnable --> or <!-- not runnable: why -->"
        if block.marker == "not runnable:":
            assert len(block.note) > 10, f"{block.id}: say why it isn't run"
    assert len(RUNNABLE) >= 7
    print("runnable README blocks:")
    for block in RUNNABLE:
        print(f"  {block.id}: " + "; ".join(c for c in block.code.splitlines() if c.strip()))


@dataclass
class Demo:
    port: int
    workspace: Path
    admin_port: int

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Demo]:
    """`portcullis demo` in a scratch directory laid out like the repository."""
    workspace = tmp_path_factory.mktemp("readme")
    for name in ("policies", "examples", "helm"):
        (workspace / name).symlink_to(ROOT / name)
    port, admin_port = free_port(), free_port()
    process = subprocess.Popen(
        [str(BIN / "portcullis"), "demo", "--port", str(port), "--base-port", "0",
         "--admin-port", str(admin_port)],
        cwd=workspace, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        wait_ready(f"http://127.0.0.1:{port}/readyz", process)
        yield Demo(port, workspace, admin_port)
    finally:
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=30)
    assert process.returncode == 0, err


def wait_ready(url: str, process: subprocess.Popen[str], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"demo exited {process.returncode}: {process.communicate()[1]}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except (urllib.error.URLError, ConnectionError, TimeoutError):  # a slow answer too
            time.sleep(0.1)
    raise AssertionError(f"{url} not ready after {timeout} s")


def run_shell(code: str, demo: Demo) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    env["PATH"] = f"{BIN}{os.pathsep}{ROOT / '.tools'}{os.pathsep}{env.get('PATH', '')}"
    code = code.replace("127.0.0.1:8080", f"127.0.0.1:{demo.port}")
    code = code.replace("127.0.0.1:9090", f"127.0.0.1:{demo.admin_port}")  # the admin listener
    return subprocess.run(
        ["bash", "-e", "-o", "pipefail", "-c", code],
        cwd=demo.workspace, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


@pytest.mark.parametrize("block", RUNNABLE, ids=[b.id for b in RUNNABLE])
def test_readme_shell_block_runs(block: Block, demo: Demo) -> None:
    assert shutil.which("curl"), "curl is needed to run the README's examples"
    result = run_shell(block.code, demo)
    shown = f"{block.id}\n{block.code}\nexit {result.returncode}\n{result.stdout}{result.stderr}"
    assert result.returncode == block.exit, shown
    for text in block.expect:
        assert text in result.stdout, f"expected {text!r} in the output of {shown}"


def rego_examples() -> dict[str, str]:
    """The README's Rego examples by package."""
    found = {}
    for block in blocks():
        if block.language == "rego":
            package = re.search(r"^package (\S+)", block.code, re.M)
            assert package, block.id
            found[package.group(1)] = block.code
    return found


def policy_copy_with(tmp_path: Path, package: str) -> Path:
    policies = tmp_path / "policies"
    shutil.copytree(POLICIES, policies)
    (policies / f"readme_{package.rsplit('.', 1)[-1]}.rego").write_text(rego_examples()[package])
    check = subprocess.run([str(BIN / "portcullis"), "policy", "check", str(policies)],
                           capture_output=True, text=True, timeout=120)  # fmt: skip
    assert check.returncode == 0, check.stdout + check.stderr
    return policies


def test_readme_gateway_rule_example_allows_the_kiosk(tmp_path: Path) -> None:
    policies = policy_copy_with(tmp_path, "portcullis.gateway")
    request = json.loads((ROOT / "examples/inputs/wms-stock-with-otp.json").read_text())
    request["route"] = {**request["route"], "app": "analytics", "path_prefix": "/analytics/"}
    request["attributes"]["request"]["http"]["method"] = "GET"
    request["attributes"]["request"]["http"]["path"] = "/analytics/dashboards"
    request["parsed_path"] = ["analytics", "dashboards"]
    request["identity"] = {**request["identity"], "subject": "kiosk", "groups": []}
    decisions = {}
    for name, source in (("shipped", POLICIES), ("with the example", policies)):
        result = subprocess.run(
            [str(BIN / "portcullis"), "policy", "eval", "--policy", str(source), "--input", "-"],
            input=json.dumps(request), capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        decisions[name] = json.loads(result.stdout)
    assert decisions["shipped"]["allow"] is False
    assert decisions["with the example"]["allow"] is True


def test_readme_terraform_rule_example_finds_short_backups(tmp_path: Path) -> None:
    (package,) = [p for p in rego_examples() if p.startswith("portcullis.terraform.")]
    policies = policy_copy_with(tmp_path, package)
    result = subprocess.run(
        [str(BIN / "portcullis"), "scan", str(ROOT / "examples/terraform"), "--policy",
         str(policies), "--output", "json", "--no-cache"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    findings = json.loads(result.stdout)["findings"]
    mine = [f for f in findings if f["rule_id"] == "ACME-TF-101"]
    assert [f["resource"] for f in mine] == ["aws_db_instance.pos"], findings
    assert mine[0]["severity"] == "medium"


def test_readme_python_snippet_verifies_a_real_assertion(demo: Demo) -> None:
    (snippet,) = [b.code for b in blocks() if b.language == "python" and "PyJWKClient" in b.code]
    token = subprocess.run(
        [str(BIN / "portcullis"), "demo", "token", "--sub", "alice", "--groups", "warehouse",
         "--amr", "pwd,otp"],
        cwd=demo.workspace, capture_output=True, text=True, check=True, timeout=60,
    ).stdout.strip()  # fmt: skip
    request = urllib.request.Request(
        demo.url("/wms/stock"), headers={"Authorization": f"Bearer {token}"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        seen = json.loads(response.read())
    headers = {k.title(): v for k, v in seen["headers"].items()}
    namespace: dict[str, Any] = {}
    exec(snippet.replace("http://gateway:8080", demo.url("")), namespace)
    claims = namespace["identity"](headers, app="wms")
    assert claims["sub"] == "alice" and claims["aud"] == "wms"


def test_readme_gateway_config_example_loads(tmp_path: Path) -> None:
    from gateway.config import load_config

    (example,) = [b.code for b in blocks() if b.language == "yaml" and "listeners:" in b.code]
    for name in ("tls.crt", "tls.key"):
        (tmp_path / name).write_text("stand-in\n")
    # client_ca is read when the config is (each CA's name scopes its certificates).
    make_cert(tmp_path, "ca", None, ca=True)
    (tmp_path / "ca.pem").rename(tmp_path / "ca.crt")
    (tmp_path / "gateway.yaml").write_text(example)
    config = load_config(tmp_path / "gateway.yaml")
    assert config.routes[0].app == "pos" and config.issuers[0].discovery
    assert config.listeners[0].tls is not None
