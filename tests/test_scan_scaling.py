"""Evaluation cost grows linearly with the resources in a document: rules look
references up (the scanner resolves them into `targets` once) instead of
comparing every resource with every other. Timed on 1,000 and 4,000
generated resources; quadratic growth would be ~16x, the bound is 8x."""

from __future__ import annotations

import time
from pathlib import Path

from bench.scan import generate_tree
from iac_scanner.loader import LoadOptions, load
from iac_scanner.policy import RuleSet
from policy_engine import load_policy_set
from tests.conftest import ROOT


def _evaluation_seconds(rules: RuleSet, tree: Path, resources: int) -> float:
    generate_tree(tree, resources)
    [document] = load([str(tree)], LoadOptions()).documents
    assert len(document.resources) == resources
    given = document.as_input()
    best = float("inf")
    # This process's CPU time, the best of two: on the wall clock, the shared
    # machine busy during the 4,000 run alone made a linear cost look 12-17x.
    for _ in range(2):
        started = time.process_time()
        violations, _ = rules.evaluate(given)
        best = min(best, time.process_time() - started)
    assert violations == []
    return best


def test_evaluation_time_grows_linearly_with_resources(tmp_path: Path) -> None:
    rules = RuleSet(load_policy_set(str(ROOT / "policies")))
    small = _evaluation_seconds(rules, tmp_path / "small", 1_000)
    large = _evaluation_seconds(rules, tmp_path / "large", 4_000)
    assert large / small < 8, f"1,000 resources: {small:.2f} s, 4,000: {large:.2f} s"
