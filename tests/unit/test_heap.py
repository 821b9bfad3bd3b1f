"""The worker's heap (runtime/heap.py): the collector's pauses are timed, and what the worker
built at start is kept out of full collections."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest
from prometheus_client import REGISTRY

from concord.runtime import heap


def _pauses(generation: str) -> float:
    value = REGISTRY.get_sample_value("concord_gc_pause_seconds_count", {"generation": generation})
    return value or 0.0


@pytest.fixture
def restored_collector() -> Iterator[None]:
    thresholds, callbacks, enabled = gc.get_threshold(), list(gc.callbacks), gc.isenabled()
    yield
    if enabled:
        gc.enable()
    gc.unfreeze()
    gc.set_threshold(*thresholds)
    gc.callbacks[:] = callbacks


@pytest.mark.usefixtures("restored_collector")
def test_every_collection_is_timed_by_its_generation_and_the_watch_is_installed_once() -> None:
    gc.disable()  # only the collections the test asks for
    heap.watch_collections()
    heap.watch_collections()
    before = (_pauses("0"), _pauses("2"))
    gc.collect(0)
    gc.collect()
    assert (_pauses("0") - before[0], _pauses("2") - before[1]) == (1.0, 1.0)


@pytest.mark.usefixtures("restored_collector")
def test_settling_freezes_what_lives_now_and_makes_full_collections_rarer() -> None:
    survivor = [object() for _ in range(1000)]
    heap.settle()
    assert gc.get_freeze_count() >= len(survivor)
    young, middle, old = gc.get_threshold()
    assert young >= 10_000 and middle >= 10 and old >= 10
    cycle: list[object] = []
    cycle.append(cycle)
    del cycle
    # Frozen objects are never collected, but garbage made after settling still is.
    assert gc.collect() >= 1
