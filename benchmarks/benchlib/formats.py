"""Part 3 of pipeline.py, ingestion by raw format: per format, a pass-through of the same
records and then the ingestion stage, each on one worker, over the same raw topic."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from concord.events import codec
from concord.publisher import publish_files
from concord.runtime.reading import read_topic
from concord.topics import DEADLETTER, INGESTED, RAW_FHIR, RAW_HL7V2

from .backend import BENCH_OUT, fresh_backend
from .raw_formats import fhir_events, hl7_events
from .runner import BenchmarkError, Teardown, progress
from .stages import Profiling, baseline, micros, run_stage, stage_row

TARGET_RATIO = 0.40  # the product's target for ingestion against a pass-through
# Beyond this share, the part would time rejection, not ingestion: the input is at fault.
MAX_DEAD_LETTER_SHARE = 0.02


@dataclass(frozen=True)
class RawFormat:
    name: str
    slug: str  # in ids, file names and consumer groups
    topic: str
    source: str  # the 'source' header the events are published with
    # The file publish_files reads: its suffix picks the raw topic and how events are keyed.
    file_name: str
    join: Callable[[list[bytes]], bytes]
    build: Callable[[str, int], tuple[list[bytes], int]]


RAW_FORMATS = (
    RawFormat(
        "FHIR R4", "fhir", RAW_FHIR, "bench-fhir-ehr", "fhir.ndjson", b"\n".join, fhir_events
    ),
    RawFormat("HL7 v2", "hl7v2", RAW_HL7V2, "bench-hl7-feed", "messages.hl7", b"".join, hl7_events),
)


async def ingestion_formats_part(
    args: argparse.Namespace, teardown: Teardown, token: str
) -> dict[str, Any]:
    profiling = Profiling.from_args(args)
    inputs = teardown.tempdir("formats-input")
    async with fresh_backend(teardown, "formats") as (bootstrap, dsn):
        rows = []
        for fmt in RAW_FORMATS:
            path = inputs / fmt.file_name
            rows.append(
                await _ingest_format(fmt, args.records, bootstrap, dsn, path, token, profiling)
            )
        progress("formats: counting what ingestion left on its output topics ...")
        outcomes = await topic_outcomes(bootstrap)
    for row in rows:
        seen = outcomes.get(row["input_topic"], {"ingested": 0, "dead_lettered": 0, "reasons": {}})
        if (seen["ingested"], seen["dead_lettered"]) != (row["ingested"], row["dead_lettered"]):
            raise BenchmarkError(
                f"{row['name']}: the stage counted {row['ingested']} ingested and "
                f"{row['dead_lettered']} dead-lettered, the topics hold {seen['ingested']} and "
                f"{seen['dead_lettered']}"
            )
        row["dead_letter_reasons"] = seen["reasons"]
    return {"events_per_format": args.records, "target_ratio": TARGET_RATIO, "formats": rows}


def write_input(fmt: RawFormat, prefix: str, count: int, path: Path) -> tuple[int, float]:
    """Write `count` events as the file publish_files reads; returns the records they hold
    and their mean size in bytes."""
    events, records = fmt.build(prefix, count)
    path.write_bytes(fmt.join(events))
    return records, sum(len(e) for e in events) / len(events)


async def _ingest_format(
    fmt: RawFormat,
    count: int,
    bootstrap: str,
    dsn: str,
    path: Path,
    token: str,
    profiling: Profiling,
) -> dict[str, Any]:
    """Publish `count` events of the format, then time a pass-through and the ingestion stage,
    one after the other, over the same records of its raw topic."""
    records, event_bytes = write_input(fmt, f"B{fmt.slug[0].upper()}{token}", count, path)
    progress(
        f"formats: publishing {count} {fmt.name} events ({records} records, "
        f"{event_bytes:,.0f} bytes each on average) to {fmt.topic} as '{fmt.source}'"
    )
    sent = await publish_files(
        bootstrap, fmt.source, [path], progress=lambda line: progress(f"formats: {line}")
    )
    if sent != count:
        raise BenchmarkError(f"{fmt.name}: {sent} events published from {path}, not {count}")

    progress(f"formats: pass-through over the {count} records of {fmt.topic} ...")
    group = f"bench-pass-through-{fmt.slug}"
    passed = await baseline(bootstrap, count, topic=fmt.topic, group_id=group, recode=False)
    progress(f"formats: pass-through: {passed.rate:,.0f} records/s ({passed.seconds:.2f}s)")

    progress(f"formats: ingestion over the same {count} records ...")
    timing, out = await run_stage(
        "ingestion", bootstrap, dsn, count, profiling, label=f"ingestion-{fmt.slug}"
    )
    ingested, dead = out.get(INGESTED, 0), out.get(DEADLETTER, 0)
    progress(
        f"formats: ingestion: {timing.rate:,.0f} records/s ({timing.consumed} in "
        f"{timing.seconds:.2f}s, {timing.batches} batches); {ingested} ingested, "
        f"{dead} dead-lettered"
    )
    if dead > MAX_DEAD_LETTER_SHARE * count:
        reasons = (await topic_outcomes(bootstrap)).get(fmt.topic, {}).get("reasons")
        raise BenchmarkError(
            f"{fmt.name}: {dead} of {count} events dead-lettered (reasons: {reasons}); "
            "the figure would time rejection, not ingestion: fix the generated input"
        )
    if ingested > records or (dead == 0 and ingested != records):
        raise BenchmarkError(
            f"{fmt.name}: {ingested} records ingested, {records} expected: ids are not unique "
            "(de-duplication dropped some) or records were lost"
        )
    if dead:
        progress(f"formats: warning: {dead} {fmt.name} events dead-lettered (within the limit)")

    row = stage_row(fmt.name, fmt.topic, timing, out, 1.0)
    del row["raw_events_per_s"]  # the same as records_per_s here
    pass_row = stage_row("pass-through", fmt.topic, passed, {BENCH_OUT: passed.consumed}, 1.0)
    del pass_row["raw_events_per_s"]
    row.update(
        source=fmt.source,
        mean_event_bytes=round(event_bytes),
        expected_records=records,
        ingested=ingested,
        dead_lettered=dead,
        ingested_per_s=round(ingested / timing.seconds, 1) if timing.seconds else 0.0,
        pass_through=pass_row,
        ratio_to_pass_through=round(timing.rate / passed.rate, 3),
    )
    return row


async def topic_outcomes(bootstrap: str) -> dict[str, dict[str, Any]]:
    """Per raw topic: the IngestedRecords and dead letters on ingestion's output topics, and
    the dead letters' reason codes. Counted from the broker, not from the stage's counters."""
    outcomes: dict[str, dict[str, Any]] = {}

    def of(topic: str) -> dict[str, Any]:
        return outcomes.setdefault(topic, {"ingested": 0, "dead_lettered": 0, "reasons": {}})

    for r in await read_topic(bootstrap, INGESTED, idle_seconds=1.0):
        of(codec.INGESTED_RECORD.decode(r.value).provenance.raw_topic)["ingested"] += 1
    for r in await read_topic(bootstrap, DEADLETTER, idle_seconds=1.0):
        letter = codec.DEAD_LETTER.decode(r.value)
        outcome = of(letter.original_topic)
        outcome["dead_lettered"] += 1
        outcome["reasons"][letter.reason_code] = outcome["reasons"].get(letter.reason_code, 0) + 1
    return outcomes


def print_ingestion_formats(f: dict[str, Any]) -> None:
    print()
    print(
        f"Ingestion by raw format, one worker, {f['events_per_format']} raw events per format, "
        "beside a pass-through of the same records:"
    )
    print(
        f"{'format':8} {'input':>14} {'bytes':>6} {'records/s':>10} {'ingested/s':>10} "
        f"{'pass-through/s':>14} {'ratio':>6} {'CPU':>5} {'CPU µs/ev':>9} {'pass µs/ev':>10} "
        f"{'dead letters':>12}"
    )
    for row in f["formats"]:
        print(
            f"{row['name']:8} {row['input_topic']:>14} {row['mean_event_bytes']:>6} "
            f"{row['records_per_s']:>10,.0f} {row['ingested_per_s']:>10,.0f} "
            f"{row['pass_through']['records_per_s']:>14,.0f} "
            f"{row['ratio_to_pass_through']:>5.2f}x {row['cpu_share']:>5.2f} "
            f"{micros(row.get('cpu_us_per_record')):>9} "
            f"{micros(row['pass_through'].get('cpu_us_per_record')):>10} {row['dead_lettered']:>12}"
        )
    print("(records/s: raw events consumed per second, the pass-through's unit; ingested/s:")
    print(" IngestedRecords produced per second, a FHIR Bundle makes several; bytes: mean event;")
    print(f" ratio: records/s over pass-through records/s, target >= {f['target_ratio']:.0%};")
    print(" CPU µs/ev: this process's CPU per raw event consumed; pass µs/ev: the pass-through's)")


def plot_ingestion_formats(f: dict[str, Any], path: Path) -> None:
    import matplotlib.pyplot as plt

    labels, rates, colors, notes = [], [], [], []
    for row in f["formats"]:
        passed = row["pass_through"]["records_per_s"]
        labels += [
            f"{row['name']} pass-through\n(same records, no parsing)",
            f"{row['name']} ingestion\n({row['input_topic']})",
        ]
        rates += [passed, row["records_per_s"]]
        colors += ["#888888", "#3b75af"]
        notes += [
            f" {passed:,.0f}/s",
            f" {row['records_per_s']:,.0f}/s  ({row['ratio_to_pass_through']:.2f}x)",
        ]
    rows = list(range(len(labels)))[::-1]  # top to bottom in table order
    fig, ax = plt.subplots(figsize=(9, 1.1 * len(labels) + 1.2))
    ax.barh(rows, rates, color=colors)
    ax.set_yticks(rows, labels)
    for y, rate, note in zip(rows, rates, notes, strict=True):
        ax.text(rate, y, note, va="center", fontsize=9)
    target = f"target: {f['target_ratio']:.0%} of the format's pass-through"
    for n, row in enumerate(f["formats"]):
        y = rows[2 * n + 1]
        ax.vlines(
            f["target_ratio"] * row["pass_through"]["records_per_s"],
            y - 0.45,
            y + 0.45,
            colors="#c44e52",
            linestyles="--",
            linewidth=1.5,
            label=target if n == 0 else "_nolegend_",
        )
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.16), fontsize=8, frameon=False)
    ax.set_xlim(0, max(rates) * 1.35)
    ax.set_xlabel("raw events per second, one worker (one process, one consumer group)")
    ax.set_title(
        f"Concord ingestion vs a pass-through of the same records, same run "
        f"({f['events_per_format']:,} events per format)"
    )
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
