"""Recovery of the conflicts worker after SIGKILL, with the state of N patients behind it.

    .venv/bin/python benchmarks/recovery.py [--patients 100000] [--backlog 10000]
                                            [--restarts 3] [--out results.json]
                                            [--img-dir docs/img] [--no-plots] [--keep-state]

A stack with only the conflicts worker (broker, PostgreSQL, `python -m concord.worker
conflicts`, as `concord stack up` starts it), under the built-in policy. Then:

1. **Fill**: N patients, each described by two sources (bench-hospital, bench-lab) with three
   attributes (birth date, a glucose result, a type 2 diabetes problem status): 6 N
   ClinicalFacts, encoded with the project's codec and published straight to concord.facts,
   keyed by patient as normalization keys them. Some pairs disagree (birth date 1 in 7,
   glucose 1 in 3, problem 1 in 5). Waits until the worker has committed every fact and has
   raised every held disagreement (the policy holds results for `suppress_for`, 30 s), then
   VACUUM ANALYZE (what autovacuum would do after the bulk load) and the state's size.
2. **Baseline, never killed** (twice): a backlog of B facts (B/2 patients spread over the
   population, the lab revising a glucose result and the hospital the problem status, each
   revision flipping agreement, so each fact raises one conflict event) is published to the
   running worker; timed from the first send until the worker has committed the last fact.
3. **Restart, no backlog** (`--restarts` times): SIGKILL, the same command started again at
   once (as `concord.stack.restart_worker` does), and one probe fact per partition (a problem
   status, raised without a hold) published right after the start. Timed: start → the
   stage's partitions assigned (from the worker's log) and /health 200 → the probes'
   conflict events.
4. **Restart with a backlog**: SIGKILL; B facts (the same shape as step 2, other patients)
   published while it is down; started again; timed until it has committed them all. Its
   catch-up (from its partitions assigned) is compared with step 2's.

Each backlog's conflict events are checked once nothing is held any more: one per fact, none
missing, any second copy of an (id, revision) identical (the outbox is at least once). The
CPU each process used in each step is printed. Everything started is stopped at the end,
also on error or Ctrl-C. See docs/benchmarks.md, "Recovery of the conflicts worker".
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import signal
import statistics
import sys
import time
import uuid
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import psutil
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.partitioner import DefaultPartitioner
from aiokafka.structs import ConsumerRecord, TopicPartition
from benchlib.backend import TopicReader, bulk_producing
from benchlib.metrics import batch_metrics, batch_summary, state_per_patient
from benchlib.patients import SOURCES
from benchlib.runner import (
    BenchmarkError,
    Teardown,
    add_output_arguments,
    progress,
    run_benchmark,
    run_info,
    write_json,
)

from concord.config import ConflictsSettings
from concord.conflicts.rules import hash_of
from concord.events import codec
from concord.events.models import ClinicalFact, ConflictEvent, Provenance
from concord.stack.processes import ProcessRecord, is_alive, stop_process
from concord.stack.stack import (
    StackInfo,
    load_state,
    save_state,
    start_worker,
    wait_worker_ready,
)
from concord.topics import CONFLICTS, FACTS, PARTITIONS, RAW_FHIR

SERVICE, GROUP = "conflicts", "concord-conflicts"
HOSPITAL, LAB = SOURCES
# Type 2 diabetes as normalization keys it: SNOMED CT 44054006 through the crosswalk to ICD-10-CM.
BIRTH, GLUCOSE, DIABETES = "Patient.birthDate", "Observation/2345-7", "Condition/E11.9"
FACTS_PER_PATIENT = 6  # 3 attributes x 2 sources
EPOCH = datetime(2026, 11, 2, 8, 0, tzinfo=UTC)  # the sources' first versions
LATER = EPOCH + timedelta(days=1)  # their revisions
TAKEN = EPOCH - timedelta(hours=2)  # the glucose specimen, both sources
FILL_CHUNK = 20_000  # facts per publish batch while filling
LOG_TIME = re.compile(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})\]")
POLL_S = 0.1  # committed offsets are read this often while a backlog is timed
IDLE_TIMEOUT_S = 60.0  # no progress for this long: the worker lost records or hangs


# --- the facts --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Population:
    token: str
    patients: int

    def patient_id(self, i: int) -> str:
        return f"RB{self.token}-{i:06d}"


def fact(
    pop: Population, i: int, source: str, attribute: str, value: str, *, version: int = 1
) -> ClinicalFact:
    """Source `source`'s fact about patient i, as normalization would publish it."""
    patient, tag = pop.patient_id(i), "h" if source == HOSPITAL else "l"
    kind = {BIRTH: "Patient", GLUCOSE: "Observation", DIABETES: "Condition"}[attribute]
    record = f"{kind}/{patient}-{tag}-{attribute.rsplit('/', 1)[-1]}"
    when = EPOCH if version == 1 else LATER
    fields: dict[str, Any] = {}
    if attribute == BIRTH:
        attribute_class = "DEMOGRAPHICS"
        record = f"Patient/{patient}-{tag}"
    elif attribute == GLUCOSE:
        attribute_class = "LABORATORY"
        fields = {
            "unit": "mg/dL",
            "code": "2345-7",
            "code_system": "http://loinc.org",
            "effective_time": TAKEN,
        }
    else:
        attribute_class = "CONDITION"
        fields = {
            "code": "E11.9",
            "code_system": "http://hl7.org/fhir/sid/icd-10-cm",
            "original_code": "44054006",
            "original_code_system": "http://snomed.info/sct",
            "crosswalk": "snomed-icd10cm-conditions",
            "clinical_status": value,
            "effective_time": EPOCH - timedelta(days=400),
        }
    return ClinicalFact(
        fact_id=hash_of(record, str(version), attribute),
        patient_id=patient,
        attribute=attribute,
        attribute_class=attribute_class,
        value=value,
        display=value,
        status="ASSERTED",
        provenance=Provenance(
            source_system=source,
            source_record_id=record,
            source_record_version=str(version),
            event_time=when,
            received_time=datetime.now(UTC),
            raw_topic=RAW_FHIR,
            raw_partition=0,
            raw_offset=i,
            payload_sha256=hash_of(record, str(version)) * 2,
        ),
        record_id=hash_of(source, record, str(version)),
        subject=f"Patient/{patient}-{tag}",
        **fields,
    )


def glucose_disagrees(i: int) -> bool:
    return i % 3 == 0


def problem_disagrees(i: int) -> bool:
    return i % 5 == 0


def initial_facts(pop: Population, i: int) -> list[ClinicalFact]:
    """Both sources' first versions of patient i's three attributes."""
    born = date(1940, 1, 1) + timedelta(days=i % 25_000)
    lab_born = born + timedelta(days=1) if i % 7 == 0 else born
    return [
        fact(pop, i, HOSPITAL, BIRTH, born.isoformat()),
        fact(pop, i, HOSPITAL, GLUCOSE, "100"),
        fact(pop, i, HOSPITAL, DIABETES, "active"),
        fact(pop, i, LAB, BIRTH, lab_born.isoformat()),
        fact(pop, i, LAB, GLUCOSE, "130" if glucose_disagrees(i) else "104"),
        fact(pop, i, LAB, DIABETES, "resolved" if problem_disagrees(i) else "active"),
    ]


def glucose_revision(pop: Population, i: int) -> ClinicalFact:
    """The lab's second glucose result: agrees where the first disagreed, and the reverse."""
    return fact(pop, i, LAB, GLUCOSE, "101" if glucose_disagrees(i) else "140", version=2)


def problem_revision(pop: Population, i: int) -> ClinicalFact:
    """The hospital resolves the problem: agrees with a lab that resolved it, and disagrees
    with one that has it active."""
    return fact(pop, i, HOSPITAL, DIABETES, "resolved", version=2)


def revisions(pop: Population, i: int) -> list[ClinicalFact]:
    """A backlog patient's two revisions, each flipping agreement: one conflict event each
    (the hospital resolving the problem agrees with a lab that resolved it, and disagrees
    with one that has it active)."""
    return [glucose_revision(pop, i), problem_revision(pop, i)]


def expected_open(patients: int) -> int:
    return sum((i % 7 == 0) + glucose_disagrees(i) + problem_disagrees(i) for i in range(patients))


def keyed(facts: Iterable[ClinicalFact]) -> list[tuple[bytes, bytes]]:
    return [(f.patient_id.encode(), codec.CLINICAL_FACT.encode(f)) for f in facts]


# --- Kafka: publish, committed offsets, conflict events ---------------------------------------


async def publish(bootstrap: str, records: Sequence[tuple[bytes, bytes]]) -> dict[int, int]:
    """Send (key, value) pairs to concord.facts; returns the next offset per partition."""
    async with bulk_producing(bootstrap) as producer:
        futures = [await producer.send(FACTS, value, key=key) for key, value in records]
        ends: dict[int, int] = {}
        for meta in await asyncio.gather(*futures):
            ends[meta.partition] = max(ends.get(meta.partition, 0), meta.offset + 1)
        return ends


def merge_ends(a: dict[int, int], b: dict[int, int]) -> dict[int, int]:
    return {p: max(a.get(p, 0), b.get(p, 0)) for p in set(a) | set(b)}


class Committed:
    """The conflicts group's committed offsets on concord.facts (an OffsetFetch, which does not
    join the group). Not measured against ListOffsets(latest), which is off by a batch on
    the local broker: against the offsets our own sends returned."""

    def __init__(self, bootstrap: str) -> None:
        self.admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        self.partitions = [TopicPartition(FACTS, p) for p in range(PARTITIONS)]

    async def start(self) -> None:
        await self.admin.start()

    async def stop(self) -> None:
        await self.admin.close()

    async def offsets(self) -> dict[int, int]:
        found = await self.admin.list_consumer_group_offsets(GROUP, partitions=self.partitions)
        return {tp.partition: max(0, meta.offset) for tp, meta in found.items()}

    async def wait(
        self,
        target: dict[int, int],
        label: str,
        *,
        every: float = 5.0,
        poll: float = POLL_S,
        since: float | None = None,
        first: dict[int, int] | None = None,
    ) -> tuple[float, list[tuple[float, int]]]:
        """Poll until every partition's committed offset reaches `target`; returns the
        perf_counter when it did and (seconds since `since`, records left) samples. Progress
        counts from the `first` offsets (default: those committed now)."""
        since = time.perf_counter() if since is None else since
        first = await self.offsets() if first is None else first
        total = sum(max(0, t - first.get(p, 0)) for p, t in target.items())
        samples: list[tuple[float, int]] = []
        last_change, last_left = time.perf_counter(), None
        last_print, printed_left = time.perf_counter(), total
        while True:
            now = time.perf_counter()
            current = await self.offsets()
            left = sum(max(0, t - current.get(p, 0)) for p, t in target.items())
            samples.append((now - since, left))
            if left == 0:
                return now, samples
            if left != last_left:
                last_change, last_left = now, left
            elif now - last_change > IDLE_TIMEOUT_S:
                raise BenchmarkError(f"{label}: {left} facts never committed")
            if now - last_print >= every:
                rate = (printed_left - left) / (now - last_print)
                last_print, printed_left = now, left
                progress(
                    f"{label}: {total - left:,} / {total:,} facts processed "
                    f"({rate:,.0f} facts/s in the last {every:.0f} s)"
                )
            await asyncio.sleep(poll)


@dataclass
class Arrival:
    at: float  # perf_counter when read here
    event: ConflictEvent
    value: bytes


class ConflictWatcher(TopicReader):
    """Reads concord.conflicts from the start (no group) and keeps the events about the
    watched patients that a revision (a source's version 2) raised, with when each arrived."""

    def __init__(self, bootstrap: str) -> None:
        super().__init__(bootstrap, CONFLICTS, max_records=10_000)
        self.watched: set[bytes] = set()
        self.arrivals: dict[str, list[Arrival]] = defaultdict(list)

    def take(self, batch: dict[TopicPartition, list[ConsumerRecord[Any, Any]]]) -> None:
        now = time.perf_counter()
        for records in batch.values():
            for r in records:
                if r.key in self.watched:
                    event = codec.CONFLICT_EVENT.decode(r.value)
                    if any(a.provenance.source_record_version == "2" for a in event.assertions):
                        self.arrivals[event.patient_id].append(Arrival(now, event, r.value))

    async def wait_for(self, patients: Sequence[str], count: int, within: float) -> None:
        """Until the patients have `count` distinct (id, revision) events between them."""
        deadline = time.monotonic() + within
        while distinct(self, patients) < count:
            self.check()
            if time.monotonic() > deadline:
                got = distinct(self, patients)
                raise BenchmarkError(f"{got} of {count} conflict events after {within:.0f}s")
            await asyncio.sleep(0.02)


def distinct(watcher: ConflictWatcher, patients: Iterable[str]) -> int:
    return len(
        {
            (a.event.conflict_id, a.event.revision)
            for p in patients
            for a in watcher.arrivals.get(p, [])
        }
    )


def check_events(watcher: ConflictWatcher, patients: Sequence[str], label: str) -> dict[str, int]:
    """One event per revision fact, no (id, revision) published twice with different bytes;
    returns the counts by kind and the identical re-publications."""
    copies: dict[tuple[str, int], set[bytes]] = defaultdict(set)
    kinds: dict[str, int] = defaultdict(int)
    events = [a for p in patients for a in watcher.arrivals.get(p, [])]
    for a in events:
        key = (a.event.conflict_id, a.event.revision)
        if key not in copies:
            kinds[a.event.kind] += 1
        copies[key].add(a.value)
    differing = sum(1 for values in copies.values() if len(values) > 1)
    if differing or len(copies) != 2 * len(patients):
        raise BenchmarkError(
            f"{label}: {len(copies)} distinct conflict events for {2 * len(patients)} revisions, "
            f"{differing} (id, revision) published with different content"
        )
    return {**kinds, "identical_republications": len(events) - len(copies)}


# --- the worker -------------------------------------------------------------------------------


async def kill(state_dir: Path) -> tuple[StackInfo, ProcessRecord, float]:
    info = load_state(state_dir)
    assert info is not None
    old = info.workers[SERVICE]
    stop_process(old, sig=signal.SIGKILL)
    if is_alive(old):
        raise BenchmarkError("the conflicts worker survived SIGKILL")
    return info, old, time.perf_counter()


def start_again(info: StackInfo, old: ProcessRecord) -> tuple[ProcessRecord, float]:
    """What restart_worker does after the kill: the same command and web port."""
    record = start_worker(
        SERVICE, info.worker_settings(SERVICE), info.state_dir, port=old.port, command=old.argv[:-1]
    )
    info.workers[SERVICE] = record
    save_state(info)
    return record, time.perf_counter()


async def ready(record: ProcessRecord) -> float:
    await wait_worker_ready(record, startup_timeout=120)
    return time.perf_counter()


def probe_patients(pop: Population, offset: int, step: int, sets: int) -> list[list[int]]:
    """`sets` sets of one patient per partition of concord.facts (keyed by patient id, as the
    producer partitions), from those at `offset` modulo `step`."""
    partitioner = DefaultPartitioner()
    partitions = list(range(PARTITIONS))
    chosen: dict[int, list[int]] = defaultdict(list)
    for i in range(offset, pop.patients, step):
        p = partitioner(pop.patient_id(i).encode(), partitions, partitions)
        if len(chosen[p]) < sets:
            chosen[p].append(i)
        if all(len(chosen[p]) == sets for p in partitions):
            break
    return [[chosen[p][n] for p in partitions] for n in range(sets)]


def log_moments(record: ProcessRecord, wall: float, perf: float) -> dict[str, float]:
    """From the worker's log, when its last start got where (perf_counter, converted through
    one (time.time(), perf_counter) pair): its first log line, Faust ready (its own control
    consumer has joined concord-conflicts-control) and the stage's partitions assigned.
    Missing moments are left out (the log's format is Faust's and aiokafka's)."""
    lines = Path(record.log_path).read_text(encoding="utf-8", errors="replace").splitlines()
    starts = [n for n, line in enumerate(lines) if line.startswith("=== ") and "starting" in line]
    moments: dict[str, float] = {}
    joined = False
    for line in lines[(starts[-1] if starts else 0) + 1 :]:
        match = LOG_TIME.match(line)
        if match is None:
            continue
        at = datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
        at = perf + (at - wall)
        moments.setdefault("first_log_line", at)
        if "Worker ready" in line:
            moments.setdefault("faust_ready", at)
        joined = joined or f"Joined group '{GROUP}'" in line
        if joined and "Setting newly assigned partitions" in line:
            moments["assigned"] = at
            break
    return moments


# --- the run ----------------------------------------------------------------------------------


async def fill(
    bootstrap: str, pop: Population, committed: Committed
) -> tuple[dict[str, Any], dict[int, int]]:
    total = pop.patients * FACTS_PER_PATIENT
    progress(
        f"fill: publishing {total:,} facts ({pop.patients:,} patients x 2 sources x 3 "
        f"attributes) to {FACTS}"
    )
    started = time.perf_counter()
    ends: dict[int, int] = {}
    per_chunk = FILL_CHUNK // FACTS_PER_PATIENT
    for first in range(0, pop.patients, per_chunk):
        batch = keyed(
            f
            for i in range(first, min(pop.patients, first + per_chunk))
            for f in initial_facts(pop, i)
        )
        ends = merge_ends(ends, await publish(bootstrap, batch))
        sent = min(pop.patients, first + per_chunk) * FACTS_PER_PATIENT
        if (first // per_chunk) % 5 == 4 or sent == total:
            elapsed = time.perf_counter() - started
            progress(f"fill: {sent:,} / {total:,} facts published ({sent / elapsed:,.0f}/s)")
    published = time.perf_counter()
    done, _ = await committed.wait(ends, "fill", since=started, poll=0.5, first={})
    seconds = done - started
    progress(
        f"fill: all {total:,} facts processed in {seconds:.1f}s ({total / seconds:,.0f} "
        f"facts/s, published in {published - started:.1f}s)"
    )
    result = {
        "facts": total,
        "seconds": round(seconds, 1),
        "publish_seconds": round(published - started, 1),
        "facts_per_s": round(total / seconds),
    }
    return result, ends


async def open_conflicts(dsn: str) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        return int(await conn.fetchval("SELECT count(*) FROM conflict_state WHERE status='OPEN'"))
    finally:
        await conn.close()


async def settle(dsn: str, label: str, *, every: float = 10.0) -> float:
    """Wait until nothing is held back (suppress_for: held_records) and nothing written is
    left unpublished (the outbox); returns the perf_counter when so."""
    conn = await asyncpg.connect(dsn)
    try:
        last_print = last_change = time.perf_counter()
        last: tuple[int, int] | None = None
        while True:
            row = await conn.fetchrow(
                "SELECT (SELECT count(*) FROM held_records) AS held, "
                "(SELECT count(*) FROM outbox WHERE stage = 'conflicts') AS outbox"
            )
            assert row is not None
            now, pending = time.perf_counter(), (int(row["held"]), int(row["outbox"]))
            if pending == (0, 0):
                return now
            if pending != last:
                last, last_change = pending, now
            elif now - last_change > IDLE_TIMEOUT_S:
                raise BenchmarkError(f"{label}: {pending[0]} held records never raised")
            if now - last_print >= every:
                last_print = now
                progress(f"{label}: {pending[0]:,} disagreements held (suppress_for), "
                         f"{pending[1]:,} outbox rows")  # fmt: skip
            await asyncio.sleep(0.25)
    finally:
        await conn.close()


def backlog_patients(pop: Population, count: int, offset: int) -> list[int]:
    step = pop.patients // count
    return [step * j + offset for j in range(count)]


def cpu_of(pid: int) -> float:
    """CPU seconds of a process, of its children that ended (PostgreSQL's backends: as
    their parent reaped them) and of those still running."""
    process = psutil.Process(pid)
    t = process.cpu_times()
    total = float(t.user + t.system + t.children_user + t.children_system)
    for child in process.children(recursive=True):
        with contextlib.suppress(psutil.Error):
            c = child.cpu_times()
            total += c.user + c.system
    return total


def cpu_snapshot(state_dir: Path) -> dict[str, tuple[int, float]]:
    """CPU seconds so far of each stack process (with its children) and of this one."""
    info = load_state(state_dir)
    assert info is not None
    snapshot = {}
    for record in [*info.processes]:
        with contextlib.suppress(psutil.Error):
            snapshot[record.name] = (record.pid, cpu_of(record.pid))
    own = psutil.Process().cpu_times()  # not its children: it started the stack
    snapshot["benchmark"] = (os.getpid(), own.user + own.system)
    return snapshot


def cores_used(
    before: dict[str, tuple[int, float]], after: dict[str, tuple[int, float]], seconds: float
) -> dict[str, float]:
    """Cores each process used between two snapshots (a restarted worker: since its start)."""
    used = {}
    for name, (pid, cpu) in after.items():
        was_pid, was = before.get(name, (pid, 0.0))
        used[name] = round((cpu - (was if was_pid == pid else 0.0)) / seconds, 2)
    return used


async def run(args: argparse.Namespace, teardown: Teardown) -> dict[str, Any]:
    token = uuid.uuid4().hex[:6]
    pop = Population(token, args.patients)
    per_backlog = args.backlog // 2
    step = pop.patients // per_backlog
    # Four sets of patients, spread over the population: two backlogs for the never-killed
    # worker, one for the restarted one, and the probes.
    first_warm, second_warm, cold_ids, probe_set = (
        backlog_patients(pop, per_backlog, 1 + k * (step // 4)) for k in range(4)
    )
    probe_sets = probe_patients(pop, probe_set[0], step, args.restarts)
    default = ConflictsSettings.model_fields["cache_max_keys"].default
    cap = int(os.environ.get("CONCORD_CACHE_MAX_KEYS", default))
    keys = pop.patients * 3
    results: dict[str, Any] = {
        "run": run_info(
            patients=pop.patients,
            facts=pop.patients * FACTS_PER_PATIENT,
            backlog_facts=2 * per_backlog,
            cache_max_keys=cap,
            state_keys=keys,
        )
    }
    progress(
        f"{pop.patients:,} patients: {keys:,} patient attributes, worker cache cap "
        f"{cap:,} keys (CONCORD_CACHE_MAX_KEYS)"
    )

    progress("starting broker, PostgreSQL and the conflicts worker (concord.stack)")
    state_dir, info = await teardown.stack(
        "recovery", workers=(SERVICE,), progress=lambda line: None
    )
    bootstrap, dsn = info.bootstrap_servers, info.database_url
    committed = Committed(bootstrap)
    await committed.start()
    watcher = ConflictWatcher(bootstrap)
    try:
        results["fill"], ends = await fill(bootstrap, pop, committed)
        waited = time.perf_counter()
        raised = await settle(dsn, "fill")
        results["fill"]["holds_raised_after_s"] = round(raised - waited, 1)
        progress(f"fill: every held disagreement raised {raised - waited:.1f}s later")
        opened = await open_conflicts(dsn)
        if opened != expected_open(pop.patients):
            raise BenchmarkError(f"{opened} open conflicts, {expected_open(pop.patients)} expected")
        results["fill"]["open_conflicts"] = opened
        progress(f"fill: {opened:,} open conflicts in PostgreSQL, as expected")
        # Also settles PostgreSQL (what autovacuum would do after the bulk load) before timing.
        progress("state: VACUUM ANALYZE, then its size in PostgreSQL")
        results["state"] = await state_per_patient(dsn)

        probes = [i for probe in probe_sets for i in probe]
        watched = (*first_warm, *second_warm, *cold_ids, *probes)
        watcher.watched = {pop.patient_id(i).encode() for i in watched}
        await watcher.start()
        results["baseline"] = []
        for n, patients in enumerate((first_warm, second_warm), start=1):
            row, ends = await baseline(state_dir, pop, patients, committed, watcher, ends, n)
            results["baseline"].append(row)
        results["restarts"] = [
            await restart_with_probes(state_dir, pop, probe, watcher, n)
            for n, probe in enumerate(probe_sets, start=1)
        ]
        results["backlog_restart"] = await restart_with_backlog(
            state_dir, pop, cold_ids, committed, watcher, ends
        )
        base = statistics.fmean(row["seconds"] for row in results["baseline"])
        cold = results["backlog_restart"]
        cold["ratio_to_baseline"] = round(cold["catch_up_seconds"] / base, 2)
        cold["ratio_from_start"] = round(cold["from_start_seconds"] / base, 2)
    finally:
        await watcher.stop()
        await committed.stop()
    return results


async def baseline(
    state_dir: Path,
    pop: Population,
    patients: list[int],
    committed: Committed,
    watcher: ConflictWatcher,
    ends: dict[int, int],
    n: int,
) -> tuple[dict[str, Any], dict[int, int]]:
    info = load_state(state_dir)
    assert info is not None
    records = keyed(f for i in patients for f in revisions(pop, i))
    label = f"baseline {n}"
    progress(f"{label}: {len(records):,} revision facts to the running (never killed) worker")
    before, cpu = batch_metrics(info), cpu_snapshot(state_dir)
    started = time.perf_counter()
    target = merge_ends(ends, await publish(info.bootstrap_servers, records))
    sent = time.perf_counter()
    done, samples = await committed.wait(target, label, since=started)
    seconds = done - started
    cores = cores_used(cpu, cpu_snapshot(state_dir), time.perf_counter() - started)
    raised = await settle(info.database_url, label)
    ids = [pop.patient_id(i) for i in patients]
    await watcher.wait_for(ids, len(records), within=60)
    kinds = check_events(watcher, ids, label)
    summary = batch_summary(before, batch_metrics(info), seconds)[SERVICE]
    progress(
        f"{label}: {len(records):,} facts processed in {seconds:.2f}s "
        f"({len(records) / seconds:,.0f} facts/s); events {kinds}; cores used {cores}"
    )
    return {
        "facts": len(records),
        "seconds": round(seconds, 3),
        "publish_seconds": round(sent - started, 3),
        "facts_per_s": round(len(records) / seconds),
        "all_events_s": round(raised - started, 1),
        "events": kinds,
        "batches": summary,
        "cores_used": cores,
        "samples": samples,
    }, target


async def restart_with_probes(
    state_dir: Path, pop: Population, probes: list[int], watcher: ConflictWatcher, n: int
) -> dict[str, Any]:
    progress(
        f"restart {n}: SIGKILL, start again, one probe fact on each of {len(probes)} partitions"
    )
    records = keyed(problem_revision(pop, i) for i in probes)  # not held: raised at once
    cpu = cpu_snapshot(state_dir)
    info, old, killed = await kill(state_dir)
    record, started = start_again(info, old)
    await publish(info.bootstrap_servers, records)
    published = time.perf_counter()
    answered = await ready(record)
    ids = [pop.patient_id(i) for i in probes]
    await watcher.wait_for(ids, len(probes), within=120)
    arrivals = sorted(min(a.at for a in watcher.arrivals[p]) for p in ids)
    cores = cores_used(cpu, cpu_snapshot(state_dir), time.perf_counter() - killed)
    moments = log_moments(record, time.time(), time.perf_counter())
    result = {
        "kill_to_start_s": round(started - killed, 3),
        "start_to_probes_published_s": round(published - started, 3),
        **{f"start_to_{k}_s": round(v - started, 3) for k, v in moments.items()},
        "start_to_health_200_s": round(answered - started, 3),
        "start_to_first_probe_event_s": round(arrivals[0] - started, 3),
        "start_to_last_probe_event_s": round(arrivals[-1] - started, 3),
        "probes": len(probes),
        "cores_used": cores,
    }
    progress(f"restart {n}: {result}")
    return result


async def restart_with_backlog(
    state_dir: Path,
    pop: Population,
    patients: list[int],
    committed: Committed,
    watcher: ConflictWatcher,
    ends: dict[int, int],
) -> dict[str, Any]:
    records = keyed(f for i in patients for f in revisions(pop, i))
    progress(f"backlog: SIGKILL, {len(records):,} revision facts published while down, start")
    cpu = cpu_snapshot(state_dir)
    info, old, killed = await kill(state_dir)
    target = merge_ends(ends, await publish(info.bootstrap_servers, records))
    published = time.perf_counter()
    record, started = start_again(info, old)
    ready_task = asyncio.create_task(ready(record))
    done, samples = await committed.wait(target, "backlog", since=started)
    cores = cores_used(cpu, cpu_snapshot(state_dir), time.perf_counter() - killed)
    answered = await ready_task
    raised = await settle(info.database_url, "backlog")
    moments = log_moments(record, time.time(), time.perf_counter())
    assigned = moments.get("assigned", answered)
    ids = [pop.patient_id(i) for i in patients]
    await watcher.wait_for(ids, len(records), within=60)
    kinds = check_events(watcher, ids, "backlog")
    after = batch_metrics(load_state(state_dir) or info)
    empty = dict.fromkeys(after[SERVICE], 0.0)
    summary = batch_summary({SERVICE: empty}, after, done - assigned)[SERVICE]
    result = {
        "facts": len(records),
        "down_seconds": round(started - killed, 3),
        "publish_seconds": round(published - killed, 3),
        **{f"start_to_{k}_s": round(v - started, 3) for k, v in moments.items()},
        "start_to_health_200_s": round(answered - started, 3),
        "catch_up_seconds": round(done - assigned, 3),
        "from_start_seconds": round(done - started, 3),
        "facts_per_s": round(len(records) / (done - assigned)),
        "all_events_s": round(raised - assigned, 1),
        "events": kinds,
        "batches": summary,
        "cores_used": cores,
        "samples": [(t - (assigned - started), left) for t, left in samples],
    }
    progress(
        f"backlog: caught up {done - assigned:.2f}s after it had its partitions "
        f"({done - started:.2f}s after the start); events {kinds}"
    )
    return result


# --- output -----------------------------------------------------------------------------------


def assigned_s(row: dict[str, Any]) -> float:
    """Start → partitions assigned, from the worker's log; else start → /health 200."""
    return float(row.get("start_to_assigned_s", row["start_to_health_200_s"]))


def print_results(r: dict[str, Any]) -> None:
    run, fill_, base = r["run"], r["fill"], r["baseline"]
    restarts, cold, state = r["restarts"], r["backlog_restart"], r["state"]
    print()
    print(
        f"Recovery of the conflicts worker, {run['patients']:,} patients ({run['facts']:,} facts, "
        f"{run['state_keys']:,} patient attributes; cache cap {run['cache_max_keys']:,}), "
        f"{run['machine']}"
    )
    print(
        f"  state: {state['bytes'] / 1e6:,.0f} MB in PostgreSQL ({state['bytes_per_patient']:,} "
        f"bytes per patient); filled in {fill_['seconds']}s ({fill_['facts_per_s']:,} facts/s), "
        f"{fill_['open_conflicts']:,} open conflicts (the last held ones raised "
        f"{fill_['holds_raised_after_s']}s after the last fact was committed)"
    )
    print("  (a) SIGKILL, start again, one new fact per partition published right after the start")
    steps = [
        ("first log line (Python and Faust imported)", "start_to_first_log_line_s"),
        ("Faust ready (its control consumer joined)", "start_to_faust_ready_s"),
        ("the stage's partitions assigned", "start_to_assigned_s"),
        ("/health 200 (as seen polling every 0.1 s)", "start_to_health_200_s"),
        ("first new fact's conflict event", "start_to_first_probe_event_s"),
        ("every partition's new fact's conflict event", "start_to_last_probe_event_s"),
    ]
    print(f"      {'seconds after the start, restart':53}" + "".join(
        f"{n:>8}" for n in range(1, len(restarts) + 1)))  # fmt: skip
    for label, key in steps:
        cells = "".join(f"{row[key]:8.2f}" if key in row else f"{'-':>8}" for row in restarts)
        print(f"      start -> {label + ':':44}{cells}")
    print(f"  (b) a backlog of {cold['facts']:,} facts (each raising a conflict event):")
    for n, row in enumerate(base, start=1):
        print(
            f"      never-killed worker, run {n}, from the first send: {row['seconds']:6.2f} s  "
            f"({row['facts_per_s']:,} facts/s, {batches(row)})"
        )
    print(
        f"      restarted worker, from its partitions assigned:  {cold['catch_up_seconds']:6.2f} s"
        f"  ({cold['facts_per_s']:,} facts/s, {batches(cold)})  = "
        f"{cold['ratio_to_baseline']:.2f}x the never-killed mean"
    )
    print(
        f"      restarted worker, from its process start:        "
        f"{cold['from_start_seconds']:6.2f} s  = {cold['ratio_from_start']:.2f}x"
    )
    held = ", ".join(f"{row['all_events_s']:.1f}" for row in [*base, cold])
    print(f"      every event published (held results included) after: {held} s")
    events = ", ".join(f"{row['events']}" for row in [*base, cold])
    print(f"      conflict events (never killed 1, 2; restarted): {events}")
    print("  cores used (each process with its children):")
    rows = [(f"never killed, run {n}", b) for n, b in enumerate(base, 1)]
    rows += [(f"(a) {n}: kill -> every new event", a) for n, a in enumerate(restarts, 1)]
    rows.append(("(b) kill -> backlog caught up", cold))
    for label, row in rows:
        used = ", ".join(f"{name} {value:.2f}" for name, value in row["cores_used"].items())
        print(f"      {label + ':':34} {used}")


def batches(row: dict[str, Any]) -> str:
    b = row["batches"]
    return (
        f"{b['batches']} batches of {b['records_per_batch']:.0f}, {b['ms_per_batch']:.0f} ms each"
    )


def plot(r: dict[str, Any], path: Path) -> None:
    import matplotlib.pyplot as plt

    restarts, cold, base = r["restarts"], r["backlog_restart"], r["baseline"]
    fig, (timeline, catch_up) = plt.subplots(1, 2, figsize=(14, 4.6))
    segments = (
        ("start → Faust ready (its own group joined)", "#bbbbbb"),
        ("→ the stage's partitions assigned", "#888888"),
        ("→ every partition's new fact's conflict event", "#3b75af"),
        ("→ the backlog caught up", "#c44e52"),
    )
    bars = [
        (f"(a) restart {n}", [row.get("start_to_faust_ready_s", 0.0), assigned_s(row),
                              row["start_to_last_probe_event_s"]])
        for n, row in enumerate(restarts, 1)
    ]  # fmt: skip
    bars.append(
        ("(b) with a backlog", [cold.get("start_to_faust_ready_s", 0.0), assigned_s(cold),
                                assigned_s(cold), cold["from_start_seconds"]])
    )  # fmt: skip
    for y, (_name, ends) in enumerate(bars[::-1]):
        left = 0.0
        for (label, color), end in zip(segments, ends, strict=False):
            if end > left:
                timeline.barh(y, end - left, left=left, color=color, label=label)
                left = end
        timeline.text(left, y, f" {left:.1f}s", va="center", fontsize=9)
    handles, labels = timeline.get_legend_handles_labels()
    unique = dict(zip(labels, handles, strict=True))
    timeline.legend(unique.values(), unique.keys(), loc="upper center", fontsize=8,
                    bbox_to_anchor=(0.5, -0.16), ncol=2, frameon=False)  # fmt: skip
    timeline.set_yticks(range(len(bars)), [name for name, _ in bars[::-1]])
    timeline.set_xlabel("seconds since the restarted worker's process started (after SIGKILL)")
    timeline.set_title("after SIGKILL")
    timeline.set_xlim(0, max(ends[-1] for _, ends in bars) * 1.2)
    curves = [
        (f"never killed, run {n}, from the first send", row["samples"], color)
        for n, (row, color) in enumerate(zip(base, ("#888888", "#555555"), strict=False), 1)
    ]
    curves.append(("restarted, from its partitions assigned", cold["samples"], "#c44e52"))
    for label, samples, color in curves:
        xs = [t for t, _ in samples if t >= 0]
        ys = [cold["facts"] - left for t, left in samples if t >= 0]
        catch_up.plot(xs, ys, color=color, label=label)
    catch_up.set_xlabel("seconds")
    catch_up.set_ylabel("backlog facts processed (committed)")
    catch_up.set_title(
        f"a backlog of {cold['facts']:,} facts: restarted {cold['ratio_to_baseline']:.2f}x"
    )
    catch_up.legend(loc="lower right", fontsize=8)
    fig.suptitle(
        f"Conflicts worker recovery, {r['run']['patients']:,} patients "
        f"({r['run']['facts']:,} facts) in PostgreSQL"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--patients", type=int, default=100_000, help="patients in the state")
    parser.add_argument("--backlog", type=int, default=10_000, help="facts in each backlog")
    parser.add_argument(
        "--restarts", type=int, default=3, help="restarts timed without a backlog (part a)"
    )
    add_output_arguments(
        parser, img_help="where the plot goes", no_plots_help="do not draw the plot"
    )
    parser.add_argument("--keep-state", action="store_true", help="keep temp dirs and logs")
    args = parser.parse_args(argv)
    if args.backlog < 2 * PARTITIONS or args.patients < 3 * args.backlog:
        parser.error("--backlog must be at least 8 and --patients at least 3 times --backlog")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    results = run_benchmark(run, args)
    if isinstance(results, int):
        return results
    print_results(results)
    write_json(args.out, results)
    if not args.no_plots:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            progress("matplotlib is not installed: no plot")
            return 0
        Path(args.img_dir).mkdir(parents=True, exist_ok=True)
        plot(results, Path(args.img_dir) / "benchmark-recovery.png")
        progress(f"plot written to {Path(args.img_dir) / 'benchmark-recovery.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
