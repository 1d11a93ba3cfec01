"""The compiled VM is given only the input paths its entry point can read
(policy_engine/input_reads.py, InputProjection): its answers must be those of the
interpreter on the whole input, for reads that try to escape the projection
(computed keys, import aliases, other packages, function arguments, bare input).
The shipped policy is held to the same over 5,000 decisions, against OPA too, in
tests/test_engine_fidelity.py."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
import regorus
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from policy_engine import EmbeddedEngine, PolicySet, load_policy_set
from policy_engine.errors import PolicyError
from policy_engine.input_reads import InputProjection, input_reads

REF = "data.portcullis.gateway.decision"

# Each escapes a naive projection some other way; helpers.rego reads input too.
# (Guarded so that no builtin errors: the compiled VM reports an error as
# undefined where the interpreter raises, a difference of its own, tested in
# tests/test_engine_fidelity.py.)
ESCAPING_READS = """
package portcullis.gateway
import rego.v1
import input.identity as who
import data.portcullis.helpers

decision := {
    "allow": allow,
    "size": size,
    "header": header,
    "extra": extra,
    "keys": keys,
    "first": first,
}
default allow := false
allow if who.role == "admin"
allow if helpers.trusted
default size := -1
size := count(input.attributes) if is_object(input.attributes)
default header := null
header := input.headers[lower(input.want)] if is_string(input.want)
default extra := "none"
extra := inner(input.extra)
inner(x) := x.inner if is_object(x)
default keys := []
keys := [k | some k, _ in input.list_or_obj] if is_array(input.list_or_obj)
keys := [k | some k, _ in input.list_or_obj] if is_object(input.list_or_obj)
default first := null
first := input.list_or_obj[0]
"""

HELPERS = """
package portcullis.helpers
import rego.v1
trusted if input.source.ip == "10.0.0.1"
"""

WHOLE_INPUT = """
package portcullis.gateway
import rego.v1
decision := {"allow": count(input) > 2, "seen": object.keys(input)}
"""

NAMES = ["identity", "role", "attributes", "headers", "want", "extra", "inner", "source",
         "ip", "list_or_obj", "x-api", "X-Api", "admin", "10.0.0.1", "a"]  # fmt: skip

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-3, 3) | st.sampled_from(NAMES),
    lambda children: (
        st.lists(children, max_size=3)
        | st.dictionaries(st.sampled_from(NAMES), children, max_size=4)
    ),
    max_leaves=12,
)
documents = st.dictionaries(st.sampled_from(NAMES), json_values, max_size=7)


def policy_set(tmp_path: Path, **modules: str) -> PolicySet:
    directory = tmp_path / "policy"
    directory.mkdir(exist_ok=True)
    for name, text in modules.items():
        (directory / f"{name}.rego").write_text(text)
    return load_policy_set(directory)


def answer(engine: EmbeddedEngine, document: Any) -> Any:
    try:
        return engine.evaluate_sync(REF, document)
    except PolicyError:
        return "error"  # undefined or an engine error: the gateway denies either way


@pytest.fixture(scope="module")
def escaping(tmp_path_factory: pytest.TempPathFactory) -> tuple[EmbeddedEngine, EmbeddedEngine]:
    policies = policy_set(tmp_path_factory.mktemp("escaping"), p=ESCAPING_READS, h=HELPERS)
    compiled = EmbeddedEngine(policies, compiled_refs=(REF,), timeout=30)
    assert compiled.compiled_refs == {REF}, compiled.rvm_problem
    return compiled, EmbeddedEngine(policies, timeout=30)


@settings(
    max_examples=400,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(document=documents)
def test_reads_that_escape_a_naive_projection_still_see_their_input(
    escaping: tuple[EmbeddedEngine, EmbeddedEngine], document: dict[str, Any]
) -> None:
    compiled, interpreter = escaping
    assert answer(compiled, document) == answer(interpreter, document)


def test_a_projection_that_dropped_a_read_would_be_caught(
    escaping: tuple[EmbeddedEngine, EmbeddedEngine],
) -> None:
    """The differential above can fail: without input.source.ip (read in another
    package) the trusted source is no longer allowed."""
    compiled, interpreter = escaping
    reads = input_reads(compiled.compiled.shapes, ("portcullis", "gateway", "decision"), ())
    assert ("source", "ip") in reads.reads
    document = {"source": {"ip": "10.0.0.1"}}
    assert answer(compiled, document)["allow"] is True
    cut = InputProjection(reads.reads - {("source", "ip")})
    assert cut.of(document) == {}
    assert answer(interpreter, cut.of(document))["allow"] is False


def test_a_policy_that_reads_the_whole_input_gets_all_of_it(tmp_path: Path) -> None:
    policies = policy_set(tmp_path, p=WHOLE_INPUT)
    compiled = EmbeddedEngine(policies, compiled_refs=(REF,))
    document = {"a": 1, "unread": {"deep": True}, "z": [1]}
    assert compiled.evaluate_sync(REF, document) == {
        "allow": True,
        "seen": ["a", "unread", "z"],
    }


def test_the_projection_keeps_read_paths_and_whole_values_where_a_path_cannot_go_on() -> None:
    cut = InputProjection(
        [("identity", "groups"), ("identity",), ("route", "app"), ("r", "s", "t")]
    )
    document = {
        "identity": {"groups": ["a"], "email": "x@example.com"},
        "route": {"app": "pos", "upstream": "http://10.0.0.9"},
        "r": ["not", "an", "object"],
        "headers": {"authorization": "**REDACTED**"},
    }
    assert cut.of(document) == {
        "identity": {"groups": ["a"], "email": "x@example.com"},  # the shorter path wins
        "route": {"app": "pos"},
        "r": ["not", "an", "object"],
    }
    assert cut.of(["not", "an", "object"]) == ["not", "an", "object"]
    assert cut.of({}) == {}


def test_keys_that_are_not_python_names_are_copied_as_they_are() -> None:
    """The copy is generated source: a key holding quotes, backslashes or code
    is a string literal there, never code."""
    hostile = "x'] = 1; import os; os._exit(3) #\\\"\n"
    cut = InputProjection([(hostile,), ("a", hostile)])
    document = {hostile: 1, "a": {hostile: [2], "b": 3}, "c": 4}
    assert cut.of(document) == {hostile: 1, "a": {hostile: [2]}}


@pytest.mark.parametrize(
    ("modules", "document"),
    [
        (
            {
                "p": "package portcullis.gateway\n# Prüfung ü ✓\nimport rego.v1\n"
                "import input.request as r\n"
                'decision := {"allow": allow}\ndefault allow := false\n'
                'allow if not deny\ndeny if r.path == "/admin"\n'
            },
            {"request": {"path": "/admin"}},
        ),
        (
            {
                "p": "package portcullis.gateway\n# ü\nimport rego.v1\n"
                "import data.portcullis.other as oth\n"
                'decision := {"allow": allow}\ndefault allow := false\nallow if not oth.deny\n',
                "o": "package portcullis.other\nimport rego.v1\ndeny if input.s == 1\n",
            },
            {"s": 1},
        ),
    ],
    ids=["input-alias", "data-alias"],
)
def test_a_non_ascii_comment_above_an_import_alias_does_not_hide_the_reads_made_through_it(
    tmp_path: Path, modules: dict[str, str], document: dict[str, Any]
) -> None:
    """regorus' spans count UTF-8 bytes: read as characters, the alias came out
    wrong, its reads were dropped, and the deny rule saw an empty input."""
    policies = policy_set(tmp_path, **modules)
    compiled = EmbeddedEngine(policies, compiled_refs=(REF,))
    assert compiled.evaluate_sync(REF, document) == {"allow": False}
    assert EmbeddedEngine(policies).evaluate_sync(REF, document) == {"allow": False}


# One module imports the aliases, another uses them without importing: regorus
# resolves a package's aliases in all its modules (OPA refuses the second one).
ALIASES_ONLY = """
package portcullis.gateway
import rego.v1
import input.attributes.request.http as req
import input.identity as user
import data.portcullis.helpers
"""

USES_OTHER_MODULES_ALIASES = """
package portcullis.gateway
import rego.v1
reads := ["/identity", "/route"]
decision := {"allow": true, "reasons": [], "http_status": 200, "headers": {},
             "step_up": null, "valid_until_ns": null} if allow
else := {"allow": false, "reasons": sort(deny), "http_status": 403, "headers": {},
         "step_up": null, "valid_until_ns": null}
default allow := false
allow if {
    input.identity.authenticated == true
    count(deny) == 0
}
deny contains "only admins may delete" if {
    req.method == "DELETE"
    not "admin" in user.groups
}
deny contains "debug header" if helpers.debug
"""

HELPERS_READING_A_HEADER = """
package portcullis.helpers
import rego.v1
debug if input.attributes.request.http.headers["x-debug"] == "1"
"""


def request(method: str, headers: dict[str, str] | None = None) -> dict[str, Any]:
    return {
        "identity": {"authenticated": True, "subject": "alice", "groups": ["staff"]},
        "route": {"app": "wms"},
        "attributes": {"request": {"http": {"method": method, "headers": headers or {}}}},
        "now_ns": 1_700_000_000_000_000_000,
    }


def test_aliases_imported_by_another_module_of_the_package_are_read_through(
    tmp_path: Path,
) -> None:
    """`req.method` and `user.groups` in a module that doesn't import them read
    what the package's other module imports: the projection dropped both (and the
    helpers package behind a data alias), so the deny rules never fired on the
    compiled VM, and the memo, declared to read only /identity and /route, served
    a GET's allow to a DELETE."""
    from gateway.policy.decision import decide
    from gateway.policy.memo import DecisionMemo
    from gateway.policy.reload import build_engine

    policies = policy_set(
        tmp_path, a=ALIASES_ONLY, b=USES_OTHER_MODULES_ALIASES, h=HELPERS_READING_A_HEADER
    )
    compiled = EmbeddedEngine(policies, compiled_refs=(REF,))  # no confirmation by the interpreter
    interpreter = EmbeddedEngine(policies)
    for document, allowed in [
        (request("GET"), True),
        (request("DELETE"), False),
        (request("GET", {"x-debug": "1"}), False),
    ]:
        assert answer(compiled, document)["allow"] is allowed
        assert answer(compiled, document) == answer(interpreter, document)
    # The declaration leaves out the method and the header the policy reads: no memo.
    engine = build_engine(str(tmp_path / "policy"), timeout_ms=1000)
    assert DecisionMemo.for_engine(engine) is None
    decision = asyncio.run(decide(engine, request("DELETE"), "d"))
    assert (decision.allow, decision.reasons) == (False, ["only admins may delete"])


def test_an_alias_two_modules_of_a_package_bind_differently_is_refused(tmp_path: Path) -> None:
    """regorus resolves `who` to one binding in both modules (the last loaded),
    OPA each to its own: `who.sub` in a.rego would read data, not the identity,
    and its deny would not fire. Refused at load, naming both."""
    a = (
        "package portcullis.gateway\nimport rego.v1\nimport input.identity as who\n"
        'decision := {"allow": allow}\ndefault allow := false\nallow if not deny\n'
        'deny if who.sub == "alice"\n'
    )
    b = "package portcullis.gateway\nimport rego.v1\nimport data.portcullis.lib.who\n"
    lib = "package portcullis.lib\nimport rego.v1\nwho := {}\n"
    with pytest.raises(PolicyError) as refused:
        EmbeddedEngine(policy_set(tmp_path, a=a, b=b, lib=lib), compiled_refs=(REF,))
    message = str(refused.value)
    assert "import alias who" in message and "rename one" in message
    assert "input.identity" in message and "data.portcullis.lib.who" in message


def test_an_import_shadowing_an_earlier_import_of_the_module_is_refused(tmp_path: Path) -> None:
    """`import input.identity` then `import data.portcullis.lib.identity`: regorus
    reads `identity` as the last import (data, which has no `sub`), so the deny of
    alice doesn't fire and the policy allows her; OPA refuses the module. Refused
    at load, at the second import."""
    from policy_engine.opa_golib import GoOpaEngine

    a = (
        "package portcullis.gateway\nimport rego.v1\nimport input.identity\n"
        "import data.portcullis.lib.identity\n"
        'decision := {"allow": allow}\ndefault allow := false\nallow if not deny\n'
        'deny if identity.sub == "alice"\n'
    )
    lib = "package portcullis.lib\nimport rego.v1\nidentity := {}\n"
    shadowing = policy_set(tmp_path, a=a, lib=lib)
    with pytest.raises(PolicyError) as refused:
        EmbeddedEngine(shadowing, compiled_refs=(REF,))
    where = tmp_path / "policy" / "a.rego"
    assert str(refused.value).startswith(f"{where}:4:8: import must not shadow")
    assert "import input.identity (both are identity" in str(refused.value)
    with pytest.raises(PolicyError) as on_opa:
        GoOpaEngine(shadowing)
    assert "rego_compile_error: import must not shadow import input.identity" in str(on_opa.value)
    bare = regorus.Engine()  # what loading it as regorus does would have decided
    for name, text in (("a.rego", a), ("lib.rego", lib)):
        bare.add_policy(name, text)
    bare.set_input({"identity": {"sub": "alice"}})
    assert bare.eval_rule(REF) == {"allow": True}
    fixed = a.replace("lib.identity\n", "lib.identity as lib_identity\n")
    engine = EmbeddedEngine(policy_set(tmp_path, a=fixed, lib=lib), compiled_refs=(REF,))
    alice = {"identity": {"sub": "alice"}}
    assert engine.evaluate_sync(REF, alice) == {"allow": False}
