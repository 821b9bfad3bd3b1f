"""SIGKILL of each of the four workers, twice, while records stream in: the restarted worker
takes up from the last committed offsets, and nothing is lost, duplicated or invented
downstream.

A publisher sends the workload in chunks (four patients, 40 FHIR records, every second) until
the kills are done, every third chunk a record again as it was (the same version re-sent:
de-duplicated), and, once the first chunk's glucose conflicts are open, the lab's corrected
results for them (those alerts resolve: revision 2). Before each kill it sends a burst (16
patients, 160 records), and the worker under test is killed with SIGKILL: the first time a
random 0-0.1 s after the burst's first records reach its input topic (it is processing them:
before produce), the second time as soon as its first output after the burst is on its output
topic (the batch is produced and probably not yet committed, so the redelivered batch is done
again); a consumer following the topic's end tells. Each time the worker is restarted
(`restart_worker`: same command and web port, back once /health answers 200); the second kill
also comes while it works off what queued up while it was down.

Where exactly those kills land (mid-batch, between produce and commit) is not controlled: what
was done twice shows in the figures (raw records emitted twice, facts and conflict events
published again, identical alert re-publications). A kill during an outbox drain is: in the
second test a trigger makes the conflicts or alerting worker's deletes of its outbox rows wait,
and the worker is killed after a batch's publication (its rows are left behind) and then
inside the drain of its restart, which has published them again.
tests/e2e/test_conflicts_recovery.py kills the conflicts worker once at a chosen point
(conflicts stored, some held) and checks the conflicts topic in detail.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import signal
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from aiokafka import AIOKafkaConsumer
from aiokafka.structs import TopicPartition
from fault_tools import GLUCOSE, READ_IDLE, Stream, Workload, eventually, fetch, plan

from concord.events import codec
from concord.runtime.reading import read_topic
from concord.stack.processes import ProcessDied, ProcessRecord, find_process, is_alive
from concord.stack.stack import StackInfo, load_state, restart_worker
from concord.topics import ALERTS, CONFLICTS, FACTS, INGESTED, PARTITIONS, RAW_FHIR

pytestmark = [pytest.mark.faults, pytest.mark.asyncio]

CHUNK, BURST = 4, 16  # patients per chunk (40 FHIR records), and in a chunk before a kill
CHUNK_SECONDS = 1.0
MAX_CHUNKS = 40  # the stream goes on until the kills are done, at most this long
KILLS = 2
# The first kill comes a random 0-0.1 s after the burst's first records reach the worker's
# input topic (it is processing them: before produce); the second as soon as the worker's first
# output after the burst is on its output topic (its batch is produced, and probably not yet
# committed: the redelivered batch is done again).
KILL_WINDOW = 0.1
INPUT = {
    "ingestion": RAW_FHIR,
    "normalization": INGESTED,
    "conflicts": FACTS,
    "alerting": CONFLICTS,
}
OUTPUT = {"ingestion": INGESTED, "normalization": FACTS, "conflicts": CONFLICTS, "alerting": ALERTS}


def _stream(run: Workload) -> Stream:
    """The publisher: a chunk every CHUNK_SECONDS (a burst of BURST patients before a kill),
    the corrections looked for from the third chunk on."""
    return Stream(run, chunk=CHUNK, every=CHUNK_SECONDS, most=MAX_CHUNKS, correct_from=3)


class _Tail:
    """The end of a topic, followed: tells when records sent after a moment arrive."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.topic = topic
        self.consumer = AIOKafkaConsumer(
            bootstrap_servers=bootstrap, enable_auto_commit=False, fetch_max_wait_ms=10
        )

    async def __aenter__(self) -> _Tail:
        await self.consumer.start()
        partitions = [TopicPartition(self.topic, p) for p in range(PARTITIONS)]
        self.consumer.assign(partitions)
        await self.consumer.seek_to_end(*partitions)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.consumer.stop()

    async def arrival(self, since_ms: int, *, within: float) -> bool:
        """Whether a record stamped at or after `since_ms` arrived within `within` seconds."""
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            batch = await self.consumer.getmany(timeout_ms=50)
            if any(r.timestamp >= since_ms for rs in batch.values() for r in rs):
                return True
        return False


async def _kill_at_work(
    stack: StackInfo, stream: Stream, worker: str, *, topic: str, delay: float
) -> tuple[ProcessRecord, bool]:
    """Send a burst and SIGKILL the worker `delay` seconds after records sent since reach
    `topic`; returns the killed worker's record and whether such records were seen."""
    recorded = load_state(stack.state_dir)
    assert recorded is not None
    victim = recorded.workers[worker]
    process = find_process(victim)
    assert process is not None
    async with _Tail(stack.bootstrap_servers, topic) as tail:
        since_ms = int(time.time() * 1000)
        burst = asyncio.create_task(stream.after(burst=BURST))
        seen = await tail.arrival(since_ms, within=30)
        await asyncio.sleep(delay)
        process.send_signal(signal.SIGKILL)
    await burst
    return victim, seen


async def _done_again(bootstrap: str, prefix: str) -> dict[str, int]:
    """Facts, and conflict events, of the test's patients published more than once: a batch
    (or an outbox row) done again after a kill."""
    facts: Counter[str] = Counter()
    conflicts: Counter[tuple[str, int]] = Counter()
    fact_records, conflict_records = await asyncio.gather(
        read_topic(bootstrap, FACTS, idle_seconds=READ_IDLE),
        read_topic(bootstrap, CONFLICTS, idle_seconds=READ_IDLE),
    )
    for record in fact_records:
        fact = codec.CLINICAL_FACT.decode(record.value)
        if fact.patient_id.startswith(prefix):
            facts[fact.fact_id] += 1
    for record in conflict_records:
        event = codec.CONFLICT_EVENT.decode(record.value)
        if event.patient_id.startswith(prefix):
            conflicts[(event.conflict_id, event.revision)] += 1
    return {
        "facts_published_again": sum(n - 1 for n in facts.values()),
        "conflict_events_published_again": sum(n - 1 for n in conflicts.values()),
    }


@pytest.mark.parametrize("worker", ["ingestion", "normalization", "conflicts", "alerting"])
async def test_a_worker_killed_mid_stream_loses_and_duplicates_nothing(
    fault_stack: StackInfo, tmp_path: Path, worker: str
) -> None:
    stack = fault_stack
    run = Workload(stack)
    rng = random.Random(run.token)  # the kill moments
    stream = _stream(run)
    kills: list[dict[str, Any]] = []
    with run.rss:
        stream.start()
        await stream.after()  # some state first
        for number in range(KILLS):
            topic = OUTPUT[worker] if number else INPUT[worker]
            delay = 0.0 if number else rng.uniform(0.0, KILL_WINDOW)
            victim, seen = await _kill_at_work(stack, stream, worker, topic=topic, delay=delay)
            killed_at = time.monotonic()
            kill: dict[str, Any] = {
                "at_seconds": round(killed_at - run.started, 2),
                "records_sent_before": len(stream.sent),
                "after_arrival_on": topic,
                "delay_seconds": round(delay, 3),
                "arrival_seen": seen,
            }
            restarted = await restart_worker(stack.state_dir, worker, kill=True)
            assert not is_alive(victim) and is_alive(restarted)
            kill["ready_again_seconds"] = round(time.monotonic() - killed_at, 2)
            kills.append(kill)
        await stream.after()  # one more chunk for the restarted worker
        expected, stored, drained = await stream.end(within=90)
    patients = stream.patients

    # Nothing lost or dead-lettered, nothing raised twice, every worker running.
    checked, done_again = await asyncio.gather(
        run.checked(
            expected,
            stored,
            stream.sent,
            resent=stream.resent,
            assertions_of=len(patients),
            assertions_within=10,
        ),
        _done_again(run.bootstrap, run.prefix),
    )
    run.workers_alive(none_restarted=False)
    assert sum(plan(n)[GLUCOSE] for n in range(CHUNK)) == len(stream.corrected)
    run.report(
        tmp_path,
        f"kill {worker}",
        checked,
        {
            "worker": worker,
            "signal": signal.SIGKILL.name,
            "kills": kills,
            "patients": len(patients),
            "drained_seconds_after_stream": round(drained, 1),
            **done_again,
        },
    )


# --- a kill during an outbox drain ----------------------------------------------------------
#
# For the test, a trigger makes every DELETE of the stage's outbox rows wait for an advisory lock
# the test holds: the stage's records are published and their rows stay. The worker is killed
# right then: once after a batch's publication (its rows are left behind), and once inside the
# drain its restart runs on them.

HOLD_KEY = 15_15_15  # the advisory lock the trigger waits for

WAITS_ON_OUTBOX = (
    "SELECT count(*) AS n FROM pg_stat_activity WHERE application_name = $1 "
    "AND wait_event_type = 'Lock' AND query LIKE 'DELETE FROM outbox%'"
)


@contextlib.asynccontextmanager
async def _deletes_held(dsn: str, stage: str) -> AsyncIterator[asyncpg.Connection]:
    """While open, a DELETE of the stage's outbox rows waits (the test's connection holds the
    lock its trigger waits for); on exit they go ahead."""
    conn = await asyncpg.connect(dsn)
    await conn.execute(
        f"""
        CREATE OR REPLACE FUNCTION test_hold_outbox_delete() RETURNS trigger AS $$
        BEGIN PERFORM pg_advisory_xact_lock_shared({HOLD_KEY}); RETURN OLD; END $$
        LANGUAGE plpgsql;
        CREATE OR REPLACE TRIGGER test_hold_outbox_delete BEFORE DELETE ON outbox
        FOR EACH ROW WHEN (OLD.stage = '{stage}') EXECUTE FUNCTION test_hold_outbox_delete();
        """
    )
    await conn.execute("SELECT pg_advisory_lock($1)", HOLD_KEY)
    try:
        yield conn
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", HOLD_KEY)
        await conn.execute("DROP TRIGGER IF EXISTS test_hold_outbox_delete ON outbox")
        await conn.close()


async def _sessions(dsn: str, worker: str) -> int:
    rows = await fetch(
        dsn,
        "SELECT count(*) AS n FROM pg_stat_activity WHERE application_name = $1",
        f"concord-{worker}",
    )
    return int(rows[0]["n"])


async def _deleting(conn: asyncpg.Connection, worker: str, *, within: float) -> bool:
    """Whether the worker's DELETE of outbox rows comes to wait on the test's lock."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if await conn.fetchval(WAITS_ON_OUTBOX, f"concord-{worker}"):
            return True
        await asyncio.sleep(0.02)
    return False


async def _kill_held(stack: StackInfo, worker: str) -> None:
    """SIGKILL the worker, whose DELETE waits on the test's lock, and wait until PostgreSQL
    has ended its sessions (the waiting one within runtime.db.CLIENT_CHECK_MS): the lock may
    then go without the dead worker's DELETE running after all."""
    recorded = load_state(stack.state_dir)
    assert recorded is not None
    process = find_process(recorded.workers[worker])
    assert process is not None
    process.send_signal(signal.SIGKILL)
    sessions = await eventually(
        lambda: _sessions(stack.database_url, worker), lambda n: n == 0, within=30
    )
    assert sessions == 0, "PostgreSQL kept the killed worker's sessions"


@pytest.mark.parametrize("worker", ["conflicts", "alerting"])
async def test_a_worker_killed_during_its_outbox_drain_loses_and_duplicates_nothing(
    fault_stack: StackInfo, tmp_path: Path, worker: str
) -> None:
    stack = fault_stack
    run = Workload(stack)
    bootstrap, dsn = run.bootstrap, run.dsn
    stream = _stream(run)
    with run.rss:
        stream.start()
        await stream.after()
        async with _deletes_held(dsn, worker) as conn:
            # A batch publishes its records and waits to delete their rows: kill it.
            assert await _deleting(conn, worker, within=60), f"{worker} deleted nothing"
            left = [
                (r["topic"], bytes(r["value"]))
                for r in await conn.fetch(
                    "SELECT topic, value FROM outbox WHERE stage = $1", worker
                )
            ]
            await _kill_held(stack, worker)
            first_kill = time.monotonic()
            # Its restart's drain publishes the rows left and waits to delete them: kill it.
            restarting = asyncio.create_task(restart_worker(stack.state_dir, worker, kill=True))
            in_drain = await _deleting(conn, worker, within=90)
            assert in_drain, f"the restarted {worker} never drained its outbox"
            await _kill_held(stack, worker)
            with contextlib.suppress(ProcessDied):
                await restarting
            second_kill = time.monotonic()
        restarted = await restart_worker(stack.state_dir, worker, kill=True)
        ready_again = time.monotonic() - second_kill
        await stream.after()
        expected, stored, drained = await stream.end(within=90)
    patients = stream.patients

    # Nothing lost or dead-lettered, nothing raised twice, every worker running.
    checked = await run.checked(
        expected, stored, stream.sent, resent=stream.resent, assertions_of=None
    )
    assert is_alive(restarted)
    run.workers_alive(none_restarted=False)
    # Each row left behind went out with its batch, again with the killed drain, and a last
    # time with the drain that deleted it: the same bytes each time.
    assert left, "the killed batch left no rows"
    copies: Counter[tuple[str, bytes]] = Counter()
    for topic in {topic for topic, _ in left}:
        on_topic = Counter(
            bytes(r.value) for r in await read_topic(bootstrap, topic, idle_seconds=READ_IDLE)
        )
        copies.update({(topic, value): on_topic[value] for t, value in left if t == topic})
    assert min(copies.values()) >= 3, "a row left behind was not published by both drains"
    run.report(
        tmp_path,
        f"kill {worker} in its outbox drain",
        checked,
        {
            "worker": worker,
            "rows_left_behind": len(left),
            "copies_of_a_left_row": sorted(set(copies.values())),
            "seconds_between_kills": round(second_kill - first_kill, 1),
            "ready_again_seconds": round(ready_again, 1),
            "patients": len(patients),
            "drained_seconds_after_stream": round(drained, 1),
        },
    )
