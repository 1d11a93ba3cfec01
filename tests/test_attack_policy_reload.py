"""Attack review of the policy hot reload (gateway/policy/reload.py) as deployments
change policy files: `cp`, `>`, an editor, `rsync`, `tar x`, `git checkout`. One
test per attack, named for it. What they hold to (README "Hot reload"): the
gateway enforces only a policy someone wrote whole, never a file caught half
written, and never keeps enforcing an allow the files on disk no longer grant."""

from __future__ import annotations

import os
from pathlib import Path

from tests.gateway_stack import ServerFactory, start_stack
from tests.test_gateway_ops import wait_for

STORE = {"groups": ["store"], "amr": ["pwd", "otp"]}


async def test_a_same_size_edit_copied_with_its_old_mtime_is_still_reloaded(
    aiohttp_server: ServerFactory, tmp_path: Path, policy_copy: Path
) -> None:
    """`rsync -a`, `cp -p` and `tar x` give a file its source's mtime. The watcher
    compared path, mtime and size: an edit that kept the size (pos' group `store`
    renamed `clerk`) copied that way changed none of them, and the gateway let the
    store group into pos until some other change."""
    async with start_stack(aiohttp_server, tmp_path, policy=policy_copy) as running:
        token = running.token("alice", **STORE)
        assert (await running.get("/pos/sales", token)).status == 200
        apps = policy_copy / "data/apps.yaml"
        before = apps.stat()
        text = apps.read_text()
        assert text.count("groups: [store]") == 1
        apps.write_text(text.replace("groups: [store]", "groups: [clerk]"))
        os.utime(apps, ns=(before.st_atime_ns, before.st_mtime_ns))  # as rsync -a leaves it
        assert (apps.stat().st_mtime_ns, apps.stat().st_size) == (
            before.st_mtime_ns,
            before.st_size,
        )
        reloads = running.gateway.metrics.policy_reloads
        await wait_for(lambda: reloads.labels("ok")._value.get() >= 2)
        assert (await running.get("/pos/sales", token)).status == 403
