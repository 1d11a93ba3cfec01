"""How much more CPU one piece of work costs than another, on a shared machine.

The two are measured in turn, round after round, so a busy machine slows both
alike, and each side's least time is taken, so neither's worst round counts.
The garbage collector is off while they run: a collection that fell in one of
the light rounds would make the heavy work look cheap, and the test pass on
the code it is there to refuse.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable
from typing import Any


def cpu_per_call(work: Callable[[], Any], calls: int) -> float:
    """CPU seconds (this thread's) one call of ``work`` takes, over ``calls`` calls."""
    start = time.thread_time()
    for _ in range(calls):
        work()
    return (time.thread_time() - start) / calls


def cpu_ratio(
    heavy: Callable[[], Any], light: Callable[[], Any], rounds: int = 7, calls: int = 10
) -> float:
    """``heavy``'s least CPU time a call over ``light``'s."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        times = [(cpu_per_call(heavy, calls), cpu_per_call(light, calls)) for _ in range(rounds)]
    finally:
        if enabled:
            gc.enable()
    return min(spent for spent, _ in times) / min(spent for _, spent in times)
