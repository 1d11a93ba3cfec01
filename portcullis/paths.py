"""Where the shipped policy set lives."""

from __future__ import annotations

from pathlib import Path


def default_policy_dir() -> str:
    """`./policies` when the current directory has one, else the repository's own."""
    local = Path("policies")
    if local.is_dir():
        return str(local)
    return str(Path(__file__).resolve().parent.parent / "policies")
