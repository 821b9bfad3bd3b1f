"""One stage as one worker runs it (build_stage's handler in a BatchLoop, one consumer
group), timed over a known input, and the raw aiokafka loop it is compared with: parts 1, 3,
4 and 5 of pipeline.py."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import gc
import os
import shutil
import signal
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener
from aiokafka.structs import OffsetAndMetadata, TopicPartition
from prometheus_client import REGISTRY

from concord.composition import SERVICES, build_stage
from concord.config import DatabaseWorkerSettings, WorkerSettings
from concord.events import codec
from concord.events.codec import EventCodec
from concord.runtime import heap
from concord.runtime.batch import BatchLoop, StageHandler
from concord.runtime.reading import assign_from_start
from concord.runtime.records import partition_numbers
from concord.topics import ALERTS, CONFLICTS, DEADLETTER, DOCUMENTS, FACTS, INGESTED

from .backend import BENCH_IN, BENCH_OUT, bulk_producer
from .runner import BenchmarkError

MAX_RECORDS, FETCH_MAX_WAIT_MS = 1000, 20  # the baseline's and the stages' consumer settings
OUTPUT_TOPICS = (INGESTED, FACTS, DOCUMENTS, CONFLICTS, ALERTS, DEADLETTER)
IDLE_TIMEOUT_S = 15.0  # a stage that gets nothing new for this long has lost records


async def copy_topic(bootstrap: str, source: str, target: str, count: int) -> None:
    """Copy the first `count` records of `source` (key and value) to `target`."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, fetch_max_wait_ms=FETCH_MAX_WAIT_MS
    )
    producer = bulk_producer(bootstrap)
    await consumer.start()
    await producer.start()
    try:
        await assign_from_start(consumer, source)
        copied, futures, last_new = 0, [], time.monotonic()
        while copied < count:
            batch = await consumer.getmany(timeout_ms=200, max_records=5000)
            if not batch and time.monotonic() - last_new > IDLE_TIMEOUT_S:
                raise BenchmarkError(f"copy {source} → {target}: only {copied} of {count}")
            for records in batch.values():
                last_new = time.monotonic()
                for r in records:
                    futures.append(await producer.send(target, r.value, key=r.key))
                copied += len(records)
        await asyncio.gather(*futures)
    finally:
        await producer.stop()
        await consumer.stop()


# --- profiling a stage's timed window -----------------------------------------------------------

FLAME_RATE_HZ = 200


@dataclass(frozen=True)
class Profiling:
    """Where each timed stage's profiles go, one file per stage of a part (`label`):
    cProfile statistics (--profile DIR: DIR/<label>.pstats; slows the stage) and a py-spy
    flame graph (--flame DIR: DIR/flame-<label>.svg; sampled, costs the stage little)."""

    stats_dir: Path | None = None
    flame_dir: Path | None = None

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Profiling:
        dirs = [Path(d) if d else None for d in (args.profile, args.flame)]
        for d in dirs:
            if d is not None:
                d.mkdir(parents=True, exist_ok=True)
        if dirs[1] is not None and _py_spy() is None:
            raise BenchmarkError("--flame needs py-spy (make install puts it in .venv/bin)")
        return cls(*dirs)


def _py_spy() -> str | None:
    beside = Path(sys.executable).with_name("py-spy")
    return str(beside) if beside.exists() else shutil.which("py-spy")


@contextlib.asynccontextmanager
async def flame_graph(path: Path | None) -> AsyncIterator[None]:
    """Sample this process with py-spy while the block runs and write an SVG flame graph."""
    spy = _py_spy() if path is not None else None
    if path is None or spy is None:
        yield
        return
    proc = await asyncio.create_subprocess_exec(
        spy, "record", "--pid", str(os.getpid()), "--rate", str(FLAME_RATE_HZ),
        "--format", "flamegraph", "--output", str(path), "--nonblocking",
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    await asyncio.sleep(0.5)  # py-spy attaches before the clock starts
    try:
        yield
    finally:
        proc.send_signal(signal.SIGINT)  # py-spy writes the graph on SIGINT
        _, err = await proc.communicate()
        if not await asyncio.to_thread(path.exists):
            raise BenchmarkError(f"py-spy wrote no flame graph: {err.decode()[-300:]}")
        await asyncio.to_thread(_without_machine_paths, path, spy)


def _without_machine_paths(path: Path, spy: str) -> None:
    """The graph's title is py-spy's command line: its own path and the output's folder,
    which may name this machine's directories, are written as `py-spy` and the file name."""
    text = path.read_text(encoding="utf-8").replace(spy, "py-spy")
    path.write_text(text.replace(f"{path.parent}/", ""), encoding="utf-8")


# --- timing a batch loop over a known input ---------------------------------------------------


class _Assignment(ConsumerRebalanceListener):  # type: ignore[misc]
    """What BatchLoop.run subscribes with: the stage's partition hooks, then 'ready'."""

    def __init__(self, handler: StageHandler | None = None) -> None:
        self.handler = handler
        self.ready = asyncio.Event()

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        if self.handler is not None:
            await self.handler.on_revoked(partition_numbers(revoked))

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        if self.handler is not None:
            await self.handler.on_assigned(partition_numbers(assigned))
        self.ready.set()


@dataclass
class Timing:
    consumed: int
    seconds: float
    cpu_seconds: float  # this process's CPU time over the same window
    batches: int

    @property
    def rate(self) -> float:
        return self.consumed / self.seconds if self.seconds > 0 else 0.0


async def timed_batches(
    consumer: AIOKafkaConsumer,
    topics: Sequence[str],
    step: Callable[[], Awaitable[int]],
    expected: int,
    *,
    handler: StageHandler | None = None,
    profile: cProfile.Profile | None = None,
    flame: Path | None = None,
) -> Timing:
    """Join the group, then run `step` (one batch end to end; returns records consumed) until
    `expected` records are consumed. The clock starts with the call that returns the first
    records (the group join is not timed) and stops when the last batch is committed."""
    # The previous stage's clients and state are garbage now, partly in reference cycles: collect
    # them here, or this stage's timing pays for a full collection of that stage's objects.
    gc.collect()
    listener = _Assignment(handler)
    consumer.subscribe(list(topics), listener=listener)
    await consumer.start()
    try:
        # Nothing is fetched before the group is joined; once joined, the first fetch returns
        # the pre-produced records at once.
        await asyncio.wait_for(listener.ready.wait(), timeout=60)
        async with flame_graph(flame):
            return await _run_until(step, expected, profile)
    finally:
        await consumer.stop()


async def _run_until(
    step: Callable[[], Awaitable[int]], expected: int, profile: cProfile.Profile | None
) -> Timing:
    consumed = batches = 0
    started = cpu_started = None
    last_new = now = time.perf_counter()
    if profile is not None:
        profile.enable()
    try:
        while consumed < expected:
            call, cpu = time.perf_counter(), time.process_time()
            n = await step()
            now = time.perf_counter()
            if n:
                if started is None:
                    started, cpu_started = call, cpu
                consumed, batches, last_new = consumed + n, batches + 1, now
            elif now - last_new > IDLE_TIMEOUT_S:
                raise BenchmarkError(
                    f"only {consumed} of {expected} records arrived (nothing new for "
                    f"{IDLE_TIMEOUT_S:.0f}s): a stage lost or dead-lettered records"
                )
    finally:
        if profile is not None:
            profile.disable()
    assert started is not None and cpu_started is not None
    return Timing(consumed, now - started, time.process_time() - cpu_started, batches)


def group_consumer(bootstrap: str, group_id: str) -> AIOKafkaConsumer:
    """The baseline's consumer: the settings of BatchLoop.make_consumer."""
    return AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=group_id,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        fetch_max_wait_ms=FETCH_MAX_WAIT_MS,
        session_timeout_ms=6000,
        heartbeat_interval_ms=2000,
        max_poll_interval_ms=300_000,
    )


async def baseline(
    bootstrap: str,
    expected: int,
    *,
    topic: str = BENCH_IN,
    group_id: str = "bench-baseline",
    recode: bool = True,
    schema: EventCodec[Any] = codec.INGESTED_RECORD,
) -> Timing:
    """The raw loop: consume → decode → encode → produce → await acks → commit, with the
    input topic's `schema`. Without `recode`, a pass-through: the consumed bytes are produced
    as they are, no parsing."""
    settings = WorkerSettings(bootstrap_servers=bootstrap)
    producer = BatchLoop.make_producer_for(settings)  # the stages' producer settings
    consumer = group_consumer(bootstrap, group_id)
    await producer.start()

    async def once() -> int:
        batch = await consumer.getmany(timeout_ms=200, max_records=MAX_RECORDS)
        if not batch:
            return 0
        futures = []
        for records in batch.values():
            for r in records:
                value = r.value
                if recode:
                    value = schema.encode(schema.decode(value))
                futures.append(await producer.send(BENCH_OUT, value, key=r.key))
        await asyncio.gather(*futures)
        await consumer.commit(
            {tp: OffsetAndMetadata(recs[-1].offset + 1, "") for tp, recs in batch.items()}
        )
        return sum(len(records) for records in batch.values())

    try:
        return await timed_batches(consumer, [topic], once, expected)
    finally:
        await producer.stop()


def produced(stage: str) -> dict[str, int]:
    """What the stage has produced so far (its Prometheus counters, this process)."""
    counts = {}
    for topic in OUTPUT_TOPICS:
        value = REGISTRY.get_sample_value(
            "concord_events_produced_total", {"stage": stage, "topic": topic}
        )
        counts[topic] = int(value or 0)
    return counts


def stage_settings(service: str, bootstrap: str, dsn: str) -> DatabaseWorkerSettings:
    """The service's settings as a worker reads them, with the benchmark's consumer settings:
    batches of MAX_RECORDS, unless the service's settings class sets a batch size of its own
    (the narrative worker's 50 documents), which it keeps."""
    settings_class = SERVICES[service].settings
    own_batch = (
        settings_class.model_fields["max_batch_records"].default
        != WorkerSettings.model_fields["max_batch_records"].default
    )
    batch = {} if own_batch else {"max_batch_records": MAX_RECORDS}
    settings: DatabaseWorkerSettings = settings_class(
        bootstrap_servers=bootstrap, fetch_max_wait_ms=FETCH_MAX_WAIT_MS, database_url=dsn, **batch
    )
    return settings


async def run_stage(
    service: str,
    bootstrap: str,
    dsn: str,
    expected: int,
    profiling: Profiling | None = None,
    *,
    label: str | None = None,
) -> tuple[Timing, dict[str, int]]:
    """One stage as one worker runs it: build_stage's handler in a BatchLoop, one group;
    profiled as `label` (default: the service) when `profiling` says where to."""
    profiling = profiling or Profiling()
    label = label or service
    settings = stage_settings(service, bootstrap, dsn)
    producer = BatchLoop.make_producer_for(settings)
    await producer.start()
    try:
        handler, close = await build_stage(service, settings, producer)
        try:
            loop = BatchLoop(handler, settings, producer=producer)
            heap.settle()  # what the stage built at start, frozen as the worker does
            consumer = loop.make_consumer()
            before = produced(service)
            profile = cProfile.Profile() if profiling.stats_dir else None
            timing = await timed_batches(
                consumer,
                handler.topics,
                lambda: loop.run_once(consumer, producer, timeout_ms=200),
                expected,
                handler=handler,
                profile=profile,
                flame=profiling.flame_dir / f"flame-{label}.svg" if profiling.flame_dir else None,
            )
            if profile is not None and profiling.stats_dir is not None:
                profile.dump_stats(profiling.stats_dir / f"{label}.pstats")
            after = produced(service)
            return timing, {t: after[t] - before[t] for t in OUTPUT_TOPICS if after[t] > before[t]}
        finally:
            await close()
    finally:
        await producer.stop()


def cpu_us_per_record(timing: Timing) -> float | None:
    """This process's CPU per record consumed (the stage's own work and its Kafka and
    PostgreSQL clients; the broker and PostgreSQL are other processes): steadier than a rate
    on a machine shared with other work."""
    return round(timing.cpu_seconds / timing.consumed * 1e6, 1) if timing.consumed else None


def micros(value: float | None) -> str:
    """A CPU µs figure for a table ('' when there is none)."""
    return "" if value is None else f"{value:,.1f}"


def stage_row(
    name: str, topic: str, timing: Timing, out: dict[str, int], per_raw: float
) -> dict[str, Any]:
    return {
        "name": name,
        "input_topic": topic,
        "records": timing.consumed,
        "seconds": round(timing.seconds, 3),
        "records_per_s": round(timing.rate, 1),
        "raw_events_per_s": round(timing.rate * per_raw, 1),
        "cpu_share": round(timing.cpu_seconds / timing.seconds, 2) if timing.seconds else None,
        "cpu_us_per_record": cpu_us_per_record(timing),
        "batches": timing.batches,
        "produced": out,
    }
