"""SIGKILL of the conflicts worker while two sources' clinical facts stream in: once it is
restarted, its state comes back from PostgreSQL and detection goes on, with no conflict lost,
duplicated or raised where the sources agree.

Each patient is described by a hospital and a lab, each with a Patient (the same enterprise
id, the same demographics), two lab results (glucose, potassium), a problem (type 2 diabetes)
and an allergy (penicillin). Some results differ beyond the policy's tolerance and some within
it; some problems are resolved, and some allergies refuted, in the lab's record only. The
policy holds a result disagreement before raising it (suppress_for; 5 s here): the kill
leaves some held, and the restarted worker must raise each of them once.

Duplicates: the outbox is at least once (docs/architecture.md): a crash between the broker's
ack and the outbox row's delete publishes the very same bytes again. Such a re-publication is
the same event (same conflict id, revision and content), which consumers ignore by (id,
revision); it is counted and printed, and allowed only when byte-identical. A second OPENED, a
second id for one patient attribute, or two different events under one (id, revision) fail.
"""

from __future__ import annotations

import asyncio
import signal
import time
import uuid
from collections import defaultdict
from collections.abc import Iterator
from importlib import resources
from typing import Any

import orjson
import pytest

from concord.events import codec
from concord.events.models import ConflictEvent
from concord.stack.processes import is_alive, stop_process
from concord.stack.stack import StackInfo, load_state, restart_worker, start_stack, stop_stack
from concord.topics import CONFLICTS
from pipeline_tools import (
    FIRST,
    LATER,
    allergy,
    condition,
    eventually,
    fetch,
    observation,
    patient,
    publish_keyed,
    read_topic,
)

pytestmark = [pytest.mark.e2e]

HOSP, LAB = "rec-hospital", "rec-lab"
# The compared attributes by kind: results by their LOINC key; the problem and the allergy by
# resource type, since their keys follow the terminology's crosswalks (Condition/E11.9).
GLUCOSE, POTASSIUM = "Observation/2345-7", "Observation/2823-3"
DIABETES, PENICILLIN = "Condition", "AllergyIntolerance"
HOLD = "PT5S"  # the test policy's suppress_for for results (the built-in policy's is 30 s)
PATIENTS, CHUNK = 120, 20  # 6 chunks of 20 patients, 2 sources x 5 resources each


@pytest.fixture(scope="module")
def held_stack(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[StackInfo]:
    """The whole stack under the built-in policy, except that results are held 5 s instead of
    30 s (suppress_for), so that the test sees a held disagreement survive the kill and stays
    short. The setting stays in the environment for the module: a restarted worker reads it."""
    built_in = (resources.files("concord.conflicts") / "default_policy.yaml").read_text()
    assert built_in.count("suppress_for: PT30S") == 1
    state_dir = tmp_path_factory.mktemp("stack")
    policy = state_dir / "policy.yaml"
    policy.write_text(built_in.replace("suppress_for: PT30S", f"suppress_for: {HOLD}"))
    with pytest.MonkeyPatch.context() as env:
        env.setenv("CONCORD_POLICY_PATH", str(policy))
        info = asyncio.run(start_stack(state_dir, progress=lambda line: None))
        try:
            yield info
        finally:
            stop_stack(state_dir)


# --- the sources' records ---------------------------------------------------------------------


Event = tuple[str, dict[str, Any]]  # (source, FHIR resource)
Rows = dict[tuple[str, str], tuple[str, int, str]]  # (patient, attribute) -> id, revision, status


def _plan(n: int) -> dict[str, bool]:
    """Which of patient n's clinical attributes the lab disagrees on."""
    return {
        GLUCOSE: n % 3 == 0,
        POTASSIUM: n % 4 == 1,
        DIABETES: n % 5 == 2,
        PENICILLIN: n % 6 == 3,
    }


def _records(token: str, n: int) -> list[Event]:
    """Both sources' records of patient n: each Patient first (the results follow it through
    the identity crosswalk), then its results, problem and allergy."""
    eid, plan = f"REC{token}-{n:03d}", _plan(n)
    events: list[Event] = []
    for source, tag in ((HOSP, "h"), (LAB, "l")):
        lab = source == LAB
        rid = f"rec{token}{tag}{n}"
        subject = f"Patient/{rid}"
        events.append((source, orjson.loads(patient(eid, rid, last_updated=FIRST))))
        glucose = 130.0 if lab and plan[GLUCOSE] else (104.0 if lab else 100.0)
        potassium = 5.2 if lab and plan[POTASSIUM] else (4.1 if lab else 4.0)
        events.append((source, observation(f"{rid}-glu", subject, "2345-7", glucose, "mg/dL")))
        events.append((source, observation(f"{rid}-k", subject, "2823-3", potassium, "mmol/L")))
        problem = "resolved" if lab and plan[DIABETES] else "active"
        events.append((source, condition(f"{rid}-dm", subject, problem)))
        refuted = lab and plan[PENICILLIN]
        clinical, verification = ("inactive", "refuted") if refuted else ("active", "confirmed")
        events.append((source, allergy(f"{rid}-pen", subject, clinical, verification)))
    return events


# --- what Concord says ------------------------------------------------------------------------


def _kind(attribute: str) -> str:
    return attribute if attribute.startswith("Observation/") else attribute.split("/", 1)[0]


async def _conflict_rows(dsn: str, prefix: str) -> Rows:
    rows = await fetch(
        dsn,
        "SELECT patient_id, attribute, conflict_id, revision, status FROM conflict_state "
        "WHERE patient_id LIKE $1",
        prefix + "%",
    )
    return {
        (r["patient_id"], _kind(r["attribute"])): (r["conflict_id"], r["revision"], r["status"])
        for r in rows
    }


async def _held(dsn: str, prefix: str) -> set[tuple[str, str]]:
    rows = await fetch(
        dsn, "SELECT patient_id, attribute FROM held_records WHERE patient_id LIKE $1", prefix + "%"
    )
    return {(r["patient_id"], _kind(r["attribute"])) for r in rows}


async def _assertion_count(dsn: str, prefix: str) -> int:
    rows = await fetch(
        dsn, "SELECT count(*) AS n FROM assertions WHERE patient_id LIKE $1", prefix + "%"
    )
    return int(rows[0]["n"])


async def _settled(dsn: str) -> bool:
    """Nothing held back for later, nothing written and not yet published."""
    rows = await fetch(
        dsn,
        "SELECT (SELECT count(*) FROM outbox WHERE stage = 'conflicts') "
        "+ (SELECT count(*) FROM held_records) AS n",
    )
    return int(rows[0]["n"]) == 0


async def _published(bootstrap: str, prefix: str) -> list[tuple[ConflictEvent, bytes]]:
    events = []
    for record in await read_topic(bootstrap, CONFLICTS):
        event = codec.CONFLICT_EVENT.decode(record.value)
        if event.patient_id.startswith(prefix):
            events.append((event, bytes(record.value)))
    return events


def _changes(token: str, corrected: list[tuple[str, str]], revised: list[int]) -> list[Event]:
    """The lab's second versions: corrected glucose results (agreeing now), allergies no
    longer refuted, and potassium results revised out of tolerance."""
    changes: list[Event] = []
    later = {"version": "2", "updated": LATER}
    for patient_id, attribute in corrected:
        rid = f"rec{token}l{int(patient_id.rsplit('-', 1)[1])}"
        subject = f"Patient/{rid}"
        if attribute == GLUCOSE:
            resource = observation(f"{rid}-glu", subject, "2345-7", 101.0, "mg/dL", **later)
        else:
            resource = allergy(f"{rid}-pen", subject, "active", "confirmed", **later)
        changes.append((LAB, resource))
    for n in revised:
        rid = f"rec{token}l{n}"
        resource = observation(f"{rid}-k", f"Patient/{rid}", "2823-3", 6.0, "mmol/L", **later)
        changes.append((LAB, resource))
    return changes


def _check_published(
    published: list[tuple[ConflictEvent, bytes]], final: dict[tuple[str, str], str], rows: Rows
) -> int:
    """Lost, spurious and duplicated conflicts on the topic; returns how many events were
    identical re-publications of an (id, revision) already seen."""
    copies: dict[tuple[str, int], set[bytes]] = defaultdict(set)
    ids_of: dict[tuple[str, str], set[str]] = defaultdict(set)
    history: dict[str, list[tuple[int, str]]] = defaultdict(list)
    for event, value in published:
        ids_of[(event.patient_id, _kind(event.attribute))].add(event.conflict_id)
        if (event.conflict_id, event.revision) not in copies:
            history[event.conflict_id].append((event.revision, event.kind))
        copies[(event.conflict_id, event.revision)].add(value)
    # No lost, no spurious: exactly the expected patient attributes have conflicts.
    assert set(ids_of) == set(final)
    # No duplicate: one conflict id per patient attribute, the one PostgreSQL holds, and one
    # event per (id, revision): a second copy must be the same bytes (an outbox re-publication).
    assert {key: ids for key, ids in ids_of.items() if len(ids) != 1} == {}
    assert {key: min(ids) for key, ids in ids_of.items()} == {
        key: conflict_id for key, (conflict_id, _, _) in rows.items()
    }
    assert {key: len(values) for key, values in copies.items() if len(values) > 1} == {}
    # Each conflict's revisions once each, in order: OPENED, then RESOLVED where corrected.
    for key, status in final.items():
        conflict_id, revision, _ = rows[key]
        expected = [(1, "OPENED"), (2, "RESOLVED")] if status == "RESOLVED" else [(1, "OPENED")]
        assert sorted(history[conflict_id]) == expected, (key, history[conflict_id])
        assert revision == len(expected)
    return len(published) - len(copies)


@pytest.mark.asyncio
async def test_conflicts_worker_recovers_from_sigkill_losing_duplicating_inventing_nothing(
    held_stack: StackInfo,
) -> None:
    stack = held_stack
    started = time.monotonic()
    token = uuid.uuid4().hex[:6]
    prefix = f"REC{token}-"
    bootstrap, dsn = stack.bootstrap_servers, stack.database_url
    chunks = [
        [event for n in range(start, start + CHUNK) for event in _records(token, n)]
        for start in range(0, PATIENTS, CHUNK)
    ]
    disagreeing = {
        (f"{prefix}{n:03d}", attribute)
        for n in range(PATIENTS)
        for attribute, differs in _plan(n).items()
        if differs
    }

    # Three chunks at once; the worker dies while their facts still stream in: some of their
    # conflicts are stored, not all.
    for chunk in chunks[:3]:
        await publish_keyed(bootstrap, chunk)
    await eventually(lambda: _conflict_rows(dsn, prefix), lambda r: len(r) >= 5, within=45)
    recorded = load_state(stack.state_dir)
    assert recorded is not None
    conflicts = recorded.workers["conflicts"]
    stop_process(conflicts, sig=signal.SIGKILL)
    assert not is_alive(conflicts)
    before_kill = await _conflict_rows(dsn, prefix)
    held_at_kill = await _held(dsn, prefix)  # result disagreements not yet raised
    sent = {key for key in disagreeing if int(key[0].rsplit("-", 1)[1]) < 3 * CHUNK}
    assert 0 < len(before_kill) < len(sent), "the kill must come mid-stream"
    assert held_at_kill, "the kill should leave result disagreements held for later"

    # The stream goes on while the worker is down (ingestion and normalization still run).
    await publish_keyed(bootstrap, chunks[3])
    restarted = await restart_worker(stack.state_dir, "conflicts", kill=True)
    assert restarted.pid != conflicts.pid
    for chunk in chunks[4:]:
        await publish_keyed(bootstrap, chunk)

    # Every assertion is stored: 7 attributes x 2 sources for every patient.
    stored = await eventually(
        lambda: _assertion_count(dsn, prefix), lambda n: n == PATIENTS * 14, within=60
    )
    assert stored == PATIENTS * 14
    rows = await eventually(
        lambda: _conflict_rows(dsn, prefix), lambda r: set(r) >= disagreeing, within=30
    )
    assert set(rows) == disagreeing, "lost or spurious conflicts in conflict_state"

    # After the restart, sources change their minds: the lab corrects glucose results whose
    # conflicts were open before the kill (they resolve: the same conflict, revision 2), takes
    # back refuted allergies (resolve), and revises agreeing potassium results out of
    # tolerance (new conflicts).
    def first(attribute: str, count: int) -> list[tuple[str, str]]:
        keys = [key for key in disagreeing if key[1] == attribute]
        return sorted(keys, key=lambda key: (key not in before_kill, key))[:count]

    corrected = first(GLUCOSE, 4) + first(PENICILLIN, 4)
    assert any(key in before_kill for key in corrected)
    revised = [n for n in range(PATIENTS) if not _plan(n)[POTASSIUM]][:6]
    changes = _changes(token, corrected, revised)
    await publish_keyed(bootstrap, changes)
    opened_later = {(f"{prefix}{n:03d}", POTASSIUM) for n in revised}
    final = {key: ("RESOLVED" if key in corrected else "OPEN") for key in disagreeing}
    final |= {key: "OPEN" for key in opened_later}

    def settled(r: Rows) -> bool:
        return {key: status for key, (_, _, status) in r.items()} == final

    rows = await eventually(lambda: _conflict_rows(dsn, prefix), settled, within=30)
    assert {key: status for key, (_, _, status) in rows.items()} == final
    assert await eventually(lambda: _settled(dsn), bool, within=30)
    await asyncio.sleep(2)  # anything extra would show up now
    assert await _conflict_rows(dsn, prefix) == rows

    # concord.conflicts, read whole: what was published for our patients.
    published = await _published(bootstrap, prefix)
    republished = _check_published(published, final, rows)
    # Conflicts stored before the kill kept their ids through the restart.
    assert {key: row[0] for key, row in before_kill.items()} == {
        key: rows[key][0] for key in before_kill
    }
    elapsed = time.monotonic() - started
    assert held_at_kill <= set(rows)  # raised by the restarted worker's timer
    print(
        f"\n{len(published)} conflict events, {republished} identical re-publications "
        f"(outbox, at least once); at the kill {len(before_kill)} conflicts stored and "
        f"{len(held_at_kill)} held; {elapsed:.1f}s"
    )

    # Downstream, one alert per conflict, at its latest revision.
    async def alerts() -> dict[tuple[str, str], tuple[str, int]]:
        found = await fetch(
            dsn,
            "SELECT patient_id, attribute, alert_id, conflict_revision FROM alerts "
            "WHERE patient_id LIKE $1",
            prefix + "%",
        )
        return {
            (r["patient_id"], _kind(r["attribute"])): (r["alert_id"], r["conflict_revision"])
            for r in found
        }

    wanted = {key: (conflict_id, revision) for key, (conflict_id, revision, _) in rows.items()}
    assert await eventually(alerts, lambda a: a == wanted, within=30) == wanted
