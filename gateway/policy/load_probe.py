"""A hot reload's first load of a policy set, in a child process it can kill.

Loading evaluates every rule once (policy_engine.embedded.compile_policy), and
regorus holds the GIL while it evaluates: a rule that takes seconds, or never
ends, evaluated on a thread of the gateway's process stops its event loop for as
long, so no request is answered. A live gateway therefore has a child process
build the candidate first, within LOAD_PROBE_TIMEOUT, and builds it itself only
when that passed, without evaluating the rules again.

The child runs :func:`main` with the gateway's ``sys.path``: exit 0 when SOURCE
loads as the gateway loads it, else exit 1 with why on stdout.
"""

from __future__ import annotations

import json
import subprocess
import sys

# How long (seconds) a child may take to load a candidate policy: the shipped set
# takes ~0.6 s with the interpreter's start. Longer is a rule too slow to serve with.
LOAD_PROBE_TIMEOUT = 30.0


def probe(source: str, *, timeout_ms: float, limit: float | None = None) -> str | None:
    """Why ``source`` can't load, found by loading it in a child process that is
    killed after ``limit`` seconds (LOAD_PROBE_TIMEOUT); None when it loads."""
    limit = LOAD_PROBE_TIMEOUT if limit is None else limit
    # The child imports from the gateway's own path, nothing else: not the
    # working directory "-m" or "" would put first, which may be another's.
    path = json.dumps([entry for entry in sys.path if entry])
    command = [sys.executable, "-P", "-c", _CHILD, path, source, repr(timeout_ms)]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=limit)
    except subprocess.TimeoutExpired:  # run() killed it
        return (
            f"{source}: loading it took over {limit:g} s (each rule is evaluated once at "
            "load, on empty input): a rule that slow would stall every decision"
        )
    if done.returncode == 0:
        return None
    return done.stdout.strip() or (
        f"{source}: the process loading it ended with status {done.returncode}"
        f"{': ' + done.stderr.strip()[-500:] if done.stderr.strip() else ''}"
    )


_CHILD = (
    "import json, sys; sys.path[:] = json.loads(sys.argv[1]); "
    "from gateway.policy.load_probe import main; sys.exit(main(sys.argv[2:]))"
)


def main(argv: list[str]) -> int:
    from gateway.policy.reload import build_or_reason

    source, timeout_ms = argv
    engine, error = build_or_reason(source, timeout_ms=float(timeout_ms))
    if engine is None:
        print(error)
        return 1
    return 0
