"""Part 2 of pipeline.py, latency: the whole stack as separate processes, pairs of
disagreeing Patients at a fixed offered rate, from the send of each pair's second event to
the arrival of its alert, split per hop.

With --mix realistic (the default) the offered rate counts every raw event and the timed
pairs are one event in ten (--pair-share) among FHIR and HL7 v2 filler; each stage's
consumer-group lag is sampled every second meanwhile. The mix, the lag sampler and the
--max-rate mode are endtoend.py's, which builds on this module (offer, Offered,
AlertCollector): _measure_latency imports them when it runs."""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.structs import ConsumerRecord, TopicPartition

from concord.runtime.reading import read_topic
from concord.stack.stack import ALL_SERVICES, StackInfo
from concord.topics import ALERTS, CONFLICTS, DEADLETTER, FACTS, INGESTED, RAW_FHIR

from .backend import TopicReader
from .metrics import batch_metrics, batch_summary, cpu_seconds, percentiles
from .patients import RawPatient
from .runner import BenchmarkError, Teardown, progress


@dataclass(frozen=True)
class Arrival:
    perf: float  # perf_counter when the alert was read here
    wall: float  # the same moment, time.time()
    created: float  # the alert record's CreateTime (alerting's send), time.time() seconds


class AlertCollector(TopicReader):
    """Reads concord.alerts from the beginning (all partitions assigned, no group) and notes
    when each patient's first alert arrived."""

    def __init__(self, bootstrap: str) -> None:
        super().__init__(bootstrap, ALERTS)
        self.arrived: dict[str, Arrival] = {}
        self.records = 0

    def take(self, batch: dict[TopicPartition, list[ConsumerRecord[Any, Any]]]) -> None:
        now, wall = time.perf_counter(), time.time()
        for records in batch.values():
            self.records += len(records)
            for r in records:  # alerts are keyed by enterprise patient id
                arrival = Arrival(now, wall, r.timestamp / 1000)
                self.arrived.setdefault(r.key.decode(), arrival)

    async def wait_for(self, ids: Sequence[str], within: float) -> list[str]:
        """Wait until every id has an alert or `within` seconds pass; return the missing ids."""
        deadline = time.monotonic() + within
        while True:
            missing = [i for i in ids if i not in self.arrived]
            if not missing or time.monotonic() > deadline:
                return missing
            self.check()
            await asyncio.sleep(0.1)


@dataclass(frozen=True)
class Offered:
    """One raw event to offer: a timed pair's Patient (`triggers` names the enterprise id
    whose alert its send starts the clock for) or a filler event of the realistic mix."""

    topic: str
    value: bytes
    source: str
    key: bytes | None = None
    triggers: str | None = None


def offered_pairs(events: Sequence[RawPatient]) -> list[Offered]:
    """patient_pairs' events as offer sends them: on ehr.raw.fhir, unkeyed."""
    return [Offered(RAW_FHIR, e.value, e.source, None, e.triggers) for e in events]


async def offer(
    producer: AIOKafkaProducer, events: Sequence[RawPatient | Offered], rate: float
) -> tuple[dict[str, tuple[float, float]], float]:
    """Send events at `rate` per second (event k due at k / rate); return the send time
    (perf_counter, time.time) of each triggering event and the seconds the sending took."""
    sent: dict[str, tuple[float, float]] = {}
    futures = []
    started = time.perf_counter()
    for k, event in enumerate(events):
        delay = started + k / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        now = time.perf_counter()
        headers = [("source", event.source.encode())]
        if isinstance(event, Offered):
            topic, key = event.topic, event.key
        else:
            topic, key = RAW_FHIR, None
        futures.append(await producer.send(topic, event.value, key=key, headers=headers))
        if event.triggers:
            sent[event.triggers] = (now, time.time())
    elapsed = time.perf_counter() - started
    await asyncio.gather(*futures)
    return sent, elapsed


async def latency_part(
    args: argparse.Namespace,
    teardown: Teardown,
    token: str,
    *,
    replicas: Mapping[str, int] | None = None,
    after: Callable[[StackInfo], Awaitable[dict[str, Any]]] | None = None,
) -> dict[str, Any]:
    """Part 2 on a stack of its own: `replicas` workers of a service (one each by default);
    `after(stack)`, if given, measures more on the same stack, its result under "after"."""
    workers = sum((replicas or {}).get(service, 1) for service in ALL_SERVICES)
    progress(f"latency: starting the stack (broker, PostgreSQL, {workers} Faust workers)")
    state_dir, info = await teardown.stack(
        "stack", progress=lambda line: progress(f"latency: stack: {line}"), replicas=replicas
    )
    try:
        result = await _measure_latency(args, info, token)
        if after is not None:
            result["after"] = await after(info)
        return result
    finally:
        progress("latency: stopping the stack")
        teardown.stop_stack(state_dir)


async def _measure_latency(args: argparse.Namespace, info: StackInfo, token: str) -> dict[str, Any]:
    # endtoend.py builds on this module (offer, Offered, AlertCollector): imported here.
    from .endtoend import STACK_GROUPS, LagSampler, Mix, fifths, offer_window

    mix = Mix.from_args(args)
    collector = AlertCollector(info.bootstrap_servers)
    producer = AIOKafkaProducer(bootstrap_servers=info.bootstrap_servers, linger_ms=0)
    sampler = LagSampler(info.bootstrap_servers, STACK_GROUPS, (ALERTS, DEADLETTER))
    await collector.start()
    await producer.start()
    await sampler.start()
    try:
        warm = await mix.events(f"BW{token}", f"W{token}", mix.events_for_pairs(args.warmup_pairs))
        progress(f"latency: warm-up, {len(warm)} events at {args.rate:g}/s (not measured)")
        sent, _ = await offer(producer, warm, args.rate)
        missing = await collector.wait_for(list(sent), within=60)
        if missing:
            raise BenchmarkError(f"warm-up: {len(missing)} of {len(sent)} alerts never arrived")
        await sampler.wait_idle(60, {})
        events = await mix.events(f"BL{token}", f"L{token}", int(args.rate * args.seconds))
        pairs = sum(1 for e in events if e.triggers)
        progress(
            f"latency: offering {len(events)} events ({pairs} disagreeing pairs, {mix.kind} mix) "
            f"at {args.rate:g}/s for {args.seconds:g}s"
        )
        metrics_before = await asyncio.to_thread(batch_metrics, info)
        cpu_before, wall_before = cpu_seconds(info), time.perf_counter()
        window = await offer_window(
            producer, events, args.rate, sampler, collector,
            drain_within=args.drain_timeout, label="latency",
        )  # fmt: skip
        wall = time.perf_counter() - wall_before
        cpu_after = cpu_seconds(info)
        metrics_after = await asyncio.to_thread(batch_metrics, info)
    finally:
        await sampler.stop()
        await producer.stop()
        await collector.stop()
    sent, sending, missing = window.sent, window.sending, window.missing
    progress("latency: reading the intermediate topics for the per-hop breakdown")
    hops, hop_samples = await hop_breakdown(info.bootstrap_servers, sent, collector.arrived)
    arrived = {i: a for i, a in collector.arrived.items() if i in sent}
    latencies = {i: a.perf - sent[i][0] for i, a in arrived.items()}
    first = min(t for t, _ in sent.values())
    result: dict[str, Any] = {
        "offered_rate": args.rate,
        "seconds": args.seconds,
        "mix": mix.describe(),
        "events_sent": len(events),
        "achieved_rate": round(len(events) / sending, 1),
        "expected_alerts": len(sent),
        "alerts_arrived": len(latencies),
        "missing": len(missing),
        "dead_letters": window.lag.get("totals", {}).get(DEADLETTER, 0),  # warm-up included
        "cpu_cores_used": {
            name: round((cpu_after[name] - cpu_before.get(name, 0.0)) / wall, 2)
            for name in cpu_after
        },
        "batches": batch_summary(metrics_before, metrics_after, wall),
        "lag": window.lag,
        "hops": hops,
        "hop_samples_ms": hop_samples,
        "samples_ms": sorted(
            [round((sent[i][0] - first) * 1000, 1), round(v * 1000, 1)]
            for i, v in latencies.items()
        ),
    }
    if latencies:
        result.update(percentiles(list(latencies.values())))
        in_order = [v for _, v in result["samples_ms"]]
        quarter = max(1, len(in_order) // 4)
        result["first_quarter_p50_ms"] = statistics.median(in_order[:quarter])
        result["last_quarter_p50_ms"] = statistics.median(in_order[-quarter:])
        result["fifths"] = fifths(result["samples_ms"])
    return result


HOPS = ("ingestion", "normalization", "conflicts", "alerting", "alert reader")


def _patient_of_ingested(key: bytes) -> str:
    # "source/Patient/<enterprise id>-h" (or -l): see patient_pairs
    return key.decode(errors="replace").rsplit("/", 1)[-1][:-2]


def _patient_of(key: bytes) -> str:
    return key.decode(errors="replace")


async def hop_breakdown(
    bootstrap: str, sent: dict[str, tuple[float, float]], arrived: dict[str, Arrival]
) -> tuple[dict[str, dict[str, float]], list[list[float]]]:
    """Split each patient's latency at the CreateTime of the records each stage produced for
    it: the later of its two ingested records, its last fact, its conflict event, its alert.
    A hop runs from the previous stage's send to this stage's send: broker, fetch wait and
    this stage's batch. All processes share this machine's clock. Returns the percentiles per
    hop and, per alert, [send time since the first send, hop 1, ... hop 5] in ms."""
    stamps: dict[str, list[float]] = {i: [wall] for i, (_, wall) in sent.items() if i in arrived}
    readers: tuple[tuple[str, Callable[[bytes], str]], ...] = (
        (INGESTED, _patient_of_ingested),
        (FACTS, _patient_of),
        (CONFLICTS, _patient_of),
    )
    for topic, patient_of in readers:
        latest: dict[str, float] = {}

        def timed(
            r: ConsumerRecord[Any, Any], patient_of: Callable[[bytes], str] = patient_of
        ) -> bool:
            return r.key is not None and patient_of(r.key) in stamps  # the mix's filler is not

        records = await read_topic(
            bootstrap, topic, idle_seconds=1.0, fetch_max_wait_ms=20, keep=timed
        )
        for r in records:
            pid = patient_of(r.key)
            latest[pid] = max(latest.get(pid, 0.0), r.timestamp / 1000)
        for pid, row in stamps.items():
            row.append(latest.get(pid, float("nan")))
    for pid, row in stamps.items():
        row += [arrived[pid].created, arrived[pid].wall]
    result: dict[str, dict[str, float]] = {}
    order = sorted(stamps, key=lambda i: sent[i][0])
    if not order:
        return result, []
    quarter = max(1, len(order) // 4)
    for n, hop in enumerate(HOPS):
        values = [stamps[i][n + 1] - stamps[i][n] for i in order]
        if any(v != v for v in values):  # NaN: a record was not found
            continue
        result[hop] = {
            **percentiles(values),
            "first_quarter_p50_ms": round(statistics.median(values[:quarter]) * 1000, 1),
            "last_quarter_p50_ms": round(statistics.median(values[-quarter:]) * 1000, 1),
        }
    first = sent[order[0]][0]
    samples = [
        [round((sent[i][0] - first) * 1000, 1)]
        + [round((b - a) * 1000, 1) for a, b in zip(stamps[i], stamps[i][1:], strict=False)]
        for i in order
    ]
    return result, samples


def print_latency(lat: dict[str, Any]) -> None:
    print()
    print(
        f"Event-to-alert latency, whole stack, {lat['offered_rate']:g} events/s offered "
        f"({lat['achieved_rate']:g} achieved) for {lat['seconds']:g}s:"
    )
    mix = lat.get("mix", {"kind": "pairs"})
    if mix["kind"] == "realistic":
        print(
            f"  realistic mix: {lat['events_sent']} raw events, {lat['expected_alerts']} timed "
            f"pairs ({mix['pair_share']:.0%} of the events), the rest {mix['filler']}; "
            f"dead letters {lat.get('dead_letters', 0)}"
        )
    if "p50_ms" in lat:
        print(
            f"  alerts {lat['alerts_arrived']}/{lat['expected_alerts']}, missing "
            f"{lat['missing']}: p50 {lat['p50_ms']:.0f} ms, p95 {lat['p95_ms']:.0f} ms, "
            f"p99 {lat['p99_ms']:.0f} ms, max {lat['max_ms']:.0f} ms"
        )
        print(
            f"  p50 of the first quarter of the run {lat['first_quarter_p50_ms']:.0f} ms, "
            f"of the last quarter {lat['last_quarter_p50_ms']:.0f} ms"
        )
        if lat.get("fifths"):
            first, last = lat["fifths"]["first"], lat["fifths"]["last"]
            print(
                f"  first fifth of the alerts: p50 {first['p50_ms']:.0f} ms, p99 "
                f"{first['p99_ms']:.0f} ms; last fifth: p50 {last['p50_ms']:.0f} ms, p99 "
                f"{last['p99_ms']:.0f} ms"
            )
    else:
        print(f"  no alert arrived; missing {lat['missing']}")
    if lat.get("lag"):
        from .endtoend import print_lag  # see _measure_latency

        print_lag(lat["lag"])
    if lat.get("hops"):
        print("  per hop (from the previous stage's send to this one's), ms:")
        print(
            f"    {'hop':14} {'p50':>7} {'p95':>7} {'p99':>7} {'p50 first 1/4':>14} {'last 1/4':>9}"
        )
        for hop, h in lat["hops"].items():
            print(
                f"    {hop:14} {h['p50_ms']:>7.1f} {h['p95_ms']:>7.1f} {h['p99_ms']:>7.1f} "
                f"{h['first_quarter_p50_ms']:>14.1f} {h['last_quarter_p50_ms']:>9.1f}"
            )
    print("  batches meanwhile (worker /metrics: consume to commit):")
    for name, b in lat["batches"].items():
        print(
            f"    {name:14} {b['batches']:>6} batches, {b['records_per_batch']:>6.1f} records "
            f"and {b['ms_per_batch']:>6.2f} ms each, busy {b['busy_share']:.0%} of the time"
            + _phases(b)
        )
    cores = ", ".join(f"{k} {v:.2f}" for k, v in lat["cpu_cores_used"].items())
    print(f"  CPU cores used meanwhile: {cores}")


def _phases(batch: dict[str, Any]) -> str:
    """Where the batches' time went, as shares (runtime/batch.py's phases)."""
    shares = batch.get("phase_shares") or {}
    if not any(shares.values()):
        return ""
    phases = ", ".join(f"{p.replace('_', ' ')} {s:.0%}" for p, s in shares.items())
    gc = f"; collector pauses {batch['gc_seconds_share']:.1%} of the time"
    return f" ({phases}{gc}, full ones {batch['gc_full_seconds_share']:.1%})"


def plot_latency(lat: dict[str, Any], path: Path) -> None:
    import matplotlib.pyplot as plt

    samples = lat["samples_ms"]
    values = sorted(v for _, v in samples)
    fig, (hist, cdf, series, hops) = plt.subplots(1, 4, figsize=(19, 4.4))
    hist.hist(values, bins=60, color="#3b75af")
    hist.set_xlabel("event-to-alert latency (ms)")
    hist.set_ylabel("alerts")
    hist.set_title("histogram")
    cdf.plot(values, [(i + 1) / len(values) for i in range(len(values))], color="#3b75af")
    for key, color in (("p50_ms", "#55a868"), ("p95_ms", "#dd8452"), ("p99_ms", "#c44e52")):
        cdf.axvline(lat[key], color=color, linestyle="--", linewidth=1)
        cdf.text(
            lat[key], 0.02, f" {key[:3]} {lat[key]:.0f}", color=color, rotation=90, va="bottom"
        )
    cdf.set_xlabel("event-to-alert latency (ms)")
    cdf.set_ylabel("fraction of alerts")
    cdf.set_title("CDF")
    series.plot(
        [s / 1000 for s, _ in samples], [v for _, v in samples], ".", markersize=2, color="#3b75af"
    )
    series.set_xlabel("send time of the triggering event (s)")
    series.set_ylabel("latency (ms)")
    series.set_title("over the run")
    plot_hops(hops, lat.get("hop_samples_ms") or [])
    fig.suptitle(
        f"Concord event-to-alert latency, whole stack (4 workers), {lat['offered_rate']:g} "
        f"events/s for {lat['seconds']:g}s: {lat['alerts_arrived']} alerts, "
        f"{lat['missing']} missing"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_hops(ax: Any, samples: list[list[float]]) -> None:
    """Per-hop median latency per second of the run, stacked."""
    by_second: dict[int, list[list[float]]] = {}
    for row in samples:
        if all(v == v for v in row):
            by_second.setdefault(int(row[0] // 1000), []).append(row[1:])
    seconds = sorted(by_second)
    medians = [
        [statistics.median(r[n] for r in by_second[sec]) for sec in seconds]
        for n in range(len(HOPS))
    ]
    ax.stackplot(seconds, medians, labels=HOPS, alpha=0.85)
    ax.set_xlabel("send time of the triggering event (s)")
    ax.set_ylabel("median latency per second (ms), stacked")
    ax.set_title("where the time goes, per hop")
    ax.legend(loc="upper left", fontsize=7)
