"""Keep the cyclic garbage collector off the gateway's long-lived heap (gc.freeze).

A full collection walks every object the process holds: the modules, the loaded
policy, the pools. Measured on the bench gateway: ~30-45 ms per full collection,
one every 2-3 s at saturation, each a stall of the event loop that every request
in flight waits out; it set the p99. Objects frozen here are never walked again,
so a full collection walks only what was made since (~1 ms). Refcounting still
frees frozen objects; only a frozen *cycle* would never be collected, hence a
collection first, and a thaw-collect-freeze again when the policy is swapped
(the old policy's objects are collected then: one full collection per reload,
instead of one every few seconds).
"""

from __future__ import annotations

import gc


def freeze() -> None:
    """Collect everything, then move every live object out of the collector's reach."""
    gc.unfreeze()  # what an earlier freeze held is walked (and freed, if garbage) again
    gc.collect()
    gc.freeze()
