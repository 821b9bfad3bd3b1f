"""End to end on the real broker and PostgreSQL, every service its own process."""

from __future__ import annotations

import asyncio
import signal
import sys
from collections import Counter

import httpx
import orjson
import pytest

from concord.events import codec
from concord.stack.processes import is_alive, stop_process
from concord.stack.stack import StackInfo, load_state, restart_worker
from concord.topics import ALERTS, DEADLETTER, FACTS, INGESTED
from pipeline_tools import eventually, fetch, patient, publish, read_topic

pytestmark = [pytest.mark.e2e]

HOSP, LAB = "e2e-hospital", "e2e-lab"
BIRTH, GENDER, NAME = "Patient.birthDate", "Patient.gender", "Patient.name"


def _pair(n: int, prefix: str = "EPX", **lab_overrides: str) -> list[tuple[str | None, bytes]]:
    eid = f"{prefix}-{n:03d}"
    return [
        (HOSP, patient(eid, f"h{n}", last_updated="2026-01-01T00:00:00+00:00")),
        (LAB, patient(eid, f"l{n}", last_updated="2026-01-02T00:00:00+01:00", **lab_overrides)),
    ]


async def _alert_rows(dsn: str, prefix: str) -> list[tuple[str, str, str]]:
    rows = await fetch(
        dsn,
        "SELECT patient_id, attribute, status FROM alerts WHERE patient_id LIKE $1",
        prefix + "%",
    )
    return sorted((r["patient_id"], r["attribute"], r["status"]) for r in rows)


@pytest.mark.asyncio
async def test_two_sources_raise_exactly_the_expected_alerts(stack: StackInfo) -> None:
    good: list[tuple[str | None, bytes]] = []
    for n in range(1, 6):
        good += _pair(n)
    good += _pair(6, birth_date="1970-01-02")
    good += _pair(7, gender="male")
    good += _pair(8, family="Otherperson")
    good += _pair(9, birth_date="1971-01-01", given="Alexa")
    good += _pair(10, family="  TESTPERSON ")  # case and whitespace only: agreement
    good += [(HOSP, patient("EPX-011", "h11"))]  # one source only: nothing to compare
    good += _pair(12, gender="other")
    malformed: list[tuple[str | None, bytes]] = [
        (HOSP, b"{not json"),
        (None, patient("EPX-013", "h13")),
        (LAB, b'{"hello": "world"}'),
        (LAB, patient("EPX-014", "l14", birth_date="1970-13-45")),
        # Not a FHIR R4 type (an Organization, which is one, is kept for provenance).
        (LAB, b'{"resourceType": "Laboratory", "id": "o1", "name": "Lab"}'),
    ]
    no_enterprise_id = [(HOSP, patient(None, "h15"))]
    sent = await publish(stack.bootstrap_servers, good + malformed + no_enterprise_id)

    initial = [
        ("EPX-006", BIRTH, "OPEN"),
        ("EPX-007", GENDER, "OPEN"),
        ("EPX-008", NAME, "OPEN"),
        ("EPX-009", BIRTH, "OPEN"),
        ("EPX-009", NAME, "OPEN"),
        ("EPX-012", GENDER, "OPEN"),
    ]
    dsn = stack.database_url
    rows = await eventually(lambda: _alert_rows(dsn, "EPX-"), lambda r: r == initial, within=30)
    assert rows == initial

    # The lab corrects patient 12 (a newer version): that alert resolves on its own.
    await publish(
        stack.bootstrap_servers,
        [(LAB, patient("EPX-012", "l12", version="2", last_updated="2026-02-01T00:00:00Z"))],
    )
    final = sorted([r for r in initial if r[0] != "EPX-012"] + [("EPX-012", GENDER, "RESOLVED")])
    rows = await eventually(lambda: _alert_rows(dsn, "EPX-"), lambda r: r == final, within=30)
    await asyncio.sleep(2)  # anything extra would show up now
    assert await _alert_rows(dsn, "EPX-") == final

    # concord.alerts carries the same alerts: each revision once, the latest matching the table.
    published = [
        codec.ALERT.decode(r.value) for r in await read_topic(stack.bootstrap_servers, ALERTS)
    ]
    ours = [a for a in published if a.patient_id.startswith("EPX-")]
    revisions = Counter((a.alert_id, a.revision) for a in ours)
    assert all(count == 1 for count in revisions.values()), revisions
    latest = {}
    for alert in sorted(ours, key=lambda a: a.revision):
        latest[alert.alert_id] = alert
    assert sorted((a.patient_id, a.attribute, a.status) for a in latest.values()) == final
    for alert in latest.values():
        assert {a.source_system for a in alert.assertions} == {HOSP, LAB}
        for assertion in alert.assertions:
            assert assertion.provenance.source_record_id.startswith("Patient/")
            assert assertion.provenance.raw_topic == "ehr.raw.fhir"

    # Every raw event is accounted for: passed ingestion or dead-lettered, never both.
    raw_sent = set(sent)
    ingested = {
        (rec.provenance.raw_partition, rec.provenance.raw_offset)
        for rec in (
            codec.INGESTED_RECORD.decode(r.value)
            for r in await read_topic(stack.bootstrap_servers, INGESTED)
        )
    } & raw_sent
    letters = [
        codec.DEAD_LETTER.decode(r.value)
        for r in await read_topic(stack.bootstrap_servers, DEADLETTER)
    ]
    ingestion_letters = {
        (d.original_partition, d.original_offset): d
        for d in letters
        if d.stage == "ingestion" and (d.original_partition, d.original_offset) in raw_sent
    }
    assert ingested.isdisjoint(ingestion_letters)
    assert ingested | set(ingestion_letters) == raw_sent
    assert sorted(d.reason_code for d in ingestion_letters.values()) == sorted(
        [
            "MALFORMED_JSON",
            "MISSING_SOURCE_HEADER",
            "NOT_FHIR",
            "FHIR_INVALID",
            "UNSUPPORTED_RESOURCE_TYPE",
        ]
    )
    malformed_bytes = {value for _, value in malformed}
    assert {d.original_value for d in ingestion_letters.values()} == malformed_bytes
    # The Patient without an enterprise id is placed by identity matching, not dead-lettered.
    assert not [d for d in letters if d.stage == "normalization" and d.original_topic == INGESTED]
    placed = [
        fact
        for fact in map(codec.CLINICAL_FACT.decode,
                        (r.value for r in await read_topic(stack.bootstrap_servers, FACTS)))
        if fact.provenance.source_record_id == "Patient/h15"
    ]  # fmt: skip
    assert {f.attribute for f in placed} == {BIRTH, GENDER, NAME}
    assert len(ingestion_letters) == len(malformed)


@pytest.mark.asyncio
async def test_sigkill_of_the_conflicts_worker_loses_and_duplicates_no_alert(
    stack: StackInfo,
) -> None:
    patients = 600
    events: list[tuple[str | None, bytes]] = []
    expected = []
    for n in range(patients):
        eid = f"EPK-{n:05d}"
        disagree = n % 3 == 0
        events.append((HOSP, patient(eid, f"kh{n}")))
        events.append(
            (LAB, patient(eid, f"kl{n}", birth_date="1980-05-05" if disagree else "1970-01-01"))
        )
        if disagree:
            expected.append((eid, BIRTH, "OPEN"))
    chunks = [events[i : i + 200] for i in range(0, len(events), 200)]
    dsn = stack.database_url

    for chunk in chunks[:2]:
        await publish(stack.bootstrap_servers, chunk)
    await eventually(lambda: _alert_rows(dsn, "EPK-"), lambda r: len(r) > 0, within=30)
    conflicts = load_state(stack.state_dir).workers["conflicts"]
    stop_process(conflicts, sig=signal.SIGKILL)
    assert not is_alive(conflicts)
    at_kill = len(await _alert_rows(dsn, "EPK-"))
    assert 0 < at_kill < len(expected)

    for chunk in chunks[2:4]:  # the stream goes on while the worker is down
        await publish(stack.bootstrap_servers, chunk)
    restarted = await restart_worker(stack.state_dir, "conflicts", kill=True)
    assert restarted.pid != conflicts.pid
    for chunk in chunks[4:]:
        await publish(stack.bootstrap_servers, chunk)

    rows = await eventually(
        lambda: _alert_rows(dsn, "EPK-"), lambda r: len(r) >= len(expected), within=90
    )
    await asyncio.sleep(2)
    assert await _alert_rows(dsn, "EPK-") == sorted(expected)

    published = [
        codec.ALERT.decode(r.value) for r in await read_topic(stack.bootstrap_servers, ALERTS)
    ]
    ours = Counter(
        (a.patient_id, a.attribute, a.revision)
        for a in published
        if a.patient_id.startswith("EPK-")
    )
    assert sorted(ours) == sorted((p, a, 1) for p, a, _ in expected)
    assert set(ours.values()) == {1}, "an alert was published twice"
    history = await fetch(
        dsn,
        "SELECT count(*) AS n FROM alert_history h JOIN alerts a USING (alert_id) "
        "WHERE a.patient_id LIKE 'EPK-%'",
    )
    assert history[0]["n"] == len(expected)
    assert rows  # the poll saw them arrive


@pytest.mark.asyncio
async def test_a_merge_and_its_undoing_move_the_disagreement_and_back(
    stack: StackInfo,
) -> None:
    """Two sources disagree about patient EPM-OLD; the hospital then merges EPM-OLD into
    EPM-NEW (a Patient.link replaces): the alert moves with the facts. An operator's unmerge
    moves them back."""
    old = [
        (HOSP, patient("EPM-OLD", "hm1", family="Mergeold", gender="female")),
        (LAB, patient("EPM-OLD", "lm1", family="Mergeold", gender="male")),
    ]
    survivor = patient("EPM-NEW", "hm2", family="Mergenew", gender="female")
    await publish(stack.bootstrap_servers, [*old, (HOSP, survivor)])
    dsn = stack.database_url
    before = [("EPM-OLD", GENDER, "OPEN")]
    rows = await eventually(lambda: _alert_rows(dsn, "EPM-"), lambda r: r == before, within=30)
    assert rows == before

    merged = orjson.loads(
        patient("EPM-NEW", "hm2", family="Mergenew", gender="female", version="2",
                last_updated="2026-03-01T00:00:00+00:00")
    ) | {"link": [{"type": "replaces", "other": {"reference": "Patient/hm1"}}]}  # fmt: skip
    await publish(stack.bootstrap_servers, [(HOSP, orjson.dumps(merged))])
    # The lab still knows the absorbed patient's name: another disagreement, now visible.
    after = [
        ("EPM-NEW", GENDER, "OPEN"),
        ("EPM-NEW", NAME, "OPEN"),
        ("EPM-OLD", GENDER, "RESOLVED"),
    ]
    rows = await eventually(lambda: _alert_rows(dsn, "EPM-"), lambda r: r == after, within=30)
    assert rows == after

    # The merge was an error: the operator undoes it, and the alerts go back with the facts.
    command = [sys.executable, "-m", "concord.cli", "identity", "unmerge", "EPM-OLD",
               "--reason", "registered in error", "--by", "e2e",
               "--state-dir", str(stack.state_dir)]  # fmt: skip
    process = await asyncio.create_subprocess_exec(
        *command, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode == 0, stderr.decode()
    assert "EPM-OLD is a patient again" in stdout.decode()
    restored = [
        ("EPM-NEW", GENDER, "RESOLVED"),
        ("EPM-NEW", NAME, "RESOLVED"),
        ("EPM-OLD", GENDER, "OPEN"),
    ]
    rows = await eventually(lambda: _alert_rows(dsn, "EPM-"), lambda r: r == restored, within=30)
    assert rows == restored
    # The absorbed patient's disagreement is the same conflict reopened: one alert, revised.
    [reopened] = await fetch(
        dsn, "SELECT conflict_revision FROM alerts WHERE patient_id = 'EPM-OLD'"
    )
    assert reopened["conflict_revision"] == 3


@pytest.mark.asyncio
async def test_a_reviewers_decision_resolves_the_alert_until_a_source_changes(
    stack: StackInfo,
) -> None:
    await publish(stack.bootstrap_servers, _pair(90, prefix="EPR", gender="male"))
    dsn = stack.database_url
    opened = [("EPR-090", GENDER, "OPEN")]
    rows = await eventually(lambda: _alert_rows(dsn, "EPR-090"), lambda r: r == opened, within=30)
    assert rows == opened
    [alert] = await fetch(dsn, "SELECT alert_id FROM alerts WHERE patient_id = 'EPR-090'")

    command = [sys.executable, "-m", "concord.cli", "alerts", "resolve", alert["alert_id"],
               "--decision", "choose", "--value", "female", "--by", "reviewer-7",
               "--state-dir", str(stack.state_dir)]  # fmt: skip
    process = await asyncio.create_subprocess_exec(
        *command, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode == 0, stderr.decode()
    assert "published to concord.resolutions" in stdout.decode()
    resolved = [("EPR-090", GENDER, "RESOLVED")]
    rows = await eventually(lambda: _alert_rows(dsn, "EPR-090"), lambda r: r == resolved, within=30)
    assert rows == resolved

    # The lab says something new: a new disagreement, a new alert.
    update = patient("EPR-090", "l90", gender="other", version="2",
                     last_updated="2026-02-01T00:00:00+00:00")  # fmt: skip
    await publish(stack.bootstrap_servers, [(LAB, update)])
    both = [("EPR-090", GENDER, "OPEN"), ("EPR-090", GENDER, "RESOLVED")]
    rows = await eventually(lambda: _alert_rows(dsn, "EPR-090"), lambda r: r == both, within=30)
    assert rows == both


async def _concord(*args: str) -> str:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "concord.cli", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    stdout, stderr = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode == 0, stderr.decode()
    return stdout.decode()


@pytest.mark.asyncio
async def test_a_reviewer_dismisses_an_alert_through_the_review_service(
    stack: StackInfo,
) -> None:
    """The review service of `concord stack up`, signed in with `concord token issue`: an
    acknowledgement holds while the conflict stands, a dismissal goes through
    concord.resolutions and the conflicts stage, and the alert ends DISMISSED, on the topic
    too; the audit trail holds both decisions and verifies."""
    assert stack.review_url is not None
    await publish(stack.bootstrap_servers, _pair(95, prefix="EPV", gender="male"))
    dsn = stack.database_url
    opened = [("EPV-095", GENDER, "OPEN")]
    rows = await eventually(lambda: _alert_rows(dsn, "EPV-095"), lambda r: r == opened, within=30)
    assert rows == opened
    [alert] = await fetch(dsn, "SELECT alert_id FROM alerts WHERE patient_id = 'EPV-095'")
    alert_id = alert["alert_id"]

    state = str(stack.state_dir)
    token = (await _concord("token", "issue", "--user", "rev-e2e", "--role", "reviewer",
                            "--state-dir", state)).strip()  # fmt: skip
    headers = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(base_url=stack.review_url, timeout=30) as client:
        ack = await client.post(f"/api/v1/alerts/{alert_id}/acknowledge", headers=headers)
        assert ack.status_code == 200 and ack.json() == {"changed": True}
        acknowledged = [("EPV-095", GENDER, "ACKNOWLEDGED")]
        assert await _alert_rows(dsn, "EPV-095") == acknowledged
        dismissed = await client.post(
            f"/api/v1/alerts/{alert_id}/dismiss",
            headers=headers,
            json={"reason": "SAME_MEANING", "comment": "both mean the same here"},
        )
        assert dismissed.status_code == 200, dismissed.text
    final = [("EPV-095", GENDER, "DISMISSED")]
    rows = await eventually(lambda: _alert_rows(dsn, "EPV-095"), lambda r: r == final, within=30)
    assert rows == final
    published = [
        codec.ALERT.decode(r.value)
        for r in await read_topic(stack.bootstrap_servers, ALERTS)
        if codec.ALERT.decode(r.value).alert_id == alert_id
    ]
    assert [a.status for a in published][-1] == "DISMISSED"
    assert "dismissed by reviewer rev-e2e: same_meaning" in (published[-1].proposed_reason or "")

    listed = await _concord("audit", "list", "--object", f"alert:{alert_id}", "--json",
                            "--state-dir", state)  # fmt: skip
    actions = [orjson.loads(line)["action"] for line in listed.splitlines()]
    assert sorted(actions) == ["alert.acknowledge", "alert.dismiss"]
    assert "intact" in await _concord("audit", "verify", "--state-dir", state)
