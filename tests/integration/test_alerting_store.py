"""The alert store's one transaction on a real PostgreSQL: alerts, their history and the outbox
rows are written in one statement and one outbox write. A statement that fails keeps nothing of
the batch, and the connection serves the next batch."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from builders import FakeProducer, assertion_at, raw
from concord.alerting.app import AlertingStage, alert_record
from concord.alerting.lifecycle import AlertRecord, apply_conflict_event, change_reason
from concord.alerting.store import AlertStore
from concord.events import codec
from concord.events.models import Alert, ConflictEvent
from concord.runtime.batch import OutboundRecord, run_batch
from concord.runtime.outbox import Outbox
from concord.topics import ALERTS, CONFLICTS

pytestmark = pytest.mark.integration

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def _event(conflict: str, revision: int, kind: str = "OPENED", **fields: object) -> ConflictEvent:
    values = {
        "conflict_id": conflict,
        "revision": revision,
        "kind": kind,
        "patient_id": f"E-{conflict[:8]}",
        "attribute": "Patient.birthDate",
        "attribute_class": "DEMOGRAPHICS",
        "severity": "HIGH",
        "assertions": (
            assertion_at("a", "1980-01-01", T0, fact_id=f"{conflict}-a", display="1 Jan 1980"),
            assertion_at("b", "1980-02-02", T0 + timedelta(microseconds=123), fact_id="b"),
        ),
        "proposed_value": "1980-01-01",
        "proposed_reason": "most recent source",
        "policy_version": "builtin-1",
        "detected_at": T0 + timedelta(minutes=revision),
        "trigger_received_time": T0,
    }
    values.update(fields)
    return ConflictEvent.model_validate(values)


def _conflict() -> str:
    return uuid.uuid4().hex


def _batch(
    events: Sequence[ConflictEvent], now: datetime
) -> tuple[list[tuple[AlertRecord, str]], list[tuple[Alert, str]]]:
    """What AlertingStage.process hands the store for these events (none stored before)."""
    current: dict[str, AlertRecord] = {}
    history: list[tuple[Alert, str]] = []
    for event in events:
        updated = apply_conflict_event(current.get(event.conflict_id), event, now=now)
        assert updated is not None
        current[event.conflict_id] = updated
        history.append((updated.alert, change_reason(event)))
    latest = {alert.alert_id: (current[alert.alert_id], reason) for alert, reason in history}
    return list(latest.values()), history


async def _stored(pool: asyncpg.Pool, ids: Sequence[str], stage: str) -> tuple[int, int, int]:
    alerts = await pool.fetchval("SELECT count(*) FROM alerts WHERE alert_id = ANY($1)", ids)
    history = await pool.fetchval(
        "SELECT count(*) FROM alert_history WHERE alert_id = ANY($1)", ids
    )
    outbox = await pool.fetchval("SELECT count(*) FROM outbox WHERE stage = $1", stage)
    return alerts, history, outbox


@pytest.mark.asyncio
async def test_a_batch_stores_each_alert_its_history_and_its_records_in_order(
    pool: asyncpg.Pool,
) -> None:
    stage = f"test-{uuid.uuid4().hex[:6]}"
    store = AlertStore(pool, Outbox(pool, stage))
    one, two = _conflict(), _conflict()
    events = [
        _event(one, 1),
        _event(two, 1),
        _event(one, 2, "UPDATED", severity="CRITICAL"),
        _event(one, 3, "RESOLVED", decision="DISMISSED"),
    ]
    now = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)
    changes, history = _batch(events, now)
    records = [alert_record(a) for a, _ in history]
    await store.save(changes, history, records)

    loaded = await store.load([one, two])
    assert loaded == {record.alert.alert_id: record for record, _ in changes}
    assert (loaded[one].alert.revision, loaded[one].alert.status) == (3, "DISMISSED")
    assert loaded[one].alert.assertions == events[0].assertions
    rows = await pool.fetch(
        "SELECT alert_id, revision, status, changed_at, reason FROM alert_history "
        "WHERE alert_id = ANY($1) ORDER BY alert_id, revision",
        [one, two],
    )
    assert sorted(tuple(row) for row in rows) == sorted(
        (a.alert_id, a.revision, a.status, a.updated_at, reason) for a, reason in history
    )
    outbox = await pool.fetch(
        "SELECT topic, key, value FROM outbox WHERE stage = $1 ORDER BY seq", stage
    )
    expected = [alert_record(alert) for alert, _ in history]
    assert [OutboundRecord(r["topic"], r["value"], key=r["key"]) for r in outbox] == expected
    assert list(records) == expected


@pytest.mark.asyncio
async def test_an_acknowledged_alert_stays_acknowledged_and_an_older_revision_changes_nothing(
    pool: asyncpg.Pool,
) -> None:
    store = AlertStore(pool, Outbox(pool, f"test-{uuid.uuid4().hex[:6]}"))
    conflict = _conflict()
    changes, history = _batch([_event(conflict, 1)], T0)
    await store.save(changes, history, [alert_record(a) for a, _ in history])
    await pool.execute("UPDATE alerts SET status = 'ACKNOWLEDGED' WHERE alert_id = $1", conflict)
    [(first, _)] = changes
    second = apply_conflict_event(first, _event(conflict, 2, "UPDATED"), now=T0)
    assert second is not None and second.alert.status == "OPEN"
    await store.save([(second, "u")], [(second.alert, "u")], [alert_record(second.alert)])
    stored = (await store.load([conflict]))[conflict]
    assert (stored.alert.revision, stored.alert.status) == (2, "ACKNOWLEDGED")
    # Revision 1 again (an outbox drained late): the row keeps revision 2, the log one row each.
    await store.save(changes, history, [])
    assert (await store.load([conflict]))[conflict].alert.revision == 2
    assert await pool.fetchval(
        "SELECT array_agg(revision ORDER BY revision) FROM alert_history WHERE alert_id = $1",
        conflict,
    ) == [1, 2]


@pytest.mark.asyncio
async def test_a_statement_the_database_refuses_keeps_nothing(pool: asyncpg.Pool) -> None:
    stage = f"test-{uuid.uuid4().hex[:6]}"
    store = AlertStore(pool, Outbox(pool, stage))
    events = [_event(_conflict(), 1), _event(_conflict(), 1, patient_id="E-\x00")]
    changes, history = _batch(events, T0)
    with pytest.raises(asyncpg.PostgresError):
        await store.save(changes, history, [alert_record(a) for a, _ in history])
    assert await _stored(pool, [e.conflict_id for e in events], stage) == (0, 0, 0)


@pytest.mark.asyncio
async def test_the_stage_publishes_what_it_stored_and_forgets_it_once_acknowledged(
    pool: asyncpg.Pool,
) -> None:
    outbox = Outbox(pool, "alerting")
    stage = AlertingStage(AlertStore(pool, outbox), outbox, FakeProducer())
    events = [_event(_conflict(), 1) for _ in range(130)]
    encoded = [codec.CONFLICT_EVENT.encode(e) for e in events]
    before = await pool.fetchval("SELECT count(*) FROM outbox WHERE stage = 'alerting'")
    batch = [raw(v, topic=CONFLICTS, offset=i) for i, v in enumerate(encoded)]
    out = await run_batch(stage, batch, acknowledged=False)
    published = [codec.ALERT.decode(r.value) for r in out.pending if r.topic == ALERTS]
    assert [a.alert_id for a in published] == [e.conflict_id for e in events]
    stored = await stage.store.load([e.conflict_id for e in events])
    assert [stored[a.alert_id].alert for a in published] == published
    assert out.pending == [alert_record(a) for a in published]
    count = "SELECT count(*) FROM outbox WHERE stage = 'alerting'"
    assert await pool.fetchval(count) == before + 130
    # Sent and acknowledged, as the batch loop does: its outbox rows are gone.
    await out.flush(FakeProducer())
    await stage.on_produced()
    assert await pool.fetchval(count) == before
