"""Where one CNI request's time goes: named stamps, kept only when someone asks.

The handlers call `mark(step)` at the end of each named step. Nothing is recorded unless
the thread serving the request called `start()` first (the fast-path server does when run
with `--step-times`; docs/benchmarks.md publishes the table): with no record, `mark` costs
one thread-local attribute lookup, well under a microsecond against milliseconds a request.
"""
from __future__ import annotations

import threading
import time
from typing import Optional

_local = threading.local()


def mark(step: str) -> None:
    """Stamp the end of `step` in this thread's record, if one is kept."""
    record = getattr(_local, "record", None)
    if record is not None:
        record.append((step, time.perf_counter()))


def start(at: Optional[float] = None) -> None:
    """Keep a record for this thread from `at` (a perf_counter value; default now)."""
    _local.record = [("", time.perf_counter() if at is None else at)]


def stop() -> list[tuple[str, float]]:
    """End this thread's record: [(step, seconds)] in order, a repeated step once per mark."""
    record = getattr(_local, "record", None) or []
    _local.record = None
    return [(step, t - previous) for (step, t), (_, previous) in zip(record[1:], record)]
