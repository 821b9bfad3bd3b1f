"""Concord pipeline benchmark: stage throughput against a raw aiokafka loop, alert latency, and
ingestion throughput per raw format against a pass-through.

    .venv/bin/python benchmarks/pipeline.py [--records 20000] [--rate 500] [--seconds 20]
                                            [--out results.json] [--img-dir docs/img]
                                            [--skip-throughput] [--skip-latency]
                                            [--skip-ingestion-formats]

Part 1, throughput (a fresh broker and PostgreSQL, everything in this one process):
  * baseline: a raw aiokafka loop (getmany up to 1,000 records, fetch_max_wait_ms=20 → Avro
    decode → encode → produce → await acks → commit) over N IngestedRecords on `bench.in`;
  * each stage's real handler (built by concord.composition.build_stage, as a worker builds
    it) in a BatchLoop on one consumer group: what one worker runs. The stages are chained:
    N raw FHIR Patients → ingestion → normalization → conflicts (PostgreSQL) → alerting, each
    over the previous stage's real output, one stage at a time.
  Each is timed from the batch that brings its first record until its known input count is
  consumed, processed, produced, acknowledged and committed.

Part 2, latency (the whole stack as separate processes: broker, PostgreSQL, 4 Faust workers):
  pairs of disagreeing Patients at a fixed offered rate; latency = arrival of the alert on
  concord.alerts - send time of the pair's second (triggering) event, both on this process's
  clock. The latency is split per hop at the CreateTime of each stage's output records, and
  each worker's batch counters (/metrics) and each process's CPU are reported beside it.

Part 3, ingestion by raw format (a fresh broker and PostgreSQL, everything in this process):
  N clinical FHIR R4 events (Patients, Observations, Conditions and transaction Bundles of the
  three) and N HL7 v2 messages (ADT^A01 and ORU^R01), each record new to de-duplication, are
  published as `concord publish` does. Per format, a pass-through (the same consumer and
  producer settings; the consumed bytes are produced as they are) and then the ingestion stage
  in a BatchLoop are timed over the same records of the raw topic, as in part 1. The part
  fails if more than 2% of a format's events are dead-lettered.

Everything started is stopped at the end, also on error or Ctrl-C. See docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import gc
import json
import os
import platform
import shutil
import signal
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta, timezone
from functools import partial
from pathlib import Path
from typing import Any

import asyncpg
import orjson
import psutil
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener
from aiokafka.structs import OffsetAndMetadata, TopicPartition
from prometheus_client import REGISTRY

from concord.composition import SERVICES, build_stage
from concord.config import DEFAULT_ENTERPRISE_ID_SYSTEM, DatabaseWorkerSettings, WorkerSettings
from concord.events import codec
from concord.normalization.identity.resolution import How
from concord.publisher import publish_files
from concord.runtime.batch import BatchLoop, StageHandler
from concord.runtime.db import apply_migrations
from concord.runtime.reading import assign_from_start, read_topic
from concord.runtime.records import partition_numbers
from concord.stack.broker import ensure_topics, start_broker
from concord.stack.postgres import create_database, drop_database, start_postgres
from concord.stack.processes import ProcessRecord, metric_samples, stop_process
from concord.stack.stack import StackInfo, start_stack, stop_stack
from concord.topics import (
    ALERTS,
    CONFLICTS,
    DEADLETTER,
    FACTS,
    INGESTED,
    PARTITIONS,
    RAW_FHIR,
    RAW_HL7V2,
    TopicSpec,
)

REPO = Path(__file__).resolve().parents[1]
BENCH_IN, BENCH_OUT = "bench.in", "bench.out"
MAX_RECORDS, FETCH_MAX_WAIT_MS = 1000, 20  # the baseline's and the stages' consumer settings
SOURCES = ("bench-hospital", "bench-lab")
STAGES = ("ingestion", "normalization", "conflicts", "alerting")
OUTPUT_TOPICS = (INGESTED, FACTS, CONFLICTS, ALERTS, DEADLETTER)
# Reference figures from ARCHITECTURE.md (2 cores, medians of 3 runs, another day).
REFERENCE = {"raw aiokafka loop": 10_600, "Faust agent": 2_200}
IDLE_TIMEOUT_S = 15.0  # a stage that gets nothing new for this long has lost records
_STARTED = time.monotonic()


class BenchmarkError(RuntimeError):
    """The benchmark cannot go on (a stage lost records, a part timed out)."""


def progress(message: str) -> None:
    print(f"[{time.monotonic() - _STARTED:6.1f}s] {message}", flush=True)


# --- what everything started is: stopped at the end, whatever happens -------------------------


@dataclass
class Teardown:
    keep_state: bool = False
    processes: list[ProcessRecord] = field(default_factory=list)
    stacks: list[Path] = field(default_factory=list)
    databases: list[tuple[str, str]] = field(default_factory=list)  # (server DSN, name)
    dirs: list[Path] = field(default_factory=list)

    def tempdir(self, label: str) -> Path:
        path = Path(tempfile.mkdtemp(prefix=f"concord-bench-{label}-"))
        self.dirs.append(path)
        return path

    def stop_process(self, record: ProcessRecord) -> None:
        if record in self.processes:
            self.processes.remove(record)
            stop_process(record)

    def stop_stack(self, state_dir: Path) -> None:
        if state_dir in self.stacks:
            self.stacks.remove(state_dir)
            stop_stack(state_dir)

    def close(self, failed: bool) -> None:
        """Synchronous, so it also runs after Ctrl-C has ended the event loop."""
        steps: list[tuple[str, Callable[[], Any]]] = []
        steps += [(f"stack {d}", partial(self.stop_stack, d)) for d in list(self.stacks)]
        steps += [(r.name, partial(self.stop_process, r)) for r in reversed(self.processes)]
        steps += [
            (f"database {name}", partial(_drop_database, s, name)) for s, name in self.databases
        ]
        for label, step in steps:
            try:
                step()
            except Exception as exc:
                print(f"teardown: could not stop {label}: {exc!r}", file=sys.stderr)
        for path in self.dirs:
            if self.keep_state or failed:
                print(f"teardown: kept {path} (logs under logs/)", file=sys.stderr)
            else:
                shutil.rmtree(path, ignore_errors=True)


def _drop_database(server: str, name: str) -> None:
    asyncio.run(drop_database(server, name))


# --- input: FHIR Patients as EHRs send them ---------------------------------------------------


def patient_json(enterprise_id: str, resource_id: str, birth_date: str) -> bytes:
    """A FHIR R4 Patient (the shape of tests/e2e/pipeline_tools.patient)."""
    return orjson.dumps(
        {
            "resourceType": "Patient",
            "id": resource_id,
            "meta": {"versionId": "1", "lastUpdated": "2026-01-01T00:00:00+00:00"},
            "identifier": [
                {"system": "urn:test:mrn", "value": resource_id},
                {"system": DEFAULT_ENTERPRISE_ID_SYSTEM, "value": enterprise_id},
            ],
            "name": [{"use": "official", "family": "Benchperson", "given": ["Alex"]}],
            "gender": "female",
            "birthDate": birth_date,
        }
    )


@dataclass(frozen=True)
class RawPatient:
    source: str
    value: bytes
    triggers: str | None = None  # the enterprise id whose alert this (second) event triggers


def patient_pairs(prefix: str, pairs: int, disagree_every: int) -> list[RawPatient]:
    """`pairs` enterprise ids, each sent by both sources in turn; every `disagree_every`-th
    pair disagrees on birthDate (1 = all of them)."""
    events = []
    for i in range(pairs):
        eid = f"{prefix}-{i:06d}"
        born = date(1940, 1, 1) + timedelta(days=i % 25_000)
        other = born + timedelta(days=1) if i % disagree_every == 0 else born
        events.append(RawPatient(SOURCES[0], patient_json(eid, f"{eid}-h", born.isoformat())))
        events.append(
            RawPatient(
                SOURCES[1],
                patient_json(eid, f"{eid}-l", other.isoformat()),
                triggers=eid if other != born else None,
            )
        )
    return events


# --- input for part 3: clinical FHIR resources and HL7 v2 messages ----------------------------

LOINC, UCUM = "http://loinc.org", "http://unitsofmeasure.org"
SNOMED_CT, ICD10_CM = "http://snomed.info/sct", "http://hl7.org/fhir/sid/icd-10-cm"
TERMINOLOGY = "http://terminology.hl7.org/CodeSystem"
# (LOINC with a valid check digit, display, UCUM unit, reference range low, high)
LABS = (
    ("2345-7", "Glucose [Mass/volume] in Serum or Plasma", "mg/dL", 70.0, 99.0),
    ("2951-2", "Sodium [Moles/volume] in Serum or Plasma", "mmol/L", 136.0, 145.0),
    ("2823-3", "Potassium [Moles/volume] in Serum or Plasma", "mmol/L", 3.5, 5.1),
    ("2160-0", "Creatinine [Mass/volume] in Serum or Plasma", "mg/dL", 0.6, 1.3),
    ("718-7", "Hemoglobin [Mass/volume] in Blood", "g/dL", 12.0, 17.5),
    ("4548-4", "Hemoglobin A1c/Hemoglobin.total in Blood", "%", 4.0, 5.6),
)
# (SNOMED CT concept, its display, the ICD-10-CM code billed for it, its display)
PROBLEMS = (
    ("44054006", "Diabetes mellitus type 2", "E11.9", "Type 2 diabetes mellitus w/o complications"),
    ("38341003", "Hypertensive disorder", "I10", "Essential (primary) hypertension"),
    ("195967001", "Asthma", "J45.909", "Unspecified asthma, uncomplicated"),
    ("55822004", "Hyperlipidemia", "E78.5", "Hyperlipidemia, unspecified"),
    ("35489007", "Depressive disorder", "F32.9", "Major depressive disorder, single episode"),
)
ALLERGENS = (
    ("70618", "Penicillin"),
    ("2670", "Codeine"),
    ("1191", "Aspirin"),
    ("7052", "Morphine"),
)
FAMILIES = ("Testperson", "Fakeworth", "Samplesson", "Mockridge", "Placeholder")
GIVEN = ("Alex", "Robin", "Sam", "Jordan", "Casey", "Quinn")
# Every timestamp carries its offset: a zone-less one would be dead-lettered without a
# configured source zone, and this part measures ingestion, not rejection.
FORMAT_EPOCH = datetime(2026, 1, 5, 8, 0, tzinfo=timezone(timedelta(hours=-5)))


def _moment(i: int, minutes: int = 0) -> datetime:
    return FORMAT_EPOCH + timedelta(seconds=i, minutes=minutes)


def _birth_date(i: int) -> date:
    return date(1940, 1, 1) + timedelta(days=(i * 7) % 25_000)


def fhir_patient(pid: str, i: int) -> dict[str, Any]:
    mr = {"coding": [{"system": f"{TERMINOLOGY}/v2-0203", "code": "MR"}]}
    return {
        "resourceType": "Patient",
        "id": pid,
        "meta": {"versionId": "1", "lastUpdated": _moment(i).isoformat()},
        "identifier": [
            {"use": "usual", "type": mr, "system": "urn:bench:mrn", "value": f"MRN-{pid}"},
            {"system": DEFAULT_ENTERPRISE_ID_SYSTEM, "value": f"EP-{pid}"},
        ],
        "active": True,
        "name": [{"use": "official", "family": FAMILIES[i % 5], "given": [GIVEN[i % 6]]}],
        "telecom": [{"system": "phone", "value": f"+1-555-01{i % 100:02d}", "use": "home"}],
        "gender": ("female", "male")[i % 2],
        "birthDate": _birth_date(i).isoformat(),
        "address": [
            {
                "use": "home",
                "line": [f"{i % 900 + 1} Example Lane"],
                "city": "Exampleton",
                "postalCode": f"{10_000 + i % 90_000}",
                "country": "ZZ",
            }
        ],
    }


def fhir_observation(oid: str, patient: str, i: int) -> dict[str, Any]:
    code, display, unit, low, high = LABS[i % len(LABS)]
    value = round(low + (high - low) * ((i * 37) % 140) / 100, 1)  # a few are high
    quantity = {"unit": unit, "system": UCUM, "code": unit}
    return {
        "resourceType": "Observation",
        "id": oid,
        "meta": {"versionId": "1", "lastUpdated": _moment(i, 45).isoformat()},
        "status": "final",
        "category": [
            {"coding": [{"system": f"{TERMINOLOGY}/observation-category", "code": "laboratory"}]}
        ],
        "code": {"coding": [{"system": LOINC, "code": code, "display": display}], "text": display},
        "subject": {"reference": patient},
        "effectiveDateTime": _moment(i).isoformat(),
        "issued": _moment(i, 45).isoformat(),
        "valueQuantity": {"value": value, **quantity},
        "interpretation": [
            {
                "coding": [
                    {
                        "system": f"{TERMINOLOGY}/v3-ObservationInterpretation",
                        "code": "H" if value > high else "N",
                    }
                ]
            }
        ],
        "referenceRange": [
            {"low": {"value": low, **quantity}, "high": {"value": high, **quantity}}
        ],
    }


def fhir_condition(cid: str, patient: str, i: int) -> dict[str, Any]:
    sct, sct_display, icd, icd_display = PROBLEMS[i % len(PROBLEMS)]
    return {
        "resourceType": "Condition",
        "id": cid,
        "meta": {"versionId": "1", "lastUpdated": _moment(i, 10).isoformat()},
        "clinicalStatus": {
            "coding": [{"system": f"{TERMINOLOGY}/condition-clinical", "code": "active"}]
        },
        "verificationStatus": {
            "coding": [{"system": f"{TERMINOLOGY}/condition-ver-status", "code": "confirmed"}]
        },
        "category": [
            {
                "coding": [
                    {"system": f"{TERMINOLOGY}/condition-category", "code": "problem-list-item"}
                ]
            }
        ],
        "code": {
            "coding": [
                {"system": SNOMED_CT, "code": sct, "display": sct_display},
                {"system": ICD10_CM, "code": icd, "display": icd_display},
            ],
            "text": sct_display,
        },
        "subject": {"reference": patient},
        "onsetDateTime": (_birth_date(i) + timedelta(days=365 * 30)).isoformat(),
        "recordedDate": _moment(i, 10).isoformat(),
    }


def fhir_bundle(prefix: str, i: int) -> dict[str, Any]:
    """A transaction Bundle as an EHR sends a visit: the Patient, two results and a problem,
    referring to each other by urn:uuid, as ingestion must resolve and rewrite them."""
    pid, urn = f"{prefix}-bp", f"urn:uuid:{uuid.uuid4()}"
    resources = [
        fhir_patient(pid, i),
        fhir_observation(f"{prefix}-bo1", urn, i),
        fhir_observation(f"{prefix}-bo2", urn, i + 1),
        fhir_condition(f"{prefix}-bc", urn, i),
    ]
    entries = []
    for n, resource in enumerate(resources):
        kind = resource["resourceType"]
        entries.append(
            {
                "fullUrl": urn if n == 0 else f"urn:uuid:{uuid.uuid4()}",
                "resource": resource,
                "request": {"method": "PUT", "url": f"{kind}/{resource['id']}"},
            }
        )
    return {
        "resourceType": "Bundle",
        "id": f"{prefix}-b",
        "type": "transaction",
        "timestamp": _moment(i, 50).isoformat(),
        "entry": entries,
    }


def fhir_events(prefix: str, count: int) -> tuple[list[bytes], int]:
    """`count` raw FHIR events, in turn a Patient, an Observation and a Condition about it, and
    a transaction Bundle of four; returns them and how many records they hold."""
    events, records = [], 0
    for i in range(count):
        rid, patient = f"{prefix}{i:07d}", f"Patient/{prefix}{i - i % 4:07d}-p"
        kind = i % 4
        if kind == 0:
            document = fhir_patient(f"{rid}-p", i)
        elif kind == 1:
            document = fhir_observation(f"{rid}-o", patient, i)
        elif kind == 2:
            document = fhir_condition(f"{rid}-c", patient, i)
        else:
            document = fhir_bundle(rid, i)
        events.append(orjson.dumps(document))
        records += 4 if kind == 3 else 1
    return events, records


def _hl7_time(moment: datetime) -> str:
    return moment.strftime("%Y%m%d%H%M%S%z")


def _segment(name: str, fields: dict[int, str]) -> str:
    return "|".join([name, *(fields.get(n, "") for n in range(1, max(fields) + 1))])


def hl7_message(prefix: str, i: int) -> bytes:
    """ADT^A01 (an admission) for even i, ORU^R01 (a chemistry panel) for odd i; MSH-10 is
    unique, so each message is a new record to de-duplication. Each patient (k) is admitted,
    then has results."""
    k = i // 2
    control, mrn, sent = f"{prefix}{i:07d}", f"{prefix}M{k:07d}", _hl7_time(_moment(i, 60))
    pid = _segment(
        "PID",
        {
            1: "1",
            3: f"{mrn}^^^BENCHHOSP^MR~EP-{mrn}^^^CONCORD^PI",
            5: f"{FAMILIES[k % 5].upper()}^{GIVEN[k % 6].upper()}^^^^^L",
            7: _birth_date(k).strftime("%Y%m%d"),
            8: "FM"[k % 2],
            11: f"{k % 900 + 1} EXAMPLE LANE^^EXAMPLETON^^{10_000 + k % 90_000}^ZZ^H",
            13: f"^PRN^PH^^^555^01{k % 100:02d}",
        },
    )
    if i % 2 == 0:
        occurred = _hl7_time(_moment(i, 55))
        allergen = ALLERGENS[i % len(ALLERGENS)]
        _, _, icd, icd_display = PROBLEMS[i % len(PROBLEMS)]
        segments = [
            f"MSH|^~\\&|BENCHADT|BENCHHOSP|CONCORD|CONCORD|{sent}||ADT^A01^ADT_A01|{control}"
            "|P|2.5.1|||AL|NE",
            _segment("EVN", {1: "A01", 2: sent, 5: "BENCHOP", 6: occurred}),
            pid,
            _segment(
                "PV1",
                {
                    1: "1",
                    2: "I",
                    3: f"WARD{i % 8}^{i % 40:03d}^{'AB'[i % 2]}^BENCHHOSP",
                    7: "9001^ATTENDING^PAT^^^^MD",
                    10: "MED",
                    19: f"V{control}",
                    44: occurred,
                },
            ),
            _segment("AL1", {1: "1", 2: "DA", 3: f"{allergen[0]}^{allergen[1]}^RXNORM", 4: "MO"}),
            _segment("DG1", {1: "1", 3: f"{icd}^{icd_display}^I10", 5: occurred, 6: "A"}),
        ]
    else:
        collected, received = _hl7_time(_moment(i)), _hl7_time(_moment(i, 20))
        order = f"ORD{control}"
        segments = [
            f"MSH|^~\\&|BENCHLIS|BENCHLAB|CONCORD|CONCORD|{sent}||ORU^R01^ORU_R01|{control}"
            "|P|2.5.1|||AL|NE",
            pid,
            _segment("ORC", {1: "RE", 2: order, 3: f"FIL{control}"}),
            _segment(
                "OBR",
                {
                    1: "1",
                    2: order,
                    3: f"FIL{control}",
                    4: "24323-8^Comprehensive metabolic panel^LN",
                    7: collected,
                    14: received,
                    16: "9002^ORDERING^PAT^^^^MD",
                    22: sent,
                    24: "CH",
                    25: "F",
                },
            ),
        ]
        for n, (code, display, unit, low, high) in enumerate(LABS[:4], start=1):
            value = round(low + (high - low) * ((i * 37 + n * 11) % 140) / 100, 1)
            flag = "H" if value > high else "N"
            segments.append(
                _segment(
                    "OBX",
                    {
                        1: str(n),
                        2: "NM",
                        3: f"{code}^{display}^LN",
                        5: f"{value:g}",
                        6: f"{unit}^{unit}^UCUM",
                        7: f"{low:g}-{high:g}",
                        8: flag,
                        11: "F",
                        14: collected,
                    },
                )
            )
    return ("\r".join(segments) + "\r").encode()


def hl7_events(prefix: str, count: int) -> tuple[list[bytes], int]:
    """`count` HL7 v2 messages, ADT^A01 and ORU^R01 in turn; one record each."""
    return [hl7_message(prefix, i) for i in range(count)], count


def bulk_producer(bootstrap: str) -> AIOKafkaProducer:
    return AIOKafkaProducer(
        bootstrap_servers=bootstrap, linger_ms=5, max_batch_size=64 * 1024, acks="all"
    )


async def publish_raw(bootstrap: str, events: Sequence[RawPatient]) -> None:
    producer = bulk_producer(bootstrap)
    await producer.start()
    try:
        futures = [
            await producer.send(RAW_FHIR, e.value, headers=[("source", e.source.encode())])
            for e in events
        ]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


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
) -> Timing:
    """The raw loop: consume → decode → encode → produce → await acks → commit. Without
    `recode`, a pass-through: the consumed bytes are produced as they are, no parsing."""
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
                    value = codec.INGESTED_RECORD.encode(codec.INGESTED_RECORD.decode(value))
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
    settings: DatabaseWorkerSettings = SERVICES[service].settings(
        bootstrap_servers=bootstrap,
        fetch_max_wait_ms=FETCH_MAX_WAIT_MS,
        max_batch_records=MAX_RECORDS,
        database_url=dsn,
    )
    return settings


async def run_stage(
    service: str, bootstrap: str, dsn: str, expected: int, profile_dir: Path | None
) -> tuple[Timing, dict[str, int]]:
    """One stage as one worker runs it: build_stage's handler in a BatchLoop, one group."""
    settings = stage_settings(service, bootstrap, dsn)
    producer = BatchLoop.make_producer_for(settings)
    await producer.start()
    try:
        handler, close = await build_stage(service, settings, producer)
        try:
            loop = BatchLoop(handler, settings, producer=producer)
            consumer = loop.make_consumer()
            before = produced(service)
            profile = cProfile.Profile() if profile_dir else None
            timing = await timed_batches(
                consumer,
                handler.topics,
                lambda: loop.run_once(consumer, producer, timeout_ms=200),
                expected,
                handler=handler,
                profile=profile,
            )
            if profile is not None and profile_dir is not None:
                profile.dump_stats(profile_dir / f"{service}.pstats")
            after = produced(service)
            return timing, {t: after[t] - before[t] for t in OUTPUT_TOPICS if after[t] > before[t]}
        finally:
            await close()
    finally:
        await producer.stop()


# --- part 1: throughput -----------------------------------------------------------------------


async def database(state_dir: Path, teardown: Teardown) -> str:
    """A migrated database: a fresh one on CONCORD_DATABASE_URL's server, else embedded."""
    server = os.environ.get("CONCORD_DATABASE_URL")
    if server:
        name = f"concord_bench_{uuid.uuid4().hex[:12]}"
        dsn = await create_database(server, name)
        teardown.databases.append((server, name))
        await apply_migrations(dsn)
        return dsn
    postgres = await start_postgres(state_dir)
    assert postgres.record is not None
    teardown.processes.append(postgres.record)
    return postgres.dsn


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
        "batches": timing.batches,
        "produced": out,
    }


@contextlib.asynccontextmanager
async def fresh_backend(teardown: Teardown, part: str) -> AsyncIterator[tuple[str, str]]:
    """A fresh broker (every Concord topic, plus bench.in and bench.out) and a migrated
    database for one part: (bootstrap servers, DSN). Stopped when the part ends."""
    state_dir = teardown.tempdir(part)
    progress(f"{part}: starting a fresh broker and PostgreSQL")
    broker = await start_broker(state_dir)
    teardown.processes.append(broker.record)
    try:
        await ensure_topics(
            broker.bootstrap_servers,
            [TopicSpec(BENCH_IN, PARTITIONS, "benchmark input"), TopicSpec(BENCH_OUT, 4, "output")],
        )
        yield broker.bootstrap_servers, await database(state_dir, teardown)
    finally:
        progress(f"{part}: stopping the broker and PostgreSQL")
        for record in list(teardown.processes):
            teardown.stop_process(record)


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
    profile_dir = Path(args.profile) if args.profile else None
    if profile_dir:
        profile_dir.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    expected, topic = raw_count, RAW_FHIR
    wanted = {"ingestion": INGESTED, "normalization": FACTS, "conflicts": CONFLICTS}
    for service in STAGES:
        progress(f"throughput: {service} over {expected} records of {topic} ...")
        timing, out = await run_stage(service, bootstrap, dsn, expected, profile_dir)
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


# The conflicts service's state of record, per patient: what a restart reloads from, and what
# the review page reads.
STATE_TABLES = (
    "assertions", "conflict_state", "fact_history", "subject_owners", "stale_state",
    "stale_timers",
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
        patients = await conn.fetchval("SELECT count(DISTINCT patient_id) FROM assertions")
    finally:
        await conn.close()
    total = sum(sizes.values())
    return {
        "patients": patients,
        "bytes": total,
        "bytes_per_patient": round(total / patients) if patients else None,
        "tables": sizes,
    }


# --- part 2: latency --------------------------------------------------------------------------


@dataclass(frozen=True)
class Arrival:
    perf: float  # perf_counter when the alert was read here
    wall: float  # the same moment, time.time()
    created: float  # the alert record's CreateTime (alerting's send), time.time() seconds


class AlertCollector:
    """Reads concord.alerts from the beginning (all partitions assigned, no group) and notes
    when each patient's first alert arrived."""

    def __init__(self, bootstrap: str) -> None:
        self.consumer = AIOKafkaConsumer(
            bootstrap_servers=bootstrap, enable_auto_commit=False, fetch_max_wait_ms=10
        )
        self.arrived: dict[str, Arrival] = {}
        self.records = 0
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self.consumer.start()
        await assign_from_start(self.consumer, ALERTS)
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while True:
            batch = await self.consumer.getmany(timeout_ms=100)
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
            if self._task is not None and self._task.done():
                self._task.result()
            await asyncio.sleep(0.1)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.consumer.stop()


async def offer(
    producer: AIOKafkaProducer, events: Sequence[RawPatient], rate: float
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
        futures.append(await producer.send(RAW_FHIR, event.value, headers=headers))
        if event.triggers:
            sent[event.triggers] = (now, time.time())
    elapsed = time.perf_counter() - started
    await asyncio.gather(*futures)
    return sent, elapsed


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


def batch_metrics(info: StackInfo) -> dict[str, dict[str, float]]:
    """Each worker's batch counters from its /metrics (time in batches, batches, records)."""
    result: dict[str, dict[str, float]] = {}
    for name, record in info.workers.items():
        assert record.port is not None, name
        values = dict.fromkeys(BATCH_METRICS, 0.0)
        for sample in metric_samples(record.port):
            if sample.name in values and sample.labels.get("stage") == name:
                values[sample.name] += sample.value
        result[name] = values
    return result


def batch_summary(
    before: dict[str, dict[str, float]], after: dict[str, dict[str, float]], wall: float
) -> dict[str, dict[str, float]]:
    summary = {}
    for name, values in after.items():
        busy, batches, records = (values[m] - before[name][m] for m in BATCH_METRICS)
        summary[name] = {
            "batches": int(batches),
            "records_per_batch": round(records / batches, 1) if batches else 0.0,
            "ms_per_batch": round(busy / batches * 1000, 2) if batches else 0.0,
            "busy_share": round(busy / wall, 3),
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


async def latency_part(args: argparse.Namespace, teardown: Teardown, token: str) -> dict[str, Any]:
    state_dir = teardown.tempdir("stack")
    teardown.stacks.append(state_dir)
    progress("latency: starting the stack (broker, PostgreSQL, 4 Faust workers)")
    info = await start_stack(state_dir, progress=lambda line: progress(f"latency: stack: {line}"))
    try:
        return await _measure_latency(args, info, token)
    finally:
        progress("latency: stopping the stack")
        teardown.stop_stack(state_dir)


async def _measure_latency(args: argparse.Namespace, info: StackInfo, token: str) -> dict[str, Any]:
    collector = AlertCollector(info.bootstrap_servers)
    producer = AIOKafkaProducer(bootstrap_servers=info.bootstrap_servers, linger_ms=0)
    await collector.start()
    await producer.start()
    try:
        warm = patient_pairs(f"BW{token}", args.warmup_pairs, disagree_every=1)
        progress(f"latency: warm-up, {len(warm)} events at {args.rate:g}/s (not measured)")
        sent, _ = await offer(producer, warm, args.rate)
        missing = await collector.wait_for(list(sent), within=60)
        if missing:
            raise BenchmarkError(f"warm-up: {len(missing)} of {len(sent)} alerts never arrived")
        pairs = int(args.rate * args.seconds) // 2
        events = patient_pairs(f"BL{token}", pairs, disagree_every=1)
        progress(
            f"latency: offering {len(events)} events ({pairs} disagreeing pairs) at "
            f"{args.rate:g}/s for {args.seconds:g}s"
        )
        metrics_before = await asyncio.to_thread(batch_metrics, info)
        cpu_before, wall_before = cpu_seconds(info), time.perf_counter()
        sent, sending = await offer(producer, events, args.rate)
        progress(f"latency: sent in {sending:.1f}s; waiting for the alerts")
        missing = await collector.wait_for(list(sent), within=args.drain_timeout)
        wall = time.perf_counter() - wall_before
        cpu_after = cpu_seconds(info)
        metrics_after = await asyncio.to_thread(batch_metrics, info)
    finally:
        await producer.stop()
        await collector.stop()
    progress("latency: reading the intermediate topics for the per-hop breakdown")
    hops, hop_samples = await hop_breakdown(info.bootstrap_servers, sent, collector.arrived)
    arrived = {i: a for i, a in collector.arrived.items() if i in sent}
    latencies = {i: a.perf - sent[i][0] for i, a in arrived.items()}
    first = min(t for t, _ in sent.values())
    result: dict[str, Any] = {
        "offered_rate": args.rate,
        "seconds": args.seconds,
        "events_sent": len(events),
        "achieved_rate": round(len(events) / sending, 1),
        "expected_alerts": len(sent),
        "alerts_arrived": len(latencies),
        "missing": len(missing),
        "cpu_cores_used": {
            name: round((cpu_after[name] - cpu_before.get(name, 0.0)) / wall, 2)
            for name in cpu_after
        },
        "batches": batch_summary(metrics_before, metrics_after, wall),
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
    return result


HOPS = ("ingestion", "normalization", "conflicts", "alerting", "alert reader")


def _patient_of_ingested(key: bytes) -> str:
    # "source/Patient/<enterprise id>-h" (or -l): see patient_pairs
    return key.decode().rsplit("/", 1)[-1][:-2]


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
        (FACTS, bytes.decode),
        (CONFLICTS, bytes.decode),
    )
    for topic, patient_of in readers:
        latest: dict[str, float] = {}
        for r in await read_topic(bootstrap, topic, idle_seconds=1.0, fetch_max_wait_ms=20):
            pid = patient_of(r.key)
            if pid in stamps:
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


# --- part 3: ingestion by raw format ----------------------------------------------------------

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
    profile_dir = Path(args.profile) if args.profile else None
    inputs = teardown.tempdir("formats-input")
    async with fresh_backend(teardown, "formats") as (bootstrap, dsn):
        rows = []
        for fmt in RAW_FORMATS:
            path = inputs / fmt.file_name
            rows.append(
                await _ingest_format(fmt, args.records, bootstrap, dsn, path, token, profile_dir)
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


async def population_part(args: argparse.Namespace, teardown: Teardown) -> dict[str, Any]:
    """Normalization on a generated clinical population: `concord generate`'s sources (FHIR
    and HL7 v2: Patients, results, conditions, allergies, with duplicates across sources)
    published and ingested first, then the normalization stage timed over concord.ingested,
    identity index and all."""
    from concord.generate.config import GeneratorConfig
    from concord.generate.generator import generate, write

    config = GeneratorConfig(patients=args.population, seed=42)
    progress(f"population: generating {args.population} persons")
    folder = teardown.tempdir("population")
    generated = generate(config)
    write(generated, folder)
    profile_dir = Path(args.profile) if args.profile else None
    async with fresh_backend(teardown, "population") as (bootstrap, dsn):
        sent = 0
        for source in config.sources:
            sent += await publish_files(bootstrap, source.name, [folder / source.file_name])
        progress(f"population: {sent} raw events published; ingesting them (not timed) ...")
        _, ingested_out = await run_stage("ingestion", bootstrap, dsn, sent, None)
        ingested = ingested_out.get(INGESTED, 0)
        if ingested_out.get(DEADLETTER):
            raise BenchmarkError(f"population: {ingested_out[DEADLETTER]} events dead-lettered")
        progress(f"population: normalization over {ingested} ingested records ...")
        timing, out = await run_stage("normalization", bootstrap, dsn, ingested, profile_dir)
    facts = out.get(FACTS, 0)
    return {
        "persons": args.population,
        "raw_events": sent,
        "ingested_records": ingested,
        "seconds": round(timing.seconds, 3),
        "records_per_second": round(timing.rate),
        "facts": facts,
        "facts_per_second": round(facts / timing.seconds) if timing.seconds else 0,
        "cpu": round(timing.cpu_seconds / timing.seconds, 2) if timing.seconds else 0.0,
        "identity_decisions": identity_decisions(),
    }


def identity_decisions() -> dict[str, int]:
    """The identity decisions so far, by how (this process's Prometheus counter)."""
    return {
        how.value: int(
            REGISTRY.get_sample_value("concord_identity_decisions_total", {"outcome": how.value})
            or 0
        )
        for how in How
    }


def print_population(p: dict[str, Any]) -> None:
    print(
        f"\nNormalization on a generated population ({p['persons']} persons, "
        f"{p['raw_events']} raw events, {p['ingested_records']} ingested records), one worker:"
    )
    print(
        f"  {p['records_per_second']:,} records/s, {p['facts_per_second']:,} facts/s "
        f"({p['facts']} facts in {p['seconds']}s, CPU {p['cpu']})"
    )
    print(f"  identity decisions: {p['identity_decisions']}")


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
    profile_dir: Path | None,
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
    stage_profile = None
    if profile_dir is not None:
        stage_profile = profile_dir / f"formats-{fmt.slug}"
        stage_profile.mkdir(parents=True, exist_ok=True)
    timing, out = await run_stage("ingestion", bootstrap, dsn, count, stage_profile)
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


# --- output -----------------------------------------------------------------------------------


def print_throughput(t: dict[str, Any]) -> None:
    base = t["baseline"]
    print()
    print(
        f"Throughput, one worker per stage, {t['raw_events']} raw events "
        f"({t['patients']} patients, {t['disagreeing_patients']} disagreeing):"
    )
    header = f"{'':30} {'input':>18} {'records':>8} {'seconds':>8} {'records/s':>10}"
    print(header + f" {'raw ev/s':>9} {'vs base':>8} {'CPU':>5}")
    for row in [base, *t["stages"]]:
        ratio = row.get("ratio_to_baseline")
        print(
            f"{row['name']:30} {row['input_topic']:>18} {row['records']:>8} "
            f"{row['seconds']:>8.2f} {row['records_per_s']:>10,.0f} "
            f"{row['raw_events_per_s']:>9,.0f} "
            f"{(f'{ratio:.2f}x' if ratio is not None else '1.00x'):>8} "
            f"{row['cpu_share']:>5.2f}"
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
    print(" CPU = this process's CPU seconds per wall second while the stage ran)")


def print_ingestion_formats(f: dict[str, Any]) -> None:
    print()
    print(
        f"Ingestion by raw format, one worker, {f['events_per_format']} raw events per format, "
        "beside a pass-through of the same records:"
    )
    print(
        f"{'format':8} {'input':>14} {'bytes':>6} {'records/s':>10} {'ingested/s':>10} "
        f"{'pass-through/s':>14} {'ratio':>6} {'CPU':>5} {'dead letters':>12}"
    )
    for row in f["formats"]:
        print(
            f"{row['name']:8} {row['input_topic']:>14} {row['mean_event_bytes']:>6} "
            f"{row['records_per_s']:>10,.0f} {row['ingested_per_s']:>10,.0f} "
            f"{row['pass_through']['records_per_s']:>14,.0f} "
            f"{row['ratio_to_pass_through']:>5.2f}x {row['cpu_share']:>5.2f} "
            f"{row['dead_lettered']:>12}"
        )
    print("(records/s: raw events consumed per second, the pass-through's unit; ingested/s:")
    print(" IngestedRecords produced per second, a FHIR Bundle makes several; bytes: mean event;")
    print(f" ratio: records/s over pass-through records/s, target >= {f['target_ratio']:.0%})")


def print_latency(lat: dict[str, Any]) -> None:
    print()
    print(
        f"Event-to-alert latency, whole stack, {lat['offered_rate']:g} events/s offered "
        f"({lat['achieved_rate']:g} achieved) for {lat['seconds']:g}s:"
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
    else:
        print(f"  no alert arrived; missing {lat['missing']}")
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
        )
    cores = ", ".join(f"{k} {v:.2f}" for k, v in lat["cpu_cores_used"].items())
    print(f"  CPU cores used meanwhile: {cores}")


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


def write_outputs(args: argparse.Namespace, results: dict[str, Any]) -> None:
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
        progress(f"results written to {args.out}")
    if args.no_plots:
        return
    img_dir = Path(args.img_dir)
    img_dir.mkdir(parents=True, exist_ok=True)
    if "throughput" in results:
        plot_throughput(results["throughput"], img_dir / "benchmark-throughput.png")
    if "p50_ms" in results.get("latency", {}):
        plot_latency(results["latency"], img_dir / "benchmark-latency.png")
    if "ingestion_formats" in results:
        plot_ingestion_formats(results["ingestion_formats"], img_dir / "benchmark-ingestion.png")
    progress(f"plots written to {img_dir}")


# --- main -------------------------------------------------------------------------------------


async def run(args: argparse.Namespace, teardown: Teardown) -> dict[str, Any]:
    token = uuid.uuid4().hex[:8]  # keeps ids unique on a shared CONCORD_DATABASE_URL server
    results: dict[str, Any] = {
        "run": {
            "started": datetime.now(UTC).isoformat(timespec="seconds"),
            "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.system()}",
            "python": platform.python_version(),
            "command": " ".join([Path(sys.executable).name, *sys.argv]),
            "records": args.records,
            "rate": args.rate,
            "seconds": args.seconds,
        }
    }
    if not args.skip_throughput:
        results["throughput"] = await throughput_part(args, teardown, token)
        print_throughput(results["throughput"])
    if not args.skip_latency:
        results["latency"] = await latency_part(args, teardown, token)
        print_latency(results["latency"])
    if not args.skip_ingestion_formats:
        results["ingestion_formats"] = await ingestion_formats_part(args, teardown, token)
        print_ingestion_formats(results["ingestion_formats"])
    if args.population:
        results["population"] = await population_part(args, teardown)
        print_population(results["population"])
    return results


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--records",
        type=int,
        default=20_000,
        help="raw FHIR Patients (part 1); raw events of each format (part 3)",
    )
    parser.add_argument("--rate", type=float, default=500.0, help="offered events/s (part 2)")
    parser.add_argument("--seconds", type=float, default=20.0, help="offering time (part 2)")
    parser.add_argument("--warmup-pairs", type=int, default=50, help="unmeasured pairs first")
    parser.add_argument(
        "--drain-timeout", type=float, default=60.0, help="how long to wait for the last alerts"
    )
    parser.add_argument("--out", help="write the results as JSON to this file")
    parser.add_argument("--img-dir", default=str(REPO / "docs" / "img"), help="where plots go")
    parser.add_argument("--no-plots", action="store_true", help="do not draw the plots")
    parser.add_argument("--skip-throughput", action="store_true")
    parser.add_argument("--skip-latency", action="store_true")
    parser.add_argument("--skip-ingestion-formats", action="store_true", help="skip part 3")
    parser.add_argument(
        "--population",
        type=int,
        default=2_000,
        help="persons of part 4's generated population (normalization facts/s); 0 skips it",
    )
    parser.add_argument(
        "--profile",
        metavar="DIR",
        help="cProfile each stage into DIR/<stage>.pstats, part 3's into "
        "DIR/formats-<format>/ingestion.pstats (slower)",
    )
    parser.add_argument("--keep-state", action="store_true", help="keep temp dirs and logs")
    args = parser.parse_args(argv)
    if args.records < 6 or args.rate <= 0 or args.seconds <= 0:
        parser.error("--records must be at least 6; --rate and --seconds positive")
    return args


def _sigterm(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def run_benchmark(
    benchmark: Callable[[argparse.Namespace, Teardown], Awaitable[dict[str, Any]]],
    args: argparse.Namespace,
) -> dict[str, Any] | int:
    """Run one benchmark, tearing down what it started whatever happens (SIGTERM included):
    its results, or the exit code of its failure."""
    signal.signal(signal.SIGTERM, _sigterm)
    teardown = Teardown(keep_state=args.keep_state)
    failed = True
    try:
        results = asyncio.run(benchmark(args, teardown))
        failed = False
    except KeyboardInterrupt:
        print("\ninterrupted: tearing down", file=sys.stderr)
        return 130
    except BenchmarkError as exc:
        print(f"benchmark failed: {exc}", file=sys.stderr)
        return 1
    finally:
        teardown.close(failed)
    return results


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    results = run_benchmark(run, args)
    if isinstance(results, int):
        return results
    write_outputs(args, results)
    missing = results.get("latency", {}).get("missing", 0)
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main())
