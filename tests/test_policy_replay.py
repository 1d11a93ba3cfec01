"""`portcullis policy replay` on a decision log written by a real gateway run."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import re
import time
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from portcullis.cli import main
from portcullis.replay.output import markdown
from portcullis.replay.output import text as text_output
from portcullis.replay.output.describe import verdict
from tests.conftest import FIXTURES, POLICIES
from tests.decision_traffic import Recorded, by_request_id, record_traffic, refunds_candidate

SCHEMA = json.loads(
    (Path(__file__).resolve().parent.parent / "portcullis/replay/report.schema.json").read_text()
)
ERRORING = FIXTURES / "replay/erroring"
BROKEN = FIXTURES / "replay/broken"
# The traffic's refund callers: who signed in 10 minutes ago (allowed under
# max_age 900, not under 300), and who can't pass either way.
TEN_MINUTES = {"store-017-ten-min", "store-042-ten-min"}
STEP_UP_EITHER_WAY = {"store-042-stale", "store-099-otp"}


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> Recorded:
    """300 mixed requests through a real gateway; its sealed, signed log."""
    return asyncio.run(record_traffic(tmp_path_factory.mktemp("traffic"), 300))


@pytest.fixture(scope="module")
def refunds_300(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The pull request of the README's worked example: refunds need sign-in within 300 s."""
    return refunds_candidate(tmp_path_factory.mktemp("candidate"))


def replay(
    capsys: pytest.CaptureFixture[str], recorded: Recorded, *args: str, verify: bool = True
) -> tuple[int, dict[str, Any], str]:
    """Run the command with a JSON report on stdout; (exit code, report, stderr)."""
    command = ["policy", "replay", "--log", str(recorded.log), *args]
    if verify and "--no-verify" not in args:
        command += ["--key", str(recorded.key)]
    if "--output" not in args:
        command += ["--output", "json"]
    code = main(command)
    out, err = capsys.readouterr()
    report = json.loads(out) if out.startswith("{") else {}
    if report:
        jsonschema.validate(report, SCHEMA)
    return code, report, err


def logged_policy_decisions(recorded: Recorded) -> int:
    return sum(
        1 for line in recorded.log.read_text().splitlines() if '"path":"portcullis/gateway/' in line
    )


def test_same_policy_replays_with_zero_changes(
    capsys: pytest.CaptureFixture[str], recorded: Recorded
) -> None:
    code, report, _ = replay(capsys, recorded, "--policy", str(POLICIES))
    assert code == 0
    totals = report["totals"]
    assert totals["replayed"] == logged_policy_decisions(recorded) > 250
    assert totals["changed"] == 0 and totals["unchanged"] == totals["replayed"]
    assert report["verification"]["verified"] and report["verification"]["sealed"]
    assert report["baseline"]["source"] == "log"


def test_gateway_refusals_are_counted_not_replayed(
    capsys: pytest.CaptureFixture[str], recorded: Recorded
) -> None:
    _, report, _ = replay(capsys, recorded, "--policy", str(ERRORING))
    skipped = report["not_replayed"]
    # 12 requests to no route and 12 forged tokens: no policy decided them, so no
    # candidate can change them; the erroring candidate would otherwise show them.
    assert skipped["gateway_refusals_by_rule"] == {
        "gateway.invalid_token": 12,
        "gateway.no_route": 12,
    }
    assert report["totals"]["replayed"] + skipped["gateway_refusals"] == 300


def test_gateway_refusals_are_counted_within_the_selection(
    capsys: pytest.CaptureFixture[str], recorded: Recorded
) -> None:
    """--app pos counted every app's refusals beside pos' decisions."""
    records = [json.loads(line) for line in recorded.log.read_text().splitlines()]
    refusals = [r for r in records if r.get("path") == "gateway"]
    of_pos = sum(1 for r in refusals if r.get("labels", {}).get("app") == "pos")
    assert 0 < of_pos < len(refusals)
    _, report, _ = replay(capsys, recorded, "--policy", str(POLICIES), "--app", "pos")
    assert report["not_replayed"]["gateway_refusals"] == of_pos


def test_refunds_max_age_300_flips_ten_minute_refunds_to_step_up(
    capsys: pytest.CaptureFixture[str], recorded: Recorded, refunds_300: Path
) -> None:
    code, report, _ = replay(capsys, recorded, "--policy", str(refunds_300), "--samples", "50")
    assert code == 1
    sent = by_request_id(recorded.sent)
    refunds = [s for s in recorded.sent if s.path.startswith("/pos/refunds/")]
    flips = report["changes"]["allow-to-deny"]
    expected = [s for s in refunds if s.caller in TEN_MINUTES]
    assert flips["count"] == len(expected) > 0
    assert all(s.status == 200 for s in expected)
    for sample in flips["samples"]:
        assert sent[sample["request_id"]].status == 200  # it really was allowed
        assert sample["before"]["allow"] is True and sample["after"]["allow"] is False
        assert sample["after"]["step_up"] == {"acr": "phr", "max_age": 300}
        assert sample["identity"]["subject"] in TEN_MINUTES
        assert 300 < sample["identity"]["auth_age_s"] <= 900
    breakdown = flips["breakdown"]
    assert breakdown["step_up"] == [{"value": "acr=phr max_age=300", "count": len(expected)}]
    assert {row["value"] for row in breakdown["group"]} == {"store", "store-017", "store-042"}
    assert breakdown["route"] == [{"value": "/pos/refunds/", "count": len(expected)}]
    step_up = report["changes"]["step-up"]
    assert step_up["count"] == len([s for s in refunds if s.caller in STEP_UP_EITHER_WAY])
    for sample in step_up["samples"]:
        assert sample["before"]["step_up"] == {"acr": "phr", "max_age": 900}
        assert sample["after"]["step_up"] == {"acr": "phr", "max_age": 300}
    assert report["totals"]["changed"] == flips["count"] + step_up["count"]
    assert report["blocking"] == {"allow-to-deny": flips["count"], "step-up": step_up["count"]}


def test_allow_change_accepts_the_named_kinds_only(
    capsys: pytest.CaptureFixture[str], recorded: Recorded, refunds_300: Path
) -> None:
    code, report, _ = replay(
        capsys, recorded, "--policy", str(refunds_300), "--allow-change", "allow-to-deny"
    )
    assert code == 1 and list(report["blocking"]) == ["step-up"]
    code, report, _ = replay(
        capsys, recorded, "--policy", str(refunds_300),
        "--allow-change", "allow-to-deny", "--allow-change", "step-up",
    )  # fmt: skip
    assert code == 0 and report["blocking"] == {} and report["totals"]["changed"] > 0


def test_baseline_policy_is_compared_instead_of_the_log(
    capsys: pytest.CaptureFixture[str], recorded: Recorded, refunds_300: Path
) -> None:
    # Going back from 300 s to 900 s: the same refunds flip the other way.
    code, report, _ = replay(
        capsys, recorded, "--policy", str(POLICIES), "--baseline-policy", str(refunds_300)
    )
    assert code == 1
    assert report["baseline"]["source"] == str(refunds_300)
    assert report["changes"]["deny-to-allow"]["count"] > 0
    assert report["changes"]["allow-to-deny"]["count"] == 0
    assert report["latency"]["baseline"]["measured"] == "replayed"


def test_a_baseline_that_fails_is_said_in_text_and_markdown_too(
    capsys: pytest.CaptureFixture[str], recorded: Recorded, tmp_path: Path
) -> None:
    """Only the JSON said so (totals.baseline_errors): a reviewer reading the PR
    comment took the baseline's errors for the candidate's changes."""
    text, md = tmp_path / "r.txt", tmp_path / "r.md"
    main(["policy", "replay", "--log", str(recorded.log), "--key", str(recorded.key),
          "--policy", str(POLICIES), "--baseline-policy", str(ERRORING),
          "--output", "text", "--output-file", str(text),
          "--output", "markdown", "--output-file", str(md)])  # fmt: skip
    capsys.readouterr()
    _, report, _ = replay(capsys, recorded, "--policy", str(POLICIES),
                             "--baseline-policy", str(ERRORING))  # fmt: skip
    failed = report["totals"]["baseline_errors"]
    assert failed > 0
    said = f"the baseline policy failed on {failed} decisions"
    assert said in text.read_text() and said in md.read_text()


def test_candidate_that_errors_is_reported_as_errors_and_fails(
    capsys: pytest.CaptureFixture[str], recorded: Recorded
) -> None:
    every_kind = [arg for kind in ("allow-to-deny", "deny-to-allow", "step-up", "reasons")
                  for arg in ("--allow-change", kind)]  # fmt: skip
    code, report, _ = replay(capsys, recorded, "--policy", str(ERRORING), *every_kind)
    assert code == 1  # errors can't be allowed
    errors = report["changes"]["error"]
    by_app = {row["value"]: row["count"] for row in report["totals"]["by_app"]}
    assert errors["count"] == by_app["pos"] + by_app["analytics"] > 0
    assert {row["value"] for row in errors["breakdown"]["app"]} == {"pos", "analytics"}
    for sample in errors["samples"]:
        assert sample["error"] and sample["after"]["allow"] is False  # failed closed
    assert report["blocking"] == {"error": errors["count"]}


def test_candidate_answering_a_malformed_decision_counts_as_errors(
    capsys: pytest.CaptureFixture[str], recorded: Recorded, tmp_path: Path
) -> None:
    """`{"allow": "true"}` used to count as a plain deny: hundreds of allow-to-deny
    flips "(no reason)" instead of the policy bug it is."""
    odd = tmp_path / "odd"
    odd.mkdir()
    (odd / "decision.rego").write_text(
        'package portcullis.gateway\nimport rego.v1\ndecision := {"allow": "true"}\n'
    )
    code, report, _ = replay(capsys, recorded, "--policy", str(odd))
    assert code == 1
    assert report["totals"]["by_kind"]["error"] == report["totals"]["replayed"] > 0
    sample = report["changes"]["error"]["samples"][0]
    assert sample["error"] == "policy returned allow 'true', not true or false"


def test_candidate_that_does_not_load_is_a_usage_error(
    capsys: pytest.CaptureFixture[str], recorded: Recorded
) -> None:
    code, report, err = replay(capsys, recorded, "--policy", str(BROKEN))
    assert code == 2 and not report
    assert "broken/decision.rego:5:1" in err


def test_tampered_log_is_refused(
    capsys: pytest.CaptureFixture[str], recorded: Recorded, tmp_path: Path
) -> None:
    lines = recorded.log.read_text().splitlines(keepends=True)
    victim = next(
        i for i, line in enumerate(lines)
        if '"allow":false' in line and '"path":"portcullis/gateway/decision"' in line
    )  # fmt: skip
    lines[victim] = lines[victim].replace('"allow":false', '"allow":true', 1)
    tampered = tmp_path / "decisions.log"
    tampered.write_text("".join(lines))
    forged = Recorded(tmp_path, tampered, recorded.key, recorded.sent, "")
    code, report, err = replay(capsys, forged, "--policy", str(POLICIES))
    assert code == 2 and not report
    assert "refusing to replay a tampered log" in err
    assert f"decisions.log:{victim + 1}" in err
    # --no-verify replays it, and every output says it wasn't verified.
    code, report, _ = replay(capsys, forged, "--policy", str(POLICIES), "--no-verify")
    assert report["verification"]["verified"] is False
    assert report["changes"]["allow-to-deny"]["count"] == 1  # the forged allow
    code = main(["policy", "replay", "--log", str(tampered), "--policy", str(POLICIES),
                 "--no-verify"])  # fmt: skip
    assert "NOT VERIFIED" in capsys.readouterr().out


def test_an_unverified_replay_says_so_in_the_verdict_of_reports_written_to_files(
    capsys: pytest.CaptureFixture[str], recorded: Recorded, tmp_path: Path
) -> None:
    """With every report in a file, the verdict on stderr is all a CI log shows: it
    said a bare PASS for a log nobody checked."""
    report = tmp_path / "r.json"
    code = main(["policy", "replay", "--log", str(recorded.log), "--policy", str(POLICIES),
                 "--no-verify", "--output", "json", "--output-file", str(report)])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 0 and "PASS: no change" in err and "NOT VERIFIED" in err


def _after_the_check(monkeypatch: pytest.MonkeyPatch, change: Any) -> None:
    """Run ``change()`` between the chain check and the replay's read of the log."""
    from portcullis.replay import run as replay_run

    real = replay_run.verify_log

    def verify_then_change(*args: Any, **kwargs: Any) -> Any:
        result = real(*args, **kwargs)
        change()
        return result

    monkeypatch.setattr(replay_run, "verify_log", verify_then_change)


def test_lines_written_after_the_check_are_not_replayed(
    capsys: pytest.CaptureFixture[str], recorded: Recorded, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """A live log grows while it is replayed (or someone appends to it): what was
    appended after the chain check was replayed under "verified, chain intact"."""
    live = dataclasses.replace(recorded, log=tmp_path / "live.log")
    live.log.write_bytes(recorded.log.read_bytes())
    decision = next(line for line in recorded.log.read_text().splitlines()
                    if '"path":"portcullis/gateway/decision"' in line)  # fmt: skip
    appended = json.dumps({**json.loads(decision), "decision_id": "appended-after-the-check"})
    _after_the_check(monkeypatch, lambda: live.log.open("a").write(appended + "\n"))
    code, report, _ = replay(capsys, live, "--policy", str(POLICIES), "--samples", "1000")
    assert code == 0 and report["verification"]["verified"] is True
    assert report["totals"]["replayed"] == logged_policy_decisions(recorded)


def test_a_log_edited_between_the_check_and_the_replay_is_refused(
    capsys: pytest.CaptureFixture[str], recorded: Recorded, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """Edited in place, same length, after verify_log read it: the replay would
    report on bytes nobody checked. Refused: exit 2, no report."""
    edited = dataclasses.replace(recorded, log=tmp_path / "edited.log")
    edited.log.write_bytes(recorded.log.read_bytes())

    def flip() -> None:
        data = edited.log.read_bytes()
        at = data.index(b'"allow":false')
        edited.log.write_bytes(data[:at] + b'"allow":true ' + data[at + len(b'"allow":false') :])

    _after_the_check(monkeypatch, flip)
    code, report, err = replay(capsys, edited, "--policy", str(POLICIES))
    assert code == 2 and not report
    assert "changed after it was verified" in err


def test_a_forged_tail_is_refused_with_a_head_kept_elsewhere(
    capsys: pytest.CaptureFixture[str], recorded: Recorded, tmp_path: Path
) -> None:
    """The tail after the last signature is vouched for by nothing: drop the final
    close and append a forged allow linked to the line before, and the chain still
    checks. The gateway's signed head, kept elsewhere (/audit/head, a SIEM), is what
    the log must reach: with --head the replay refuses it."""
    from gateway.audit.chain import line_hash

    lines = recorded.log.read_bytes().splitlines()
    head = tmp_path / "head.json"
    head.write_bytes(lines[-1])  # the close signature, as /audit/head served it
    decision = json.loads(next(line for line in lines if b'"path":"portcullis/gateway/' in line))
    kept = lines[:-4]  # the seal and the last events gone
    forged = {**decision, "decision_id": "forged", "seq": json.loads(kept[-1])["seq"] + 1,
              "prev_hash": line_hash(kept[-1])}  # fmt: skip
    cut = dataclasses.replace(recorded, log=tmp_path / "cut.log")
    cut.log.write_bytes(b"\n".join([*kept, json.dumps(forged).encode()]) + b"\n")
    # Not caught alone: only not replayed unless asked for (see the tests below).
    code, report, _ = replay(capsys, cut, "--policy", str(POLICIES), "--allow-unsigned-tail")
    assert code in (0, 1) and report["verification"]["unsigned_tail"] > 0
    code, report, err = replay(capsys, cut, "--policy", str(POLICIES), "--head", str(head))
    assert code == 2 and not report
    assert "refusing to replay a tampered log" in err and "signed a head at seq" in err
    code, report, err = replay(capsys, recorded, "--policy", str(POLICIES), "--head", str(head))
    assert code == 0 and any(
        "reaches the outside head" in n for n in report["verification"]["notes"]
    )


def test_events_chained_onto_a_genuine_signed_start_are_not_evidence(
    capsys: pytest.CaptureFixture[str], recorded: Recorded, tmp_path: Path, refunds_300: Path
) -> None:
    """The gateway's signed start record, then 50 allows anyone can chain onto it with
    SHA-256: "verified ... chain intact", and a candidate that fails on the real log
    passed on them. Nothing vouches for events after the last signature."""
    from gateway.audit.chain import line_hash

    lines = recorded.log.read_bytes().splitlines()
    assert json.loads(lines[0])["reason"] == "start"
    allowed = json.loads(next(line for line in lines if b'"path":"portcullis/gateway/' in line
                              and b'"allow":true' in line and b'"app":"wms"' in line))  # fmt: skip
    forged = [lines[0]]
    for seq in range(1, 51):
        event = {**allowed, "seq": seq, "prev_hash": line_hash(forged[-1]),
                 "decision_id": f"forged-{seq}"}  # fmt: skip
        forged.append(json.dumps(event, separators=(",", ":")).encode())
    log = dataclasses.replace(recorded, log=tmp_path / "forged.log")
    log.log.write_bytes(b"\n".join(forged) + b"\n")
    code, report, err = replay(capsys, log, "--policy", str(refunds_300))
    assert code == 2 and not report and "PASS" not in err
    assert "no decision is covered by a signature" in err and ": 50 decisions selected" in err
    # Asked for, they are replayed, and every output says they are unsigned.
    text = tmp_path / "r.txt"
    outputs = ["--output", "json", "--output", "text", "--output-file", str(text)]
    code, report, err = replay(
        capsys, log, "--policy", str(refunds_300), "--allow-unsigned-tail", *outputs
    )
    assert code == 0 and report["totals"]["replayed"] == 50
    assert report["verification"]["unsigned_tail_replayed"] is True
    assert "INCLUDES 50 UNSIGNED EVENTS" in text.read_text()


def test_a_log_tampered_at_two_lines_is_refused_naming_one_more_problem_in_the_singular(
    capsys: pytest.CaptureFixture[str], recorded: Recorded, tmp_path: Path
) -> None:
    """Two modified lines read "(and 1 more problems)"."""
    lines = recorded.log.read_text().splitlines(keepends=True)
    victims = [
        i for i, line in enumerate(lines)
        if '"allow":false' in line and '"path":"portcullis/gateway/decision"' in line
    ][:2]  # fmt: skip
    for victim in victims:
        lines[victim] = lines[victim].replace('"allow":false', '"allow":true', 1)
    tampered = tmp_path / "decisions.log"
    tampered.write_text("".join(lines))
    forged = Recorded(tmp_path, tampered, recorded.key, recorded.sent, "")
    code, _, err = replay(capsys, forged, "--policy", str(POLICIES))
    assert code == 2 and f"decisions.log:{victims[0] + 1}" in err
    assert "[modified] (and 1 more problem)\n" in err, err


def test_replay_messages_count_one_decision_or_event_in_the_singular(
    capsys: pytest.CaptureFixture[str], recorded: Recorded, tmp_path: Path
) -> None:
    """A count of one read "the 1 decisions selected", "1 decisions in the logs",
    "1 events after the last signature", "failed on 1 decisions", "1 changed
    decisions had", "PASS: 1 changes" and "INCLUDES 1 UNSIGNED EVENTS"."""
    from gateway.audit.chain import line_hash

    lines = recorded.log.read_bytes().splitlines()
    allowed = json.loads(next(line for line in lines if b'"path":"portcullis/gateway/' in line
                              and b'"allow":true' in line and b'"app":"wms"' in line))  # fmt: skip
    forged = {**allowed, "seq": 1, "prev_hash": line_hash(lines[0]), "decision_id": "forged"}
    log = dataclasses.replace(recorded, log=tmp_path / "one.log")
    log.log.write_bytes(lines[0] + b"\n" + json.dumps(forged).encode() + b"\n")
    code, _, err = replay(capsys, log, "--policy", str(POLICIES))
    assert code == 2 and "no decision is covered by a signature: 1 decision selected," in err
    code, _, err = replay(capsys, log, "--policy", str(POLICIES), "--app", "wsm")
    assert code == 2 and "matched the selection (1 decision in the logs, 1 of other apps" in err
    text = tmp_path / "r.txt"
    outputs = ["--output", "json", "--output", "text", "--output-file", str(text)]
    code, report, _ = replay(
        capsys, log, "--policy", str(POLICIES), "--allow-unsigned-tail", *outputs
    )
    assert code == 0 and "INCLUDES 1 UNSIGNED EVENT:" in text.read_text()
    notes = report["verification"]["notes"]
    assert any(note.startswith("1 event after the last signature, not yet") for note in notes)
    # The counts of the report's other sentences, at one.
    _, document, _ = replay(capsys, recorded, "--policy", str(POLICIES),
                            "--baseline-policy", str(ERRORING))  # fmt: skip
    document["totals"].update(baseline_errors=1, changed=1, changed_with_masked_inputs=1)
    document["blocking"] = {}
    document["totals"]["replayed"] = 1
    assert "Rate: 1 decision replayed in " in text_output.render(document)
    assert "**1** decision replayed from" in markdown.render(document)
    for render in (text_output.render, markdown.render):
        said = render(document)
        assert "failed on 1 decision: each counts" in said, said
        assert "1 changed decision had masked" in said and "PASS: 1 change, all allowed" in said
    document["blocking"] = {"error": 1}
    assert "FAIL: 1 change not allowed (error 1)" in text_output.render(document)


def test_a_live_log_replays_its_signed_part_and_counts_the_unsigned_tail(
    capsys: pytest.CaptureFixture[str], recorded: Recorded, tmp_path: Path
) -> None:
    """A log whose last events no signature covers yet (a running gateway, or a forged
    tail): those are counted, not replayed, and the report says so."""
    from gateway.audit.chain import line_hash

    written = tmp_path / "decisions.log"
    asyncio.run(_rotated(recorded, written, runs=1, sign_every=50))
    lines = written.read_bytes().splitlines()
    kept = lines[:-1]  # the final seal gone: the events since the last signature are unsigned
    decision = json.loads(next(line for line in lines if b'"path":"portcullis/gateway/' in line
                               and b'"allow":false' in line))  # fmt: skip
    forged = {**decision, "result": {**decision["result"], "allow": True, "http_status": 200,
              "reasons": [], "step_up": None}, "decision_id": "forged",
              "seq": json.loads(kept[-1])["seq"] + 1, "prev_hash": line_hash(kept[-1])}  # fmt: skip
    live = dataclasses.replace(recorded, log=tmp_path / "live.log")
    live.log.write_bytes(b"\n".join([*kept, json.dumps(forged).encode()]) + b"\n")
    code, report, _ = replay(capsys, live, "--policy", str(POLICIES))
    tail = report["verification"]["unsigned_tail"]
    assert code == 0 and tail > 0 and report["verification"]["unsigned_tail_replayed"] is False
    assert report["not_replayed"]["unsigned_tail"] > 0 and report["totals"]["changed"] == 0
    assert report["totals"]["replayed"] + report["not_replayed"]["unsigned_tail"] == (
        logged_policy_decisions(recorded) + 1
    )
    code, report, _ = replay(capsys, live, "--policy", str(POLICIES), "--allow-unsigned-tail")
    assert code == 1 and report["changes"]["allow-to-deny"]["count"] == 1  # the forged allow


def test_log_verified_with_the_wrong_key_is_refused_naming_both_keys(
    capsys: pytest.CaptureFixture[str], recorded: Recorded
) -> None:
    """Another gateway's key (the CI secret pointing at the wrong one) says so, as
    `audit verify` does, rather than calling an intact log tampered."""
    other = FIXTURES / "decision_log/other_key.pem"
    code = main(["policy", "replay", "--log", str(recorded.log), "--policy", str(POLICIES),
                 "--key", str(other)])  # fmt: skip
    assert code == 2
    error = capsys.readouterr().err
    assert "this log is signed by key '" in error and "not the key given (key id '" in error
    assert "tampered" not in error


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--key", "KEY", "--seed", "7"], "--seed is the seed of --sample's sample"),
        (["--no-verify", "--after", "a" * 64], "--after is where the verified chain continues"),
    ],
    ids=["seed-without-sample", "after-without-verify"],
)
def test_an_option_that_would_be_ignored_is_refused(
    capsys: pytest.CaptureFixture[str], recorded: Recorded, options: list[str], message: str
) -> None:
    """Accepted, it would do nothing while the report looked as asked for."""
    options = [str(recorded.key) if option == "KEY" else option for option in options]
    code = main(["policy", "replay", "--log", str(recorded.log), "--policy", str(POLICIES),
                 *options])  # fmt: skip
    assert code == 2
    assert message in capsys.readouterr().err


def test_app_and_time_selection(
    capsys: pytest.CaptureFixture[str], recorded: Recorded, refunds_300: Path
) -> None:
    code, report, _ = replay(capsys, recorded, "--policy", str(refunds_300), "--app", "wms")
    assert code == 0 and report["totals"]["changed"] == 0
    assert [row["value"] for row in report["totals"]["by_app"]] == ["wms"]
    assert report["not_replayed"]["other_apps"] > 0
    code, report, _ = replay(
        capsys, recorded, "--policy", str(refunds_300), "--until", "2000-01-01"
    )
    assert code == 2 and not report  # nothing replayed: no report that reads as a pass
    code, report, _ = replay(
        capsys, recorded, "--policy", str(refunds_300), "--since", "2000-01-01T00:00Z"
    )
    assert report["totals"]["replayed"] == logged_policy_decisions(recorded)


def test_sample_replays_a_fixed_number_reproducibly(
    capsys: pytest.CaptureFixture[str], recorded: Recorded, refunds_300: Path
) -> None:
    runs = [
        replay(capsys, recorded, "--policy", str(refunds_300), "--sample", "40")[1]
        for _ in range(2)
    ]
    assert runs[0]["totals"]["replayed"] == 40
    assert runs[0]["not_replayed"]["not_sampled"] == logged_policy_decisions(recorded) - 40
    assert runs[0]["changes"] == runs[1]["changes"]


def test_text_and_markdown_outputs_to_files(
    capsys: pytest.CaptureFixture[str], recorded: Recorded, refunds_300: Path, tmp_path: Path
) -> None:
    text, md = tmp_path / "report.txt", tmp_path / "report.md"
    code = main([
        "policy", "replay", "--log", str(recorded.log), "--policy", str(refunds_300),
        "--key", str(recorded.key), "--output", "text", "--output-file", str(text),
        "--output", "markdown", "--output-file", str(md),
    ])  # fmt: skip
    assert code == 1
    assert "FAIL:" in capsys.readouterr().err
    assert "allow -> deny" in text.read_text() and "decisions/s" in text.read_text()
    body = md.read_text()
    assert body.startswith("### ❌ Policy replay: FAIL")
    assert "| allow -> deny | " in body and "<details>" in body


def test_an_output_file_that_cannot_be_written_is_exit_2_and_named(
    capsys: pytest.CaptureFixture[str], recorded: Recorded, tmp_path: Path
) -> None:
    target = tmp_path / "report.json"
    target.mkdir()
    code = main([
        "policy", "replay", "--log", str(recorded.log), "--policy", str(POLICIES),
        "--key", str(recorded.key), "--output", "json", "--output-file", str(target),
    ])  # fmt: skip
    assert code == 2
    err = capsys.readouterr().err
    assert f"portcullis policy replay: {target}: the report can't be written: Is a directory" in err
    assert "PASS" not in err


@pytest.mark.parametrize("beside", ["head", "cursor", "gzip", "opa-copy", "the-log-again"])
def test_a_file_beside_the_log_given_as_a_log_is_named_with_what_to_give_instead(
    capsys: pytest.CaptureFixture[str], recorded: Recorded, tmp_path: Path, beside: str
) -> None:
    """`--log logs/decisions.log*` also passes decisions.log.head, sink cursors and
    logrotate's .gz files: replay stopped at "decisions.log.head:1: record has no
    chain fields". Each is named for what it is, with what to give instead."""
    import gzip

    log = recorded.log
    if beside == "head":
        given = log.with_name(log.name + ".head")
        assert given.is_file()
        expected = f"{given}: the gateway's record of where the chain stands, not a decision log"
        advice = f"give the log ({log}) and its rotated files; this file can go to --head"
    elif beside == "cursor":
        given = tmp_path / "decisions.log.sink-siem.cursor"
        given.write_text('{"inode": 1, "offset": 0}\n')
        expected = f"{given}: the shipping cursor of sink 'siem', not a decision log"
        advice = f"give the log ({tmp_path / 'decisions.log'}) and its rotated files"
    elif beside == "gzip":
        given = tmp_path / "decisions.log.2.gz"
        given.write_bytes(gzip.compress(log.read_bytes()))
        expected = f"{given}: compressed (gzip)"
        advice = "unpack it (gunzip -k) and give that file"
    elif beside == "opa-copy":  # what a file sink in the opa format writes
        from gateway.audit.chain import line_hash
        from gateway.audit.shipping.formats import opa

        given = tmp_path / "copy.jsonl"
        lines = log.read_bytes().splitlines()
        given.write_text("".join(json.dumps(opa.format(json.loads(x), line_hash(x))) + "\n"
                                 for x in lines))  # fmt: skip
        what = "a sink's copy of the log (its records carry their own hash), not the decision log"
        expected = f"{given}: {what}"
        advice = "give the gateway's log; this file can go to --head"
    else:  # read twice, the chain seemed to start again in the middle: "tampered"
        given = log.parent / ".." / log.parent.name / log.name
        expected = f"{given}: given twice (also as {log})"
        advice = ""
    code = main([
        "policy", "replay", "--log", str(log), "--log", str(given), "--policy", str(POLICIES),
        "--key", str(recorded.key),
    ])  # fmt: skip
    assert code == 2
    err = capsys.readouterr().err
    said = f"{expected}: {advice}" if advice else expected
    assert f"portcullis policy replay: {said}" in err, err
    assert main(["audit", "verify", str(log), str(given), "--key", str(recorded.key)]) == 2
    assert f"error: {said}" in capsys.readouterr().err
    if beside == "head":  # the advice holds: the head file is a --head
        assert main([
            "policy", "replay", "--log", str(log), "--policy", str(POLICIES),
            "--key", str(recorded.key), "--head", str(given),
        ]) == 0  # fmt: skip


def test_markdown_escapes_request_text() -> None:
    sample = {
        "method": "GET", "path": "/pos/x|y<img src=x onerror=alert(1)>`z",
        "identity": {"authenticated": True, "subject": "a|b", "groups": ["<b>"]},
        "before": {"allow": True}, "after": {"allow": False, "http_status": 403,
        "reasons": ["**bold** | cell"], "step_up": None}, "error": None,
    }  # fmt: skip
    document = _document_with(sample)
    rows = [line for line in markdown.render(document).splitlines() if line.startswith("| `GET")]
    assert len(rows) == 1
    row = rows[0]
    # The path stays inside one code span (inert there), its backtick can't end it.
    assert row.startswith("| `GET /pos/x\\|y<img src=x onerror=alert(1)>'z` |")
    assert "<b>" not in row and "**bold**" not in row  # outside code: escaped
    assert row.replace("\\|", "").count("|") == 5  # four cells, nothing split


_HOSTILE = st.text(
    alphabet=st.sampled_from([*"aZ09 @:/.wW|\\`*_~[]<>#-&;", "\r", "\n", "\x1b", "\u2028", "\x00"]),
    max_size=30,
)


@settings(max_examples=400, derandomize=True, deadline=None, database=None)
@given(_HOSTILE)
def test_markdown_escaping_keeps_any_text_in_its_cell_and_inert(text: str) -> None:
    """Outside code: nothing ends the row (\\r did), every | escaped, no @mention,
    no autolink (https://, www.), nothing formats (~~ struck through). In code:
    the same, and no backtick."""
    from portcullis.markdown_escape import cell, code

    for escaped in (cell(text), code(text)):
        assert not re.search("[\x00-\x1f\x7f\u2028\u2029]", escaped)
        assert not re.search(r"(?<!\\)\|", escaped)  # a table splits only at a bare pipe
    inert = cell(text)
    assert not re.search("[@#](?!\u200b)|://|(?i:www)\\.", inert)
    assert not re.search(r"(?<!\\)[~*_<>\[\]`#&]", re.sub(r"\\\\", "", inert))
    assert "`" not in code(text)


# What GitHub links in a comment's rendered text, outside code (docs.github.com,
# "Autolinked references and URLs"; the GFM spec's autolink extension), taken
# broadly: an @ before a name (@user, @org/team, user@SHA, e-mail), a # before a
# number (#1, owner/repo#1), GH-1, a commit SHA (7 to 40 hex digits; owner/repo@SHA
# too), a URL (scheme://, www.).
_GITHUB_AUTOLINK = re.compile(r"@\w|#\w|(?i:gh)-[0-9]|[0-9A-Fa-f]{7}|://|(?i:www)\.")
_REFERENCES = st.lists(
    st.one_of(
        st.sampled_from(["GH-", "gh-", "Gh", "@", "#", "/", "owner/repo", "://", "www.",
                         "WWW.", "e3b0c44298fc1c149afbf4c8996fb92427ae41e4", "\\", "&", " "]),
        st.text(alphabet="0123456789abcdefABCDEF-", max_size=14),
        st.text(max_size=4),
    ),
    max_size=8,
).map("".join)  # fmt: skip


def _as_github_shows(markdown_text: str) -> str:
    """The text a reader sees: CommonMark's backslash escapes removed."""
    return re.sub(r"\\([!-/:-@\[-`{-~])", r"\1", markdown_text)


@pytest.mark.parametrize(
    "reference",
    ["GH-1", "e3b0c44298fc1c149afbf4c8996fb92427ae41e4", "a5c3785", "org/repo#4",
     "jlord/sheetsee.js@a5c3785ed8d6a35868bc169f07e40e889087fd2e", "jlord@a5c3785",
     "www.evil.example", "https://evil.example", "user@example.com", "@octocat"],
)  # fmt: skip
def test_markdown_cells_leave_no_github_reference_live(reference: str) -> None:
    """A request path or claim that GitHub would turn into an issue, commit or user
    link (or a URL) reads the same in the comment but links nothing."""
    from portcullis.markdown_escape import cell

    shown = _as_github_shows(cell(f"/pos/{reference}/x"))
    assert shown.replace("\u200b", "") == f"/pos/{reference}/x"  # reads the same
    assert not _GITHUB_AUTOLINK.search(shown), shown


@settings(max_examples=500, derandomize=True, deadline=None, database=None)
@given(_REFERENCES)
def test_markdown_cells_never_hold_text_github_autolinks(text: str) -> None:
    from portcullis.markdown_escape import cell

    shown = _as_github_shows(cell(text))
    assert not _GITHUB_AUTOLINK.search(shown), shown


def test_markdown_of_hostile_claims_keeps_the_table_and_the_text_report_prints_no_escapes() -> None:
    hostile = "x\r@octocat https://evil.example ~~gone~~\x1b[2J"
    sample = {
        "method": "GET", "path": "/pos/" + hostile,
        "identity": {"authenticated": True, "subject": hostile, "groups": [hostile]},
        "before": {"allow": True}, "after": {"allow": False, "http_status": 403,
        "reasons": [hostile], "step_up": None}, "error": None,
        "where": "l:1", "timestamp": "t", "decision_id": "d",
    }  # fmt: skip
    document = _document_with(sample)
    rendered = markdown.render(document)
    rows = [line for line in rendered.splitlines() if line.startswith("| `GET")]
    assert len(rows) == 1 and "\r" not in rendered and "\x1b" not in rendered
    assert "@octocat" not in rendered.replace("`GET /pos/x @octocat", "")  # only in code
    terminal = text_output.render(document)
    assert "\x1b" not in terminal and "\r" not in terminal
    assert "\\x1b[2J" in terminal and "\\x0d" in terminal  # shown, not acted on


def _document_with(sample: dict[str, Any]) -> dict[str, Any]:
    from portcullis.replay.events import Selection
    from portcullis.replay.report import PolicyInfo, Report

    report = Report(candidate=PolicyInfo("c", "r"), baseline=None, logs=["l"],
                    selection=Selection())  # fmt: skip
    document = report.document()
    document["changes"]["allow-to-deny"]["count"] = 1
    document["changes"]["allow-to-deny"]["samples"] = [sample]
    return document


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--log", "/nonexistent.log", "--no-verify"], "/nonexistent.log: no such file"),
        (["--log", "{log}"], "--key PEM or --jwks"),
        (["--log", "{log}", "--no-verify", "--since", "yesterday"], "not an ISO 8601 time"),
        (["--log", "{log}", "--no-verify", "--since", "2026-02-01", "--until", "2026-01-01"],
         "--since must be before --until"),
        (["--log", "{log}", "--no-verify", "--output", "json", "--output", "text"],
         "only one --output can go to stdout"),
        (["--log", "{log}", "--no-verify", "--allow-change", "error"], "invalid choice"),
        (["--log", "{log}", "--no-verify", "--after", "xyz"],
         "--after 'xyz': not a line hash (64 hex digits)"),
        (["--log", "{log}", "--no-verify", "--timeout-ms", "0"], "milliseconds above 0"),
        (["--log", "{log}", "--no-verify", "--timeout-ms=-5"], "milliseconds above 0"),
        (["--log", "{log}", "--no-verify", "--timeout-ms", "nan"], "milliseconds above 0"),
        (["--log", "{log}", "--no-verify", "--timeout-ms", "inf"], "milliseconds above 0"),
        (["--log", "{log}", "--no-verify", "--head", "{log}"], "--head needs the key"),
        (["--log", "{log}", "--no-verify", "--output", "json", "--output-file", "{log}.out",
          "--output", "markdown", "--output-file", "{log}.out"], "to the same --output-file"),
    ],
)  # fmt: skip
def test_bad_options_are_usage_errors(
    capsys: pytest.CaptureFixture[str], recorded: Recorded, args: list[str], message: str
) -> None:
    argv = ["policy", "replay", "--policy", str(POLICIES)]
    argv += [a.replace("{log}", str(recorded.log)) for a in args]
    try:
        code = main(argv)
    except SystemExit as exit_:  # argparse's own errors
        code = int(exit_.code or 0)
    assert code == 2
    assert message in capsys.readouterr().err


def test_a_log_that_is_not_a_decision_log_is_a_usage_error(
    capsys: pytest.CaptureFixture[str], recorded: Recorded, tmp_path: Path
) -> None:
    other = tmp_path / "notes.txt"
    other.write_text("hello\nworld\n")
    code = main(["policy", "replay", "--log", str(other), "--policy", str(POLICIES),
                 "--key", str(recorded.key)])  # fmt: skip
    assert code == 2
    assert "is not a Portcullis decision log" in capsys.readouterr().err


@pytest.mark.parametrize("content", ["root:x:0:0:root:/root:/bin/bash\n", '{"a": 1}\n{"b": 2}\n'])
def test_a_file_that_is_not_a_decision_log_fails_without_verification_too(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, content: str
) -> None:
    """--no-verify on /etc/passwd, or on JSON lines of something else, replayed
    nothing and said PASS, exit 0: a CI gate pointed at the wrong artifact passed."""
    other = tmp_path / "other.log"
    other.write_text(content)
    code = main(["policy", "replay", "--no-verify", "--log", str(other), "--policy", str(POLICIES)])
    err = capsys.readouterr().err
    assert code == 2 and "not a Portcullis decision log" in err and "PASS" not in err


def test_malformed_logged_values_are_replayed_not_a_crash(
    capsys: pytest.CaptureFixture[str], recorded: Recorded, tmp_path: Path
) -> None:
    """A hand-edited log (read with --no-verify): logged reasons that aren't a
    list, an auth_time of NaN or Infinity (stdlib json reads them). They crashed
    the report with a traceback and exit 1, which a CI gate reads as "the policy
    changes decisions"."""
    lines = recorded.log.read_text().splitlines()
    decisions = [
        n for n, line in enumerate(lines) if '"path":"portcullis/gateway/decision"' in line
    ]
    odd = {decisions[0]: ("reasons", 5), decisions[1]: ("auth_time", float("nan")),
           decisions[2]: ("auth_time", float("inf"))}  # fmt: skip
    for number, (field, value) in odd.items():
        record = json.loads(lines[number])
        if field == "reasons":
            record["result"] = {**record["result"], "allow": False, "reasons": value}
        else:
            record["input"]["identity"]["auth_time"] = value
        lines[number] = json.dumps(record)
    edited = tmp_path / "edited.log"
    edited.write_text("\n".join(lines) + "\n")
    copy = dataclasses.replace(recorded, log=edited)
    code, report, err = replay(capsys, copy, "--policy", str(POLICIES), "--no-verify")
    assert code in (0, 1) and "Traceback" not in err and report
    assert report["totals"]["replayed"] == len(decisions)


def test_reasons_the_log_masked_show_as_masked_not_as_a_malformed_decision(
    capsys: pytest.CaptureFixture[str], recorded: Recorded, tmp_path: Path
) -> None:
    """With decision_log.mask_headers: ["/result/reasons"], a logged allow's reasons
    are the marker, not a list: the samples' "before" said "deny 403: policy
    returned a malformed decision"."""
    lines = []
    for line in recorded.log.read_text().splitlines():
        record = json.loads(line)
        if record.get("path") == "portcullis/gateway/decision":
            record["result"]["reasons"] = "**REDACTED**"
            record["masked"] = [*record.get("masked", []), "/result/reasons"]
        lines.append(json.dumps(record))
    masked = dataclasses.replace(recorded, log=tmp_path / "masked.log")
    masked.log.write_text("\n".join(lines) + "\n")
    _, report, _ = replay(capsys, masked, "--policy", str(ERRORING), "--no-verify")
    samples = report["changes"]["error"]["samples"]
    assert samples and all(s["before"]["reasons"] == ["**REDACTED**"] for s in samples)
    assert any(s["before"]["allow"] is True for s in samples)


def test_reasons_masked_by_the_gateway_are_not_compared_and_the_report_says_so(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, refunds_300: Path
) -> None:
    """A gateway with mask_headers: [..., "/result/reasons"] (a pointer, as the README
    allows) logs "**REDACTED**" for every result's reasons. The shipped policy failed
    replay against its own log: each deny a blocking `reasons` change, explained as
    "a policy reading them saw **REDACTED**" (no policy reads the logged result)."""
    from gateway.audit.redaction import DEFAULT_MASKED_HEADERS
    from gateway.config import DecisionLogConfig

    mask = (*DEFAULT_MASKED_HEADERS, "/result/reasons")
    masking = DecisionLogConfig(tmp_path / "decisions.log", sign_interval=0.5, mask_headers=mask)
    recorded = asyncio.run(record_traffic(tmp_path, 120, decision_log=masking))
    assert '"reasons":"**REDACTED**"' in recorded.log.read_text()
    text = tmp_path / "r.txt"
    code, report, _ = replay(capsys, recorded, "--policy", str(POLICIES), "--output", "json",
                             "--output", "text", "--output-file", str(text))  # fmt: skip
    assert code == 0 and report["totals"]["changed"] == 0
    totals = report["totals"]
    assert totals["masked_results"] == {"reasons": totals["replayed"]} and totals["replayed"] > 80
    assert totals["masked_inputs"] == 0
    said = text.read_text()
    assert "the log masked fields of the logged results" in said and "saw **REDACTED**" not in said
    # What can still be compared still is: the refunds candidate's flips.
    code, report, _ = replay(capsys, recorded, "--policy", str(refunds_300))
    assert code == 1 and report["changes"]["allow-to-deny"]["count"] > 0
    assert report["changes"]["reasons"]["count"] == 0


def stale_validity_candidate(directory: Path) -> Path:
    """The shipped policy whose valid_until_ns runs an hour past every max_age: each
    decision the same, but the gateway's memo would serve allows an hour too long."""
    import shutil

    candidate = directory / "stale"
    shutil.copytree(POLICIES, candidate)
    memo = candidate / "gateway/memo.rego"
    text = memo.read_text()
    assert "* 1000000000)) + 1\n" in text, "the shipped valid_until_ns changed"
    memo.write_text(text.replace("* 1000000000)) + 1\n", "* 1000000000)) + 3600000000000\n"))
    return candidate


def test_valid_until_past_the_real_boundary_is_a_blocking_validity_change_in_replay_and_shadow(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """A candidate changing only valid_until_ns (+1 h) replayed as "PASS: no change" and
    shadow mode saw nothing, yet once deployed its memo serves a POS refund allow past
    max_age 900: a manager allowed at 897-899 s repeats the refund past 900.5 s, which
    the live policy denies (403) and the candidate's own evaluation denies too, but the
    candidate's memo would have answered with the allow it remembered."""
    from tests.gateway_stack import Stack
    from tests.test_shadow_mode import shadow_policy, shadow_ready

    candidate = stale_validity_candidate(tmp_path)
    sent: list[int] = []

    async def traffic(stack: Stack) -> None:
        await shadow_ready(stack)
        # auth_time is whole seconds: auth_age=899 was 899-900 s at the first
        # request already, and past 900 (a 403) whenever the token was minted late
        # in a second and the request took the rest of it. Two seconds' margin,
        # then past max_age by the clock, not by a fixed sleep.
        auth_time = int(time.time()) - 897
        token = stack.token("manager-17", groups=["store"], amr=["hwk"],
                            extra={"auth_time": auth_time})  # fmt: skip
        sent.append((await stack.get("/pos/refunds/1", token)).status)
        await asyncio.sleep(max(0.0, auth_time + 900.5 - time.time()))  # 900.5 s after
        sent.append((await stack.get("/pos/refunds/1", token)).status)
        # Another request the memo never saw: the candidate denies it, no memo involved.
        late = stack.token("manager-18", groups=["store"], amr=["hwk"], auth_age=1000)
        sent.append((await stack.get("/pos/refunds/1", late)).status)
        await asyncio.sleep(1.0)  # the shadow's answers logged

    recorded = asyncio.run(record_traffic(tmp_path / "run", 0, before=traffic,
                                          policy_options=shadow_policy(candidate)))  # fmt: skip
    assert sent == [200, 403, 403]
    shadow = [json.loads(line) for line in recorded.log.read_text().splitlines()
              if '"shadow":true' in line]  # fmt: skip
    assert [(e["result"]["divergence"], e["input"]["identity"]["subject"]) for e in shadow] == [
        ("validity", "manager-17")
    ]
    code, report, _ = replay(capsys, recorded, "--policy", str(candidate))
    assert code == 1 and report["blocking"] == {"validity": 1}
    sample = report["changes"]["validity"]["samples"][0]
    assert sample["identity"]["subject"] == "manager-17"
    code, report, _ = replay(capsys, recorded, "--policy", str(candidate),
                             "--allow-change", "validity")  # fmt: skip
    assert code == 0
    code, report, _ = replay(capsys, recorded, "--policy", str(POLICIES))
    assert code == 0 and report["totals"]["changed"] == 0


def test_an_unexpected_failure_is_exit_2_never_a_verdict(
    capsys: pytest.CaptureFixture[str], recorded: Recorded, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whatever goes wrong inside, a CI gate must see an error (2), not "changes
    found" (1, what Python's own traceback exit gives)."""
    from portcullis.replay.report import Report

    def broken(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(Report, "add", broken)
    code, report, err = replay(capsys, recorded, "--policy", str(POLICIES))
    assert code == 2 and not report
    assert "internal error, nothing was reported: RuntimeError: a bug" in err


@pytest.mark.parametrize(
    ("selection", "why"),
    [(["--app", "wsm"], "of other apps; --app wsm)"),
     (["--since", "2999-01-01"], "outside the time window; --since 2999-01-01T00:00:00"),
     # Year 999 was written "999-..." and compared after "2026-...": everything matched.
     (["--until", "0999-01-01"], "outside the time window; --until 0999-01-01T00:00:00")],
    ids=["app-typo", "since-after-the-log-ends", "until-before-year-1000"],
)  # fmt: skip
def test_selection_matching_no_decision_fails_instead_of_passing_on_nothing(
    capsys: pytest.CaptureFixture[str], recorded: Recorded, selection: list[str], why: str
) -> None:
    """A CI gate with a typo in --app, or a window after the log ends, replayed
    nothing and said PASS, exit 0."""
    code, report, err = replay(capsys, recorded, "--policy", str(POLICIES), *selection)
    assert code == 2 and not report
    decisions = logged_policy_decisions(recorded)
    assert f"no decision matched the selection ({decisions} decisions in the logs" in err
    assert why in err and "PASS" not in err


async def test_log_with_no_decisions_passes_with_a_warning_that_nothing_was_checked(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    from tests.test_decision_log import LOG_FIXTURES, write_log

    log = tmp_path / "idle.log"
    await write_log(log, 0)  # a run that decided nothing: start and seal only
    code = await asyncio.to_thread(main, [
        "policy", "replay", "--log", str(log), "--policy", str(POLICIES),
        "--key", str(LOG_FIXTURES / "signing_key.pub.pem"), "--output", "json",
    ])  # fmt: skip
    out, err = capsys.readouterr()
    assert code == 0 and json.loads(out)["totals"]["replayed"] == 0
    assert "warning: the logs hold no policy decisions to replay: this run checked nothing" in err


def test_unreachable_opa_candidate_does_not_load(
    capsys: pytest.CaptureFixture[str], recorded: Recorded
) -> None:
    """OPA down: one "doesn't load", exit 2, not a report of every decision as a
    candidate error (exit 1) that reads like the candidate's fault."""
    code, report, err = replay(capsys, recorded, "--policy", "http://127.0.0.1:1")
    assert code == 2 and not report
    assert "--policy http://127.0.0.1:1: the policy does not load" in err
    assert "OPA at http://127.0.0.1:1 is unreachable: Connection refused" in err


async def _rotated(recorded: Recorded, log: Path, runs: int = 3, sign_every: int = 10_000) -> None:
    """The recorded decisions written again through the gateway's DecisionLog in
    ``runs`` runs, logrotate (``.1`` -> ``.2``, the log -> ``.1``) between them."""
    from cryptography.hazmat.primitives import serialization

    from gateway.audit.writer import DecisionLog

    key = serialization.load_pem_private_key(recorded.key.read_bytes(), password=None)
    events = [json.loads(line) for line in recorded.log.read_text().splitlines()
              if '"path":"portcullis/gateway/decision"' in line]  # fmt: skip
    for run in range(runs):
        if run:
            for number in range(run - 1, 0, -1):
                older = log.with_name(f"{log.name}.{number}")
                older.rename(log.with_name(f"{log.name}.{number + 1}"))
            log.rename(log.with_name(f"{log.name}.1"))
        writer = DecisionLog(log, key, key_id="gateway", sign_every=sign_every)  # type: ignore[arg-type]
        await writer.start()
        for event in events[run::runs]:
            writer.record(decision_id=event["decision_id"], input=event["input"],
                          result=event["result"], revision="r", metrics=event["metrics"],
                          labels={"app": event["labels"]["app"]})  # fmt: skip
        await writer.close()


def test_logs_whose_oldest_files_were_rotated_away_replay_from_their_first_start(
    capsys: pytest.CaptureFixture[str], recorded: Recorded, tmp_path: Path
) -> None:
    """A week of logs kept by logrotate: the oldest file given continues a chain
    whose first files were deleted. Replay refused it as a tampered log ("does not
    begin the chain"), so the README's CI job failed on every pull request once
    retention had deleted the first file. A file cut at its top still fails."""
    log = tmp_path / "decisions.log"
    asyncio.run(_rotated(recorded, log))
    log.with_name("decisions.log.2").unlink()  # rotated away
    kept = ["--log", str(log.with_name("decisions.log.1")), "--log", str(log)]
    code = main(["policy", "replay", *kept, "--policy", str(POLICIES), "--key", str(recorded.key)])
    out, err = capsys.readouterr()
    assert code == 0, out + err
    assert "decisions.log.1 begins mid-chain" in out
    older = log.with_name("decisions.log.1")
    older.write_text("".join(older.read_text().splitlines(keepends=True)[1:]))  # its start, cut
    code = main(["policy", "replay", *kept, "--policy", str(POLICIES), "--key", str(recorded.key)])
    assert code == 2
    assert "does not begin with a signed start record" in capsys.readouterr().err


def test_after_with_its_seq_refuses_files_whose_start_claims_another_count(
    capsys: pytest.CaptureFixture[str], recorded: Recorded, tmp_path: Path
) -> None:
    """`--after SEQ:HASH`, as `audit verify` prints where the file before ends: a
    file whose start says more events came before it (a run cut out, the unsigned
    .head file's count moved past it) is refused, not replayed from its start."""
    log = tmp_path / "decisions.log"
    asyncio.run(_rotated(recorded, log))
    older = log.with_name("decisions.log.1")
    last = older.read_bytes().splitlines()[-1]
    ends_at, digest = json.loads(last)["seq"], hashlib.sha256(last).hexdigest()
    base = ["policy", "replay", "--log", str(log), "--policy", str(POLICIES)]
    base += ["--key", str(recorded.key)]
    assert main([*base, "--after", f"{ends_at}:{digest}"]) == 0
    capsys.readouterr()
    assert main([*base, "--after", f"{ends_at - 3}:{digest}"]) == 2
    err = capsys.readouterr().err
    assert f"start says {ends_at} events came before it, --after says {ends_at - 3}" in err


def test_events_a_crash_left_unsigned_are_not_replayed_once_a_restart_signed_them(
    capsys: pytest.CaptureFixture[str], recorded: Recorded, tmp_path: Path
) -> None:
    """The gateway crashed after its last signature; while it was down an allow was
    forged onto the end (the .head file's seq is then behind the file, so the restart
    continues from the forged line) and the restart's start record signed it. Replay
    took it as a verified decision (an allow-to-deny change that never happened)."""
    from cryptography.hazmat.primitives import serialization

    from gateway.audit.chain import line_hash
    from gateway.audit.writer import DecisionLog

    written = tmp_path / "decisions.log"
    asyncio.run(_rotated(recorded, written, runs=1, sign_every=50))
    lines = written.read_bytes().splitlines()
    kept = lines[:-1]  # the crash: no close written
    decision = json.loads(next(line for line in lines if b'"path":"portcullis/gateway/' in line
                               and b'"allow":false' in line))  # fmt: skip
    forged = {**decision, "result": {**decision["result"], "allow": True, "http_status": 200,
              "reasons": [], "step_up": None}, "decision_id": "forged",
              "seq": json.loads(kept[-1])["seq"] + 1, "prev_hash": line_hash(kept[-1])}  # fmt: skip
    written.write_bytes(b"\n".join([*kept, json.dumps(forged).encode()]) + b"\n")

    async def restart() -> None:
        key = serialization.load_pem_private_key(recorded.key.read_bytes(), password=None)
        writer = DecisionLog(written, key, key_id="gateway")  # type: ignore[arg-type]
        await writer.start()
        await writer.close()

    asyncio.run(restart())
    log = dataclasses.replace(recorded, log=written)
    code, report, _ = replay(capsys, log, "--policy", str(POLICIES))
    assert code == 0 and report["totals"]["changed"] == 0, report["totals"]
    assert report["not_replayed"]["unsigned_tail"] > 0
    code, report, _ = replay(capsys, log, "--policy", str(POLICIES), "--allow-unsigned-tail")
    assert code == 1 and report["changes"]["allow-to-deny"]["count"] == 1  # the forged allow


def candidate_denying(directory: Path, name: str, condition: str) -> Path:
    """The shipped policy set with one more deny: ``name`` (a rule of package
    portcullis.gateway, also its deny reason) when ``condition`` (a Rego body) holds."""
    import shutil

    candidate = directory / name
    shutil.copytree(POLICIES, candidate)
    decision = candidate / "gateway/decision.rego"
    text = decision.read_text()
    assert "\tnot from_another_site\n}" in text, "the shipped allow rule changed"
    decision.write_text(
        text.replace("\tnot from_another_site\n}", f"\tnot from_another_site\n\tnot {name}\n}}")
    )
    (candidate / "gateway" / f"{name}.rego").write_text(
        f"package portcullis.gateway\n\nimport rego.v1\n\n{name} if {{\n\t{condition}\n}}\n\n"
        f'deny_reasons contains "{name}" if {name}\n'
    )
    return candidate


def before_the_gateway_set(recorded: Recorded, directory: Path) -> Recorded:
    """The recorded log as a gateway before `protocol`, `destination` and
    `source.principal` were in the decision input wrote it (unsigned: --no-verify)."""
    lines = []
    for line in recorded.log.read_text().splitlines():
        record = json.loads(line)
        if record.get("path") == "portcullis/gateway/decision":
            attributes = record["input"]["attributes"]
            del attributes["request"]["http"]["protocol"], attributes["destination"]
            attributes["source"].pop("principal", None)
        lines.append(json.dumps(record))
    older = dataclasses.replace(recorded, log=directory / "older.log")
    older.log.write_text("\n".join(lines) + "\n")
    return older


def test_replay_never_calls_a_decision_unchanged_when_the_candidate_reads_a_field_the_log_lacks(
    capsys: pytest.CaptureFixture[str], recorded: Recorded, tmp_path: Path
) -> None:
    """A candidate retiring HTTP/1.1 denies every live request; replayed on a log
    written before the gateway set `protocol`, the deny never fired and replay said
    "PASS: no change". Those answers are now not comparable, named, and fail the run."""
    retire = candidate_denying(
        tmp_path, "retired_protocol", 'input.attributes.request.http.protocol == "HTTP/1.1"'
    )
    older = before_the_gateway_set(recorded, tmp_path)
    text = tmp_path / "report.txt"
    code, report, _ = replay(
        capsys,
        older,
        "--policy",
        str(retire),
        "--no-verify",
        "--output",
        "json",
        "--output",
        "text",
        "--output-file",
        str(text),
    )
    assert code == 1 and "PASS" not in text.read_text()
    totals, section = report["totals"], report["not_comparable"]
    assert totals["unchanged"] == 0 and totals["changed"] == 0
    assert totals["not_comparable"] == totals["replayed"] > 250
    assert section["fields"]["absent"] == [
        {"value": "input.attributes.request.http.protocol", "count": totals["replayed"]}
    ]
    assert section["as_replayed"]["unchanged"] == totals["replayed"]  # what it used to report
    assert report["blocking"] == {"not-comparable": totals["replayed"]}
    said = text.read_text()
    assert (
        f"warning: the candidate reads input.attributes.request.http.protocol, which "
        f"{totals['replayed']} of {totals['replayed']} replayed decisions lack in the log"
    ) in said
    assert "PASS" not in said and "not comparable (the policy reads input fields" in said
    code, report, _ = replay(
        capsys, older, "--policy", str(retire), "--no-verify", "--allow-change", "not-comparable"
    )
    assert code == 0 and report["totals"]["not_comparable"] == report["totals"]["replayed"]
    assert "not comparable, allowed by --allow-change not-comparable" in verdict(report)

    # Today's log has the field: the same candidate's flips are counted as such.
    code, report, _ = replay(capsys, recorded, "--policy", str(retire))
    records = [json.loads(line) for line in recorded.log.read_text().splitlines()]
    allows = [
        r
        for r in records
        if r.get("path") == "portcullis/gateway/decision" and r["result"]["allow"] is True
    ]
    assert code == 1 and report["totals"]["not_comparable"] == 0
    assert report["changes"]["allow-to-deny"]["count"] == len(allows) > 50


def test_a_field_the_gateway_leaves_out_of_a_request_is_compared_not_called_unknown(
    capsys: pytest.CaptureFixture[str], recorded: Recorded, tmp_path: Path
) -> None:
    """No client certificate: the live input has no source.principal either, so a
    deny on a SPIFFE ID replays faithfully on today's log; only a log from before the
    gateway set it can't say whether a certificate's principal was there."""
    spiffe = candidate_denying(
        tmp_path,
        "revoked_workload",
        'input.attributes.source.principal == "spiffe://corp/ns/pos/sa/old"',
    )
    older = before_the_gateway_set(recorded, tmp_path)
    code, report, _ = replay(capsys, older, "--policy", str(spiffe), "--no-verify")
    assert code == 1 and report["totals"]["not_comparable"] == report["totals"]["replayed"]
    assert [row["value"] for row in report["not_comparable"]["fields"]["absent"]] == [
        "input.attributes.source.principal"
    ]
    code, report, _ = replay(capsys, recorded, "--policy", str(spiffe))
    totals = report["totals"]
    assert code == 0 and totals["not_comparable"] == 0
    assert totals["unchanged"] == totals["replayed"] > 250


def test_replay_never_calls_a_decision_unchanged_when_the_candidate_reads_a_masked_header(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """The log masks an API key header and `?token=`: a candidate denying a leaked
    key (or token) denies those requests live, but replayed on `**REDACTED**` the
    deny never fired and they counted as unchanged. Now each is not comparable and
    named; the requests without the header still compare, and the Authorization
    header, which the live policy saw masked too, is no reason."""
    sent_with_key: list[int] = []

    async def leaked_key_requests(stack: Any) -> None:
        token = stack.token(
            "store-017-fresh", groups=["store", "store-017"], amr=["hwk"], auth_age=120
        )
        for n in range(6):
            response = await stack.get(
                f"/pos/sales/{n}?token=t-leaked", token, headers={"X-Api-Key": "k-leaked"}
            )
            sent_with_key.append(response.status)

    recorded = asyncio.run(record_traffic(tmp_path, 60, before=leaked_key_requests))
    assert sent_with_key == [200] * 6
    log = recorded.log.read_text()
    assert "k-leaked" not in log and "t-leaked" not in log
    leaked = candidate_denying(
        tmp_path, "leaked_key", 'input.attributes.request.http.headers["x-api-key"] == "k-leaked"'
    )
    code, report, _ = replay(capsys, recorded, "--policy", str(leaked))
    assert code == 1  # it was 0: "PASS: no change"
    totals, section = report["totals"], report["not_comparable"]
    assert totals["not_comparable"] == 6 and totals["changed"] == 0
    assert totals["unchanged"] == totals["replayed"] - 6
    assert section["fields"]["masked"] == [
        {"value": 'input.attributes.request.http.headers["x-api-key"]', "count": 6}
    ]
    assert all(s["before"]["allow"] and s["as_replayed"] == "unchanged" for s in section["samples"])

    query = candidate_denying(tmp_path, "leaked_token", 'input.parsed_query.token[_] == "t-leaked"')
    code, report, _ = replay(capsys, recorded, "--policy", str(query))
    assert code == 1 and report["totals"]["not_comparable"] == 6
    assert [r["value"] for r in report["not_comparable"]["fields"]["masked"]] == [
        "input.parsed_query.token"
    ]

    # A header named at run time reads them all: the masked one among them.
    any_header = candidate_denying(
        tmp_path,
        "leaked_anywhere",
        'some value in input.attributes.request.http.headers\n\tvalue == "k-leaked"',
    )
    code, report, _ = replay(capsys, recorded, "--policy", str(any_header))
    assert code == 1 and report["totals"]["not_comparable"] == 6

    bearer = candidate_denying(
        tmp_path, "no_bearer", "not input.attributes.request.http.headers.authorization"
    )
    code, report, _ = replay(capsys, recorded, "--policy", str(bearer))
    assert report["totals"]["not_comparable"] == 0 and report["totals"]["changed"] > 0


def test_every_field_of_the_contract_a_logged_input_lacks_is_named_and_none_it_holds(
    recorded: Recorded,
) -> None:
    """Each key of the decision contract, cut from a real logged input (as a log
    from before the gateway set it would be), is named as absent for a policy
    whose reads aren't known; the input as logged names nothing. Keys the gateway
    leaves out of some requests are named only where the log shows it would set
    them (source.principal in a log with protocol is a request without one)."""
    import copy

    from gateway.policy.input_contract import LEFT_OUT, PROVIDED, contract_leaves, rego_ref
    from portcullis.replay.comparable import Comparability
    from portcullis.replay.events import LoggedDecision

    records = [json.loads(line) for line in recorded.log.read_text().splitlines()]
    record = next(r for r in records if r.get("path") == "portcullis/gateway/decision"
                  and r["input"]["identity"]["authenticated"])  # fmt: skip
    everything = Comparability([None])  # an OPA URL: it may read all of input
    assert everything.reads_unknown

    def named(document: dict[str, Any]) -> list[tuple[str, str]]:
        logged = LoggedDecision("log", 1, {**record, "input": document}, document,
                                record["result"], "pos", "", None)  # fmt: skip
        return everything.unknown(logged)

    assert named(record["input"]) == []
    protocol = ("attributes", "request", "http", "protocol")
    protocol_and_above = {protocol[:depth] for depth in range(1, 5)}
    prefixes = {leaf[:depth] for leaf in contract_leaves(()) for depth in range(1, len(leaf) + 1)}
    assert len(prefixes) > 30 and set(PROVIDED) <= {p[0] for p in prefixes}
    for prefix in sorted(prefixes):
        document = copy.deepcopy(record["input"])
        node = document
        for key in prefix[:-1]:
            node = node.get(key, {})
        if prefix[-1] not in node:  # signals, principal, request_line: not in this input
            assert prefix in LEFT_OUT or prefix[:1] == ("signals",), prefix
            continue
        del node[prefix[-1]]
        expected = set() if prefix in LEFT_OUT and LEFT_OUT[prefix](document) else {prefix}
        if prefix in protocol_and_above and prefix != ("attributes",):
            expected.add(("attributes", "source", "principal"))  # no protocol: an older log
        assert set(named(document)) == {(rego_ref(p), "absent") for p in expected}, prefix


def test_a_hand_edited_input_whose_request_is_not_an_object_is_replayed_not_a_crash(
    capsys: pytest.CaptureFixture[str], recorded: Recorded, tmp_path: Path
) -> None:
    """Telling whether a logged input lacks source.principal because its request had
    no certificate looks for `protocol` under attributes.request.http; a hand-edited
    log (--no-verify) whose attributes.request is a string crashed that look with
    AttributeError: exit 2 for "unexpected", where the replay answers the rest."""
    spiffe = candidate_denying(
        tmp_path,
        "revoked_workload",
        'input.attributes.source.principal == "spiffe://corp/ns/pos/sa/old"',
    )
    lines = recorded.log.read_text().splitlines()
    decision = '"path":"portcullis/gateway/decision"'
    number = next(n for n, line in enumerate(lines) if decision in line)
    record = json.loads(lines[number])
    record["input"]["attributes"]["request"] = "GET /pos/sales/1 HTTP/1.1"
    lines[number] = json.dumps(record)
    edited = dataclasses.replace(recorded, log=tmp_path / "edited.log")
    edited.log.write_text("\n".join(lines) + "\n")
    code, report, err = replay(capsys, edited, "--policy", str(spiffe), "--no-verify")
    assert "AttributeError" not in err and report, err
    totals = report["totals"]
    assert totals["replayed"] == logged_policy_decisions(recorded)
    # Without protocol it reads as a log from before the gateway set principal.
    assert code == 1 and totals["not_comparable"] == 1
    assert report["not_comparable"]["fields"]["absent"] == [
        {"value": "input.attributes.source.principal", "count": 1}
    ]
