"""Micro-benchmark of FHIR ingestion's pure core (issue 17): ingest_fhir per event on part 3's
FHIR mix (pipeline.py: a Patient, an Observation, a Condition and a transaction Bundle of four,
in turn), with the fast structural check (fhir_fast) and with every resource validated by
fhir.resources, in one process and one run, in alternating rounds so that both see the same
machine. Prints µs per event for each path and kind of event, and the ratio. No broker, no
Avro, no PostgreSQL: the stage's other costs are not here (docs/benchmarks.md).

    .venv/bin/python benchmarks/fhir_validation.py [--events 2000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import gc
import statistics
import time
from datetime import UTC, datetime

from benchlib.raw_formats import fhir_events

from concord.events.raw import RawEvent
from concord.ingestion import fhir

KINDS = ("Patient", "Observation", "Condition", "Bundle of 4")


def _events(count: int) -> list[RawEvent]:
    values, _ = fhir_events("fv", count)
    received = datetime.now(UTC)
    return [
        RawEvent(
            topic="ehr.raw.fhir",
            partition=0,
            offset=i,
            key=b"k",
            value=value,
            headers=(("source", b"bench-fhir-ehr"),),
            received_time=received,
        )
        for i, value in enumerate(values)
    ]


def _per_kind(events: list[RawEvent], fast: bool) -> list[float]:
    """µs per event of each kind (the mix cycles through them)."""
    fhir.FAST_PATH = fast
    totals = [0.0] * len(KINDS)
    gc.collect()
    for i, event in enumerate(events):
        start = time.perf_counter()
        outcome = fhir.ingest_fhir(event, max_payload_bytes=1_000_000)
        totals[i % 4] += time.perf_counter() - start
        assert isinstance(outcome, list), outcome
    per_kind = len(events) / 4
    return [total / per_kind * 1e6 for total in totals]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=2000, help="events per round (mix of 4)")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds per path")
    args = parser.parse_args()
    events = _events(args.events - args.events % 4)
    _per_kind(events[:200], False)  # warm-up: imports, model schemas, the fast check's tables
    _per_kind(events[:200], True)
    runs: dict[bool, list[list[float]]] = {False: [], True: []}
    for _ in range(args.rounds):
        for fast in (False, True):
            runs[fast].append(_per_kind(events, fast))
    fhir.FAST_PATH = True
    print(f"ingest_fhir on {len(events)} events of the FHIR mix, median of {args.rounds} rounds")
    print(f"{'event':<14}{'fhir.resources':>16}{'fast path':>12}{'speed-up':>10}")
    for position, kind in enumerate(KINDS):
        slow = statistics.median(run[position] for run in runs[False])
        fast = statistics.median(run[position] for run in runs[True])
        print(f"{kind:<14}{slow:>13.1f} µs{fast:>9.1f} µs{slow / fast:>9.2f}x")
    slow_mean = statistics.median(sum(run) / 4 for run in runs[False])
    fast_mean = statistics.median(sum(run) / 4 for run in runs[True])
    print(
        f"{'mix (mean)':<14}{slow_mean:>13.1f} µs{fast_mean:>9.1f} µs{slow_mean / fast_mean:>9.2f}x"
    )
    print(f"fast / old time per event: {fast_mean / slow_mean:.2f}")


if __name__ == "__main__":
    main()
