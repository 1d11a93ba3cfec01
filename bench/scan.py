"""The scanner against checkov on the same Terraform, in one run.

Three timings over ../shared/corpus/terraform (or the given paths), each a
fresh process as a CI job would start it:
  1. checkov alone (.venv-checkov, terraform framework, JSON output);
  2. portcullis with the policy set only, cold (an empty cache directory);
  3. portcullis again over the unchanged tree (warm cache).
Targets: cold >= 10x faster than checkov; warm under 1 s.

    .venv/bin/python bench/scan.py [PATH ...] [--skip-checkov]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CORPUS = ROOT.parent / "shared/corpus/terraform"
CHECKOV = ROOT / ".venv-checkov/bin/checkov"


def timed(command: list[str], env: dict[str, str] | None = None) -> tuple[float, str, int]:
    started = time.perf_counter()
    completed = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    elapsed = time.perf_counter() - started
    return elapsed, completed.stdout, completed.returncode


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="*", default=[str(CORPUS)])
    parser.add_argument("--skip-checkov", action="store_true", help="time portcullis only")
    args = parser.parse_args()
    files = sum(1 for p in args.paths for _ in Path(p).rglob("*.tf")) if args.paths else 0
    print(f"scanning {', '.join(args.paths)}: {files} .tf files, {os.cpu_count()} cores")

    checkov_seconds = None
    if not args.skip_checkov:
        if not CHECKOV.exists():
            print("no .venv-checkov: run `make .venv-checkov` first", file=sys.stderr)
            return 2
        command = [str(CHECKOV), "--framework", "terraform", "-o", "json", "--quiet"]
        command += ["--compact", "--skip-download"]
        for path in args.paths:
            command += ["-d", path]
        env = {**os.environ, "BC_SKIP_MAPPING": "TRUE"}
        checkov_seconds, output, code = timed(command, env)
        try:
            reports = json.loads(output)
            reports = reports if isinstance(reports, list) else [reports]
            failed = sum(r.get("summary", {}).get("failed", 0) for r in reports)
        except ValueError:
            failed = -1
        print(f"checkov                  {checkov_seconds:8.2f} s  ", end="")
        print(f"({failed} failed checks, exit {code})")

    with tempfile.TemporaryDirectory() as cache:
        command = [sys.executable, "-m", "portcullis", "scan", *args.paths]
        command += ["--cache-dir", cache, "--output", "json"]
        cold, output, code = timed(command)
        summary = json.loads(output)["summary"]
        print(
            f"portcullis cold          {cold:8.2f} s  ({summary['findings']} findings, "
            f"{summary['resources']} resources, exit {code})"
        )
        warm, output, _ = timed(command)
        assert json.loads(output)["summary"] == summary, "the warm scan must report the same"
        print(f"portcullis warm          {warm:8.2f} s")

    print()
    if checkov_seconds is not None:
        ratio = checkov_seconds / cold
        verdict = "meets" if ratio >= 10 else "MISSES"
        print(f"cold vs checkov: {ratio:5.1f}x faster ({verdict} the 10x target)")
        print(f"warm vs checkov: {checkov_seconds / warm:5.1f}x faster")
    print(f"warm re-scan:    {warm:5.2f} s ({'meets' if warm < 1 else 'MISSES'} the 1 s target)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
