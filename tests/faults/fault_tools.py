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
potassium), a problem and an allergy; some of them disagree. A test takes its share of it as a
Workload (its own patients, the workers' peak memory while it runs), sends it at once, in
chunks, or as a Stream, waits for the alerts (Workload.alerts_stored), checks the invariants
(Workload.checked, Workload.workers_alive) and its own, and reports: the figures it measured and
the common ones are printed on one line and written to figures.json in its tmp dir.
"""

from __future__ import annotations

import asyncio
import base64
import http.client
import json
import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self, TypeVar

import orjson
from aiokafka import AIOKafkaProducer

from concord.events import codec
from concord.events.models import Alert, DeadLetter
from concord.ingestion.subjects import patient_of
from concord.runtime.reading import read_topic
from concord.stack.processes import LOOPBACK, find_process, is_alive
from concord.stack.stack import StackInfo, load_state
from concord.topics import ALERTS, DEADLETTER, INGESTED, RAW_FHIR
from pipeline_tools import (
    FIRST,
    LATER,
    allergy,
    condition,
    eventually,
    fetch,
    observation,
    patient_resource,
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


# A visit note with no oncology in it: the narrative worker reads it (and so touches
# PostgreSQL, as every worker does under the faults) and asserts nothing, so the assertions and
# alerts the tests count are the structured records' alone.
VISIT_NOTE = base64.b64encode(
    b"Follow-up visit. Blood pressure 128/82, stable on lisinopril. Return in 3 months."
).decode()


def visit_note(rid: str, subject: str) -> dict[str, Any]:
    return {
        "resourceType": "DocumentReference",
        "id": rid,
        "meta": {"versionId": "1", "lastUpdated": FIRST},
        "status": "current",
        "subject": {"reference": subject},
        "date": FIRST,
        "content": [{"attachment": {"contentType": "text/plain", "data": VISIT_NOTE}}],
    }


def records(token: str, n: int) -> list[Event]:
    """Both sources' records of patient n: each Patient first (the results follow it through
    the identity crosswalk), then its results, problem and allergy, and the hospital's visit
    note."""
    eid, wanted = patient_id(token, n), plan(n)
    events: list[Event] = []
    for source, tag in ((HOSP, "h"), (LAB, "l")):
        lab = source == LAB
        rid = f"flt{token}{tag}{n}"
        subject = f"Patient/{rid}"
        events.append((source, patient_resource(eid, rid, last_updated=FIRST)))
        glucose = 130.0 if lab and wanted[GLUCOSE] else (104.0 if lab else 100.0)
        potassium = 5.2 if lab and wanted[POTASSIUM] else (4.1 if lab else 4.0)
        events.append((source, observation(f"{rid}-glu", subject, "2345-7", glucose, "mg/dL")))
        events.append((source, observation(f"{rid}-k", subject, "2823-3", potassium, "mmol/L")))
        problem = "resolved" if lab and wanted[DIABETES] else "active"
        events.append((source, condition(f"{rid}-dm", subject, problem)))
        refuted = lab and wanted[PENICILLIN]
        clinical, verification = ("inactive", "refuted") if refuted else ("active", "confirmed")
        events.append((source, allergy(f"{rid}-pen", subject, clinical, verification)))
        if not lab:
            events.append((source, visit_note(f"{rid}-note", subject)))
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


def all_ready(ports: Iterable[int]) -> bool:
    """Whether every worker at these ports answers GET /health with 200."""
    return all(health(port)[0] == 200 for port in ports)


async def alert_count(dsn: str, prefix: str) -> int:
    rows = await fetch(
        dsn, "SELECT count(*) AS n FROM alerts WHERE patient_id LIKE $1", prefix + "%"
    )
    return int(rows[0]["n"])


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


class Sampling:
    """sample() every `every` seconds in a thread while open (a context manager); on exit
    the thread is waited for up to `join_within` seconds."""

    def __init__(self, every: float, *, join_within: float = 5.0) -> None:
        self.every = every
        self.join_within = join_within
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=self.join_within)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.every)

    def sample(self) -> None:
        raise NotImplementedError


class PeakRss(Sampling):
    """The peak resident memory of each worker of the stack (its process and children), in
    MiB, sampled every `every` seconds in a thread; restarted workers are followed through
    the state file."""

    def __init__(self, state_dir: Path, every: float = 0.5) -> None:
        super().__init__(every)
        self.state_dir = state_dir
        self.peak: dict[str, float] = {}

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


async def timed(figures: dict[str, Any], name: str, since: float, probe: Awaitable[T]) -> T:
    """What `probe` gives; figures[name] is the seconds from `since` until it gave it."""
    value = await probe
    figures[name] = round(time.monotonic() - since, 1)
    return value


def write_figures(tmp_path: Path, name: str, figures: dict[str, Any]) -> None:
    """Print the figures on one line (pytest -s shows it; -ra does not hide it) and keep them
    in figures.json under the test's tmp dir."""
    (tmp_path / "figures.json").write_text(json.dumps(figures, indent=2, sort_keys=True) + "\n")
    print(f"\nfault figures {name}: {json.dumps(figures, sort_keys=True)}")


# --- a test's run -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Checked:
    """What the invariants found (Workload.checked): the alerts, and each raw record's
    outcomes and their accounting."""

    expected: int  # alerts expected
    alerts: AlertCheck
    outcomes: dict[Coordinate, list[str]]
    accounting: Accounting

    def figures(self) -> dict[str, Any]:
        return {
            **self.accounting.summary(),
            "alerts_expected": self.expected,
            "alert_events": self.alerts.events,
            "alerts_duplicated": 0,  # check_alerts fails the test on one
            "alert_identical_republications": self.alerts.republished,
        }


@dataclass
class Workload:
    """One fault test's share of the workload on its module's stack: its token names its
    patients (their ids start with `prefix`), so that it checks only its own records and
    alerts; `rss` measures the workers' peak memory while it is open (`with run.rss:`), and
    `started` is when the test began."""

    stack: StackInfo
    token: str = field(default_factory=lambda: uuid.uuid4().hex[:6])
    started: float = field(default_factory=time.monotonic)
    rss: PeakRss = field(init=False)

    def __post_init__(self) -> None:
        self.rss = PeakRss(self.stack.state_dir)

    @property
    def prefix(self) -> str:
        return prefix_of(self.token)

    @property
    def bootstrap(self) -> str:
        return self.stack.bootstrap_servers

    @property
    def dsn(self) -> str:
        return self.stack.database_url

    @property
    def ports(self) -> dict[str, int]:
        """The web port of each worker the test began with, by name."""
        return {name: w.port for name, w in self.stack.workers.items() if w.port is not None}

    async def alert_count(self) -> int:
        """How many alerts of the test's patients are stored."""
        return await alert_count(self.dsn, self.prefix)

    def events(self, patients: Iterable[int]) -> list[Event]:
        """Both sources' records of these patients, patient by patient."""
        return [e for n in patients for e in records(self.token, n)]

    def chunks(self, patients: int, size: int) -> list[list[Event]]:
        """The records of patients 0 to `patients` - 1, `size` patients a chunk."""
        return [self.events(range(first, first + size)) for first in range(0, patients, size)]

    async def send(self, events: Sequence[Event]) -> list[Coordinate]:
        return await send_fhir(self.bootstrap, events)

    async def under_load(self, chunks: Iterable[Sequence[Event]]) -> list[Coordinate]:
        """Send the chunks, then wait (45 s at most) until three alerts are stored: the
        pipeline is at work when the fault comes. Returns what was sent."""
        sent = []
        for chunk in chunks:
            sent += await self.send(chunk)
        await eventually(self.alert_count, lambda n: n >= 3, within=45)
        return sent

    def expected(
        self,
        patients: Iterable[int],
        *,
        resolved: Iterable[Key] = (),
        dismissed: Iterable[Key] = (),
    ) -> dict[Key, str]:
        """The alerts the patients' disagreements raise, each OPEN, but those `resolved` (the
        sources came to agree, or a reviewer decided a value) and those a reviewer
        `dismissed`."""
        expected = {key: "OPEN" for key in disagreeing(self.token, patients)}
        expected |= {key: "RESOLVED" for key in resolved}
        expected |= {key: "DISMISSED" for key in dismissed}
        return expected

    async def alerts_stored(
        self, expected: dict[Key, str], *, within: float, since: float | None = None
    ) -> tuple[dict[Key, StoredAlert], float]:
        """The stored alerts once they are the expected ones and all is settled
        (wait_for_alerts), and the seconds from `since` (the test's start by default)."""
        stored = await wait_for_alerts(self.dsn, self.prefix, expected, within=within)
        return stored, time.monotonic() - (self.started if since is None else since)

    async def recovered(
        self,
        expected: dict[Key, str],
        *,
        since: float,
        alerts_before: int,
        within: float,
        figures: dict[str, Any],
        after: str,
    ) -> tuple[int, bool, dict[Key, StoredAlert]]:
        """Once a fault is over (at `since`): the count of alerts stored once it is above
        `alerts_before` (the first new alert), and whether every worker answers /health
        with 200, each waited for 90 s at most; then the stored alerts once they are the
        expected ones (`within` seconds at most). How long each took goes into `figures`:
        first_alert_after_<after>_seconds, all_ready_after_<after>_seconds and
        all_alerts_after_<after>_seconds."""
        ports = list(self.ports.values())
        first, ready = await asyncio.gather(
            timed(
                figures,
                f"first_alert_after_{after}_seconds",
                since,
                eventually(self.alert_count, lambda n: n > alerts_before, within=90),
            ),
            timed(
                figures,
                f"all_ready_after_{after}_seconds",
                since,
                eventually(lambda: asyncio.to_thread(all_ready, ports), bool, within=90),
            ),
        )
        stored, seconds = await self.alerts_stored(expected, within=within, since=since)
        figures[f"all_alerts_after_{after}_seconds"] = round(seconds, 1)
        return first, ready, stored

    async def checked(
        self,
        expected: dict[Key, str],
        stored: dict[Key, StoredAlert],
        sent: Sequence[Coordinate],
        *,
        resent: Sequence[Coordinate] = (),
        assertions_of: int | None,
        assertions_within: float = 0.0,
        idle: float = READ_IDLE,
        good_only: bool = True,
        undecodable: Callable[[dict[Coordinate, list[str]], list[bytes]], None] | None = None,
    ) -> Checked:
        """The invariants, once the alerts are stored: the alerts stored and on
        concord.alerts are the expected ones, none twice (check_alerts); the assertions of
        `assertions_of` patients, all of them, are stored (waiting `assertions_within`
        seconds at most; 0 is one look; None: not checked); every raw record sent, and
        `resent` (the same version again), is accounted for (account), and, with
        `good_only`, none is dead-lettered. The topics are read until nothing new comes for
        `idle` seconds. A record on concord.ingested that cannot be decoded fails the test,
        unless `undecodable` is given: it is handed the raw records' outcomes and those
        records, to add what they are the outcome of before the accounting."""
        every = [*sent, *resent]
        unreadable: list[bytes] | None = None if undecodable is None else []
        published, outcomes = await asyncio.gather(
            published_alerts(self.bootstrap, self.prefix, idle=idle),
            raw_outcomes(self.bootstrap, set(every), undecodable=unreadable, idle=idle),
        )
        alerts = check_alerts(expected, stored, published)
        if assertions_of is not None:
            wanted = assertions_of * ASSERTIONS_PER_PATIENT
            stored_assertions = await eventually(
                lambda: assertion_count(self.dsn, self.prefix),
                lambda n: n == wanted,
                within=assertions_within,
            )
            assert stored_assertions == wanted, "assertions stored: not every one, or more"
        if undecodable is not None and unreadable is not None:
            undecodable(outcomes, unreadable)
        accounting = account(every, outcomes, resent=resent)
        if good_only:
            assert accounting.dead_lettered == Counter(), "a good record was dead-lettered"
        return Checked(len(expected), alerts, outcomes, accounting)

    def workers_alive(self, *, none_restarted: bool) -> StackInfo:
        """Every worker the stack records runs; with `none_restarted`, they are the ones
        that ran when the test began (none died, none was started again). Returns the
        stack as recorded now."""
        recorded = load_state(self.stack.state_dir)
        assert recorded is not None
        assert all(is_alive(w) for w in recorded.workers.values()), "a worker died"
        if none_restarted:
            assert {name: w.pid for name, w in recorded.workers.items()} == {
                name: w.pid for name, w in self.stack.workers.items()
            }, "a worker was restarted"
        return recorded

    def report(self, tmp_path: Path, name: str, checked: Checked, figures: dict[str, Any]) -> None:
        """Write the test's own figures with the common ones: how long it took, what the
        invariants found, and each worker's peak memory."""
        common = {
            "seconds": round(time.monotonic() - self.started, 1),
            **checked.figures(),
            "peak_rss_mib": self.rss.rounded(),
        }
        assert not common.keys() & figures.keys(), "a figure of the test's hides a common one"
        write_figures(tmp_path, name, {**figures, **common})


class Stream:
    """A publisher of the workload: a chunk of `chunk` patients every `every` seconds until
    stopped, or `most` chunks are sent (a chunk may be a burst of more patients: after());
    every third chunk its first record (a Patient) again, as it was (de-duplicated); and,
    once the first chunk's glucose conflicts are open (looked at from chunk `correct_from`
    on), the lab's corrected glucose results for them (those alerts resolve: revision 2)."""

    def __init__(
        self, workload: Workload, *, chunk: int, every: float, most: int, correct_from: int = 1
    ) -> None:
        self.workload = workload
        self.chunk, self.every, self.most, self.correct_from = chunk, every, most, correct_from
        self.sent: list[Coordinate] = []
        self.resent: list[Coordinate] = []
        self.chunks = 0
        self.next_patient = 0
        self.burst = 0  # patients in the next chunk, when it is a burst
        self.chunk_sent = asyncio.Event()
        self.stop = asyncio.Event()
        self._publishing: asyncio.Task[None] | None = None
        self.corrected = {
            (p, a) for p, a in disagreeing(workload.token, range(chunk)) if a == GLUCOSE
        }
        self.corrections_sent = False

    @property
    def patients(self) -> range:
        return range(self.next_patient)

    def start(self) -> Stream:
        """Start publishing (run() in a task); end() stops it."""
        self._publishing = asyncio.create_task(self.run())
        return self

    async def end(self, *, within: float) -> tuple[dict[Key, str], dict[Key, StoredAlert], float]:
        """Stop publishing once the chunk being sent is out (and the corrections, if they
        were not), then wait for the alerts of every patient sent (`within` seconds at most):
        the expected alerts, the stored ones, and the seconds from the stream's end."""
        assert self._publishing is not None, "the stream was not started"
        self.stop.set()
        await self._publishing
        ended = time.monotonic()
        expected = self.workload.expected(self.patients, resolved=self.corrected)
        stored, drained = await self.workload.alerts_stored(expected, within=within, since=ended)
        return expected, stored, drained

    async def after(self, chunks: int = 1, *, burst: int = 0) -> None:
        """Return once `chunks` more chunks have been sent; with `burst`, the next one has
        that many patients."""
        self.burst = burst
        target = self.chunks + chunks
        while self.chunks < target:
            self.chunk_sent.clear()
            await self.chunk_sent.wait()

    async def run(self) -> None:
        while not self.stop.is_set() and self.chunks < self.most:
            first, size = self.next_patient, self.burst or self.chunk
            events = self.workload.events(range(first, first + size))
            self.next_patient, self.burst = first + size, 0
            self.sent += await self.workload.send(events)
            self.chunks += 1
            self.chunk_sent.set()
            if self.chunks % 3 == 0:
                self.resent += await self.workload.send(events[:1])
            if self.chunks >= self.correct_from and not self.corrections_sent:
                if await self._glucose_open():
                    await self._correct()
            await asyncio.sleep(self.every)
        if not self.corrections_sent:
            await eventually(self._glucose_open, bool, within=60)
            await self._correct()

    async def _glucose_open(self) -> bool:
        rows = await fetch(
            self.workload.dsn,
            "SELECT patient_id FROM conflict_state WHERE attribute = $1 AND status = 'OPEN' "
            "AND patient_id = ANY($2::text[])",
            GLUCOSE,
            sorted(patient for patient, _ in self.corrected),
        )
        return len(rows) == len(self.corrected)

    async def _correct(self) -> None:
        numbers = sorted(int(p.rsplit("-", 1)[1]) for p, _ in self.corrected)
        fixes = [corrected_glucose(self.workload.token, n) for n in numbers]
        self.sent += await self.workload.send(fixes)
        self.corrections_sent = True
