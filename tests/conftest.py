"""Shared fixtures: where the project's parts and the reference corpora live."""

from __future__ import annotations

import gc
import shutil
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
POLICIES = ROOT / "policies"
FIXTURES = ROOT / "tests" / "fixtures"
SHARED = ROOT.parent / "shared"


@pytest.fixture(autouse=True, scope="module")
def _collect_on_the_main_thread() -> Iterator[None]:
    """A regorus engine may be dropped only on the thread that made it. A test
    module's engines caught in reference cycles (a traceback's frames) are
    collected here, on the main thread, and not by a later module's garbage
    collection on a worker thread (a gateway's executor), where regorus raises
    "Engine is unsendable, but is being dropped on another thread"."""
    yield
    gc.collect()


@pytest.fixture
async def stack(aiohttp_server: Any, tmp_path: Path) -> AsyncIterator[Any]:
    """The whole gateway on loopback (tests/gateway_stack.py)."""
    from tests.gateway_stack import start_stack

    async with start_stack(aiohttp_server, tmp_path) as running:
        yield running


@pytest.fixture
def policy_copy(tmp_path: Path) -> Path:
    """A copy of the shipped policy set to edit (a reload, a broken file)."""
    target = tmp_path / "policies"
    shutil.copytree(POLICIES, target)
    return target


def complete_lines(text: str) -> list[str]:
    """The lines of a file another process or thread is still appending to, less a
    last one it hasn't finished writing (no newline yet): read whole on the next look."""
    return text[: text.rfind("\n") + 1].splitlines()
