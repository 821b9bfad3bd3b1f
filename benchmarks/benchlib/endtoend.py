"""End-to-end figures of the whole stack (issue 17): the realistic mix, each stage's lag over
time, and the sustained maximum rate against a four-hop pass-through (pipeline.py --max-rate).

The realistic mix (--mix realistic, part 2's default): the offered rate counts every raw
event. Timed pairs of disagreeing Patients (patients.py; hospital then lab, unkeyed on
ehr.raw.fhir) make --pair-share of the events (0.1: one event in ten), spread evenly, and the
rest is filler of part 3's formats (raw_formats.py), FHIR and HL7 v2 in turn: a Patient, an
Observation about it, a Condition, a transaction Bundle of four on ehr.raw.fhir as
'bench-fhir-ehr'; ADT^A01 and ORU^R01 on ehr.raw.hl7v2 as 'bench-hl7-feed'. The filler is
written as part 3 writes it and read back with concord.publishing.read_file, so each event
has the topic and key `concord publish` gives it. Every filler record is valid and new to
de-duplication; its patients come from one source each, carry their own enterprise ids and
other names than the pairs' "Benchperson", so they raise no alert, and any alert they did
raise would be keyed by another enterprise id than a timed pair's: the collector only counts
the timed ids.

Lag: every second (LagSampler), each stage's consumer-group lag: the end offsets of its input
topics minus the group's committed offsets (OffsetFetch; no group is joined). Tansu 0.6's
ListOffsets(latest) answers the base offset of a partition's last record batch, not its end,
so the sampler seeks there with a paused consumer of its own and takes the high watermark of
one fetch (it reads at most one batch per partition per sample). A stage's lag is also given
in seconds of its input: records behind over the records per second its input topics grew by
during the offer.

A stage keeps up when its lag at the end of the offer is at most LAG_LIMIT_S (1 s) of its
input and the whole pipeline has drained (every stage's lag 0) within DRAIN_LIMIT_S (10 s)
after the offer ended; "lag grows" is the negation, for any stage. Batches come in bursts
(normalization's output reaches conflicts a batch at a time), so one sample may catch a stage
just before its next batch: "at the end" is the least lag sampled over the last quarter of the
offer.

--max-rate: the highest offered rate of the realistic mix that the whole stack sustains, and
the same for a four-hop pass-through, with their ratio. Each step is a fresh stack (Tansu
slows as data piles up, so steps on one broker would penalise the later, faster ones): a
warm-up, then the mix at the step's rate for --max-rate-step-seconds. A step is sustained
when:
  * the sender achieved at least 95% of the offered rate;
  * every stage keeps up (above: lag at the end of the offer at most 1 s of its input, every
    stage drained to 0 within 10 s of the end of the offer);
  * for the stack, also every timed alert arrived within those 10 s and the event-to-alert
    p99 is at most --max-rate-p99-ms.
The search brackets the limit: from --max-rate-start, the rate is multiplied by the square
of --max-rate-factor (1.5² = 2.25) after a sustained step and divided by it after one that is
not, until a sustained rate and a higher one that is not are known; then their geometric mean
is tried, until the two are within one factor. The sustained maximum is the highest sustained
step, within a factor of 1.5 below the limit; with no failing step it is only a lower bound
(--max-rate-steps, 6 per search, ran out). The pass-through starts at the lowest rate the
stack did not sustain. The sender (this process) shares the machine with what it feeds: a
step it cannot offer at 95% of the rate is not sustained, for the stack and the pass-through
alike. The pass-through is four processes, each a raw aiokafka
copy loop (getmany up to max_batch_records → produce each record's key and value → await
every ack → commit) with the workers' consumer (BatchLoop.make_consumer) and producer
(BatchLoop.make_producer_for) settings: ehr.raw.fhir and ehr.raw.hl7v2 → bench.hop1 →
bench.hop2 → bench.hop3 → bench.hop4, on a fresh broker with the same mix offered the same
way. Run as `python -m benchlib.endtoend hop ...` by the benchmark itself.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.structs import OffsetAndMetadata, TopicPartition

from concord.alerting.app import AlertingStage
from concord.config import WorkerSettings
from concord.conflicts.app import ConflictsStage
from concord.ingestion.app import IngestionStage
from concord.normalization.app import NormalizationStage
from concord.publishing import read_file
from concord.runtime.batch import BatchLoop
from concord.stack.broker import start_broker
from concord.stack.processes import ProcessRecord, spawn
from concord.topics import (
    ALERTS,
    ALL_TOPICS,
    DEADLETTER,
    PARTITIONS,
    RAW_FHIR,
    RAW_HL7V2,
    TopicSpec,
)

from .formats import RAW_FORMATS, write_input
from .latency import AlertCollector, Offered, offer, offered_pairs
from .metrics import percentiles
from .patients import patient_pairs
from .runner import REPO, BenchmarkError, Teardown, progress

PAIR_SHARE = 0.1  # of the realistic mix's events, in timed pairs: one event in ten
LAG_LIMIT_S = 1.0  # a stage keeps up while its lag is at most this many seconds of its input
DRAIN_LIMIT_S = 10.0  # ... and every stage's lag is back to 0 this long after the offer
SAMPLE_EVERY_S = 1.0
SENDER_SHARE = 0.95  # a step whose sender achieved less than this share is not sustained
WARMUP_WITHIN_S = 90.0
WARMUP_S, MIN_WARMUP_EVENTS = 5.0, 200  # a --max-rate step's warm-up

# Each stage: (its consumer group, its input topics), as BatchLoop and the handlers name them.
STACK_GROUPS: dict[str, tuple[str, tuple[str, ...]]] = {
    stage.stage: (f"concord-{stage.stage}", tuple(stage.topics))
    for stage in (IngestionStage, NormalizationStage, ConflictsStage, AlertingStage)
}
HOPS = 4


def hop_topic(n: int) -> str:
    return f"bench.hop{n}"


def pass_through_groups() -> dict[str, tuple[str, tuple[str, ...]]]:
    groups, inputs = {}, (RAW_FHIR, RAW_HL7V2)
    for n in range(1, HOPS + 1):
        groups[f"hop{n}"] = (f"bench-hop{n}", inputs)
        inputs = (hop_topic(n),)
    return groups


# --- the realistic mix ------------------------------------------------------------------------


def filler(prefix: str, count: int) -> list[Offered]:
    """`count` events of part 3's formats, FHIR and HL7 v2 in turn, each with the topic, key
    and source header part 3 publishes it with. `prefix` (at most 11 characters: it starts
    MSH-10) keeps their ids apart from any other call's."""
    streams: list[list[Offered]] = []
    with tempfile.TemporaryDirectory(prefix="concord-bench-mix-") as tmp:
        for fmt, n in zip(RAW_FORMATS, ((count + 1) // 2, count // 2), strict=True):
            path = Path(tmp) / fmt.file_name
            if n > 0:
                write_input(fmt, f"{prefix}{fmt.slug[0].upper()}", n, path)
                messages = read_file(path, fmt.source)
                streams.append([Offered(m.topic, m.value, fmt.source, m.key) for m in messages])
            else:
                streams.append([])
    fhir, hl7 = streams
    return [e for pair in itertools.zip_longest(fhir, hl7) for e in pair if e is not None]


def interleave(pairs: Sequence[Offered], fill: Sequence[Offered]) -> list[Offered]:
    """The pairs (two events each, kept together) spread evenly among the filler."""
    count = len(pairs) // 2
    events: list[Offered] = []
    used = 0
    for p in range(count):
        upto = round((p + 0.5) * len(fill) / count)
        events += fill[used:upto]
        events += pairs[2 * p : 2 * p + 2]
        used = upto
    return events + list(fill[used:])


@dataclass(frozen=True)
class Mix:
    """What part 2 and --max-rate offer: 'pairs' (timed pairs only) or 'realistic' (timed pairs
    as `pair_share` of the events, among filler)."""

    kind: str
    pair_share: float

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Mix:
        kind = getattr(args, "mix", "pairs")  # scale_out.py's arguments have no --mix
        share = getattr(args, "pair_share", PAIR_SHARE) if kind == "realistic" else 1.0
        return cls(kind, share)

    def events_for_pairs(self, pairs: int) -> int:
        return max(2, round(2 * pairs / self.pair_share))

    def build(self, pair_prefix: str, fill_prefix: str, total: int) -> list[Offered]:
        """`total` events (blocking: call it in a thread)."""
        pairs = max(1, round(total * self.pair_share / 2))
        timed = offered_pairs(patient_pairs(pair_prefix, pairs, disagree_every=1))
        if self.kind == "pairs":
            return timed
        return interleave(timed, filler(fill_prefix, total - 2 * pairs))

    async def events(self, pair_prefix: str, fill_prefix: str, total: int) -> list[Offered]:
        return await asyncio.to_thread(self.build, pair_prefix, fill_prefix, total)

    def describe(self) -> dict[str, Any]:
        if self.kind == "pairs":
            return {"kind": "pairs", "pair_share": 1.0}
        return {
            "kind": "realistic",
            "pair_share": self.pair_share,
            "filler": "FHIR (Patient, Observation, Condition, Bundle of 4) and HL7 v2 "
            "(ADT^A01, ORU^R01) in turn, as part 3 publishes them",
        }


# --- lag over time ----------------------------------------------------------------------------


@dataclass(frozen=True)
class LagSample:
    t: float  # seconds since the sampler's origin (the start of the offer)
    lag: dict[str, int]  # per stage: records behind on its input topics (end - committed)
    ends: dict[str, int]  # per stage: its input topics' end offsets, summed
    counts: dict[str, int]  # per counted topic: its end offsets, summed (records on it)


@dataclass
class LagSampler:
    """Samples each stage's consumer-group lag from begin() until stop(), every `every`
    seconds, and counts the records on the `counted` topics."""

    bootstrap: str
    groups: Mapping[str, tuple[str, Sequence[str]]]
    counted: Sequence[str] = ()
    every: float = SAMPLE_EVERY_S
    samples: list[LagSample] = field(default_factory=list)
    origin: float = 0.0

    def __post_init__(self) -> None:
        self.inputs = {
            stage: [TopicPartition(t, p) for t in topics for p in range(PARTITIONS)]
            for stage, (_, topics) in self.groups.items()
        }
        wanted = {tp for tps in self.inputs.values() for tp in tps}
        wanted |= {TopicPartition(t, p) for t in self.counted for p in range(PARTITIONS)}
        self.partitions = sorted(wanted)
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self.consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap, enable_auto_commit=False, fetch_max_wait_ms=10
        )
        await self.consumer.start()
        self.consumer.assign(self.partitions)
        self.consumer.pause(*self.partitions)
        self.admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap)
        await self.admin.start()

    async def stop(self) -> None:
        await self.end()
        await self.admin.close()
        await self.consumer.stop()

    async def end_offsets(self) -> dict[TopicPartition, int]:
        """Each partition's end: the high watermark of a fetch at the offset ListOffsets
        (latest) gives, which on Tansu is the base offset of the last record batch."""
        asked = int(time.time() * 1000)
        reported = await self.consumer.end_offsets(self.partitions)
        for tp in self.partitions:
            self.consumer.seek(tp, max(0, reported[tp]))
        self.consumer.resume(*self.partitions)
        try:
            deadline = time.monotonic() + 2.0
            while time.monotonic() < deadline:
                await self.consumer.getmany(timeout_ms=20)  # the records are not needed
                polled = (self.consumer.last_poll_timestamp(tp) for tp in self.partitions)
                if all((stamp or 0) >= asked for stamp in polled):
                    break
        finally:
            self.consumer.pause(*self.partitions)
        return {tp: max(reported[tp], self.consumer.highwater(tp) or 0) for tp in self.partitions}

    async def committed(self, group: str, partitions: list[TopicPartition]) -> dict[Any, int]:
        found = await self.admin.list_consumer_group_offsets(group, partitions=partitions)
        return {tp: max(0, meta.offset) for tp, meta in found.items()}

    async def sample(self) -> LagSample:
        t = time.perf_counter() - self.origin
        # Committed offsets first: a record that arrives between the two reads counts as lag.
        committed = [
            await self.committed(group, self.inputs[stage])
            for stage, (group, _) in self.groups.items()
        ]
        ends = await self.end_offsets()
        lag, stage_ends = {}, {}
        for (stage, tps), done in zip(self.inputs.items(), committed, strict=True):
            lag[stage] = sum(max(0, ends[tp] - done.get(tp, 0)) for tp in tps)
            stage_ends[stage] = sum(ends[tp] for tp in tps)
        counts = {
            t: sum(ends[TopicPartition(t, p)] for p in range(PARTITIONS)) for t in self.counted
        }
        return LagSample(round(t, 3), lag, stage_ends, counts)

    def begin(self) -> None:
        """Sample from now on, with now as time 0."""
        self.origin = time.perf_counter()
        self.samples = []
        self._task = asyncio.create_task(self._run())

    async def end(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        due = self.origin
        while True:
            self.samples.append(await self.sample())
            due = max(due + self.every, time.perf_counter())
            await asyncio.sleep(due - time.perf_counter())

    async def wait_drained(self, after: float, within: float) -> float | None:
        """Wait (while sampling) for a sample taken `after` seconds past the origin or later
        in which every stage's lag is 0; its time past `after`, or None after `within` s."""
        deadline = time.perf_counter() + within
        while True:
            for s in self.samples:
                if s.t >= after and not any(s.lag.values()):
                    return round(s.t - after, 2)
            if time.perf_counter() > deadline:
                return None
            if self._task is not None and self._task.done():
                self._task.result()  # raise what stopped the sampling
            await asyncio.sleep(0.1)

    async def wait_idle(self, within: float, counted_at_least: Mapping[str, int]) -> None:
        """Outside a window: wait until every stage's lag is 0 and each counted topic holds
        at least so many records (a warm-up has gone through)."""
        deadline = time.perf_counter() + within
        while True:
            s = await self.sample()
            enough = all(s.counts.get(t, 0) >= n for t, n in counted_at_least.items())
            if enough and not any(s.lag.values()):
                return
            if time.perf_counter() > deadline:
                raise BenchmarkError(
                    f"the warm-up did not go through within {within:.0f}s: lag {s.lag}, "
                    f"records {s.counts}"
                )
            await asyncio.sleep(0.25)


def _nearest(samples: Sequence[LagSample], t: float) -> LagSample:
    return min(samples, key=lambda s: abs(s.t - t))


POINTS = (0.25, 0.5, 0.75, 1.0)


def lag_report(
    samples: Sequence[LagSample], offer_seconds: float, drained_after: float | None
) -> dict[str, Any]:
    """Per stage: its input rate over the offer, its lag at 25/50/75/100% of the offer (in
    records and in seconds of its input), its largest lag; when the pipeline drained; and
    whether every stage kept up (see the module docstring)."""
    if not samples:
        return {}
    first, last = samples[0], _nearest(samples, offer_seconds)
    span = max(last.t - first.t, 1e-9)
    at = [_nearest(samples, q * offer_seconds) for q in POINTS]
    # Batches arrive in bursts, so one sample can catch a stage just before its batch: a stage's
    # lag at the end is the least sampled over the last quarter of the offer.
    tail = [s for s in samples if 0.75 * offer_seconds <= s.t <= offer_seconds + 0.5] or [last]
    stages: dict[str, Any] = {}
    for stage in first.lag:
        rate = (last.ends[stage] - first.ends[stage]) / span
        lags = [s.lag[stage] for s in at]
        floor = min(s.lag[stage] for s in tail)
        stages[stage] = {
            "input_per_s": round(rate, 1),
            "lag": lags,
            "lag_seconds": [_seconds(n, rate) for n in lags],
            "max_lag": max(s.lag[stage] for s in samples if s.t <= offer_seconds + 0.5),
            "end_lag": floor,
            "end_lag_seconds": _seconds(floor, rate),
        }
    behind = [
        stage
        for stage, row in stages.items()
        if row["end_lag_seconds"] is None or row["end_lag_seconds"] > LAG_LIMIT_S
    ]
    drained = drained_after is not None and drained_after <= DRAIN_LIMIT_S
    return {
        "points": list(POINTS),
        "point_seconds": [s.t for s in at],
        "stages": stages,
        "behind_at_end": behind,
        "drained_after_s": drained_after,
        "lag_grows": bool(behind) or not drained,
        "series": [[s.t, *(s.lag[stage] for stage in first.lag)] for s in samples],
        "series_stages": list(first.lag),
        # records on the counted topics: added from the start of the offer to the last sample,
        # and in all at the last sample (warm-up included)
        "counts": {t: samples[-1].counts[t] - first.counts[t] for t in first.counts},
        "totals": dict(samples[-1].counts),
    }


def _seconds(lag: int, rate: float) -> float | None:
    if lag == 0:
        return 0.0
    return round(lag / rate, 2) if rate > 0 else None


# --- one window: offer, then drain ---------------------------------------------------------------


@dataclass
class Window:
    sent: dict[str, tuple[float, float]]  # trigger id → send time (perf_counter, time.time)
    sending: float  # seconds the offer took
    events: int
    missing: list[str]
    lag: dict[str, Any]


async def offer_window(
    producer: AIOKafkaProducer,
    events: Sequence[Offered],
    rate: float,
    sampler: LagSampler,
    collector: AlertCollector | None,
    *,
    drain_within: float,
    label: str,
) -> Window:
    """Offer `events` at `rate` while the sampler samples; then wait up to `drain_within` s
    for every timed alert (with a collector) and for every stage's lag to reach 0."""
    sampler.begin()
    try:
        sent, sending = await offer(producer, events, rate)
        progress(f"{label}: sent {len(events)} events in {sending:.1f}s; draining")
        deadline = time.perf_counter() + drain_within
        missing: list[str] = []
        if collector is not None:
            missing = await collector.wait_for(list(sent), within=drain_within)
        left = max(0.0, deadline - time.perf_counter())
        drained = await sampler.wait_drained(sending, within=left)
    finally:
        await sampler.end()
    report = lag_report(sampler.samples, sending, drained)
    return Window(sent, sending, len(events), missing, report)


def fifths(samples_ms: Sequence[Sequence[float]]) -> dict[str, dict[str, float]]:
    """p50 and p99 of the latencies of the first and the last fifth of the alerts, in the
    order of their triggering sends ([send time, latency] pairs in ms, sorted)."""
    if len(samples_ms) < 5:
        return {}
    fifth = len(samples_ms) // 5
    parts = {"first": samples_ms[:fifth], "last": samples_ms[-fifth:]}
    return {
        name: {
            k: v
            for k, v in percentiles([v / 1000 for _, v in part]).items()
            if k in ("p50_ms", "p99_ms")
        }
        for name, part in parts.items()
    }


def print_lag(lag: dict[str, Any]) -> None:
    """The lag table of part 2 and of a --max-rate step."""
    if not lag:
        return
    print(
        "  consumer-group lag (end offsets - committed, records; in seconds of the stage's "
        "input rate):"
    )
    heads = "".join(f"{f'at {q:.0%}':>15}" for q in lag["points"])
    print(f"    {'stage':14} {'input/s':>8}{heads} {'max':>7} {'end (last 1/4 min)':>19}")
    for stage, row in lag["stages"].items():
        cells = "".join(
            f"{_cell(n, s):>15}" for n, s in zip(row["lag"], row["lag_seconds"], strict=True)
        )
        end = _cell(row["end_lag"], row["end_lag_seconds"])
        print(f"    {stage:14} {row['input_per_s']:>8,.0f}{cells} {row['max_lag']:>7} {end:>19}")
    drained = lag["drained_after_s"]
    when = "never" if drained is None else f"{drained:.1f}s after the offer ended"
    verdict = "yes" if lag["lag_grows"] else "no"
    behind = ", ".join(lag["behind_at_end"]) or "none"
    print(
        f"  drained (every stage's lag 0): {when}; behind by more than {LAG_LIMIT_S:g}s of input "
        f"at the end: {behind}; lag grows: {verdict}"
    )


def _cell(n: int, seconds: float | None) -> str:
    return f"{n} ({'?' if seconds is None else f'{seconds:.1f}s'})"


# --- the four-hop pass-through --------------------------------------------------------------------


@dataclass(frozen=True)
class _Hop:
    """What BatchLoop needs of a handler to make the workers' consumer."""

    stage: str
    topics: tuple[str, ...]


async def copy_hop(bootstrap: str, group: str, target: str, sources: Sequence[str]) -> None:
    """One hop of the pass-through, until killed: getmany up to max_batch_records → produce
    each record's key and value to `target` → await every ack → commit."""
    settings = WorkerSettings(bootstrap_servers=bootstrap)
    consumer = BatchLoop(_Hop(group, tuple(sources)), settings, group_id=group).make_consumer()
    producer = BatchLoop.make_producer_for(settings)
    await producer.start()
    consumer.subscribe(list(sources))
    await consumer.start()
    print(f"{group}: {', '.join(sources)} -> {target}", flush=True)
    while True:
        batch = await consumer.getmany(timeout_ms=200, max_records=settings.max_batch_records)
        if not batch:
            continue
        futures = [
            await producer.send(target, r.value, key=r.key)
            for records in batch.values()
            for r in records
        ]
        await asyncio.gather(*futures)
        await consumer.commit(
            {tp: OffsetAndMetadata(records[-1].offset + 1, "") for tp, records in batch.items()}
        )


def start_hops(bootstrap: str, state_dir: Path, teardown: Teardown) -> list[ProcessRecord]:
    records = []
    for n, (name, (group, sources)) in enumerate(pass_through_groups().items(), start=1):
        argv = [
            sys.executable, "-m", "benchlib.endtoend", "hop", bootstrap, group, hop_topic(n),
            *sources,
        ]  # fmt: skip
        log = state_dir / "logs" / f"{name}.log"
        record = spawn(name, "bench-hop", argv, log, cwd=REPO / "benchmarks")
        teardown.processes.append(record)
        records.append(record)
    return records


# --- --max-rate -----------------------------------------------------------------------------------


@dataclass
class MixPool:
    """Events of one mix to offer again on every step's fresh stack: the first n of them,
    generated as needed (a fresh stack and database de-duplicate nothing across steps)."""

    mix: Mix
    tag: str  # 2 characters, then the run's token
    token: str
    events: list[Offered] = field(default_factory=list)
    chunks: int = 0

    async def take(self, n: int) -> list[Offered]:
        while len(self.events) < n:
            chunk = f"{self.tag}{self.chunks:02d}{self.token}"[:11]
            need = n - len(self.events)
            progress(f"max-rate: generating {need} events of the mix")
            self.events += await self.mix.events(f"P{chunk}", chunk, need)
            self.chunks += 1
        return self.events[:n]


@dataclass(frozen=True)
class Search:
    start: float
    factor: float
    steps: int
    step_seconds: float
    p99_ms: float
    warmup_pairs: int


async def _search(label: str, start: float, search: Search, step: Any) -> dict[str, Any]:
    """Bracket the highest sustained rate: from `start`, multiply by factor² after a sustained
    step and divide by it after one that is not, until a sustained rate (lo) and a higher one
    that is not (hi) are known; then try their geometric mean until hi / lo <= factor."""
    lo: float | None = None
    hi: float | None = None
    rate, steps = start, []
    while len(steps) < search.steps:
        progress(f"max-rate: {label}: step {len(steps) + 1} at {rate:,.0f} events/s")
        row = await step(rate, len(steps) + 1)
        steps.append(row)
        reasons = "; ".join(row["why_not"])
        verdict = "sustained" if row["sustained"] else f"not sustained: {reasons}"
        progress(f"max-rate: {label}: {rate:,.0f}/s {verdict}")
        if row["sustained"]:
            lo = rate if lo is None else max(lo, rate)
        else:
            hi = rate if hi is None else min(hi, rate)
        if lo is not None and hi is not None:
            if hi / lo <= search.factor * 1.001:
                break
            rate = round((lo * hi) ** 0.5)
        elif lo is not None:
            rate = round(lo * search.factor**2)
        else:
            rate = max(1, round(rate / search.factor**2))
    return {
        "sustained_rate": lo,
        "lowest_not_sustained": hi,
        "limit_found": lo is not None and hi is not None,
        "steps": steps,
    }


def _judge(row: dict[str, Any], rate: float, p99_bound: float | None) -> list[str]:
    why = []
    if row["achieved_rate"] < SENDER_SHARE * rate:
        why.append(f"the sender achieved {row['achieved_rate']:,.0f}/s")
    lag = row["lag"]
    if lag.get("behind_at_end"):
        why.append(
            f"lag over {LAG_LIMIT_S:g}s of input at the end: {', '.join(lag['behind_at_end'])}"
        )
    drained = lag.get("drained_after_s")
    if drained is None or drained > DRAIN_LIMIT_S:
        why.append(f"not drained within {DRAIN_LIMIT_S:g}s")
    if row.get("missing"):
        why.append(f"{row['missing']} alerts missing")
    if p99_bound is not None and row.get("p99_ms", 0) > p99_bound:
        why.append(f"p99 {row['p99_ms']:,.0f} ms over {p99_bound:,.0f}")
    return why


async def _run_step(
    bootstrap: str,
    groups: Mapping[str, tuple[str, Sequence[str]]],
    counted: Sequence[str],
    rate: float,
    warm: list[Offered],
    events: list[Offered],
    search: Search,
    timed: bool,
    label: str,
) -> dict[str, Any]:
    """Warm up, then one window at `rate` on a started stack or pass-through."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=0)
    sampler = LagSampler(bootstrap, groups, counted)
    collector = AlertCollector(bootstrap) if timed else None
    await producer.start()
    await sampler.start()
    if collector is not None:
        await collector.start()
    try:
        sent, _ = await offer(producer, warm, rate)
        if collector is not None:
            missing = await collector.wait_for(list(sent), within=WARMUP_WITHIN_S)
            if missing:
                raise BenchmarkError(f"{label}: {len(missing)} warm-up alerts never arrived")
        expect = {} if timed else {hop_topic(HOPS): len(warm)}
        await sampler.wait_idle(WARMUP_WITHIN_S, expect)
        window = await offer_window(
            producer, events, rate, sampler, collector, drain_within=DRAIN_LIMIT_S, label=label
        )
    finally:
        if collector is not None:
            await collector.stop()
        await sampler.stop()
        await producer.stop()
    row: dict[str, Any] = {
        "rate": rate,
        "achieved_rate": round(window.events / window.sending, 1),
        "events": window.events,
        "lag": window.lag,
    }
    if collector is not None:
        latencies = [
            collector.arrived[i].perf - t
            for i, (t, _) in window.sent.items()
            if i in collector.arrived
        ]
        row.update(alerts=len(window.sent), missing=len(window.missing))
        if latencies:
            row.update(
                {
                    k: v
                    for k, v in percentiles(latencies).items()
                    if k in ("p50_ms", "p99_ms", "max_ms")
                }
            )
        row["dead_letters"] = window.lag.get("totals", {}).get(DEADLETTER, 0)
    row["why_not"] = _judge(row, rate, search.p99_ms if timed else None)
    row["sustained"] = not row["why_not"]
    return row


async def max_rate_part(args: argparse.Namespace, teardown: Teardown, token: str) -> dict[str, Any]:
    mix = Mix("realistic", args.pair_share)
    search = Search(
        args.max_rate_start, args.max_rate_factor, args.max_rate_steps,
        args.max_rate_step_seconds, args.max_rate_p99_ms, args.warmup_pairs,
    )  # fmt: skip
    pool = MixPool(mix, "MX", token)
    warm_pool = MixPool(mix, "MW", token)
    warm_count = mix.events_for_pairs(search.warmup_pairs)

    def warm_up(rate: float) -> int:  # --warmup-pairs' worth, but at most WARMUP_S of the rate
        return max(MIN_WARMUP_EVENTS, min(warm_count, round(rate * WARMUP_S)))

    async def stack_step(rate: float, n: int) -> dict[str, Any]:
        events = await pool.take(round(rate * search.step_seconds))
        warm = await warm_pool.take(warm_up(rate))
        state_dir, info = await teardown.stack(
            f"maxrate-{n}", progress=lambda line: _stack_line(line)
        )
        try:
            return await _run_step(
                info.bootstrap_servers, STACK_GROUPS, (ALERTS, DEADLETTER), rate, warm,
                events, search, True, f"max-rate: stack {rate:,.0f}/s",
            )  # fmt: skip
        finally:
            teardown.stop_stack(state_dir)

    async def pass_step(rate: float, n: int) -> dict[str, Any]:
        events = await pool.take(round(rate * search.step_seconds))
        warm = await warm_pool.take(warm_up(rate))
        state_dir = teardown.tempdir(f"maxrate-pass-{n}")
        topics = [
            *ALL_TOPICS,
            *(TopicSpec(hop_topic(k), PARTITIONS, "hop") for k in range(1, HOPS + 1)),
        ]
        broker = await start_broker(state_dir, topics=topics)
        teardown.processes.append(broker.record)
        hops = start_hops(broker.bootstrap_servers, state_dir, teardown)
        try:
            return await _run_step(
                broker.bootstrap_servers, pass_through_groups(), (hop_topic(HOPS),), rate,
                warm, events, search, False, f"max-rate: pass-through {rate:,.0f}/s",
            )  # fmt: skip
        finally:
            for record in [*reversed(hops), broker.record]:
                teardown.stop_process(record)

    started = time.perf_counter()
    stack = await _search("stack", search.start, search, stack_step)
    # The pass-through should sustain what the stack did not: it starts there.
    pass_start = stack["lowest_not_sustained"] or round(
        (stack["sustained_rate"] or search.start) * search.factor**2
    )
    passed = await _search("pass-through", pass_start, search, pass_step)
    ratio = None
    if stack["sustained_rate"] and passed["sustained_rate"]:
        ratio = round(stack["sustained_rate"] / passed["sustained_rate"], 3)
    # With both limits found, the ratio is good to within a factor each way; with only the
    # stack's, it is an upper bound; with only the pass-through's, a lower bound.
    bound = {
        (True, True): "to within one factor",
        (True, False): "an upper bound: no pass-through step failed",
        (False, True): "a lower bound: no stack step failed",
        (False, False): "bounds only: no step failed",
    }[(stack["limit_found"], passed["limit_found"])]
    return {
        "mix": mix.describe(),
        "definition": {
            "lag_limit_s": LAG_LIMIT_S,
            "drain_limit_s": DRAIN_LIMIT_S,
            "sender_share": SENDER_SHARE,
            "p99_bound_ms": search.p99_ms,
            "start": search.start,
            "factor": search.factor,
            "step_seconds": search.step_seconds,
            "max_steps": search.steps,
        },
        "stack": stack,
        "pass_through": passed,
        "ratio": ratio,
        "ratio_is": bound,
        "seconds": round(time.perf_counter() - started, 1),
    }


def _stack_line(line: str) -> None:
    if "stack up" in line:
        progress(f"max-rate: stack: {line}")


def print_max_rate(m: dict[str, Any]) -> None:
    d = m["definition"]
    print()
    print(
        f"Sustained maximum end-to-end rate, realistic mix ({m['mix']['pair_share']:.0%} of the "
        f"events in timed pairs), steps of {d['step_seconds']:g}s from {d['start']:g}/s "
        f"(x{d['factor'] ** 2:g} up or down, then geometric means to within "
        f"x{d['factor']:g}), each on a fresh stack:"
    )
    print(
        f"  sustained = the sender within {1 - d['sender_share']:.0%} of the offered rate, every "
        f"stage's lag at the end of the offer at most {d['lag_limit_s']:g}s of its input, and "
        f"drained within {d['drain_limit_s']:g}s; for the stack also every alert, and p99 at "
        f"most {d['p99_bound_ms']:,.0f} ms"
    )
    for name, key in (
        ("whole stack, 4 workers", "stack"),
        ("pass-through, 4 hops", "pass_through"),
    ):
        print(f"  {name}:")
        print(
            f"    {'offered/s':>9} {'achieved':>9} {'p50 ms':>7} {'p99 ms':>7} "
            f"{'end lag (worst stage)':>24} {'drained':>8}  sustained"
        )
        for row in m[key]["steps"]:
            print("    " + _step_line(row))
    stack, passed = m["stack"], m["pass_through"]
    ratio = "n/a" if m["ratio"] is None else f"{m['ratio']:.2f} ({m['ratio_is']})"
    print(
        f"  sustained: stack {_rate(stack)}, pass-through {_rate(passed)}; stack / pass-through "
        f"{ratio}; each rate to within one step (x{d['factor']:g}); the mode took "
        f"{m['seconds']:.0f}s"
    )


def _rate(search: dict[str, Any]) -> str:
    rate = search["sustained_rate"]
    if rate is None:
        return "none of the steps"
    return f"{rate:,.0f}/s" if search["limit_found"] else f"at least {rate:,.0f}/s"


def _step_line(row: dict[str, Any]) -> str:
    lag = row["lag"]
    worst, seconds = "-", 0.0
    for stage, r in lag.get("stages", {}).items():
        s = r["end_lag_seconds"]
        s = float("inf") if s is None else s
        if s >= seconds:
            worst, seconds = stage, s
    drained = lag.get("drained_after_s")
    p50 = f"{row['p50_ms']:>7,.0f}" if "p50_ms" in row else f"{'-':>7}"
    p99 = f"{row['p99_ms']:>7,.0f}" if "p99_ms" in row else f"{'-':>7}"
    end = f"{seconds:.1f}s ({worst})"
    verdict = "yes" if row["sustained"] else "no: " + "; ".join(row["why_not"])
    drain = "never" if drained is None else f"{drained:.1f}s"
    return (
        f"{row['rate']:>9,.0f} {row['achieved_rate']:>9,.0f} {p50} {p99} {end:>24} "
        f"{drain:>8}  {verdict}"
    )


def main(argv: Sequence[str]) -> int:
    """`python -m benchlib.endtoend hop BOOTSTRAP GROUP TARGET SOURCE...`: one hop."""
    if len(argv) < 5 or argv[0] != "hop":
        print(main.__doc__, file=sys.stderr)
        return 2
    asyncio.run(copy_hop(argv[1], argv[2], argv[3], argv[4:]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
