"""The conflicts stage's PostgreSQL state per patient (issue 17), filled through its real
write path.

    .venv/bin/python benchmarks/state_size.py [--patients 100000] [--batch 1000]
                                              [--out results.json] [--keep-state]

An embedded PostgreSQL (or CONCORD_DATABASE_URL's server, in a database of its own) with the
migrated schema, and the conflicts stage as a worker builds it (ConflictsStage on
ConflictStore, the built-in policy) driven batch by batch without a broker (run_batch, as
BatchLoop drives it; the outbox rows are acknowledged after each batch as after a produce).
N patients, each described by two sources (bench-hospital, bench-lab) with three attributes
(birth date, a glucose result, a type 2 diabetes problem status): 6 N ClinicalFacts as
normalization publishes them (full provenance: a 64-hex payload digest, the event time's
basis, a subject per source), some pairs disagreeing (birth date 1 in 7, glucose 1 in 3,
problem 1 in 5), in batches of --batch facts keyed by patient. Then VACUUM ANALYZE (what
autovacuum would do after the bulk load) and, for each table of the conflicts state, its
heap, its TOAST (with the free-space and visibility maps) and each index, in bytes per
patient. The write throughput (facts/s through the stage, one process, PostgreSQL on the
same machine) is printed too. See docs/benchmarks.md, "Conflicts state per patient".
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import sys
import time
import uuid
import zlib
from collections.abc import Awaitable, Sequence
from datetime import UTC, date, datetime, timedelta
from typing import Any

import asyncpg
from benchlib.metrics import STATE_TABLES
from benchlib.runner import (
    Teardown,
    database,
    progress,
    run_benchmark,
    run_info,
    write_json,
)

from concord.conflicts.app import ConflictsStage
from concord.conflicts.policy import DEFAULT_POLICY
from concord.conflicts.store import ConflictStore
from concord.events import codec
from concord.events.models import ClinicalFact, Provenance
from concord.events.raw import RawEvent
from concord.runtime.batch import run_batch
from concord.runtime.outbox import Outbox
from concord.topics import FACTS, PARTITIONS, RAW_FHIR

HOSPITAL, LAB = "bench-hospital", "bench-lab"
BIRTH, GLUCOSE, DIABETES = "Patient.birthDate", "Observation/2345-7", "Condition/E11.9"
FACTS_PER_PATIENT = 6  # 3 attributes x 2 sources
EPOCH = datetime(2026, 11, 2, 8, 0, tzinfo=UTC)
TAKEN = EPOCH - timedelta(hours=2)  # the glucose specimen, both sources
PROGRESS_EVERY_S = 5.0


class Acknowledging:
    """A producer whose every send the broker acknowledged at once (what the stage produces
    is not the point here)."""

    async def send(
        self,
        topic: str,
        value: bytes,
        *,
        key: bytes | None = None,
        headers: Sequence[tuple[str, bytes]] | None = None,
    ) -> Awaitable[object]:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        future.set_result(None)
        return future


BATCH = 1000  # facts per consumed batch, as a worker takes them


def _hex(*parts: str) -> str:
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()


def fact(token: str, i: int, source: str, attribute: str, value: str) -> ClinicalFact:
    """Source `source`'s fact about patient i, as normalization would publish it."""
    patient, tag = f"RB{token}-{i:06d}", "h" if source == HOSPITAL else "l"
    subject = f"Patient/{patient}-{tag}"
    fields: dict[str, Any] = {}
    if attribute == BIRTH:
        attribute_class, record, basis = "DEMOGRAPHICS", subject, "meta.lastUpdated"
    elif attribute == GLUCOSE:
        attribute_class, record, basis = "LABORATORY", f"Observation/{patient}-{tag}-g", "issued"
        fields = {
            "unit": "mg/dL",
            "code": "2345-7",
            "code_system": "http://loinc.org",
            "effective_time": TAKEN,
        }
    else:
        attribute_class, record, basis = "CONDITION", f"Condition/{patient}-{tag}-d", "recordedDate"
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
        fact_id=_hex(source, record, "1", attribute)[:32],
        patient_id=patient,
        attribute=attribute,
        attribute_class=attribute_class,
        value=value,
        display=value,
        status="ASSERTED",
        provenance=Provenance(
            source_system=source,
            source_record_id=record,
            source_record_version="1",
            event_time=EPOCH,
            received_time=datetime.now(UTC),
            raw_topic=RAW_FHIR,
            raw_partition=i % PARTITIONS,
            raw_offset=i * FACTS_PER_PATIENT,
            payload_sha256=_hex(record, "payload"),
            event_time_basis=basis,
        ),
        record_id=_hex(source, record, "1")[:32],
        subject=subject,
        **fields,
    )


def patient_facts(token: str, i: int) -> list[ClinicalFact]:
    """Both sources' facts on patient i's three attributes (recovery.py's mix)."""
    born = date(1940, 1, 1) + timedelta(days=i % 25_000)
    lab_born = born + timedelta(days=1) if i % 7 == 0 else born
    return [
        fact(token, i, HOSPITAL, BIRTH, born.isoformat()),
        fact(token, i, HOSPITAL, GLUCOSE, "100"),
        fact(token, i, HOSPITAL, DIABETES, "active"),
        fact(token, i, LAB, BIRTH, lab_born.isoformat()),
        fact(token, i, LAB, GLUCOSE, "130" if i % 3 == 0 else "104"),
        fact(token, i, LAB, DIABETES, "resolved" if i % 5 == 0 else "active"),
    ]


def consumed(facts: Sequence[ClinicalFact], offset: int) -> list[RawEvent]:
    """The facts as the loop hands them to the stage: encoded, keyed (and partitioned) by
    patient as normalization keys them."""
    now = datetime.now(UTC)
    return [
        RawEvent(
            topic=FACTS,
            partition=zlib.crc32(f.patient_id.encode()) % PARTITIONS,
            offset=offset + n,
            key=f.patient_id.encode(),
            value=codec.CLINICAL_FACT.encode(f),
            headers=(),
            received_time=now,
        )
        for n, f in enumerate(facts)
    ]


async def fill(pool: asyncpg.Pool, patients: int, batch: int) -> dict[str, Any]:
    outbox = Outbox(pool, "conflicts")
    stage = ConflictsStage(ConflictStore(pool, outbox), outbox, Acknowledging(), DEFAULT_POLICY)
    await stage.on_assigned(set(range(PARTITIONS)))
    token, total = uuid.uuid4().hex[:6], patients * FACTS_PER_PATIENT
    progress(f"fill: {total:,} facts ({patients:,} patients x 2 sources x 3 attributes)")
    per_batch = max(1, batch // FACTS_PER_PATIENT)
    started = last = time.monotonic()
    stage_s, stage_cpu_s, sent = 0.0, 0.0, 0
    for first in range(0, patients, per_batch):
        facts = [
            f
            for i in range(first, min(first + per_batch, patients))
            for f in patient_facts(token, i)
        ]
        events = consumed(facts, sent)
        began, began_cpu = time.perf_counter(), time.process_time()
        await run_batch(stage, events)
        stage_s += time.perf_counter() - began
        # This process's CPU alone (PostgreSQL is another): steadier than the wall time on a
        # shared machine.
        stage_cpu_s += time.process_time() - began_cpu
        sent += len(facts)
        if time.monotonic() - last >= PROGRESS_EVERY_S or sent == total:
            last = time.monotonic()
            progress(
                f"fill: {sent:,} / {total:,} facts ({sent / (last - started):,.0f}/s overall, "
                f"{sent / stage_s:,.0f}/s in the stage)"
            )
    seconds = time.monotonic() - started
    return {
        "patients": patients,
        "facts": total,
        "seconds": round(seconds, 1),
        "facts_per_s": round(total / seconds),
        "stage_facts_per_s": round(total / stage_s),
        "stage_cpu_us_per_fact": round(stage_cpu_s / total * 1e6, 1),
    }


_SIZES = """
SELECT c.relname AS name, pg_relation_size(c.oid) AS heap,
       pg_table_size(c.oid) - pg_relation_size(c.oid) AS toast
FROM pg_class c WHERE c.oid = $1::regclass
"""
_INDEXES = """
SELECT i.relname AS name, pg_relation_size(i.oid) AS bytes
FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid
WHERE x.indrelid = $1::regclass ORDER BY i.relname
"""


async def sizes(pool: asyncpg.Pool) -> dict[str, Any]:
    progress("VACUUM ANALYZE")
    async with pool.acquire() as conn:
        await conn.execute("VACUUM ANALYZE")
        patients = await conn.fetchval("SELECT count(DISTINCT patient_id) FROM patient_assertions")
        tables: dict[str, Any] = {}
        for table in STATE_TABLES:
            if not await conn.fetchval("SELECT to_regclass($1) IS NOT NULL", table):
                continue
            row = await conn.fetchrow(_SIZES, table)
            indexes = {r["name"]: r["bytes"] for r in await conn.fetch(_INDEXES, table)}
            rows = await conn.fetchval(f"SELECT count(*) FROM {table}")  # noqa: S608 (ours)
            tables[table] = {
                "rows": rows,
                "heap": row["heap"],
                "toast": row["toast"],
                "indexes": indexes,
                "total": row["heap"] + row["toast"] + sum(indexes.values()),
            }
    total = sum(t["total"] for t in tables.values())
    return {
        "patients": patients,
        "bytes": total,
        "bytes_per_patient": round(total / patients) if patients else None,
        "tables": tables,
    }


async def run(args: argparse.Namespace, teardown: Teardown) -> dict[str, Any]:
    results: dict[str, Any] = run_info(patients=args.patients, batch=args.batch)
    dsn = await database(teardown.tempdir("state-size"), teardown)
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=4)
    assert pool is not None
    try:
        results["fill"] = await fill(pool, args.patients, args.batch)
        results["state"] = await sizes(pool)
    finally:
        await pool.close()
    return results


def print_results(r: dict[str, Any]) -> None:
    fill_, state = r["fill"], r["state"]
    patients = state["patients"] or 1

    def per(n: int) -> str:
        return f"{n / patients:>8,.0f}"

    print()
    print(
        f"Conflicts state: {state['patients']:,} patients, {fill_['facts']:,} facts written in "
        f"{fill_['seconds']}s ({fill_['facts_per_s']:,} facts/s; {fill_['stage_facts_per_s']:,}"
        f" facts/s in the stage, {fill_['stage_cpu_us_per_fact']} µs of the stage's CPU a fact)"
    )
    print(f"  {'relation':<40} {'rows':>10} {'MB':>9} {'B/patient':>9}")
    for table, t in state["tables"].items():
        print(f"  {table:<40} {t['rows']:>10,} {t['total'] / 1e6:>9.1f} {per(t['total'])} ")
        print(f"    {'heap':<38} {'':>10} {t['heap'] / 1e6:>9.1f} {per(t['heap'])}")
        if t["toast"]:
            print(f"    {'toast + maps':<38} {'':>10} {t['toast'] / 1e6:>9.1f} {per(t['toast'])}")
        for name, size in t["indexes"].items():
            print(f"    {'index ' + name:<38} {'':>10} {size / 1e6:>9.1f} {per(size)}")
    print(
        f"  {'total':<40} {'':>10} {state['bytes'] / 1e6:>9.1f} {per(state['bytes'])}"
        f"   <- bytes per patient: {state['bytes_per_patient']:,}"
    )


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--patients", type=int, default=100_000, help="patients in the state")
    parser.add_argument("--batch", type=int, default=BATCH, help="facts per consumed batch")
    parser.add_argument("--out", help="write the results as JSON to this file")
    parser.add_argument("--keep-state", action="store_true", help="keep temp dirs and logs")
    args = parser.parse_args(argv)
    if args.patients < 1 or args.batch < FACTS_PER_PATIENT:
        parser.error(f"--patients must be at least 1 and --batch at least {FACTS_PER_PATIENT}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    results = run_benchmark(run, args)
    if isinstance(results, int):
        return results
    print_results(results)
    write_json(args.out, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
