"""Shared fixtures: where the project's parts and the reference corpora live."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
POLICIES = ROOT / "policies"
FIXTURES = ROOT / "tests" / "fixtures"
SHARED = ROOT.parent / "shared"
