"""Regorus conformance: no regression below the measured floor, and a runner that can fail."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "conformance.py"
FLOOR = Path(__file__).parent / "fixtures" / "conformance_floor.json"


def _load_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("conformance", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["conformance"] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


conformance = _load_script()


def _write_corpus(root: Path, folder: str, cases_yaml: str) -> Path:
    (root / folder).mkdir(parents=True)
    (root / folder / "cases.yaml").write_text(textwrap.dedent(cases_yaml), encoding="utf-8")
    return root


@pytest.mark.parametrize("engine", conformance.ENGINES)
def test_conformance_does_not_drop_below_the_measured_floor(engine: str) -> None:
    """regorus, and the same cases on OPA's own evaluator (which shows the cases
    and this runner mean what OPA means)."""
    corpus = Path(os.environ.get(conformance.ENV_VAR) or conformance.DEFAULT_CORPUS)
    # The corpus sits beside the checkout (../shared), in CI too: missing is a failure.
    assert corpus.is_dir(), f"OPA conformance corpus not present at {corpus}"
    floor = json.loads(FLOOR.read_text(encoding="utf-8"))
    if engine == "opa":
        floor = floor["oracle"]
    report = conformance.run_conformance(corpus, engine=engine)
    passed = {name: count.passed for name, count in report.folders().items()}

    dropped = [
        f"{name} {passed.get(name, 0)} < {want['passed']}"
        for name, want in floor["folders"].items()
        if passed.get(name, 0) < want["passed"]
    ]
    assert not dropped, f"conformance folders dropped below the floor: {', '.join(dropped)}"
    assert report.passed >= floor["total"]["passed"], (
        f"conformance dropped: {report.passed}/{report.applicable} passed, "
        f"floor is {floor['total']['passed']}/{floor['total']['applicable']}"
    )


def test_missing_corpus_exits_2_with_one_line_and_no_traceback(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-corpus"
    done = subprocess.run(
        [sys.executable, str(SCRIPT), str(missing)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert done.stdout == ""
    assert len(done.stderr.strip().splitlines()) == 1
    assert "Traceback" not in done.stderr
    assert str(missing) in done.stderr


@pytest.mark.parametrize("engine", conformance.ENGINES)
def test_wrong_expected_result_is_counted_as_failed(tmp_path: Path, engine: str) -> None:
    corpus = _write_corpus(
        tmp_path,
        "demo",
        """\
        cases:
          - note: demo/right
            query: data.test.p = x
            modules: ["package test\\n\\np := 1 + 1\\n"]
            want_result: [{x: 2}]
          - note: demo/wrong value
            query: data.test.p = x
            modules: ["package test\\n\\np := 1 + 1\\n"]
            want_result: [{x: 3}]
          - note: demo/bool is not a number
            query: data.test.p = x
            modules: ["package test\\n\\np := true\\n"]
            want_result: [{x: 1}]
          - note: demo/arrays compare in order
            query: data.test.p = x
            modules: ["package test\\n\\np := [2, 1]\\n"]
            want_result: [{x: [1, 2]}]
          - note: demo/expected undefined
            query: data.test.p = x
            modules: ["package test\\n\\np := 1\\n"]
            want_result: []
        """,
    )
    report = conformance.run_conformance(corpus, engine=engine)
    status = {r.case.note: r.status for r in report.results}
    assert status == {
        "demo/right": conformance.Status.PASSED,
        "demo/wrong value": conformance.Status.FAILED,
        "demo/bool is not a number": conformance.Status.FAILED,
        "demo/arrays compare in order": conformance.Status.FAILED,
        "demo/expected undefined": conformance.Status.FAILED,
    }
    assert report.folders()["demo"].passed == 1
    assert (report.passed, report.applicable) == (1, 5)


def test_error_cases_need_an_error_at_evaluation(tmp_path: Path) -> None:
    corpus = _write_corpus(
        tmp_path,
        "errors",
        """\
        cases:
          - note: errors/conflict raised
            query: data.test.p = x
            modules: ["package test\\n\\np := 1\\n\\np := 2\\n"]
            want_error_code: eval_conflict_error
          - note: errors/no error raised
            query: data.test.p = x
            modules: ["package test\\n\\np := 1\\n"]
            want_error_code: eval_conflict_error
          - note: errors/unparsable module is not the expected error
            query: data.test.p = x
            modules: ["package test\\n\\np := \\n"]
            want_error_code: eval_conflict_error
        """,
    )
    status = {r.case.note: r.status for r in conformance.run_conformance(corpus).results}
    assert status == {
        "errors/conflict raised": conformance.Status.PASSED,
        "errors/no error raised": conformance.Status.FAILED,
        "errors/unparsable module is not the expected error": conformance.Status.FAILED,
    }


def test_cases_using_builtins_policies_must_not_use_are_not_applicable(tmp_path: Path) -> None:
    corpus = _write_corpus(
        tmp_path,
        "jwt",
        """\
        cases:
          - note: jwt/decode
            query: data.test.p = x
            modules: ["package test\\n\\np := io.jwt.decode(input)\\n"]
            want_result: []
        """,
    )
    report = conformance.run_conformance(corpus)
    (result,) = report.results
    assert result.status is conformance.Status.NOT_APPLICABLE
    assert "io.jwt" in result.detail
    assert report.applicable == 0
    assert any("jwt/decode" in line for line in conformance.format_report(report))


def test_env_var_selects_the_corpus(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    corpus = _write_corpus(
        tmp_path,
        "demo",
        """\
        cases:
          - note: demo/right
            query: data.test.p = x
            modules: ["package test\\n\\np := 1\\n"]
            want_result: [{x: 1}]
        """,
    )
    monkeypatch.setenv(conformance.ENV_VAR, str(corpus))
    assert conformance.main([]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^demo: +1/1 +1/1$", out, re.MULTILINE), out
    assert "total: 1/1" in out
    assert "total on OPA: 1/1" in out


def test_a_crashing_case_fails_alone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    corpus = _write_corpus(
        tmp_path,
        "demo",
        """\
        cases:
          - note: demo/crashes
            query: data.test.p = x
            modules: ["package test\\n\\np := 1\\n"]
            want_result: [{x: 1}]
          - note: demo/after the crash
            query: data.test.p = x
            modules: ["package test\\n\\np := 1\\n"]
            want_result: [{x: 1}]
        """,
    )
    run_case = conformance.run_case

    def crash_on_first(case: object) -> tuple[bool, str]:
        if getattr(case, "note", "") == "demo/crashes":
            os.abort()  # what a segfaulting engine looks like to the runner
        return run_case(case)  # type: ignore[no-any-return]

    monkeypatch.setattr(conformance, "run_case", crash_on_first)
    results = {r.case.note: r for r in conformance.run_conformance(corpus).results}
    assert results["demo/crashes"].status is conformance.Status.FAILED
    assert "died" in results["demo/crashes"].detail
    assert results["demo/after the crash"].status is conformance.Status.PASSED
