"""suppress_for, pure: a disagreement or stale record is raised only once it has lasted the
policy's window; one gone before then raises nothing at all (no OPENED, no RESOLVED)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from builders import assertion_at
from concord.conflicts.policy import ClassRule, SourcePolicy, Tolerance
from concord.conflicts.rules import CONFLICT_HOLD, AttributeState, Hold, evaluate
from concord.conflicts.staleness import next_due, staleness_events
from concord.events.models import Assertion, ConflictEvent

NOW = datetime(2026, 6, 1, tzinfo=UTC)
HOLD = timedelta(seconds=30)
LAB = ClassRule(
    compare="numeric",
    tolerance=Tolerance(relative=0.05),
    specimen_window=timedelta(hours=1),
    max_age=timedelta(days=365),
    suppress_for=HOLD,
)
POLICY = SourcePolicy(version="p", classes={"LABORATORY": LAB})
IMMEDIATE = SourcePolicy(
    version="p", classes={"LABORATORY": LAB.model_copy(update={"suppress_for": timedelta(0)})}
)


def _result(source: str, value: str, *, days_ago: float, n: int = 1) -> Assertion:
    at = NOW - timedelta(days=days_ago)
    return assertion_at(
        source, value, at, fact_id=f"{source}-{n}", unit="%", record=f"Observation/{source}-{n}"
    )


def _state(*assertions: Assertion) -> AttributeState:
    state = AttributeState("E1", "Observation/4548-4", "LABORATORY")
    for a in assertions:
        state.assertions[a.source_system] = a
    return state


def _evaluate(
    state: AttributeState, at: datetime, policy: SourcePolicy = POLICY
) -> ConflictEvent | None:
    return evaluate(state, policy, now=at, trigger_received_time=at)


def test_a_disagreement_is_held_then_raised_once_it_has_lasted() -> None:
    state = _state(_result("clinic", "6.1", days_ago=1), _result("lab", "8.0", days_ago=1))
    assert _evaluate(state, NOW) is None
    assert state.conflict is None
    assert state.held[CONFLICT_HOLD] == Hold(NOW, NOW + HOLD)
    assert next_due(state, LAB, NOW) == NOW + HOLD  # the timer comes back for it
    assert _evaluate(state, NOW + HOLD / 2) is None  # still within the window
    event = _evaluate(state, NOW + HOLD)
    assert event is not None and (event.kind, event.revision) == ("OPENED", 1)
    assert state.held == {}
    assert _evaluate(state, NOW + 2 * HOLD) is None  # raised once


def test_a_disagreement_gone_before_the_window_ends_raises_nothing() -> None:
    state = _state(_result("clinic", "6.1", days_ago=1), _result("lab", "8.0", days_ago=1))
    assert _evaluate(state, NOW) is None
    state.assertions["clinic"] = _result("clinic", "8.0", days_ago=1, n=2)  # the newer copy
    assert _evaluate(state, NOW + timedelta(seconds=5)) is None
    assert state.held == {} and state.conflict is None
    assert _evaluate(state, NOW + HOLD) is None  # nothing left to raise


def test_without_a_window_a_disagreement_is_raised_at_once() -> None:
    state = _state(_result("clinic", "6.1", days_ago=1), _result("lab", "8.0", days_ago=1))
    event = _evaluate(state, NOW, IMMEDIATE)
    assert event is not None and event.kind == "OPENED" and state.held == {}


def test_a_change_while_held_keeps_the_hold_and_raises_the_disagreement_as_it_is_then() -> None:
    state = _state(_result("clinic", "6.1", days_ago=1), _result("lab", "8.0", days_ago=1))
    _evaluate(state, NOW)
    state.assertions["clinic"] = _result("clinic", "5.0", days_ago=1, n=2)
    assert _evaluate(state, NOW + timedelta(seconds=10)) is None
    assert state.held[CONFLICT_HOLD].since == NOW  # the disagreement has lasted since NOW
    event = _evaluate(state, NOW + HOLD)
    assert event is not None
    assert {a.fact_id for a in event.assertions} == {"clinic-2", "lab-1"}


def test_a_stale_record_is_held_too_and_dropped_when_the_source_catches_up() -> None:
    old = _result("clinic", "6.1", days_ago=400)
    state = _state(old, _result("lab", "8.0", days_ago=10))
    assert staleness_events(state, POLICY, now=NOW, trigger_received_time=NOW) == []
    assert "clinic" in state.held and state.stale == {}
    # The clinic's newer copy of the lab's result arrives a few seconds later (a backlog).
    state.assertions["clinic"] = _result("clinic", "8.0", days_ago=10, n=2)
    later = NOW + timedelta(seconds=3)
    assert staleness_events(state, POLICY, now=later, trigger_received_time=later) == []
    assert state.held == {} and state.stale == {}


def test_a_stale_record_that_lasts_is_raised_at_the_end_of_its_hold() -> None:
    state = _state(_result("clinic", "6.1", days_ago=400), _result("lab", "8.0", days_ago=10))
    staleness_events(state, POLICY, now=NOW, trigger_received_time=NOW)
    assert next_due(state, LAB, NOW) == NOW + HOLD
    [event] = staleness_events(state, POLICY, now=NOW + HOLD, trigger_received_time=NOW)
    assert (event.kind, event.revision) == ("STALE", 1)
    assert state.held == {} and state.stale["clinic"].status == "OPEN"
