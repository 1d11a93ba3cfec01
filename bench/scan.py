"""The scanner against checkov on the same Terraform, in one run.

Three timings over ../shared/corpus/terraform (or the given paths), each a
fresh process as a CI job would start it:
  1. checkov alone (.venv-checkov, terraform and terraform_json frameworks);
  2. portcullis with the policy set only, cold (an empty cache directory);
  3. portcullis again over the unchanged tree (warm cache).
Targets: cold >= 10x faster than checkov; warm under 1 s.
Then the size case: --resources N simple resources (default 80,000) in four
files, generated, scanned cold (target: under 30 s on 2 cores).

    .venv/bin/python bench/scan.py [PATH ...] [--skip-checkov] [--resources N]
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


def generate_tree(directory: Path, resources: int, files: int = 4) -> None:
    """resources simple AWS resources in files .tf files, each quarter of them
    a bucket, a security group, a rule on that group and an instance in it (so
    rules join resources by reference, as in real trees)."""
    directory.mkdir(parents=True, exist_ok=True)
    for number in range(files):
        parts = []
        for i in range(number, resources, files):
            kind = i % 4
            if kind == 0:
                parts.append(
                    f'resource "aws_s3_bucket" "b{i}" {{\n  bucket = "bucket-{i}"\n'
                    f'  tags   = {{ team = "t{i % 7}" }}\n}}\n'
                )
            elif kind == 1:
                parts.append(
                    f'resource "aws_security_group" "sg{i}" {{\n  name = "sg-{i}"\n'
                    "  ingress {\n    from_port   = 443\n    to_port     = 443\n"
                    '    protocol    = "tcp"\n    cidr_blocks = ["10.0.0.0/8"]\n  }\n}\n'
                )
            elif kind == 2:
                parts.append(
                    f'resource "aws_security_group_rule" "r{i}" {{\n  type = "ingress"\n'
                    f"  security_group_id = aws_security_group.sg{i - 1}.id\n"
                    '  from_port = 80\n  to_port = 80\n  protocol = "tcp"\n'
                    '  cidr_blocks = ["10.1.0.0/16"]\n}\n'
                )
            else:
                parts.append(
                    f'resource "aws_instance" "vm{i}" {{\n  ami = "ami-123"\n'
                    '  instance_type = "t3.micro"\n'
                    f"  vpc_security_group_ids = [aws_security_group.sg{i - 2}.id]\n}}\n"
                )
        (directory / f"part{number}.tf").write_text("\n".join(parts))


def timed(command: list[str], env: dict[str, str] | None = None) -> tuple[float, str, int]:
    started = time.perf_counter()
    completed = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    elapsed = time.perf_counter() - started
    return elapsed, completed.stdout, completed.returncode


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="*", default=[str(CORPUS)])
    parser.add_argument("--skip-checkov", action="store_true", help="time portcullis only")
    parser.add_argument(
        "--resources", type=int, default=80_000, help="size case (0 to skip; default 80000)"
    )
    args = parser.parse_args()
    files = sum(1 for p in args.paths for _ in Path(p).rglob("*.tf")) if args.paths else 0
    files += sum(1 for p in args.paths for _ in Path(p).rglob("*.tf.json")) if args.paths else 0
    print(f"scanning {', '.join(args.paths)}: {files} .tf/.tf.json files, {os.cpu_count()} cores")

    checkov_seconds = None
    if not args.skip_checkov:
        if not CHECKOV.exists():
            print("no .venv-checkov: run `make .venv-checkov` first", file=sys.stderr)
            return 2
        command = [str(CHECKOV), "--framework", "terraform", "terraform_json"]
        command += ["-o", "json", "--quiet"]
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
    if args.resources:
        size_case(args.resources)
    return 0


def size_case(resources: int) -> None:
    """resources generated resources in four files, one cold scan."""
    with tempfile.TemporaryDirectory() as work:
        tree = Path(work) / "tree"
        generate_tree(tree, resources)
        megabytes = sum(p.stat().st_size for p in tree.iterdir()) / 1e6
        command = [sys.executable, "-m", "portcullis", "scan", str(tree)]
        command += ["--cache-dir", str(Path(work) / "cache"), "--output", "json"]
        seconds, output, code = timed(command)
        summary = json.loads(output)["summary"]
        verdict = "meets" if seconds < 30 else "MISSES"
        print(
            f"{resources} resources ({megabytes:.1f} MB, 4 files): {seconds:6.2f} s cold "
            f"({summary['resources']} resources, exit {code}; {verdict} the 30 s target)"
        )


if __name__ == "__main__":
    sys.exit(main())
