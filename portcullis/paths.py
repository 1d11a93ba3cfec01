"""Where the shipped policy set lives."""

from __future__ import annotations

from pathlib import Path

# An installed wheel carries the policy set here (pyproject.toml maps the
# repository's policies/ to the package portcullis.policies).
PACKAGED_POLICY_DIR = Path(__file__).resolve().parent / "policies"
# A source checkout (or an editable install) has it at the repository root.
REPOSITORY_POLICY_DIR = Path(__file__).resolve().parent.parent / "policies"


def default_policy_dir() -> str:
    """`./policies` when the current directory has one, else the shipped set."""
    local = Path("policies")
    if local.is_dir():
        return str(local)
    return shipped_policy_dir()


def shipped_policy_dir() -> str:
    """The policy set Portcullis ships: the installed package's own copy, else
    the repository's (a source checkout)."""
    if PACKAGED_POLICY_DIR.is_dir():
        return str(PACKAGED_POLICY_DIR)
    return str(REPOSITORY_POLICY_DIR)
