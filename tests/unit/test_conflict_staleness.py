"""Stale assertions, pure: older than the policy allows against a newer, different one, or
not reconfirmed in time; raised once, resolved when the source speaks again."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from builders import assertion_at
from concord.conflicts.policy import ClassRule, SourcePolicy, Tolerance
from concord.conflicts.rules import AttributeState
from concord.conflicts.staleness import next_due, stale_now, staleness_events
from concord.events.models import Assertion, FactStatus

NOW = datetime(2026, 6, 1, tzinfo=UTC)
LAB = ClassRule(compare="numeric", tolerance=Tolerance(relative=0.05), max_age=timedelta(days=365))
MEDS = ClassRule(compare="status", reconfirm_within=timedelta(days=90))
POLICY = SourcePolicy(version="p", classes={"LABORATORY": LAB, "MEDICATION": MEDS})


def _said(
    source: str, value: str, *, days_ago: float, status: FactStatus = "ASSERTED", n: int = 1
) -> Assertion:
    at = NOW - timedelta(days=days_ago)
    return assertion_at(source, value, at, fact_id=f"{source}-{n}", status=status)


def _lab(*assertions: Assertion) -> AttributeState:
    state = AttributeState("E1", "Observation/4548-4", "LABORATORY")
    for a in assertions:
        state.assertions[a.source_system] = a
    return state


def _meds(*assertions: Assertion) -> AttributeState:
    state = AttributeState("E1", "Medication/6809", "MEDICATION")
    for a in assertions:
        state.assertions[a.source_system] = a
    return state


def test_an_old_result_against_a_newer_different_one_is_stale() -> None:
    state = _lab(_said("clinic", "6.1", days_ago=400), _said("lab", "8.0", days_ago=10))
    assert set(stale_now(state, LAB, NOW)) == {"clinic"}
    [event] = staleness_events(state, POLICY, now=NOW, trigger_received_time=NOW)
    assert (event.kind, event.revision, event.proposed_value) == ("STALE", 1, "8.0")
    assert event.stale_source == "clinic"  # whose assertion is stale, not only in the reason
    assert event.proposed_reason is not None and "clinic" in event.proposed_reason
    assert "6.1" not in event.proposed_reason  # values travel in the event's fields only
    assert staleness_events(state, POLICY, now=NOW, trigger_received_time=NOW) == []


def test_an_old_result_the_newer_one_agrees_with_is_not_stale() -> None:
    state = _lab(_said("clinic", "8.1", days_ago=400), _said("lab", "8.0", days_ago=10))
    assert stale_now(state, LAB, NOW) == {}


def test_a_result_becomes_stale_when_its_age_passes_the_maximum() -> None:
    state = _lab(_said("clinic", "6.1", days_ago=300), _said("lab", "8.0", days_ago=10))
    assert stale_now(state, LAB, NOW) == {}
    due = next_due(state, LAB, NOW)
    assert due == NOW + timedelta(days=65)
    assert set(stale_now(state, LAB, due)) == {"clinic"}


def test_the_stale_source_speaking_again_resolves_its_stale_record() -> None:
    state = _lab(_said("clinic", "6.1", days_ago=400), _said("lab", "8.0", days_ago=10))
    [stale] = staleness_events(state, POLICY, now=NOW, trigger_received_time=NOW)
    state.assertions["clinic"] = _said("clinic", "8.0", days_ago=1, n=2)
    [resolved] = staleness_events(state, POLICY, now=NOW, trigger_received_time=NOW)
    assert (resolved.conflict_id, resolved.kind, resolved.revision) == (
        stale.conflict_id, "RESOLVED", 2,
    )  # fmt: skip
    assert resolved.stale_source == "clinic"


def test_the_same_assertion_stale_again_reopens_its_record() -> None:
    newer = _said("lab", "8.0", days_ago=10)
    state = _lab(_said("clinic", "6.1", days_ago=400), newer)
    [stale] = staleness_events(state, POLICY, now=NOW, trigger_received_time=NOW)
    del state.assertions["lab"]  # the newer result withdrawn
    [resolved] = staleness_events(state, POLICY, now=NOW, trigger_received_time=NOW)
    state.assertions["lab"] = newer
    [again] = staleness_events(state, POLICY, now=NOW, trigger_received_time=NOW)
    assert [stale.revision, resolved.revision, again.revision] == [1, 2, 3]
    assert again.conflict_id == stale.conflict_id and again.kind == "STALE"


def test_an_active_medication_not_reconfirmed_in_its_window_is_stale() -> None:
    state = _meds(_said("clinic", "active", days_ago=100), _said("ehr", "active", days_ago=5))
    assert set(stale_now(state, MEDS, NOW)) == {"clinic"}
    assert next_due(state, MEDS, NOW) == NOW + timedelta(days=85)
    [event] = staleness_events(state, POLICY, now=NOW, trigger_received_time=NOW)
    assert event.kind == "STALE" and event.proposed_value is None
    assert event.proposed_reason is not None and "90 days" in event.proposed_reason


def test_a_stopped_medication_needs_no_reconfirmation() -> None:
    state = _meds(_said("clinic", "stopped", days_ago=400))
    assert stale_now(state, MEDS, NOW) == {}
    assert next_due(state, MEDS, NOW) is None


def test_a_class_without_staleness_rules_is_never_stale() -> None:
    policy = SourcePolicy(version="p", classes={"LABORATORY": ClassRule(
        compare="numeric", tolerance=Tolerance(absolute=0))})  # fmt: skip
    state = _lab(_said("clinic", "6.1", days_ago=4000), _said("lab", "8.0", days_ago=1))
    assert staleness_events(state, policy, now=NOW, trigger_received_time=NOW) == []
