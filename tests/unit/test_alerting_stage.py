"""The alerting stage on fakes of its ports: conflict events become alerts, stored and
published once per revision, in order whatever order they are redelivered in; a record the
store refuses is dead-lettered alone; latency is measured only for alerts the broker
acknowledged; left-behind outbox rows are published by the timer, and only those."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from prometheus_client import REGISTRY

from builders import FakeAlerts, FakeOutbox, FakeProducer, assertion_at, raw
from concord.alerting.app import AlertingStage
from concord.events import codec
from concord.events.models import Alert, Assertion, ConflictEvent
from concord.events.raw import RawEvent
from concord.runtime.batch import Outbound, Producer, run_batch
from concord.runtime.ports import LEFT_BEHIND_SECONDS
from concord.topics import ALERTS, CONFLICTS, DEADLETTER

T0 = datetime(2024, 3, 1, 8, 0, tzinfo=UTC)


def _assertion(source: str, value: str) -> Assertion:
    return assertion_at(
        source, value, T0, fact_id=f"fact-{source}-{value}", record=f"Patient/{source}-1"
    )


def _event(kind: str, revision: int, conflict: str = "c", **overrides: Any) -> RawEvent:
    fields: dict[str, Any] = {
        "conflict_id": conflict * 32,
        "revision": revision,
        "kind": kind,
        "patient_id": "E-1",
        "attribute": "Patient.birthDate",
        "attribute_class": "DEMOGRAPHICS",
        "severity": "HIGH",
        "assertions": (_assertion("a", "1980-01-01"), _assertion("b", "1980-02-02")),
        "policy_version": "builtin-1",
        "detected_at": T0 + timedelta(minutes=revision),
        "trigger_received_time": T0,
    }
    fields.update(overrides)
    event = ConflictEvent(**fields)
    return raw(codec.CONFLICT_EVENT.encode(event), topic=CONFLICTS, offset=revision)


def _alerts(out: Outbound) -> list[Alert]:
    return [codec.ALERT.decode(r.value) for r in out.pending if r.topic == ALERTS]


def _stage(store: FakeAlerts | None = None) -> tuple[AlertingStage, FakeAlerts, FakeOutbox]:
    store, outbox = store or FakeAlerts(), FakeOutbox()
    return AlertingStage(store, outbox, FakeProducer()), store, outbox


@pytest.mark.asyncio
async def test_each_revision_moves_the_alert_once_and_is_published() -> None:
    stage, store, _ = _stage()
    agreed = (_assertion("a", "1980-01-01"), _assertion("b", "1980-01-01"))
    out = await run_batch(
        stage,
        [
            _event("OPENED", 1),
            _event("UPDATED", 2, severity="CRITICAL"),
            _event("RESOLVED", 3, assertions=agreed),
        ],
    )
    published = [(a.revision, a.status, a.severity) for a in _alerts(out)]
    assert published == [(1, "OPEN", "HIGH"), (2, "OPEN", "CRITICAL"), (3, "RESOLVED", "HIGH")]
    assert [alert.revision for alert, _ in store.history] == [1, 2, 3]
    assert await store.open_counts() == {}


@pytest.mark.asyncio
async def test_an_older_revision_redelivered_after_a_newer_one_changes_nothing() -> None:
    stage, store, _ = _stage()
    await run_batch(stage, [_event("OPENED", 1), _event("UPDATED", 2, severity="CRITICAL")])
    # An outbox drained late, or a batch redelivered after a rebalance.
    again = await run_batch(stage, [_event("OPENED", 1), _event("UPDATED", 2)])
    assert again.pending == []
    [record] = store.alerts.values()
    assert (record.alert.revision, record.alert.severity) == (2, "CRITICAL")
    assert len(store.history) == 2


@pytest.mark.asyncio
async def test_a_conflict_the_store_refuses_is_dead_lettered_alone() -> None:
    stage, store, _ = _stage(FakeAlerts(refuse=["d" * 32]))
    events = [_event("OPENED", 1), _event("OPENED", 1, conflict="d"), _event("OPENED", 1, "e")]
    out = await run_batch(stage, events)
    assert sorted(a.alert_id[0] for a in _alerts(out)) == ["c", "e"]
    [letter] = [codec.DEAD_LETTER.decode(r.value) for r in out.pending if r.topic == DEADLETTER]
    assert (letter.reason_code, letter.original_value) == ("ALERTING_FAILED", events[1].value)
    assert sorted(store.alerts) == ["c" * 32, "e" * 32]


@pytest.mark.asyncio
async def test_latency_is_measured_only_for_alerts_the_broker_acknowledged() -> None:
    def observed() -> float:
        count = REGISTRY.get_sample_value(
            "concord_alert_latency_seconds_count", {"since": "received"}
        )
        return count or 0.0

    stage, _, outbox = _stage(FakeAlerts(refuse=["d" * 32]))
    before = observed()
    await run_batch(stage, [_event("OPENED", 1)], acknowledged=False)
    assert observed() == before  # produced, never acknowledged: not an alert anyone saw
    await stage.on_produced()
    assert observed() == before + 1
    # A pass that failed (the store refused its batch) leaves nothing to measure.
    await run_batch(stage, [_event("OPENED", 1, conflict="d")])
    assert observed() == before + 1
    assert outbox.acknowledged == 2


@pytest.mark.asyncio
async def test_the_timer_publishes_outbox_rows_left_behind() -> None:
    stage, _, outbox = _stage()
    outbox.pending = 3
    await stage.on_tick({0}, Outbound("alerting"))
    assert outbox.drained_with == [stage.producer]
    assert outbox.pending == 0


class _AgedOutbox(FakeOutbox):
    """Rows by their age in seconds: drain() publishes those at least `older_than` old, as
    the PostgreSQL outbox does (created_at <= now() - older_than)."""

    def __init__(self, ages: list[float]) -> None:
        super().__init__()
        self.ages = ages

    async def drain(self, producer: Producer, *, older_than: float = 0.0) -> int:
        self.drained_with.append(producer)
        left_behind = [age for age in self.ages if age >= older_than]
        self.ages = [age for age in self.ages if age < older_than]
        return len(left_behind)


@pytest.mark.asyncio
async def test_the_timer_leaves_rows_younger_than_left_behind_seconds_to_their_batch() -> None:
    """A batch's own rows wait for its acknowledgement: the timer publishes only rows older
    than LEFT_BEHIND_SECONDS (left behind by a pass that failed after its commit)."""
    young, old = LEFT_BEHIND_SECONDS - 5, LEFT_BEHIND_SECONDS + 5
    outbox = _AgedOutbox([young, old])
    stage = AlertingStage(FakeAlerts(), outbox, FakeProducer())
    await stage.on_tick({0}, Outbound("alerting"))
    assert outbox.drained_with == [stage.producer]
    assert outbox.ages == [young]
