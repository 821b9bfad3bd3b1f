"""What the fault tests share: a two-source workload whose alerts are known in advance, and the
invariants every fault test checks once the fault is over:

- every raw record is accounted for: passed (on concord.ingested, by its provenance),
  de-duplicated (a version re-sent on purpose, emitted at most again) or dead-lettered (on
  concord.deadletter, by its original coordinates), never both passed and dead-lettered;
- the alerts stored (PostgreSQL table `alerts`) and those on concord.alerts are exactly the
  expected ones, each at its expected status;
- none twice: one alert id per patient attribute, and one event per (alert id, revision). A
  second copy of an event is allowed only byte-identical: the outbox publishes at least once
  (a crash between the broker's ack and the row's delete sends the same row again), and
  consumers ignore an (id, revision) they have seen (docs/architecture.md).

The workload is that of tests/e2e/test_conflicts_recovery.py: each patient is described by a
hospital and a lab, each with a Patient (the same enterprise id), two results (glucose,
potassium), a problem and an allergy; some of them disagree. The figures a test measures are
printed on one line and written to figures.json in its tmp dir.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import threading
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import orjson
from aiokafka import AIOKafkaProducer

from concord.config import DEFAULT_ENTERPRISE_ID_SYSTEM
from concord.events import codec
from concord.events.models import Alert, DeadLetter
from concord.ingestion.subjects import patient_of
from concord.runtime.reading import read_topic
from concord.stack.processes import LOOPBACK, find_process
from concord.stack.stack import load_state
from concord.topics import ALERTS, DEADLETTER, INGESTED, RAW_FHIR
from pipeline_tools import (
    FIRST,
    LATER,
    allergy,
    condition,
    eventually,
    fetch,
    observation,
)

T = TypeVar("T")
HOLD = "PT1S"  # the test policy's suppress_for for results (the built-in policy's is 30 s)
HOSP, LAB = "flt-hospital", "flt-lab"
# The compared attributes by kind: results by their LOINC key; the problem and the allergy by
# resource type, since their keys follow the terminology's crosswalks.
GLUCOSE, POTASSIUM = "Observation/2345-7", "Observation/2823-3"
DIABETES, PENICILLIN = "Condition", "AllergyIntolerance"
ASSERTIONS_PER_PATIENT = 14  # 7 attributes (demographics included) x 2 sources
INGESTED_OUTCOME = "INGESTED"
# Topics are read once the pipeline has settled: a short wait for more is enough.
READ_IDLE = 1.0

Event = tuple[str, dict[str, Any]]  # (source, FHIR resource)
Coordinate = tuple[str, int, int]  # (topic, partition, offset)
Key = tuple[str, str]  # (patient id, kind of attribute)


# --- the workload -------------------------------------------------------------------------------


def prefix_of(token: str) -> str:
    return f"FLT{token}-"


def patient_id(token: str, n: int) -> str:
    return f"{prefix_of(token)}{n:03d}"


def plan(n: int) -> dict[str, bool]:
    """Which of patient n's clinical attributes the lab disagrees on."""
    return {
        GLUCOSE: n % 3 == 0,
        POTASSIUM: n % 4 == 1,
        DIABETES: n % 5 == 2,
        PENICILLIN: n % 6 == 3,
    }


def disagreeing(token: str, patients: Iterable[int]) -> set[Key]:
    return {
        (patient_id(token, n), attribute)
        for n in patients
        for attribute, differs in plan(n).items()
        if differs
    }


def _patient(eid: str, rid: str) -> dict[str, Any]:
    return {
        "resourceType": "Patient",
        "id": rid,
        "meta": {"versionId": "1", "lastUpdated": FIRST},
        "identifier": [
            {"system": "urn:test:mrn", "value": rid},
            {"system": DEFAULT_ENTERPRISE_ID_SYSTEM, "value": eid},
        ],
        "name": [{"use": "official", "family": "Testperson", "given": ["Alex"]}],
        "gender": "female",
        "birthDate": "1970-01-01",
    }


def records(token: str, n: int) -> list[Event]:
    """Both sources' records of patient n: each Patient first (the results follow it through
    the identity crosswalk), then its results, problem and allergy."""
    eid, wanted = patient_id(token, n), plan(n)
    events: list[Event] = []
    for source, tag in ((HOSP, "h"), (LAB, "l")):
        lab = source == LAB
        rid = f"flt{token}{tag}{n}"
        subject = f"Patient/{rid}"
        events.append((source, _patient(eid, rid)))
        glucose = 130.0 if lab and wanted[GLUCOSE] else (104.0 if lab else 100.0)
        potassium = 5.2 if lab and wanted[POTASSIUM] else (4.1 if lab else 4.0)
        events.append((source, observation(f"{rid}-glu", subject, "2345-7", glucose, "mg/dL")))
        events.append((source, observation(f"{rid}-k", subject, "2823-3", potassium, "mmol/L")))
        problem = "resolved" if lab and wanted[DIABETES] else "active"
        events.append((source, condition(f"{rid}-dm", subject, problem)))
        refuted = lab and wanted[PENICILLIN]
        clinical, verification = ("inactive", "refuted") if refuted else ("active", "confirmed")
        events.append((source, allergy(f"{rid}-pen", subject, clinical, verification)))
    return events


def corrected_glucose(token: str, n: int) -> Event:
    """The lab's second version of patient n's glucose result, agreeing with the hospital's:
    the conflict it was in resolves (revision 2)."""
    rid = f"flt{token}l{n}"
    resource = observation(
        f"{rid}-glu", f"Patient/{rid}", "2345-7", 101.0, "mg/dL", version="2", updated=LATER
    )
    return (LAB, resource)


# --- sending ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Outgoing:
    """One record to send as it is: to a partition of our choice, or by key."""

    value: bytes
    key: bytes | None = None
    source: str | None = None
    partition: int | None = None


def fhir_outgoing(events: Sequence[Event]) -> list[Outgoing]:
    """As `concord publish` sends FHIR: keyed by source and patient, so that a patient's
    records of one source stay in order (its Patient first)."""
    return [
        Outgoing(orjson.dumps(r), key=f"{s}/{patient_of(r)}".encode(), source=s) for s, r in events
    ]


async def send(bootstrap: str, topic: str, items: Sequence[Outgoing]) -> list[Coordinate]:
    """Send the records in order and wait for every ack; returns each one's coordinates."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5, acks="all")
    await producer.start()
    try:
        futures = []
        for item in items:
            headers = [("source", item.source.encode())] if item.source is not None else []
            futures.append(
                await producer.send(
                    topic, item.value, key=item.key, partition=item.partition, headers=headers
                )
            )
        sent = await asyncio.gather(*futures)
        return [(topic, m.partition, m.offset) for m in sent]
    finally:
        await producer.stop()


async def send_fhir(bootstrap: str, events: Sequence[Event]) -> list[Coordinate]:
    return await send(bootstrap, RAW_FHIR, fhir_outgoing(events))


# --- polling ------------------------------------------------------------------------------------


def health(port: int, timeout: float = 1.0) -> tuple[int, dict[str, Any]]:
    """A worker's GET /health: the status (0 when it does not answer) and the JSON body."""
    conn = http.client.HTTPConnection(LOOPBACK, port, timeout=timeout)
    try:
        conn.request("GET", "/health")
        response = conn.getresponse()
        body = response.read()
        try:
            parsed = json.loads(body)
        except ValueError:
            parsed = {"raw": body.decode(errors="replace")}
        return response.status, parsed if isinstance(parsed, dict) else {"raw": parsed}
    except (OSError, http.client.HTTPException):
        return 0, {}
    finally:
        conn.close()


def kind_of(attribute: str) -> str:
    return attribute if attribute.startswith("Observation/") else attribute.split("/", 1)[0]


async def assertion_count(dsn: str, prefix: str) -> int:
    rows = await fetch(
        dsn, "SELECT count(*) AS n FROM assertions WHERE patient_id LIKE $1", prefix + "%"
    )
    return int(rows[0]["n"])


async def settled(dsn: str, prefix: str) -> bool:
    """Nothing held back for later, nothing written and not yet published."""
    rows = await fetch(
        dsn,
        "SELECT (SELECT count(*) FROM outbox) "
        "+ (SELECT count(*) FROM held_records WHERE patient_id LIKE $1) AS n",
        prefix + "%",
    )
    return int(rows[0]["n"]) == 0


# --- the invariants -----------------------------------------------------------------------------


@dataclass(frozen=True)
class StoredAlert:
    alert_id: str
    revision: int
    status: str


async def stored_alerts(dsn: str, prefix: str) -> dict[Key, StoredAlert]:
    rows = await fetch(
        dsn,
        "SELECT patient_id, attribute, alert_id, revision, status FROM alerts "
        "WHERE patient_id LIKE $1",
        prefix + "%",
    )
    return {
        (r["patient_id"], kind_of(r["attribute"])): StoredAlert(
            r["alert_id"], r["revision"], r["status"]
        )
        for r in rows
    }


def statuses(alerts: dict[Key, StoredAlert]) -> dict[Key, str]:
    return {key: alert.status for key, alert in alerts.items()}


async def wait_for_alerts(
    dsn: str, prefix: str, expected: dict[Key, str], *, within: float
) -> dict[Key, StoredAlert]:
    """The stored alerts once they are the expected ones (or after `within` seconds), and
    nothing is held or waiting in an outbox; then a second look, which anything extra would
    have reached meanwhile."""
    await eventually(
        lambda: stored_alerts(dsn, prefix), lambda a: statuses(a) == expected, within=within
    )
    await eventually(lambda: settled(dsn, prefix), bool, within=15)
    await asyncio.sleep(1.0)
    return await stored_alerts(dsn, prefix)


async def published_alerts(
    bootstrap: str, prefix: str, *, idle: float = READ_IDLE
) -> list[tuple[Alert, bytes]]:
    found = []
    for record in await read_topic(bootstrap, ALERTS, idle_seconds=idle):
        alert = codec.ALERT.decode(record.value)
        if alert.patient_id.startswith(prefix):
            found.append((alert, bytes(record.value)))
    return found


@dataclass
class AlertCheck:
    events: int  # alert events published for the test's patients
    republished: int  # of them, byte-identical copies of an (id, revision) already seen


def check_alerts(
    expected: dict[Key, str],
    stored: dict[Key, StoredAlert],
    published: Sequence[tuple[Alert, bytes]],
) -> AlertCheck:
    """The stored and published alerts are the expected ones; none twice."""
    assert statuses(stored) == expected, "stored alerts are not the expected ones"
    copies: dict[tuple[str, int], set[bytes]] = defaultdict(set)
    ids_of: dict[Key, set[str]] = defaultdict(set)
    latest: dict[str, Alert] = {}
    for alert, value in published:
        ids_of[(alert.patient_id, kind_of(alert.attribute))].add(alert.alert_id)
        copies[(alert.alert_id, alert.revision)].add(value)
        if alert.alert_id not in latest or alert.revision > latest[alert.alert_id].revision:
            latest[alert.alert_id] = alert
    assert set(ids_of) == set(expected), "alerts on concord.alerts: lost or spurious"
    duplicated_ids = {key: ids for key, ids in ids_of.items() if len(ids) != 1}
    assert duplicated_ids == {}, "a patient attribute has two alert ids"
    assert {key: min(ids) for key, ids in ids_of.items()} == {
        key: row.alert_id for key, row in stored.items()
    }
    different = {key: len(values) for key, values in copies.items() if len(values) > 1}
    assert different == {}, "two different events under one (alert id, revision)"
    revisions_of: dict[str, list[int]] = defaultdict(list)
    for alert_id, revision in copies:
        revisions_of[alert_id].append(revision)
    for key, row in stored.items():
        revisions = sorted(revisions_of[row.alert_id])
        assert revisions == list(range(1, row.revision + 1)), (key, revisions)
        assert latest[row.alert_id].status == row.status, key
    return AlertCheck(events=len(published), republished=len(published) - len(copies))


async def raw_outcomes(
    bootstrap: str,
    wanted: set[Coordinate],
    *,
    undecodable: list[bytes] | None = None,
    idle: float = READ_IDLE,
) -> dict[Coordinate, list[str]]:
    """Each wanted raw record's outcomes: INGESTED per record emitted from it (a Bundle may
    emit several; a redelivered batch emits again), or its dead letter's reason code. A record
    on concord.ingested that cannot be decoded (so its provenance cannot be read) is added to
    `undecodable`, or fails the test when that is not given. A topic is read until nothing
    new comes for `idle` seconds (longer for a big topic: a slow fetch is not its end)."""
    found: dict[Coordinate, list[str]] = defaultdict(list)
    ingested, letters = await asyncio.gather(
        read_topic(bootstrap, INGESTED, idle_seconds=idle), dead_letters(bootstrap, idle=idle)
    )
    for record in ingested:
        try:
            p = codec.INGESTED_RECORD.decode(record.value).provenance
        except codec.CodecError:
            if undecodable is None:
                raise
            undecodable.append(bytes(record.value))
            continue
        where = (p.raw_topic, p.raw_partition, p.raw_offset)
        if where in wanted:
            found[where].append(INGESTED_OUTCOME)
    for letter in letters:
        where = (letter.original_topic, letter.original_partition, letter.original_offset)
        if where in wanted:
            found[where].append(letter.reason_code)
    return found


async def dead_letters(bootstrap: str, *, idle: float = READ_IDLE) -> list[DeadLetter]:
    return [
        codec.DEAD_LETTER.decode(r.value)
        for r in await read_topic(bootstrap, DEADLETTER, idle_seconds=idle)
    ]


@dataclass
class Accounting:
    passed: int = 0
    deduplicated: int = 0
    dead_lettered: Counter[str] = field(default_factory=Counter)
    reemitted: Counter[str] = field(default_factory=Counter)  # by topic: passed twice or more
    lost: list[Coordinate] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        return {
            "raw_passed": self.passed,
            "raw_deduplicated": self.deduplicated,
            "raw_dead_lettered": dict(self.dead_lettered),
            "raw_emitted_more_than_once": dict(self.reemitted),
            "raw_lost": len(self.lost),
        }


def account(
    sent: Sequence[Coordinate],
    outcomes: dict[Coordinate, list[str]],
    *,
    resent: Iterable[Coordinate] = (),
) -> Accounting:
    """Every raw record sent is passed, de-duplicated (one of `resent`, the same version sent
    again: no outcome, or emitted again) or dead-lettered, never passed and dead-lettered."""
    again = set(resent)
    result = Accounting()
    for coordinate in sent:
        kinds = outcomes.get(coordinate, [])
        dead = [kind for kind in kinds if kind != INGESTED_OUTCOME]
        assert not dead or len(kinds) == 1, f"{coordinate} ended in {kinds}"
        if dead:
            result.dead_lettered[dead[0]] += 1
        elif kinds:
            result.passed += 1
            if len(kinds) > 1:
                result.reemitted[coordinate[0]] += 1
        elif coordinate in again:
            result.deduplicated += 1
        else:
            result.lost.append(coordinate)
    assert result.lost == [], f"raw records neither passed nor dead-lettered: {result.lost}"
    return result


# --- figures ------------------------------------------------------------------------------------


class PeakRss:
    """The peak resident memory of each worker of the stack (its process and children), in
    MiB, sampled every `every` seconds in a thread; restarted workers are followed through
    the state file."""

    def __init__(self, state_dir: Path, every: float = 0.5) -> None:
        self.state_dir = state_dir
        self.every = every
        self.peak: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.every)

    def sample(self) -> None:
        info = load_state(self.state_dir)
        if info is None:
            return
        for name, record in info.workers.items():
            proc = find_process(record)
            if proc is None:
                continue
            try:
                rss = proc.memory_info().rss + sum(
                    c.memory_info().rss for c in proc.children(recursive=True)
                )
            except Exception:  # noqa: S112 - gone between the look and the read: skip
                continue
            self.peak[name] = max(self.peak.get(name, 0.0), rss / 2**20)

    def rounded(self) -> dict[str, float]:
        return {name: round(mib, 1) for name, mib in sorted(self.peak.items())}


def report(tmp_path: Path, name: str, figures: dict[str, Any]) -> None:
    """Print the figures on one line (pytest -s shows it; -ra does not hide it) and keep them
    in figures.json under the test's tmp dir."""
    (tmp_path / "figures.json").write_text(json.dumps(figures, indent=2, sort_keys=True) + "\n")
    print(f"\nfault figures {name}: {json.dumps(figures, sort_keys=True)}")
