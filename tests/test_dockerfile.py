"""The Dockerfile, checked without a Docker engine (none runs here): hadolint,
and the properties the image promises, read from the file itself. Its install
commands are the ones tests/test_packaging.py and the Makefile run for real."""

from __future__ import annotations

import fnmatch
import json
import re
import shlex
import subprocess
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from gateway.config import load_config
from tests.conftest import ROOT

DOCKERFILE = ROOT / "Dockerfile"
HADOLINT = Path(sys.executable).parent / "hadolint"


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [args for kw, args in self.instructions if kw == keyword]


def instructions() -> list[tuple[str, str]]:
    """(KEYWORD, arguments) per instruction, continuation lines joined."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    result = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, args = line.partition(" ")
            result.append((keyword.upper(), " ".join(args.split())))
    return result


def global_args() -> dict[str, str]:
    found = {}
    for keyword, args in instructions():
        if keyword == "FROM":
            break
        if keyword == "ARG" and "=" in args:
            name, _, value = args.partition("=")
            found[name] = value
    return found


def stages() -> list[Stage]:
    result: list[Stage] = []
    for keyword, args in instructions():
        if keyword == "FROM":
            words = args.split()
            name = words[2] if len(words) > 2 and words[1].upper() == "AS" else None
            result.append(Stage(words[0], name))
        elif result:
            result[-1].instructions.append((keyword, args))
    return result


def makefile_variable(name: str) -> str:
    match = re.search(rf"^{name}\s*:=\s*(\S+)", (ROOT / "Makefile").read_text(), re.M)
    assert match, name
    return match.group(1)


def test_dockerfile_is_hadolint_clean_at_warning_level() -> None:
    result = subprocess.run(
        [str(HADOLINT), "--failure-threshold", "warning", "--format", "json", str(DOCKERFILE)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    findings = json.loads(result.stdout or "[]")
    print(f"hadolint {len(findings)} findings: {findings}")
    assert result.returncode == 0, findings
    assert not [f for f in findings if f["level"] in ("error", "warning")]


def test_image_is_multi_stage_on_debian_bookworm_slim_python() -> None:
    base = global_args()["PYTHON_IMAGE"]
    # regorus' wheels need glibc >= 2.34: Debian bookworm, never Alpine (musl).
    assert re.fullmatch(r"python:3\.11[\d.]*-slim-bookworm(@sha256:[0-9a-f]{64})?", base)
    all_stages = stages()
    assert len(all_stages) >= 3
    assert {s.base for s in all_stages} == {"${PYTHON_IMAGE}"}
    assert not any("alpine" in s.base.lower() for s in all_stages)


def test_final_stage_has_no_build_steps_and_runs_as_non_root() -> None:
    final = stages()[-1]
    runs = " ".join(final.all("RUN"))
    # No compilers, no package installs: the venvs arrive built from earlier stages.
    for forbidden in ("apt-get", "pip install", "gcc", "build-essential", "python -m build"):
        assert forbidden not in runs
    copied = {args.split()[0] for args in final.all("COPY")}
    assert copied == {"--from=portcullis", "--from=checkov"}
    (user,) = final.all("USER")
    uid = user.split(":")[0]
    assert uid.isdigit() and int(uid) != 0  # numeric, so runAsNonRoot can check it


def test_final_stage_writes_only_to_its_volume_or_tmp() -> None:
    final = stages()[-1]
    (volume,) = final.all("VOLUME")
    assert json.loads(volume) == ["/var/lib/portcullis"]
    env = " ".join(final.all("ENV"))
    assert "HOME=/var/lib/portcullis" in env  # checkov and friends write under $HOME
    assert "XDG_CACHE_HOME=/tmp/" in env
    assert "PYTHONDONTWRITEBYTECODE=1" in env  # no .pyc next to read-only sources
    assert final.all("WORKDIR") == ["/var/lib/portcullis"]  # scan's cache dir is relative
    # The example config keeps the decision log and the key on the volume.
    config = load_config(ROOT / "examples" / "docker" / "gateway.yaml")
    assert config.decision_log.path == Path("/var/lib/portcullis/decisions.log")
    assert config.assertion.key_file == Path("/var/lib/portcullis/assertion-key.pem")
    assert config.policy.source == "/opt/portcullis/policies"


def test_image_entrypoint_and_healthcheck() -> None:
    final = stages()[-1]
    assert final.all("ENTRYPOINT") == ['["portcullis"]']
    (cmd,) = final.all("CMD")
    assert json.loads(cmd) == ["gateway", "--config", "/etc/portcullis/gateway.yaml"]
    (healthcheck,) = final.all("HEALTHCHECK")
    assert "CMD [" in healthcheck  # exec form: no shell needed
    assert "PORTCULLIS_HEALTH_URL=http://127.0.0.1:8080/healthz" in " ".join(final.all("ENV"))
    assert final.all("EXPOSE") == ["8080"]


def test_checkov_gets_its_own_venv_at_the_version_the_makefile_tests() -> None:
    checkov = next(s for s in stages() if s.name == "checkov")
    assert f"CHECKOV_VERSION={makefile_variable('CHECKOV_VERSION')}" in checkov.all("ARG")
    (run,) = checkov.all("RUN")
    assert "python -m venv /opt/checkov" in run
    assert '/opt/checkov/bin/pip install --no-cache-dir "checkov==${CHECKOV_VERSION}"' in run
    # A bare `portcullis scan --checkov` looks for `checkov` on PATH.
    assert "ln -s ../bin/checkov /opt/checkov/shim/checkov" in run
    final_env = " ".join(stages()[-1].all("ENV"))
    assert "/opt/checkov/shim" in final_env and "/opt/checkov/bin" not in final_env


def test_portcullis_is_installed_from_the_built_wheel_with_its_policy_set() -> None:
    wheel = next(s for s in stages() if s.name == "wheel")
    assert "python -m build --outdir /dist ." in wheel.all("RUN")
    install = " ".join(next(s for s in stages() if s.name == "portcullis").all("RUN"))
    assert "python -m venv /opt/portcullis" in install
    assert "/opt/portcullis/bin/pip install --no-cache-dir /dist/portcullis-*.whl" in install
    # The fixed path configs use, linked to the wheel's package data, and checked.
    assert "p.PACKAGED_POLICY_DIR" in install and "/opt/portcullis/policies" in install
    assert "portcullis policy check /opt/portcullis/policies" in install


def dockerignored(path: str) -> bool:
    """Docker's rule: the last matching pattern wins; `!` re-includes."""
    ignored = False
    for raw in (ROOT / ".dockerignore").read_text().splitlines():
        pattern = raw.strip()
        if not pattern or pattern.startswith("#"):
            continue
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").rstrip("/")
        parts = Path(path).parts
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        if any(fnmatch.fnmatch(p, pattern.replace("**/", "*")) for p in prefixes):
            ignored = not negate
    return ignored


def test_build_context_holds_everything_the_wheel_is_built_from() -> None:
    wheel = next(s for s in stages() if s.name == "wheel")
    sources = set()
    for args in wheel.all("COPY"):
        *names, _destination = shlex.split(args)
        sources.update(name.rstrip("/") for name in names)
    packages = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    top_level = {name.split(".")[0] for name in packages["packages"]}
    # Every package, the policy set (package data), and the files pyproject reads.
    assert sources == top_level | {"policies", "pyproject.toml", "README.md"}
    for source in sources:
        assert (ROOT / source).exists(), source
        assert not dockerignored(source), f"{source} is excluded by .dockerignore"
        for file in (ROOT / source).rglob("*.py") if (ROOT / source).is_dir() else []:
            relative = str(file.relative_to(ROOT))
            assert not dockerignored(relative), relative
    # What the image doesn't need stays out of the context.
    for private in (".venv", ".venv-checkov", ".git", "tests", ".portcullis-demo", ".tools"):
        assert dockerignored(private), private
