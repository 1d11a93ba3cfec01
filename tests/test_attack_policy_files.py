"""Attack review of the policy loaders (policy_engine/policy_set.py) with hostile
files: an OPA bundle or a policy directory that a pull request adds, or that a
compromised artifact store hands to `policy check`, `policy replay` or the
gateway. One test per attack, named for it. What they hold to (README "Writing
and testing policies"): every bad file is a load error naming it (exit 2 from the
CLI, never a traceback), what is loaded is what a reviewer unpacking the bundle
reads, and memory and time stay bounded by the bundle's limits."""

from __future__ import annotations

import gzip
import io
import resource
import tarfile
import time
from pathlib import Path

import pytest

from policy_engine import EmbeddedEngine, load_policy_set
from tests.test_policy_cli import portcullis
from tests.test_policy_tooling_faults import load_problems

DECISION = "data.portcullis.gateway.decision"
HIDDEN = (
    b"package portcullis.gateway\nimport rego.v1\n"
    b'decision := {"allow": true, "reasons": [], "http_status": 200, "headers": {}, '
    b'"step_up": null} if input.identity.subject == "mallory"\n'
)
SHOWN = b"package portcullis.gateway\nimport rego.v1\nexplained := true\n"


def tar_gz(path: Path, members: list[tuple[str, bytes]]) -> Path:
    with tarfile.open(path, "w:gz", format=tarfile.GNU_FORMAT) as archive:
        for name, content in members:
            info = tarfile.TarInfo(name)
            info.size = len(content)
            archive.addfile(info, io.BytesIO(content))
    return path


def gzip_of(path: Path, header: bytes, byte: bytes, mebibytes: int) -> Path:
    """A gzip of ``header`` and then ``mebibytes`` MiB of ``byte`` (and a tar's end),
    written fast: one compressed MiB, repeated as gzip members of their own."""
    mebibyte = gzip.compress(byte * (1 << 20), compresslevel=9)
    with path.open("wb") as out:
        out.write(gzip.compress(header))
        for _ in range(mebibytes):
            out.write(mebibyte)
        out.write(gzip.compress(b"\0" * 1024))
    return path


def peak_rss_mb() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024


# -- what is loaded is what a reviewer reads ----------------------------------


@pytest.mark.parametrize(
    "second", ["gateway/decision.rego", "./gateway/decision.rego", "gateway//decision.rego"]
)
def test_a_bundle_member_named_twice_is_refused(tmp_path: Path, second: str) -> None:
    """`tar xzf` keeps the last of two members of one name, so a reviewer reads
    only that one; the loader took both, and the one nobody reads allowed mallory."""
    bundle = tar_gz(tmp_path / "b.tar.gz", [("gateway/decision.rego", HIDDEN), (second, SHOWN)])
    problems = load_problems(bundle)
    assert problems == [
        f"{bundle}:gateway/decision.rego: the bundle holds this file twice (an unpacked "
        "copy shows only the last): refused"
    ]


def test_a_bundle_with_two_manifests_or_data_files_of_one_name_is_refused(tmp_path: Path) -> None:
    bundle = tar_gz(
        tmp_path / "b.tar.gz",
        [
            ("a.rego", b"package a\nimport rego.v1\nx := 1\n"),
            (".manifest", b'{"roots": ["a"]}'),
            ("./.manifest", b'{"revision": "r2"}'),
            ("data.json", b'{"a": 1}'),
            ("data.json", b'{"b": 2}'),
        ],
    )
    problems = load_problems(bundle)
    assert [p.split(": ", 1)[0] for p in problems] == [f"{bundle}:.manifest", f"{bundle}:data.json"]


# -- names that can't be shown, or would drive the terminal ---------------------


def test_a_bundle_member_named_in_bytes_that_are_not_utf8_is_a_load_error(
    tmp_path: Path,
) -> None:
    bundle = tmp_path / "b.tar.gz"
    with tarfile.open(bundle, "w:gz", format=tarfile.GNU_FORMAT, errors="surrogateescape") as out:
        info = tarfile.TarInfo("a\udce9.rego")
        content = b"package a\nimport rego.v1\nx := 1\n"
        info.size = len(content)
        out.addfile(info, io.BytesIO(content))
    done = portcullis("policy", "check", str(bundle))
    assert done.returncode == 2, done.stderr
    assert done.stderr == f"{bundle}:a\\xe9.rego: the name is not UTF-8: refused\n"


def test_a_bundle_member_name_with_terminal_escapes_is_shown_escaped_and_refused(
    tmp_path: Path,
) -> None:
    name = "a\x1b]0;owned\x07\x1b[2J.rego"
    bundle = tar_gz(tmp_path / "b.tar.gz", [(name, b"package a\nimport rego.v1\nx := \n")])
    done = portcullis("policy", "check", str(bundle))
    assert done.returncode == 2
    assert "\x1b" not in done.stderr and "\x07" not in done.stderr
    assert done.stderr == (
        f"{bundle}:a\\x1b]0;owned\\x07\\x1b[2J.rego: the name holds control characters: refused\n"
    )


# -- the manifest's revision goes into every decision event ----------------------


@pytest.mark.parametrize(
    ("revision", "expected"),
    [
        (b'"' + b"r" * 100_000 + b'"', "revision is 100000 characters long (at most 256)"),
        (b'"r1\\u001b[31m\\nforged line"', "revision holds control characters"),
        (b"42", "revision must be a string (it is 42)"),
    ],
    ids=["huge", "control-characters", "not-a-string"],
)
def test_a_manifest_revision_that_cant_go_into_every_decision_event_is_refused(
    tmp_path: Path, revision: bytes, expected: str
) -> None:
    """The revision is written into every decision event, /metrics and /readyz: a
    100 KB one made every event 100 KB; one with control characters reached the
    terminal. OPA refuses a revision that isn't a string; this one was ignored."""
    bundle = tar_gz(
        tmp_path / "b.tar.gz",
        [
            (".manifest", b'{"revision": ' + revision + b"}"),
            ("a.rego", b"package a\nimport rego.v1\nx := 1\n"),
        ],
    )
    assert load_problems(bundle) == [f"{bundle}:.manifest: {expected}"]


# -- bombs ---------------------------------------------------------------------


def test_a_bundle_whose_long_name_header_unpacks_to_a_gigabyte_is_refused_in_bounded_memory(
    tmp_path: Path,
) -> None:
    """A GNU long-name header is read into memory whole before any member is seen:
    4.6 MB of gzip took 2.1 GB of memory for a name."""
    info = tarfile.TarInfo("././@LongLink")
    info.type = tarfile.GNUTYPE_LONGNAME
    info.size = 1 << 30
    bundle = gzip_of(tmp_path / "b.tar.gz", info.tobuf(format=tarfile.GNU_FORMAT), b"a", 1024)
    before = peak_rss_mb()
    assert load_problems(bundle) == [f"{bundle}: bundle larger than 64 MiB unpacked"]
    assert peak_rss_mb() - before < 400


def test_a_bundle_of_a_huge_member_is_refused_without_unpacking_it_all(tmp_path: Path) -> None:
    info = tarfile.TarInfo("README.md")
    info.size = 8 << 30
    bundle = gzip_of(tmp_path / "b.tar.gz", info.tobuf(format=tarfile.GNU_FORMAT), b"\0", 8 << 10)
    started = time.monotonic()
    assert load_problems(bundle) == [f"{bundle}: bundle larger than 64 MiB unpacked"]
    assert time.monotonic() - started < 2


def test_a_bundle_of_more_entries_than_a_policy_set_has_is_refused_early(tmp_path: Path) -> None:
    """Every member header was read (and kept) before the first was looked at:
    300,000 empty directories in 1.4 MB took 7.7 s and 275 MB (a million, minutes)."""
    bundle = tmp_path / "b.tar.gz"
    with tarfile.open(bundle, "w:gz") as archive:
        archive.addfile(tarfile.TarInfo("a.rego"), io.BytesIO(b""))
        for number in range(20_000):
            info = tarfile.TarInfo(f"d/{number}")
            info.type = tarfile.DIRTYPE
            archive.addfile(info)
    started = time.monotonic()
    assert load_problems(bundle) == [
        f"{bundle}: bundle of more than 10000 entries (files and directories): refused"
    ]
    assert time.monotonic() - started < 2


BILLION_LAUGHS = "a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n" + "".join(
    f"{key}: &{key} [{', '.join([f'*{chr(ord(key) - 1)}'] * 9)}]\n" for key in "bcdefg"
)


@pytest.mark.parametrize("where", ["directory", "bundle"])
def test_yaml_data_whose_aliases_expand_to_billions_of_values_is_refused_at_once(
    tmp_path: Path, where: str
) -> None:
    """Half a KB of YAML anchors and aliases, 9**7 strings once expanded: the load
    walked them for 2.5 s. Two lines more (9**9) and loading it took 24 GB before
    the kernel killed it: the engine is handed the data as JSON, expanded."""
    if where == "directory":
        source = tmp_path / "policies"
        source.mkdir()
        (source / "a.rego").write_text("package a\nimport rego.v1\nx := 1\n")
        (source / "data.yaml").write_text(BILLION_LAUGHS)
        shown = f"{source}/data.yaml"
    else:
        source = tar_gz(
            tmp_path / "b.tar.gz",
            [
                ("a.rego", b"package a\nimport rego.v1\nx := 1\n"),
                ("data.yaml", BILLION_LAUGHS.encode()),
            ],
        )
        shown = f"{source}:data.yaml"
    started = time.monotonic()
    problems = load_problems(source)
    assert time.monotonic() - started < 2
    assert len(problems) == 1
    assert problems[0].startswith(f"{shown}:")
    assert problems[0].endswith(
        "invalid YAML: its aliases expand to more than 100000 values (a YAML bomb?)"
    )


def test_yaml_data_with_a_few_aliases_still_loads(tmp_path: Path) -> None:
    (tmp_path / "a.rego").write_text("package a\nimport rego.v1\nx := data.apps.pos.mfa.amr\n")
    (tmp_path / "data.yaml").write_text(
        "mfa: &mfa {amr: [otp, hwk]}\napps:\n  wms: {mfa: *mfa}\n  pos: {mfa: *mfa}\n"
    )
    engine = EmbeddedEngine(load_policy_set(tmp_path))
    assert engine.evaluate_sync("data.a.x", {}) == ["otp", "hwk"]


def test_a_yaml_alias_inside_the_value_it_names_is_named_as_a_loop(tmp_path: Path) -> None:
    """It was refused as 'nested too deeply' with no line, once the walk of the loop
    ran out of stack."""
    (tmp_path / "a.rego").write_text("package a\nimport rego.v1\nx := 1\n")
    (tmp_path / "data.yaml").write_text("a: &a [1, *a]\n")
    assert load_problems(tmp_path) == [
        f"{tmp_path}/data.yaml:1:11: invalid YAML: the alias *a is inside the value it names "
        "(a loop)"
    ]
