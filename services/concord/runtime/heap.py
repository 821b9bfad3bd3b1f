"""The worker's Python heap: how long the cyclic garbage collector stops it.

A worker holds large caches (normalization's identity views and code maps, the conflicts
stage's attribute states, the narrative worker's language models), and a full collection
walks every object in them while the batch waits. `watch_collections` times each pause into
concord_gc_pause_seconds; `settle` moves what the worker built at start (modules, schemas, the
policy, models) out of the collector's sight, since it lives as long as the process."""

from __future__ import annotations

import gc
import time
from typing import Any

from concord import metrics

# Allocations between young collections (CPython's default: 700). A batch makes hundreds of
# thousands of short-lived objects; at 700 many are still alive at a young collection, are
# promoted, and make full collections of the whole heap frequent (10-11% of normalization's
# and the conflicts stage's time in the stack at 500 events/s, about 1% at this value).
YOUNG_THRESHOLD = 50_000
OLDER_THRESHOLDS = (20, 10)

_started: list[float] = []


def _time_collection(phase: str, info: dict[str, Any]) -> None:
    if phase == "start":
        _started[:] = [time.perf_counter()]
    elif _started:
        elapsed = time.perf_counter() - _started.pop()
        metrics.GC_PAUSE_SECONDS.labels(str(info.get("generation", 2))).observe(elapsed)


def watch_collections() -> None:
    """Time every collection into concord_gc_pause_seconds (once per process)."""
    if _time_collection not in gc.callbacks:
        gc.callbacks.append(_time_collection)


def settle() -> None:
    """Collect what start-up left, then freeze the survivors: objects that live as long as the
    worker are never walked again by a full collection (they are still freed by reference
    counting, which is how almost everything here is freed). Then collect the young
    generation less often (YOUNG_THRESHOLD)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(YOUNG_THRESHOLD, *OLDER_THRESHOLDS)
