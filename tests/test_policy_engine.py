"""Loading, checking and evaluating policy sets on the embedded engine."""

from __future__ import annotations

import datetime
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import regorus

from policy_engine import (
    EmbeddedEngine,
    EvaluationError,
    EvaluationTimeout,
    PolicyLoadError,
    UndefinedPath,
    UndefinedResult,
    compile_policy,
    load_policy_set,
)
from policy_engine.testing import run_tests
from tests.conftest import FIXTURES, POLICIES

BAD = FIXTURES / "policies"
DECISION = "data.portcullis.gateway.decision"


def load_problems(path: Path) -> list[str]:
    with pytest.raises(PolicyLoadError) as raised:
        compile_policy(load_policy_set(path))
    return [str(p) for p in raised.value.problems]


def make_bundle(path: Path, files: dict[str, bytes], links: dict[str, str] | None = None) -> Path:
    with tarfile.open(path, "w:gz") as archive:
        for name, content in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(content)
            archive.addfile(info, io.BytesIO(content))
        for name, target in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type = tarfile.SYMTYPE
            info.linkname = target
            archive.addfile(info)
    return path


def test_shipped_policy_set_loads_with_the_catalogue() -> None:
    policy_set = load_policy_set(POLICIES)
    apps = policy_set.data["portcullis"]["catalogue"]["apps"]
    assert set(apps) == {"wms", "pos", "analytics"}
    assert apps["pos"]["classification"] == "pci"
    compiled = compile_policy(policy_set)
    assert DECISION in compiled.rule_refs()


def test_every_shipped_rego_file_has_a_test_beside_it() -> None:
    for rego in POLICIES.rglob("*.rego"):
        if rego.name.endswith("_test.rego"):
            continue
        assert rego.with_name(rego.stem + "_test.rego").exists(), f"{rego} has no _test.rego"


def test_shipped_policies_use_no_builtins_real_opa_or_regorus_lacks() -> None:
    forbidden = ("io.jwt.", "crypto.", "rego.metadata", "http.send", "net.cidr_merge")
    for rego in POLICIES.rglob("*.rego"):
        text = rego.read_text()
        for name in forbidden:
            assert name not in text, f"{rego} uses {name}"


def test_missing_directory_is_named() -> None:
    assert load_problems(Path("/no/such/policies")) == [
        "/no/such/policies: no such policy directory or bundle"
    ]


def test_syntax_error_names_file_line_and_column() -> None:
    (problem,) = load_problems(BAD / "syntax_error")
    assert problem.startswith(f"{BAD}/syntax_error/broken.rego:7:1: ")


def test_unsafe_variable_names_file_line_and_column() -> None:
    (problem,) = load_problems(BAD / "unsafe_variable")
    assert (
        problem == f"{BAD}/unsafe_variable/unsafe.rego:7:2: use of undefined variable `x` is unsafe"
    )


def test_unknown_function_is_found_even_where_evaluation_never_reaches() -> None:
    (problem,) = load_problems(BAD / "unknown_function")
    assert problem == f"{BAD}/unknown_function/jwt.rego:8:2: unknown function io.jwt.decode"


def test_a_deny_through_http_send_is_refused_not_left_never_firing(tmp_path: Path) -> None:
    """regorus knows http.send by name and answers it undefined without a request:
    `blocked` never held and the policy allowed what OPA, which sends the request,
    would block. The README rules it out; now the load does too, where it's called."""
    policy = tmp_path / "p"
    policy.mkdir()
    (policy / "w.rego").write_text(
        "package w\n\nimport rego.v1\n\n"
        'blocked if http.send({"method": "get", "url": "http://127.0.0.1:1/"}).status_code == 200\n'
        "\nallow if not blocked\n"
    )
    bare = regorus.Engine()
    bare.add_policy("w.rego", (policy / "w.rego").read_text())
    assert bare.eval_rule("data.w.allow") is True  # what loading it as regorus does gives
    (problem,) = load_problems(policy)
    assert problem.startswith(f"{policy}/w.rego:5:12: http.send is not available: the ")


def test_conflicting_data_keys_name_both_files() -> None:
    (problem,) = load_problems(BAD / "conflicting_data")
    assert problem == (
        f"{BAD}/conflicting_data/two.yaml: conflicting data keys: "
        "data.portcullis.catalogue.apps.pos.upstream is also set in "
        f"{BAD}/conflicting_data/one.yaml"
    )


def test_rule_clashing_with_data_is_a_conflict() -> None:
    (problem,) = load_problems(BAD / "rule_data_conflict")
    assert problem.startswith(f"{BAD}/rule_data_conflict/catalogue.rego:5:1: conflicting data keys")
    assert "data.portcullis.catalogue.apps" in problem


def test_invalid_yaml_names_line_and_column() -> None:
    (problem,) = load_problems(BAD / "bad_yaml")
    assert problem.startswith(f"{BAD}/bad_yaml/apps.yaml:4:6: invalid YAML")


def test_invalid_json_names_line_and_column() -> None:
    (problem,) = load_problems(BAD / "bad_json")
    assert problem == f"{BAD}/bad_json/apps.json:3:12: invalid JSON: Expecting value"


def test_yaml_values_json_lacks_are_load_errors_naming_file_line_and_key() -> None:
    """A date as YAML writes it raised TypeError in the engine (ending a gateway's hot
    reload for good); !!binary and !!set went in silently as a list of numbers and
    a Rego set; a number as a key as a number (OPA would read a string)."""
    file = BAD / "yaml_not_json/extra.yaml"
    assert load_problems(BAD / "yaml_not_json") == [
        f"{file}:3:10: data.extra.since: a YAML date/time (2026-11-01) is not a JSON value; "
        "quote it to keep it as a string",
        f"{file}:4:13: data.extra.windows[0]: a YAML date/time (2026-01-01 08:00:00) is not "
        "a JSON value; quote it to keep it as a string",
        f"{file}:5:9: data.extra.logo: a YAML !!binary value (aGVsbG8=) is not a JSON value; "
        "use a plain base64 string",
        f"{file}:6:12: data.extra.regions: a YAML !!set is not a JSON value; use a list, or "
        "an object of key: true",
        f"{file}: data.extra: the key 404 is read as a number, not a string; quote it",
        f'{file}: data.extra["rate-limit"].burst: inf is not a JSON number',
    ]


def test_data_the_engine_cannot_take_is_a_load_error_not_a_type_error() -> None:
    """A policy set built by other code than load_policy_set: compile_policy let the
    engine's TypeError through, which no caller expects of a policy that won't load."""
    policy_set = load_policy_set(BAD / "sets_of_objects")
    policy_set.data["extra"] = {"since": datetime.date(2026, 11, 1)}
    with pytest.raises(PolicyLoadError) as raised:
        compile_policy(policy_set)
    assert str(raised.value) == (
        f"{BAD}/sets_of_objects: data the engine can't hold: object cannot be converted to "
        "RegoValue"
    )


def test_directory_without_rego_is_refused(tmp_path: Path) -> None:
    (tmp_path / "data.json").write_text("{}")
    assert load_problems(tmp_path) == [f"{tmp_path}: no .rego files found"]


def test_bundle_mounts_data_at_its_directory_and_reads_the_revision(tmp_path: Path) -> None:
    bundle = make_bundle(
        tmp_path / "b.tar.gz",
        {
            ".manifest": b'{"revision": "r42", "roots": ["acme"]}',
            "acme/limits/data.json": b'{"max": 5}',
            "acme/policy.rego": (
                b"package acme\nimport rego.v1\nok if input.n <= data.acme.limits.max\n"
            ),
        },
    )
    engine = EmbeddedEngine(load_policy_set(bundle))
    assert engine.revision == "r42"
    assert engine.evaluate_sync("data.acme.ok", {"n": 5}) is True
    with pytest.raises(UndefinedResult):
        engine.evaluate_sync("data.acme.ok", {"n": 6})


@pytest.mark.parametrize("name", ["../escape.rego", "/abs.rego"])
def test_bundle_entries_escaping_the_root_are_refused(tmp_path: Path, name: str) -> None:
    bundle = make_bundle(tmp_path / "b.tar.gz", {name: b"package x\n", "ok.rego": b"package y\n"})
    problems = load_problems(bundle)
    assert any("unsafe bundle entry" in p for p in problems)


def test_bundle_symlinks_are_refused(tmp_path: Path) -> None:
    bundle = make_bundle(
        tmp_path / "b.tar.gz", {"ok.rego": b"package y\n"}, links={"data.json": "/etc/passwd"}
    )
    assert any("unsafe bundle entry" in p for p in load_problems(bundle))


def test_corrupt_bundle_is_refused(tmp_path: Path) -> None:
    bundle = tmp_path / "b.tar.gz"
    bundle.write_bytes(b"\x1f\x8b not really gzip")
    (problem,) = load_problems(bundle)
    assert problem.startswith(f"{bundle}: not a readable .tar.gz bundle")


def test_set_of_objects_results_come_back_through_the_json_api() -> None:
    engine = EmbeddedEngine(load_policy_set(BAD / "sets_of_objects"))
    resources = [{"address": "a.x", "open": True}, {"address": "a.y", "open": False}]
    deny = engine.evaluate_sync("data.findings.deny", {"resources": resources})
    assert deny == [{"resource": "a.x", "message": "open"}]
    summary = engine.evaluate_sync("data.findings.summary", {"resources": resources})
    assert summary == {"count": 1, "denied": [{"resource": "a.x", "message": "open"}]}
    package = engine.evaluate_sync("data.findings", {"resources": resources})
    assert package["deny"] == deny


def test_unknown_path_and_undefined_result_are_told_apart() -> None:
    engine = EmbeddedEngine(load_policy_set(POLICIES))
    with pytest.raises(UndefinedPath, match="no such rule"):
        engine.evaluate_sync("data.portcullis.gateway.no_such_rule", {})
    with pytest.raises(UndefinedPath, match="not a reference"):
        engine.evaluate_sync("data.x; true", {})
    with pytest.raises(UndefinedResult):
        engine.evaluate_sync("data.portcullis.gateway.app", {"route": {"app": "payroll"}})


def test_runtime_error_is_an_evaluation_error(tmp_path: Path) -> None:
    (tmp_path / "p.rego").write_text("package p\nimport rego.v1\nratio := 10 / input.n\n")
    engine = EmbeddedEngine(load_policy_set(tmp_path))
    assert engine.evaluate_sync("data.p.ratio", {"n": 5}) == 2
    with pytest.raises(EvaluationError, match="divide by zero"):
        engine.evaluate_sync("data.p.ratio", {"n": 0})


def test_evaluation_over_the_timeout_is_an_error_not_an_answer(tmp_path: Path) -> None:
    (tmp_path / "p.rego").write_text(
        "package p\nimport rego.v1\n"
        "allow if count([x | some x in numbers.range(1, input.n); x % 7 == 0]) > 0\n"
    )
    engine = EmbeddedEngine(load_policy_set(tmp_path), timeout=0.001)
    with pytest.raises(EvaluationTimeout, match="over the 1 ms timeout"):
        engine.evaluate_sync("data.p.allow", {"n": 2_000_000})


def test_a_decision_delayed_by_another_thread_holding_the_gil_is_not_a_timeout() -> None:
    """A loaded gateway (another thread, the shadow process, a busy CI machine)
    delays a decision; only the policy's own CPU time may turn it into a deny."""
    engine = EmbeddedEngine(load_policy_set(POLICIES), timeout=0.05, compiled_refs=(DECISION,))
    document = json.loads((FIXTURES / "inputs/pos_refund_otp.json").read_text())
    engine.evaluate_sync(DECISION, document)
    stop = threading.Event()

    def hog() -> None:  # pure Python: holds the GIL for a whole switch interval
        while not stop.is_set():
            pass

    interval = sys.getswitchinterval()
    sys.setswitchinterval(0.2)
    thread = threading.Thread(target=hog)
    thread.start()
    delayed = 0
    try:
        deadline = time.monotonic() + 10
        while delayed < 3 and time.monotonic() < deadline:
            started = time.perf_counter()
            assert engine.evaluate_sync(DECISION, document)["step_up"]["max_age"] == 900
            delayed += time.perf_counter() - started > 0.05
    finally:
        stop.set()
        thread.join()
        sys.setswitchinterval(interval)
    assert delayed >= 3, "the other thread never delayed an evaluation: the test proved nothing"


def test_each_thread_evaluates_on_its_own_engine() -> None:
    engine = EmbeddedEngine(load_policy_set(POLICIES), compiled_refs=(DECISION,))
    document = json.loads((FIXTURES / "inputs/pos_refund_otp.json").read_text())
    results: list[Any] = []

    def decide() -> None:
        for _ in range(50):
            results.append(engine.evaluate_sync(DECISION, document)["step_up"])

    threads = [threading.Thread(target=decide) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == [{"acr": "phr", "max_age": 900}] * 200


async def test_async_interface_returns_the_decision() -> None:
    engine = EmbeddedEngine(load_policy_set(POLICIES), compiled_refs=(DECISION,))
    document = json.loads((FIXTURES / "inputs/pos_refund_otp.json").read_text())
    decision = await engine.evaluate(DECISION, document)
    assert decision["allow"] is False
    assert decision["http_status"] == 403
    await engine.close()


def test_test_runner_reports_pass_fail_error_with_location_and_prints() -> None:
    report = run_tests(load_policy_set(BAD / "failing_test"), coverage=True)
    outcomes = {r.ref.rsplit(".", 1)[1]: r for r in report.results}
    assert outcomes["test_small_amount_is_allowed"].outcome == "PASS"
    failed = outcomes["test_large_amount_is_allowed"]
    assert (failed.outcome, failed.line, failed.message) == ("FAIL", 9, "undefined")
    assert failed.file.endswith("failing_test/limits_test.rego")
    assert failed.prints == (f"{failed.file}:10: amount under test: 500",)
    errored = outcomes["test_type_error_is_reported"]
    assert errored.outcome == "ERROR"
    assert "divide by zero" in errored.message
    coverage = {Path(c.file).name: c for c in report.coverage}
    assert coverage["limits.rego"].covered


def test_shipped_policy_tests_all_pass_and_number_at_least_40() -> None:
    report = run_tests(load_policy_set(POLICIES))
    assert not report.failed, [f"{r.file}:{r.line} {r.ref}: {r.message}" for r in report.failed]
    assert len(report.results) >= 40


def test_engine_errors_capture_no_stack_backtrace_under_rust_backtrace() -> None:
    """With RUST_BACKTRACE=1 in the environment (a common developer setting),
    every regorus error unwound and captured the stack; loading a policy makes
    dozens of them (each builtin and entry point is probed), ~0.17 s a load.
    Importing the engine turns library backtraces off, unless asked for by name."""
    probe = (
        "import policy_engine.embedded, regorus\n"
        "try:\n"
        "    regorus.Engine().eval_query('x := upper(null)')\n"
        "except Exception as error:\n"
        "    print(repr(str(error)))\n"
    )
    env = {**os.environ, "RUST_BACKTRACE": "1"}
    env.pop("RUST_LIB_BACKTRACE", None)
    run = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True)
    assert "expects string argument" in run.stdout, run.stderr
    assert "Stack backtrace" not in run.stdout
    # Asked for by name, they are still there.
    env["RUST_LIB_BACKTRACE"] = "1"
    run = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True)
    assert "Stack backtrace" in run.stdout


def test_the_revision_is_of_the_content_not_of_the_path_it_was_loaded_from(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two replicas mounting one policy set at different paths (or a path given
    relative, absolute, with ..) log one revision; a changed rule another."""
    for name in ("a", "b/c"):
        shutil.copytree(POLICIES, tmp_path / name)
    monkeypatch.chdir(tmp_path / "b")
    spellings = [tmp_path / "a", Path("c"), Path("../a"), tmp_path / "b" / "c"]
    revisions = {load_policy_set(path).revision for path in spellings}
    assert len(revisions) == 1
    decision = tmp_path / "a/gateway/decision.rego"
    decision.write_text(decision.read_text().replace("max_age", "max_age ", 1))
    assert load_policy_set(tmp_path / "a").revision not in revisions


def test_a_module_saved_with_a_byte_order_mark_loads_as_on_opa(tmp_path: Path) -> None:
    """Editors on Windows save one; regorus called it "invalid character" at 1:1
    where OPA reads past it."""
    from policy_engine.opa_golib import GoOpaEngine

    text = b"\xef\xbb\xbfpackage t\n\nimport rego.v1\n\nx := 1\n"
    policy = tmp_path / "p"
    policy.mkdir()
    (policy / "t.rego").write_bytes(text)
    bundle = make_bundle(tmp_path / "b.tar.gz", {"t/t.rego": text})
    for source in (policy, bundle):
        policy_set = load_policy_set(source)
        assert EmbeddedEngine(policy_set).evaluate_sync("data.t.x", {}) == 1
        assert GoOpaEngine(policy_set).value("data.t.x") == 1


def test_a_module_over_the_engines_size_limit_is_named_once(tmp_path: Path) -> None:
    policy = tmp_path / "p"
    policy.mkdir()
    lines = "".join(f"r{n} := {n}\n" for n in range(20_001))
    (policy / "big.rego").write_text(f"package t\n\nimport rego.v1\n\n{lines}")
    (problem,) = load_problems(policy)
    assert problem == f"{policy}/big.rego: exceeds maximum allowed line count 20000"


@pytest.mark.parametrize(
    "manifest",
    [{"rego_version": 0}, {"file_rego_versions": {"/t/t.rego": 0}}],
    ids=["bundle", "one-file"],
)
def test_a_bundle_of_rego_v0_is_named_for_its_version_not_a_syntax_error(
    tmp_path: Path, manifest: dict[str, object]
) -> None:
    v0 = b'package t\n\ndeny[msg] { msg := "no" }\n'
    files = {".manifest": json.dumps(manifest).encode(), "t/t.rego": v0}
    bundle = make_bundle(tmp_path / "b.tar.gz", files)
    problems = load_problems(bundle)
    assert len(problems) == 1 and problems[0].startswith(f"{bundle}:.manifest: ")
    assert "is 0: only Rego v1 is supported" in problems[0]
    assert "opa fmt --write --v0-v1" in problems[0]


def test_a_load_after_an_edit_reads_the_edited_modules_not_the_analysis_kept_for_the_old(
    tmp_path: Path,
) -> None:
    """The analysis of a set's modules (shapes, import problems, compiled-VM
    divergences) is kept for the next load of the same texts: an edit of one
    module, a rule added or a VM divergence written, must be seen by the next
    load, and the data, which the analysis never holds, is checked each time."""
    shutil.copytree(POLICIES, tmp_path / "p")
    module = tmp_path / "p/gateway/memo.rego"
    original = module.read_text()
    kept = compile_policy(load_policy_set(tmp_path / "p"))
    assert "data.portcullis.gateway.edited" not in kept.rule_refs()
    module.write_text(
        original + "\nedited if {\n\tx := input.nothing\n\tnot x\n}\n"  # a VM divergence
    )
    edited = compile_policy(load_policy_set(tmp_path / "p"))
    assert "data.portcullis.gateway.edited" in edited.rule_refs()
    assert edited.vm_divergences_reached(["data.portcullis.gateway.edited"])
    assert not kept.vm_divergences_reached(["data.portcullis.gateway.decision"])
    # The same texts elsewhere (a copy of the set): their own files are named.
    shutil.copytree(tmp_path / "p", tmp_path / "copy")
    copied = compile_policy(load_policy_set(tmp_path / "copy"))
    (divergence,) = copied.vm_divergences_reached(["data.portcullis.gateway.edited"])
    assert divergence.file == str(tmp_path / "copy/gateway/memo.rego")
    assert all(shape.file.startswith(str(tmp_path / "copy")) for shape in copied.shapes)
    assert all(shape.file.startswith(str(tmp_path / "p")) for shape in edited.shapes)
    module.write_text(original)
    again = compile_policy(load_policy_set(tmp_path / "p"))
    assert "data.portcullis.gateway.edited" not in again.rule_refs()
    (tmp_path / "p/data/clash.yaml").write_text("portcullis: {gateway: {decision: 1}}\n")
    with pytest.raises(PolicyLoadError, match="conflict"):
        compile_policy(load_policy_set(tmp_path / "p"))
