"""Two workers per stage in one consumer group under load; a third joins and one leaves, at
every stage, while records flow: no worker crashes, no record is lost, no alert is raised twice.

The module's stack (conftest: one worker per stage) gets a second worker of each stage
(`add_worker`: the same service, so the same consumer group `concord-<stage>`; its own web
port and log) before the stream starts, and the test checks that the partitions are split:
each worker of a stage reports a share of them on /health, the shares are disjoint and
together cover every partition (topics have 4; the range assignor gives a worker the same
numbers of every topic it reads, so concord.facts and concord.resolutions stay together).

A publisher sends the workload of fault_tools (a hospital and a lab per patient, some of them
disagreeing) in chunks of four patients (40 FHIR records) every half second; every third
chunk a record again as it was (de-duplicated), and once the first chunk's glucose conflicts
are open, the lab's corrected results for them (those alerts resolve: revision 2). While it
runs, a third worker joins each stage at once, and two chunks later the first worker of each
stage leaves (SIGTERM: a graceful leave, as `concord stack down` stops a worker), so every
group rebalances twice under load, after the two joins at the start.

Checked once the stream has drained (the invariants of fault_tools): every raw record passed,
de-duplicated or dead-lettered (none is); the alerts stored and on concord.alerts are the
expected ones, none twice (an identical re-publication of an (id, revision) is allowed: the
outbox is at least once); every worker that should run does, and no worker's log holds a
traceback. Printed, not asserted: the time to drain, each group's rebalances (generations in
the workers' logs), batches whose commit a rebalance refused (redelivered), batches a
partition lease fenced off, and what was done twice.
"""

from __future__ import annotations

import asyncio
import re
import time
from pathlib import Path
from typing import Any

import pytest
from fault_tools import Stream, Workload, eventually, health

from concord.stack.processes import ProcessRecord, is_alive
from concord.stack.stack import (
    ALL_SERVICES,
    StackInfo,
    add_worker,
    load_state,
    remove_workers,
    worker_service,
)
from concord.topics import PARTITIONS

pytestmark = [pytest.mark.faults, pytest.mark.asyncio]

CHUNK, CHUNK_SECONDS = 4, 0.5  # patients per chunk (40 FHIR records), every half second
MAX_CHUNKS = 120  # the stream goes on until the joins and leaves are done, at most this long
BEFORE_JOIN, BEFORE_LEAVE, AFTER_LEAVE = 3, 2, 4  # chunks between the steps
JOINED = re.compile(r"Joined group 'concord-(\w+)' \(generation (\d+)\)")


# --- the workers --------------------------------------------------------------------------------


def _workers_of(state_dir: Path) -> dict[str, list[ProcessRecord]]:
    """The recorded workers, by service."""
    info = load_state(state_dir)
    assert info is not None
    found: dict[str, list[ProcessRecord]] = {service: [] for service in ALL_SERVICES}
    for record in info.workers.values():
        found[worker_service(record)].append(record)
    return found


async def _shares(state_dir: Path) -> dict[str, dict[str, list[int]]]:
    """Each worker's partition numbers by its /health, by service ([] when it does not
    answer)."""
    shares: dict[str, dict[str, list[int]]] = {}
    for service, workers in _workers_of(state_dir).items():
        shares[service] = {}
        for record in workers:
            assert record.port is not None
            _, body = await asyncio.to_thread(health, record.port)
            numbers = {int(tp.rsplit(":", 1)[1]) for tp in body.get("partitions", [])}
            shares[service][record.name] = sorted(numbers)
    return shares


def _split(shares: dict[str, dict[str, list[int]]]) -> bool:
    """Every stage's partitions shared out: each worker some, none twice, none left over."""
    for by_worker in shares.values():
        taken = [n for numbers in by_worker.values() for n in numbers]
        if sorted(taken) != list(range(PARTITIONS)):
            return False
        if len(by_worker) <= PARTITIONS and not all(by_worker.values()):
            return False
    return True


async def _wait_split(state_dir: Path) -> tuple[dict[str, dict[str, list[int]]], float]:
    """The partition shares once every stage's are split (the rebalance is over), and how
    long that took."""
    started = time.monotonic()
    shares = await eventually(lambda: _shares(state_dir), _split, within=30)
    assert _split(shares), f"partitions not shared out among the workers: {shares}"
    return shares, round(time.monotonic() - started, 2)


def _text(log: str) -> str:
    return Path(log).read_text(errors="replace")


def _generations(logs: list[str]) -> dict[str, set[int]]:
    """The generations of each stage's consumer group joined in these worker logs."""
    seen: dict[str, set[int]] = {service: set() for service in ALL_SERVICES}
    for path in logs:
        for stage, generation in JOINED.findall(_text(path)):
            if stage in seen:
                seen[stage].add(int(generation))
    return seen


def _log_lines(logs: list[str], needle: str) -> int:
    return sum(_text(path).count(needle) for path in logs)


async def _join_all(state_dir: Path) -> dict[str, Any]:
    """One more worker of every stage at once; how long each took to be ready."""
    started = time.monotonic()

    async def join(service: str) -> tuple[str, float]:
        record = await add_worker(state_dir, service)
        return record.name, round(time.monotonic() - started, 2)

    return dict(await asyncio.gather(*(join(service) for service in ALL_SERVICES)))


# --- the test -----------------------------------------------------------------------------------


async def test_two_workers_per_stage_a_third_joins_one_leaves_nothing_lost_or_doubled(
    fault_stack: StackInfo, tmp_path: Path
) -> None:
    stack = fault_stack
    run = Workload(stack)
    state_dir = stack.state_dir
    logs = [record.log_path for record in stack.workers.values()]
    before = _generations(logs)
    steps: dict[str, Any] = {}

    with run.rss:
        # Two workers per stage, before any record.
        steps["second_ready_seconds"] = await _join_all(state_dir)
        two, steps["two_split_seconds"] = await _wait_split(state_dir)
        steps["partitions_of_two"] = two

        stream = Stream(run, chunk=CHUNK, every=CHUNK_SECONDS, most=MAX_CHUNKS).start()
        await stream.after(BEFORE_JOIN)

        # A third worker joins each stage while records flow.
        steps["third_ready_seconds"] = await _join_all(state_dir)
        three, steps["three_split_seconds"] = await _wait_split(state_dir)
        steps["partitions_of_three"] = three
        await stream.after(BEFORE_LEAVE)

        # The first worker of each stage leaves while records flow.
        leaving = [workers[0] for workers in _workers_of(state_dir).values()]
        assert [r.name for r in leaving] == list(ALL_SERVICES)
        left_at = time.monotonic()
        stopped = await asyncio.to_thread(remove_workers, state_dir, [r.name for r in leaving])
        steps["leave_seconds"] = round(time.monotonic() - left_at, 2)
        steps["leave_outcomes"] = {r.name: r.outcome for r in stopped}
        assert not any(is_alive(r) for r in leaving)
        two_again, steps["after_leave_split_seconds"] = await _wait_split(state_dir)
        steps["partitions_after_leave"] = two_again

        await stream.after(AFTER_LEAVE)
        expected, stored, drained = await stream.end(within=90)
    patients = stream.patients

    # No worker crashed: the ones recorded run, and no log (those that left included) holds
    # a traceback or a failed batch loop.
    running = _workers_of(state_dir)
    assert {service: len(workers) for service, workers in running.items()} == dict.fromkeys(
        ALL_SERVICES, 2
    )
    dead = [r.name for workers in running.values() for r in workers if not is_alive(r)]
    assert dead == [], f"workers died: {dead}"
    logs = sorted({*logs, *(r.log_path for w in running.values() for r in w)})
    for path in logs:
        text = _text(path)
        assert "Traceback" not in text, f"a traceback in {path}"
        assert "batch loop failed" not in text, f"a batch loop failed in {path}"

    # Nothing lost or dead-lettered, nothing raised twice.
    checked = await run.checked(
        expected,
        stored,
        stream.sent,
        resent=stream.resent,
        assertions_of=len(patients),
        assertions_within=10,
    )

    generations = _generations(logs)
    run.report(
        tmp_path,
        "scale out",
        checked,
        {
            "patients": len(patients),
            "raw_records": len(stream.sent) + len(stream.resent),
            "drained_seconds_after_stream": round(drained, 1),
            **steps,
            "rebalances": {
                stage: len(generations[stage] - before[stage]) for stage in ALL_SERVICES
            },
            "commits_refused_by_a_rebalance": _log_lines(logs, "commit failed after a rebalance"),
            "batches_fenced_by_a_lease": _log_lines(logs, "the batch is dropped"),
            "error_log_lines": _log_lines(logs, "[ERROR]"),
        },
    )
