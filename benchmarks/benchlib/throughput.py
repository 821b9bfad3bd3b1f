"""Part 1 of pipeline.py, throughput: each stage's real handler on one worker, chained over
the previous stage's real output, against a raw aiokafka loop over the same records."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from concord.topics import ALERTS, CONFLICTS, FACTS, INGESTED, RAW_FHIR

from .backend import BENCH_IN, BENCH_OUT, fresh_backend
from .metrics import state_per_patient
from .patients import patient_pairs, publish_raw
from .runner import BenchmarkError, Teardown, progress
from .stages import Profiling, baseline, copy_topic, micros, run_stage, stage_row

STAGES = ("ingestion", "normalization", "conflicts", "alerting")
# Reference figures from ARCHITECTURE.md (2 cores, medians of 3 runs, another day).
REFERENCE = {"raw aiokafka loop": 10_600, "Faust agent": 2_200}


async def throughput_part(
    args: argparse.Namespace, teardown: Teardown, token: str
) -> dict[str, Any]:
    pairs = args.records // 2
    raw_count = pairs * 2
    async with fresh_backend(teardown, "throughput") as (bootstrap, dsn):
        events = patient_pairs(f"BT{token}", pairs, disagree_every=3)
        disagreeing = sum(1 for e in events if e.triggers)
        progress(f"throughput: publishing {raw_count} FHIR Patients ({pairs} patients x 2 sources,")
        progress(f"            {disagreeing} disagree on birthDate) to {RAW_FHIR}")
        await publish_raw(bootstrap, events)
        del events
        return await _chain(args, bootstrap, dsn, raw_count, disagreeing)


async def _chain(
    args: argparse.Namespace, bootstrap: str, dsn: str, raw_count: int, disagreeing: int
) -> dict[str, Any]:
    profiling = Profiling.from_args(args)
    rows: list[dict[str, Any]] = []
    expected, topic = raw_count, RAW_FHIR
    wanted = {"ingestion": INGESTED, "normalization": FACTS, "conflicts": CONFLICTS}
    for service in STAGES:
        progress(f"throughput: {service} over {expected} records of {topic} ...")
        timing, out = await run_stage(service, bootstrap, dsn, expected, profiling)
        row = stage_row(service, topic, timing, out, raw_count / expected)
        rows.append(row)
        progress(
            f"throughput: {service}: {timing.rate:,.0f} records/s "
            f"({timing.consumed} in {timing.seconds:.2f}s, {timing.batches} batches); "
            f"produced {out}"
        )
        if service == "ingestion":
            progress(f"throughput: baseline over {raw_count} IngestedRecords on {BENCH_IN} ...")
            await copy_topic(bootstrap, INGESTED, BENCH_IN, out.get(INGESTED, 0))
            base = await baseline(bootstrap, out.get(INGESTED, 0))
            progress(f"throughput: baseline: {base.rate:,.0f} msg/s ({base.seconds:.2f}s)")
        if service in wanted:
            topic = wanted[service]
            expected = out.get(topic, 0)
    alerts = rows[-1]["produced"].get(ALERTS, 0)
    if expected != disagreeing or alerts != disagreeing:
        raise BenchmarkError(
            f"{disagreeing} disagreeing patients but {expected} conflict events, {alerts} alerts"
        )
    base_row = stage_row("baseline (raw aiokafka loop)", BENCH_IN, base, {BENCH_OUT: 0}, 1.0)
    base_row["produced"] = {BENCH_OUT: base.consumed}
    for row in rows:
        row["ratio_to_baseline"] = round(row["records_per_s"] / base.rate, 3)
    return {
        "raw_events": raw_count,
        "patients": raw_count // 2,
        "disagreeing_patients": disagreeing,
        "baseline": base_row,
        "stages": rows,
        "conflicts_facts_per_s": rows[2]["records_per_s"],
        "conflicts_state": await state_per_patient(dsn),
        "pipeline_capacity_raw_events_per_s": min(r["raw_events_per_s"] for r in rows),
    }


def print_throughput(t: dict[str, Any]) -> None:
    base = t["baseline"]
    print()
    print(
        f"Throughput, one worker per stage, {t['raw_events']} raw events "
        f"({t['patients']} patients, {t['disagreeing_patients']} disagreeing):"
    )
    header = f"{'':30} {'input':>18} {'records':>8} {'seconds':>8} {'records/s':>10}"
    print(header + f" {'raw ev/s':>9} {'vs base':>8} {'CPU':>5} {'CPU µs/rec':>10}")
    for row in [base, *t["stages"]]:
        ratio = row.get("ratio_to_baseline")
        print(
            f"{row['name']:30} {row['input_topic']:>18} {row['records']:>8} "
            f"{row['seconds']:>8.2f} {row['records_per_s']:>10,.0f} "
            f"{row['raw_events_per_s']:>9,.0f} "
            f"{(f'{ratio:.2f}x' if ratio is not None else '1.00x'):>8} "
            f"{row['cpu_share']:>5.2f} {micros(row.get('cpu_us_per_record')):>10}"
        )
    print(
        f"conflicts: {t['conflicts_facts_per_s']:,.0f} facts/s; pipeline capacity (slowest stage, "
        f"in raw events/s): {t['pipeline_capacity_raw_events_per_s']:,.0f}"
    )
    state = t["conflicts_state"]
    biggest = ", ".join(
        f"{name} {size / 1e6:.1f} MB"
        for name, size in sorted(state["tables"].items(), key=lambda kv: -kv[1])[:3]
    )
    print(
        f"conflicts state: {state['bytes_per_patient'] or 0:,} bytes per patient on disk "
        f"({state['patients']:,} patients, {state['bytes'] / 1e6:.1f} MB; {biggest})"
    )
    print("(records/s in each stage's own input; 'raw ev/s' scales it to raw FHIR events;")
    print(" CPU = this process's CPU seconds per wall second while the stage ran; CPU µs/rec")
    print(" = its CPU per record consumed, steadier than the rates on a shared machine)")


def plot_throughput(t: dict[str, Any], path: Path) -> None:
    import matplotlib.pyplot as plt

    rows = [t["baseline"], *t["stages"]]
    labels = ["baseline\n(raw aiokafka loop)"] + [
        f"{r['name']}\n({r['input_topic']})" for r in t["stages"]
    ]
    rates = [r["records_per_s"] for r in rows]
    colors = ["#888888"] + ["#3b75af"] * len(t["stages"])
    fig, ax = plt.subplots(figsize=(9, 4.8))
    bars = ax.barh(labels[::-1], rates[::-1], color=colors[::-1])
    for bar, row in zip(bars, rows[::-1], strict=True):
        ratio = row.get("ratio_to_baseline", 1.0)
        ax.text(
            bar.get_width(),
            bar.get_y() + bar.get_height() / 2,
            f" {bar.get_width():,.0f}/s  ({ratio:.2f}x)",
            va="center",
            fontsize=9,
        )
    for (label, rate), color in zip(REFERENCE.items(), ("#888888", "#c44e52"), strict=True):
        ax.axvline(
            rate,
            color=color,
            linestyle="--",
            linewidth=1,
            label=f"{label}, ~{rate / 1000:.1f}k msg/s (ARCHITECTURE.md, another day)",
        )
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2, fontsize=8, frameon=False)
    ax.set_xlim(0, max(rates) * 1.35)
    ax.set_xlabel("input records per second, one worker (one process, one consumer group)")
    ax.set_title(f"Concord stage throughput vs raw loop, same run ({t['raw_events']:,} raw events)")
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
