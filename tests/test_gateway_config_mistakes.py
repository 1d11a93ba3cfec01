"""Config mistakes that used to pass in silence: each is refused or warned of at start,
naming what to change."""

from __future__ import annotations

import asyncio
import logging
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import aiohttp
import pytest
import yaml

from gateway.config import AssertionConfig, ConfigError, DecisionLogConfig, Route, load_config
from tests.conftest import POLICIES, ROOT
from tests.gateway_stack import APPS, ServerFactory, free_port, start_stack

STORE_OTP = {"groups": ["store"], "amr": ["pwd", "otp"]}


def gateway_process(config: Path, *args: str, cwd: Path = ROOT) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "portcullis", "gateway", "--config", str(config), *args],
        cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def finish(process: subprocess.Popen[str], timeout: float = 30) -> str:
    """The process's stderr once it exited (stopped with SIGTERM if it still runs)."""
    try:
        return process.communicate(timeout=timeout)[1]
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGTERM)
        return process.communicate(timeout=30)[1]


async def wait_healthy(url: str, process: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 30
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            assert process.poll() is None, finish(process)
            try:
                async with session.get(f"{url}/healthz") as response:
                    if response.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)
    raise AssertionError(f"{url} not ready")


def issuer_yaml() -> str:
    # Never fetched before these tests end: the refusals come first.
    return (
        "issuers: [{issuer: 'http://127.0.0.1:9', audiences: [portcullis], "
        "jwks_url: 'http://127.0.0.1:9/jwks.json'}]\n"
    )


# --- keys the gateway doesn't know ---------------------------------------------


def refused_saying(tmp_path: Path, yaml_text: str, message: str) -> None:
    """`portcullis gateway` on this config says ``message`` on stderr, no traceback."""
    config = tmp_path / "gateway.yaml"
    config.write_text(yaml_text)
    stderr = finish(gateway_process(config))
    assert message in stderr, stderr
    assert "Traceback" not in stderr


@pytest.mark.parametrize(
    ("yaml_text", "message"),
    [
        ("routs: []\nauth: false\n", "routs: unknown key; did you mean routes?"),
        (
            "auth: false\nlimits: {requests_per_idnetity: 3}\n",
            "limits.requests_per_idnetity: unknown key; did you mean requests_per_identity?",
        ),
        (
            "auth: false\ndecision_log: {path: d.log, sinks: [{kind: file, path: c, pth: d}]}\n",
            "decision_log.sinks[0].pth: unknown key; did you mean path?",
        ),
        ("auth: false\ncolour: red\n", "colour: unknown key\n"),
    ],
)
def test_a_typo_in_a_config_key_is_refused_with_the_key_it_was_probably_meant_to_be(
    tmp_path: Path, yaml_text: str, message: str
) -> None:
    """`routs:` said "unknown key" and left the user to find `routes` in the README;
    a key like no known one gets no guess."""
    refused_saying(tmp_path, yaml_text, message)


@pytest.mark.parametrize(
    ("yaml_text", "message"),
    [
        ("routs: []\n1: x\nauth: false\n", "1: unknown key"),
        ("auth: false\nlimits: {1: 2}\n", "limits.1: unknown key"),
    ],
)
def test_a_config_key_that_yaml_reads_as_a_number_is_an_unknown_key_not_a_traceback(
    tmp_path: Path, yaml_text: str, message: str
) -> None:
    """Unknown keys were sorted to name the first, and 1 doesn't sort with "routs"."""
    refused_saying(tmp_path, yaml_text, message)


@pytest.mark.parametrize(
    ("yaml_text", "message"),
    [
        (
            "auth: false\non: x\n",
            "True: unknown key; YAML reads an unquoted on, yes or true as the boolean true: "
            "to mean the word, quote it ('on')",
        ),
        (
            "auth: false\nlimits: {off: 2}\n",
            "limits.False: unknown key; YAML reads an unquoted off, no or false as the "
            "boolean false: to mean the word, quote it ('off')",
        ),
        (
            "auth: false\ndecision_log: {path: d.log, durability: off}\n",
            "decision_log.durability: expected str, got bool; YAML reads an unquoted off, "
            "no or false as the boolean false: to mean the word, quote it ('off')",
        ),
        (
            "auth: false\nassertion: {issuer: yes}\n",
            "assertion.issuer: expected str, got bool; YAML reads an unquoted on, yes or "
            "true as the boolean true: to mean the word, quote it ('on')",
        ),
        (
            "auth: false\ndecision_log: {path: d.log, mask_query_params: [token, no]}\n",
            "decision_log.mask_query_params[1]: expected a non-empty string; YAML reads an "
            "unquoted off, no or false as the boolean false: to mean the word, quote it ('off')",
        ),
    ],
)
def test_a_config_word_that_yaml_reads_as_a_boolean_is_refused_saying_to_quote_it(
    tmp_path: Path, yaml_text: str, message: str
) -> None:
    """`on: x` was "True: unknown key" and `durability: off` "expected str, got bool":
    neither said that YAML 1.1 had read the word as a boolean, nor how to keep it."""
    refused_saying(tmp_path, yaml_text, message)


# --- the signing key ---------------------------------------------------------------


def test_two_workers_without_a_key_file_are_refused_naming_assertion_key_file(
    tmp_path: Path,
) -> None:
    """Each worker made a key of its own: the JWKS endpoint answered with one or the
    other, and a backend refused about half the assertions."""
    config = tmp_path / "gateway.yaml"
    config.write_text(
        f"listeners: [{{address: 127.0.0.1, port: {free_port()}}}]\n{issuer_yaml()}"
        f"policy: {{source: {POLICIES}, watch: false}}\n"
    )
    process = gateway_process(config, "--workers", "2")
    err = finish(process, timeout=20)
    assert process.returncode == 2, err
    assert err.strip() == (
        f"config error: {config}: assertion.key_file: required with --workers 2: each worker "
        "would sign with a key of its own, and backends would refuse the assertions of all "
        "but one (a missing file is created, mode 0600)"
    )


async def test_workers_with_a_decision_log_and_no_key_file_publish_one_key(
    tmp_path: Path,
) -> None:
    """The key is kept beside the log, made once before the workers start: every
    worker's JWKS names the same key."""
    port = free_port()
    config = tmp_path / "gateway.yaml"
    config.write_text(
        f"listeners: [{{address: 127.0.0.1, port: {port}}}]\n{issuer_yaml()}"
        f"policy: {{source: {POLICIES}, watch: false}}\n"
        f"decision_log: {{path: {tmp_path / 'logs' / 'decisions.log'}}}\n"
    )
    process = gateway_process(config, "--workers", "2")
    kids = set()
    try:
        url = f"http://127.0.0.1:{port}"
        await wait_healthy(url, process)
        async with aiohttp.ClientSession() as session:
            for _ in range(40):  # SO_REUSEPORT spreads new connections over both workers
                async with session.get(
                    f"{url}/.well-known/portcullis/jwks.json", headers={"Connection": "close"}
                ) as response:
                    kids |= {key["kid"] for key in (await response.json())["keys"]}
    finally:
        process.send_signal(signal.SIGTERM)
        err = finish(process)
    assert process.returncode == 0, err
    assert len(kids) == 1
    assert (tmp_path / "logs" / "assertion-key.pem").stat().st_mode & 0o777 == 0o600
    assert "assertion.key_file not set: assertions and the decision log are signed with" in err


async def test_a_decision_log_without_a_key_file_can_be_verified_after_the_gateway_exits(
    tmp_path: Path,
) -> None:
    """The key used to live only in memory: once the gateway exited, nothing could
    check the log's chain signatures."""
    port = free_port()
    log = tmp_path / "decisions.log"
    config = tmp_path / "gateway.yaml"
    config.write_text(
        f"listeners: [{{address: 127.0.0.1, port: {port}}}]\nauth: false\n"
        f"policy: {{source: {POLICIES}, watch: false}}\ndecision_log: {{path: {log}}}\n"
    )
    process = gateway_process(config)
    try:
        await wait_healthy(f"http://127.0.0.1:{port}", process)
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"http://127.0.0.1:{port}/nowhere") as response,
        ):
            assert response.status == 404  # a logged no_route refusal
    finally:
        process.send_signal(signal.SIGTERM)
        err = finish(process)
    assert process.returncode == 0, err
    verified = subprocess.run(
        [sys.executable, "-m", "portcullis", "audit", "verify", str(log),
         "--key", str(tmp_path / "assertion-key.pem")],
        capture_output=True, text=True, timeout=60, cwd=ROOT,
    )  # fmt: skip
    assert verified.returncode == 0, verified.stdout + verified.stderr


async def test_a_gateway_signing_with_a_key_in_memory_says_so_at_start(
    aiohttp_server: ServerFactory, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, "portcullis.gateway")
    async with start_stack(
        aiohttp_server, tmp_path, assertion=AssertionConfig(), decision_log=DecisionLogConfig()
    ):
        pass
    assert "assertion.key_file not set: signing with a key made at start" in caplog.text


# --- routes and the catalogue -----------------------------------------------------------


def routes(**prefixes: str) -> tuple[Route, ...]:
    """The stack's apps at the catalogue's prefixes, or at these (nothing here reaches
    an upstream: each request is refused or denied first)."""
    return tuple(
        Route(app, "http://127.0.0.1:9", prefixes.get(app, prefix)) for app, prefix in APPS.items()
    )


async def test_a_route_mounting_pos_outside_its_catalogue_prefix_is_refused_at_start(
    aiohttp_server: ServerFactory, tmp_path: Path
) -> None:
    """pos under /store/: /store/refunds/1 matched none of the catalogue's path rules
    (`/pos/refunds/` needs a hardware key) and was served with an OTP."""
    with pytest.raises(RuntimeError) as refused:
        async with start_stack(aiohttp_server, tmp_path, routes=routes(pos="/store/")):
            pass
    assert str(refused.value) == (
        "routes[1]: app pos is mounted at path_prefix /store/, but the policy's catalogue "
        "has it at /pos/: its path rules match paths under /pos/ and would never apply to "
        "this route; use path_prefix /pos/ (or one under it)"
    )


async def test_a_route_under_the_catalogue_prefix_keeps_the_refund_rule(
    aiohttp_server: ServerFactory, tmp_path: Path
) -> None:
    refunds = (*routes(), Route("pos", "http://127.0.0.1:9", "/pos/refunds/"))
    async with start_stack(aiohttp_server, tmp_path, routes=refunds) as running:
        response = await running.get("/pos/refunds/1", running.token("bob", **STORE_OTP))
        assert response.status == 403
        assert (await response.json())["step_up"] == {"acr": "phr", "max_age": 900}


def move_pos(policy: Path, prefix: str) -> None:
    apps = policy / "data/apps.yaml"
    text = apps.read_text().replace("path_prefix: /pos/", f"path_prefix: {prefix}")
    apps.write_text(text.replace("prefix: /pos/refunds/", f"prefix: {prefix}refunds/"))


async def test_a_reload_whose_catalogue_moves_pos_is_rejected_and_refunds_keep_their_rule(
    aiohttp_server: ServerFactory, tmp_path: Path, policy_copy: Path
) -> None:
    """The catalogue moved pos (and its refund rule) to /store/ while the route still
    serves /pos/: the reloaded policy would have let /pos/refunds/1 through on an OTP."""
    async with start_stack(
        aiohttp_server, tmp_path, policy=policy_copy, policy_options={"watch": False}
    ) as running:
        holder = running.gateway.policy
        revision = holder.engine.revision if holder.engine else None
        move_pos(policy_copy, "/store/")
        assert not await holder.reload("test")
        assert holder.last_error is not None
        assert holder.last_error.startswith(
            "routes[1]: app pos is mounted at path_prefix /pos/, but the policy's catalogue "
            "has it at /store/"
        )
        assert holder.engine is not None and holder.engine.revision == revision
        assert running.gateway.metrics.policy_reloads.labels("rejected")._value.get() == 1
        response = await running.get("/pos/refunds/1", running.token("bob", **STORE_OTP))
        assert response.status == 403


async def test_a_reload_that_moves_an_app_away_from_its_catalogue_route_is_rejected(
    aiohttp_server: ServerFactory, tmp_path: Path, policy_copy: Path
) -> None:
    """Without `routes`, the routes are the catalogue's at start: a reload that moves
    an app doesn't move its route, so it is refused until a restart."""
    async with start_stack(
        aiohttp_server, tmp_path, policy=policy_copy, routes=(), policy_options={"watch": False}
    ) as running:
        move_pos(policy_copy, "/store/")
        assert not await running.gateway.policy.reload("test")
        assert (running.gateway.policy.last_error or "").startswith(
            "the catalogue's route for pos (taken at start): app pos is mounted at "
            "path_prefix /pos/, but the policy's catalogue has it at /store/"
        )


async def test_a_route_to_an_app_not_in_the_catalogue_is_warned_of_at_start(
    aiohttp_server: ServerFactory, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, "portcullis.gateway")
    inventory = Route("inventory", "http://127.0.0.1:9", "/inv/")
    async with start_stack(aiohttp_server, tmp_path, routes=(*routes(), inventory)) as running:
        assert (await running.get("/inv/x", running.token("bob", **STORE_OTP))).status == 404
    assert (
        "routes[3]: app inventory is not in the policy's catalogue: every request to /inv/ "
        "is denied (no app in the catalogue)"
    ) in caplog.text


def drop_analytics(policy: Path) -> None:
    apps = policy / "data/apps.yaml"
    data = yaml.safe_load(apps.read_text())
    del data["portcullis"]["catalogue"]["apps"]["analytics"]
    apps.write_text(yaml.safe_dump(data))


async def wait_until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


async def test_a_hot_reload_that_drops_an_app_a_route_serves_is_rejected(
    aiohttp_server: ServerFactory,
    tmp_path: Path,
    policy_copy: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The review: a catalogue edit that dropped analytics was accepted, and every
    request to the analytics route was then denied with a 404."""
    caplog.set_level(logging.ERROR, "portcullis.policy")
    async with start_stack(aiohttp_server, tmp_path, policy=policy_copy) as running:
        token = running.token("carol", groups=["analyst"])
        assert (await running.get("/analytics/dashboards", token)).status == 200
        holder = running.gateway.policy
        revision = holder.engine.revision if holder.engine else None
        rejected = running.gateway.metrics.policy_reloads.labels("rejected")
        drop_analytics(policy_copy)  # the watcher reloads it
        await wait_until(lambda: rejected._value.get() == 1)
        assert holder.last_error == (
            "routes[2]: app analytics is not in the policy's catalogue any more: every "
            "request to /analytics/ would be denied (404); keep analytics in the catalogue, "
            "or remove the route and restart"
        )
        assert f"policy {policy_copy} rejected (files changed); keeping the last good one" in (
            caplog.text
        )
        assert holder.engine is not None and holder.engine.revision == revision
        assert (await running.get("/analytics/dashboards", token)).status == 200


async def test_a_reload_is_not_held_to_an_app_the_catalogue_never_had(
    aiohttp_server: ServerFactory, tmp_path: Path, policy_copy: Path
) -> None:
    """A route to an app missing at start was warned of then; later reloads still load."""
    inventory = Route("inventory", "http://127.0.0.1:9", "/inv/")
    async with start_stack(
        aiohttp_server, tmp_path, policy=policy_copy, routes=(*routes(), inventory),
        policy_options={"watch": False},
    ) as running:  # fmt: skip
        apps = policy_copy / "data/apps.yaml"
        apps.write_text(apps.read_text().replace("groups: [analyst]", "groups: [analysts]"))
        assert await running.gateway.policy.reload("test"), running.gateway.policy.last_error


# --- the config file ---------------------------------------------------------------------


def test_a_key_given_twice_in_the_config_is_refused_with_its_line(tmp_path: Path) -> None:
    """PyYAML keeps the last of two keys: a second `routes:` replaced the first."""
    config = tmp_path / "gateway.yaml"
    config.write_text(
        "auth: false\n"
        "routes:\n  - {app: pos, path_prefix: /pos/, upstream: 'http://pos:8080'}\n"
        "policy: {source: policies}\n"
        "routes:\n  - {app: wms, path_prefix: /wms/, upstream: 'http://wms:8080'}\n"
    )
    with pytest.raises(ConfigError) as refused:
        load_config(config)
    assert str(refused.value) == (
        f"{config}:5:1: invalid YAML: duplicate key 'routes' (first at line 2); give each key once"
    )


def test_a_key_given_twice_inside_a_route_is_refused_but_a_merge_key_may_override(
    tmp_path: Path,
) -> None:
    config = tmp_path / "gateway.yaml"
    config.write_text(
        "auth: false\nroutes:\n"
        "  - {app: pos, path_prefix: /pos/, upstream: 'http://pos:8080', app: wms}\n"
    )
    with pytest.raises(ConfigError, match=r":3:65: invalid YAML: duplicate key 'app'"):
        load_config(config)
    config.write_text(
        "auth: false\nroutes:\n"
        "  - &pos {app: pos, path_prefix: /pos/, upstream: 'http://pos:8080'}\n"
        "  - {<<: *pos, path_prefix: /pos/refunds/}\n"
    )
    assert [r.path_prefix for r in load_config(config).routes] == ["/pos/", "/pos/refunds/"]


@pytest.mark.parametrize("host", ["127.0.0.1:24081", "gateway.example:443", "[::1]:8443"])
def test_a_route_host_with_a_port_is_refused(tmp_path: Path, host: str) -> None:
    """Routes match the request's Host without its port: one with a port never matched."""
    config = tmp_path / "gateway.yaml"
    config.write_text(
        f"auth: false\nroutes: [{{app: wms, host: '{host}', upstream: 'http://wms:8080'}}]\n"
    )
    with pytest.raises(ConfigError) as refused:
        load_config(config)
    assert str(refused.value) == (
        f"{config}: routes[0].host: a host name without a port (IPv6 in brackets), got {host!r}"
    )


def test_a_route_host_in_brackets_is_an_ipv6_address_not_a_port(tmp_path: Path) -> None:
    config = tmp_path / "gateway.yaml"
    config.write_text("auth: false\nroutes: [{app: wms, host: '[::1]', upstream: 'http://w'}]\n")
    assert load_config(config).routes[0].host == "[::1]"


@pytest.mark.parametrize(
    ("host", "problem"),
    [("[fe80::1%eth0]", "Host is not a valid IP literal ('[' IPv6 ']')"),
     ("gw example", "Host is not a host name or IPv4 address "
                    "(letters, digits, '-', '.', '_', '~')")],
)  # fmt: skip
def test_a_route_host_no_request_can_carry_is_refused(
    tmp_path: Path, host: str, problem: str
) -> None:
    """Requests with such a Host are refused before routing: the route could never match."""
    config = tmp_path / "gateway.yaml"
    config.write_text(
        f"auth: false\nroutes: [{{app: wms, host: '{host}', upstream: 'http://w'}}]\n"
    )
    with pytest.raises(ConfigError) as refused:
        load_config(config)
    assert str(refused.value) == f"{config}: routes[0].host: {problem}, got {host!r}"


def test_a_route_host_is_read_in_the_form_requests_are_matched_in(tmp_path: Path) -> None:
    config = tmp_path / "gateway.yaml"
    config.write_text(
        "auth: false\nroutes: [{app: wms, host: '[2001:DB8:0::1]', upstream: 'http://w'},\n"
        "  {app: pos, host: GW.Example, upstream: 'http://p'}]\n"
    )
    assert [r.host for r in load_config(config).routes] == ["[2001:db8::1]", "gw.example"]


def test_a_relative_policy_source_that_does_not_exist_names_where_it_was_looked_for(
    tmp_path: Path,
) -> None:
    """It is read from the config file's directory: the error said only `policies`,
    and that it kept "the last good one" when there was none."""
    (tmp_path / "etc").mkdir()
    config = tmp_path / "etc" / "gateway.yaml"
    config.write_text(
        f"listeners: [{{address: 127.0.0.1, port: {free_port()}}}]\nauth: false\n"
        "policy: {source: policies/}\n"
    )
    shutil.copytree(POLICIES, tmp_path / "policies")  # beside the working directory: not read
    process = gateway_process(Path("etc/gateway.yaml"), cwd=tmp_path)
    err = finish(process, timeout=30)
    assert process.returncode == 1, err
    assert "keeping the last good one" not in err
    assert "policy etc/policies failed to load (start):" in err
    assert (
        "(policy.source 'policies/' is read from the config file's directory: "
        f"{tmp_path / 'etc' / 'policies'})"
    ) in err
