"""What the benchmarks read off a running stack and its database: each process's CPU, the
workers' batch counters, latency percentiles, and the size of the conflicts state per
patient."""

from __future__ import annotations

import contextlib
import statistics
from collections.abc import Sequence
from typing import Any

import asyncpg
import psutil

from concord.stack.processes import metric_samples
from concord.stack.stack import StackInfo, worker_service


def cpu_seconds(info: StackInfo) -> dict[str, float]:
    """CPU seconds so far of each stack process and its children, and of this process."""
    usage: dict[str, float] = {}
    records = [r for r in (info.broker, info.postgres) if r is not None]
    for record in [*records, *info.workers.values()]:
        with contextlib.suppress(psutil.Error):
            proc = psutil.Process(record.pid)
            total = 0.0
            for p in [proc, *proc.children(recursive=True)]:
                with contextlib.suppress(psutil.Error):
                    times = p.cpu_times()
                    total += times.user + times.system
            usage[record.name] = total
    own = psutil.Process().cpu_times()
    usage["benchmark (publisher + alert reader)"] = own.user + own.system
    return usage


BATCH_METRICS = (
    "concord_batch_seconds_sum",
    "concord_batch_seconds_count",
    "concord_batch_size_sum",
)


# A batch's phases (concord_batch_phase_seconds), in the order the loop runs them.
BATCH_PHASES = ("process", "produce", "after_produce", "commit")
# The worker's garbage-collector pauses (concord_gc_pause_seconds): all, and the full ones.
COLLECTOR_PAUSES = ("gc_seconds", "gc_full_seconds")


def batch_metrics(info: StackInfo) -> dict[str, dict[str, float]]:
    """Each worker's batch counters from its /metrics (time in batches, batches, records, and
    the time in each phase as ``phase:<name>``), by the worker's name (``conflicts``,
    ``conflicts-2``...)."""
    result: dict[str, dict[str, float]] = {}
    for name, record in info.workers.items():
        assert record.port is not None, name
        phases = (f"phase:{p}" for p in BATCH_PHASES)
        values = dict.fromkeys((*BATCH_METRICS, *phases, *COLLECTOR_PAUSES), 0.0)
        stage = worker_service(record)
        for sample in metric_samples(record.port):
            if sample.name == "concord_gc_pause_seconds_sum":  # the worker's own process
                values["gc_seconds"] += sample.value
                if sample.labels.get("generation") == "2":
                    values["gc_full_seconds"] += sample.value
                continue
            if sample.labels.get("stage") != stage:
                continue
            key = sample.name
            if key == "concord_batch_phase_seconds_sum":
                key = f"phase:{sample.labels.get('phase')}"
            if key in values:
                values[key] += sample.value
        result[name] = values
    return result


def batch_summary(
    before: dict[str, dict[str, float]], after: dict[str, dict[str, float]], wall: float
) -> dict[str, dict[str, float]]:
    summary = {}
    for name, values in after.items():
        busy, batches, records = (values[m] - before[name][m] for m in BATCH_METRICS)
        phases = {p: values[f"phase:{p}"] - before[name][f"phase:{p}"] for p in BATCH_PHASES}
        summary[name] = {
            "batches": int(batches),
            "records_per_batch": round(records / batches, 1) if batches else 0.0,
            "ms_per_batch": round(busy / batches * 1000, 2) if batches else 0.0,
            "busy_share": round(busy / wall, 3),
            "phase_shares": {p: round(t / busy, 3) if busy else 0.0 for p, t in phases.items()},
            # Collector pauses while the stage ran, as a share of the wall time.
            **{
                f"{k}_share": round((values[k] - before[name][k]) / wall, 3)
                for k in COLLECTOR_PAUSES
            },
        }
    return summary


def percentiles(values: Sequence[float]) -> dict[str, float]:
    ordered = sorted(values)
    cuts = statistics.quantiles(ordered, n=100, method="inclusive") if len(ordered) > 1 else []

    def pick(p: int) -> float:
        return cuts[p - 1] if cuts else ordered[0]

    return {
        "p50_ms": round(pick(50) * 1000, 1),
        "p95_ms": round(pick(95) * 1000, 1),
        "p99_ms": round(pick(99) * 1000, 1),
        "max_ms": round(ordered[-1] * 1000, 1),
        "mean_ms": round(statistics.fmean(ordered) * 1000, 1),
    }


# The conflicts stage's state in PostgreSQL, as part 1 and state_size.py measure it.
STATE_TABLES = (
    "patient_assertions", "fact_history_coded", "subject_owners_coded", "state_names",
    "conflict_state", "stale_state", "stale_timers", "held_records", "subject_merge_moves",
)  # fmt: skip


async def state_per_patient(dsn: str) -> dict[str, Any]:
    """Bytes on disk (tables with their indexes and TOAST) of the conflicts state, per patient
    the conflicts stage holds assertions of."""
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("VACUUM ANALYZE")  # settle free space left by upserts
        sizes = {
            table: await conn.fetchval("SELECT pg_total_relation_size($1::regclass)", table)
            for table in STATE_TABLES
        }
        patients = await conn.fetchval("SELECT count(DISTINCT patient_id) FROM patient_assertions")
    finally:
        await conn.close()
    total = sum(sizes.values())
    return {
        "patients": patients,
        "bytes": total,
        "bytes_per_patient": round(total / patients) if patients else None,
        "tables": sizes,
    }
