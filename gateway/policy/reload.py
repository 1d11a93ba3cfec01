"""Keep the newest good policy: load, hot reload on change or SIGHUP, never regress."""

from __future__ import annotations

import asyncio
import logging
import os
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gateway.metrics import Metrics
from gateway.policy import load_probe
from gateway.policy.decision import DECISION_REF, lets_through
from gateway.policy.input_contract import unprovided_reads
from gateway.policy.memo import READS_REF
from policy_engine import (
    EmbeddedEngine,
    OpaServerEngine,
    PolicyEngine,
    PolicyError,
    PolicyLoadError,
    Problem,
    load_policy_set,
)

log = logging.getLogger("portcullis.policy")


Fingerprint = tuple[tuple[str, int, int, int], ...]
# A policy source that changed while it was read is read again, this often at most,
# pausing a little longer each time (seconds).
SETTLE_TRIES = 5
SETTLE_PAUSE = 0.05
# A reload reads a source only once none of its files has changed for this long
# (seconds, by their ctime). `cp`, `>`, an editor, `rsync --inplace` and `git
# checkout` write a file, or several, in steps: a file caught between two steps
# that stops after a complete rule, or a data file cut after an app's groups (its
# MFA gone), still loads, and a policy nobody wrote was enforced. Waited for this
# many times at most while the files keep changing.
QUIET = 2.0
QUIET_TRIES = 10


def source_fingerprint(source: Path) -> Fingerprint | None:
    """What a policy source's files look like now (path, mtime, ctime, size): a reload
    is due when it changes. The ctime, which no one can set back, too: `rsync -a`,
    `cp -p` and `tar x` give a file its source's mtime, so an edit of the same size
    (a group renamed store -> clerk) copied that way left path, mtime and size as
    they were, and the old policy was enforced until some other change. None when
    the source changed while it was read (a directory removed mid-scan, as a
    Kubernetes ConfigMap update swaps its ``..<timestamp>`` directories): ask again
    on the next tick."""
    try:
        return _fingerprint(source)
    except (FileNotFoundError, NotADirectoryError):
        return None


def changed(source: Path, known: Fingerprint) -> bool:
    """Whether ``source`` differs from ``known``; False while it is missing or
    changing under the scan (the next tick sees it settled)."""
    if not os.path.exists(source):
        return False
    now = source_fingerprint(source)
    return now is not None and now != known


def _fingerprint(source: Path) -> Fingerprint:
    files = [source] if source.is_file() else sorted(p for p in source.rglob("*") if p.is_file())
    state = []
    for file in files:
        try:
            stat = file.stat()
            # A link's target too: a ConfigMap update relinks `..data` to new files.
            name = f"{file} -> {os.path.realpath(file)}" if file.is_symlink() else str(file)
        except FileNotFoundError:
            continue
        state.append((name, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_size))
    return tuple(state)


def quiet_fingerprint(source: Path, quiet: float, changed_at: float = 0.0) -> Fingerprint | None:
    """The source's fingerprint once none of its files has changed for ``quiet``
    seconds (waiting for that), or None if they kept changing. ``changed_at``:
    when (time.time()) a change was seen here. A ctime is stamped by the clock
    of whoever holds the file (a network mount's server): one behind this
    host's makes a file being written look old, so a change seen here counts
    from when it was seen, whatever its ctime says."""
    seen: Fingerprint | None = None
    for _ in range(QUIET_TRIES):
        before = source_fingerprint(source)
        if before is None:  # changing under the scan
            time.sleep(quiet)
            continue
        now = time.time()
        if seen is not None and before != seen:
            changed_at = now
        seen = before
        newest = max(max((entry[2] for entry in before), default=0) / 1e9, changed_at)
        wait = quiet - (now - newest)
        if wait <= 0:
            return before
        # A ctime ahead of this clock (a network mount's server): seen unchanged
        # for ``quiet`` here instead.
        time.sleep(min(wait, quiet))
        if wait >= quiet and source_fingerprint(source) == before:
            return before
    return None


def build_engine(source: str, *, timeout_ms: float, evaluate: bool = True) -> PolicyEngine:
    """The engine the gateway decides with for ``source``: an OPA URL, or a policy
    directory or bundle on the embedded engine with the decision on its compiled
    VM. Replay and shadow mode build theirs here too, so they decide alike.
    Raises PolicyError, OSError or ValueError when it can't load (a hot reload
    rejects anything else it raises too: see :func:`build_or_reason`).
    ``evaluate=False``: its rules were evaluated once by a child (load_probe)."""
    if source.startswith(("http://", "https://")):
        return OpaServerEngine(source, timeout=timeout_ms / 1000)
    engine = EmbeddedEngine(
        load_policy_set(source),
        timeout=timeout_ms / 1000,
        compiled_refs=(DECISION_REF, READS_REF),  # reads: only if the policy has it
        confirm=lets_through,
        evaluate_at_load=evaluate,
        without_tests=True,  # as the VM: a rule in a test file never decides
    )
    if engine.rvm_problem is not None:
        # Correct, on the interpreter, and slower: a deny costs what an allow does.
        log.warning(
            "%s: the decision runs on the interpreter, not the compiled VM: %s",
            source, engine.rvm_problem,
        )  # fmt: skip
    for problem in unprovided_reads(engine.compiled):
        log.warning("%s", problem)
    if not engine.compiled.knows(DECISION_REF):
        # It would deny every request: a reload keeps the last good policy instead,
        # and replay or shadow mode say so once rather than once per decision.
        message = (
            f"no rule {DECISION_REF.removeprefix('data.')}: the gateway asks every "
            "request of it (package portcullis.gateway, rule decision)"
        )
        raise PolicyLoadError([Problem(source, message)])
    return engine


def build_or_reason(
    source: str,
    *,
    timeout_ms: float,
    probed: bool = False,
    quiet: float = 0.0,
    changed_at: float = 0.0,
) -> tuple[PolicyEngine | None, str | None]:
    """The engine for ``source``, or why it didn't load, from files that did not
    change while they were read. Files are read one by one (a ConfigMap mount's
    each through its ``..data`` link): a change between two reads would build a
    policy set that is neither the old version nor the new one, possibly without a
    rule that both have, so such a build is dropped and the files read again.

    ``probed`` (a hot reload of a live gateway): a child process loads the files
    first, within load_probe.LOAD_PROBE_TIMEOUT, and this process builds them only
    when that passed, without evaluating the rules again (regorus would hold the
    GIL, and the event loop, for as long as they take). The files must not change
    from before the child read them until this build has.

    ``quiet`` (a reload): the files are read only once none has changed for that
    many seconds (QUIET), so a file written in steps is read whole; a change
    seen at ``changed_at`` (time.time()) is no older than that."""
    if source.startswith(("http://", "https://")):
        return _build_or_reason(source, timeout_ms=timeout_ms)
    for attempt in range(SETTLE_TRIES):
        if attempt:
            time.sleep(SETTLE_PAUSE * attempt)
        before = (
            quiet_fingerprint(Path(source), quiet, changed_at)
            if quiet
            else source_fingerprint(Path(source))
        )
        if quiet and before is None:
            return None, (
                f"{source}: its files kept changing for {QUIET_TRIES * quiet:g} s: a "
                f"policy set is loaded once none of its files changed for {quiet:g} s"
            )
        engine: PolicyEngine | None = None
        error = load_probe.probe(source, timeout_ms=timeout_ms) if probed else None
        if error is None:
            engine, error = _build_or_reason(source, timeout_ms=timeout_ms, evaluate=not probed)
        if before is not None and source_fingerprint(Path(source)) == before:
            return engine, error
        engine = None  # dropped here, on the thread that built it
    return None, (
        f"{source}: its files kept changing while they were read ({SETTLE_TRIES} "
        "tries): a policy set read across a change is not loaded"
    )


def _build_or_reason(
    source: str, *, timeout_ms: float, evaluate: bool = True
) -> tuple[PolicyEngine | None, str | None]:
    """The engine for ``source``, or why it didn't load. Anything the build raises is
    a rejected policy, never the end of the caller: a hot reload that let an
    unexpected error through would stop reloading for good. The error comes back
    as text, so no traceback keeps the failed engine alive (regorus objects must
    be dropped on the thread that made them)."""
    try:
        return build_engine(source, timeout_ms=timeout_ms, evaluate=evaluate), None
    except (PolicyError, OSError, ValueError) as error:
        return None, str(error)
    except Exception as error:  # fail closed on anything
        where = traceback.extract_tb(error.__traceback__)[-1]  # text: no frames kept
        return None, f"unexpected {type(error).__name__}: {error} ({where.filename}:{where.lineno})"


def catalogue_apps(engine: PolicyEngine | None) -> dict[str, Any] | None:
    """The app catalogue (data.portcullis.catalogue.apps) of an embedded policy; None
    when the policy has none or its data can't be read here (an OPA server)."""
    if not isinstance(engine, EmbeddedEngine):
        return None
    data = engine.compiled.policy_set.data
    apps = data.get("portcullis", {}).get("catalogue", {}).get("apps")
    return apps if isinstance(apps, dict) else None


class PolicyHolder:
    """The live engine. A reload builds the new engine off the event loop and swaps
    it in only when it passed every load check; requests already running keep the
    engine they started with, so a reload fails none of them."""

    def __init__(self, source: str, *, timeout_ms: float, metrics: Metrics) -> None:
        self.source = source
        self.timeout = timeout_ms / 1000
        self.metrics = metrics
        self.engine: PolicyEngine | None = None
        self.last_error: str | None = None
        self._lock = asyncio.Lock()
        self._fingerprint: Fingerprint = ()
        self._changed_at = 0.0  # when the watcher last saw the files change (time.time())
        # Called after a new engine replaced another (the runner re-freezes the heap).
        self.on_swap: Callable[[], None] | None = None
        # Why a policy that loaded can't be used here (the gateway: its catalogue
        # disagrees with the routes), or None; a reason rejects it like a load error.
        self.vet: Callable[[PolicyEngine], str | None] | None = None

    @property
    def is_remote(self) -> bool:
        return self.source.startswith(("http://", "https://"))

    def _build_in_worker(self) -> tuple[PolicyEngine | None, str | None]:
        # At start nothing is served yet; once a policy is live, a candidate is loaded
        # by a child first, so that a very slow rule can't stop the event loop.
        live = self.engine is not None
        engine, error = build_or_reason(
            self.source,
            timeout_ms=self.timeout * 1000,
            probed=live,
            quiet=QUIET if live else 0.0,
            changed_at=self._changed_at,
        )
        if engine is not None and self.vet is not None:
            error = self.vet(engine)
            if error is not None:
                engine = None  # dropped on the thread that built it
        return engine, error

    def catalogue(self) -> dict[str, Any]:
        return catalogue_apps(self.engine) or {}

    async def reload(self, why: str) -> bool:
        async with self._lock:
            if not self.is_remote:
                # Taken before the build: a change during it is seen next tick. Not
                # taken (the source changing under the scan): () reloads next tick.
                self._fingerprint = source_fingerprint(Path(self.source)) or ()
            loop = asyncio.get_running_loop()
            engine, error = await loop.run_in_executor(None, self._build_in_worker)
            if engine is None:
                self.last_error = error
                self.metrics.policy_reloads.labels("rejected").inc()
                if self.engine is None:  # at start: there is no last good one
                    log.error("policy %s failed to load (%s):\n%s", self.source, why, error)
                else:
                    log.error("policy %s rejected (%s); keeping the last good one:\n%s",
                              self.source, why, error)  # fmt: skip
                return False
            previous, self.engine = self.engine, engine
            self.last_error = None
            self.metrics.policy_reloads.labels("ok").inc()
            self.metrics.policy_revision.clear()
            self.metrics.policy_revision.labels(engine.revision).set(1)
            log.info("policy %s loaded (%s), revision %s", self.source, why, engine.revision)
            if previous is not None and previous is not engine:
                await previous.close()
                del previous  # unreferenced before on_swap, so it can be freed there
                if self.on_swap is not None:
                    self.on_swap()
            return True

    async def watch(self, interval: float) -> None:
        """Reload when a file under the policy source changes (mtime, ctime or size). Runs
        until cancelled: a failure is logged and the next tick tries again."""
        if self.is_remote:
            return
        source = Path(self.source)
        while True:
            await asyncio.sleep(interval)
            try:
                if changed(source, self._fingerprint):
                    self._changed_at = time.time()
                    await self.reload("files changed")
            except Exception:  # the watcher must outlive any one failure
                log.exception("policy %s: checking for changes failed; trying again in %s s",
                              self.source, interval)  # fmt: skip
