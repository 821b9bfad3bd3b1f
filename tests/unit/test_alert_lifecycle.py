"""An alert's life, pure: conflict events move it; redelivery changes nothing; rendering."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

from builders import assertion_at
from concord.alerting.lifecycle import AlertRecord, apply_conflict_event, change_reason
from concord.alerting.render import alert_json, alert_line
from concord.events.models import Assertion, ConflictEvent

T0 = datetime(2024, 3, 1, 8, 0, tzinfo=UTC)


def _assertion(source: str, value: str, display: str | None = None) -> Assertion:
    return assertion_at(
        source, value, T0, fact_id=f"fact-{source}-1", record=f"Patient/{source}-1", display=display
    )


def _event(kind: str, revision: int, **overrides: Any) -> ConflictEvent:
    fields: dict[str, Any] = {
        "conflict_id": "c" * 32,
        "revision": revision,
        "kind": kind,
        "patient_id": "E-1",
        "attribute": "Patient.birthDate",
        "attribute_class": "DEMOGRAPHICS",
        "severity": "HIGH",
        "assertions": (_assertion("a", "1980-01-01"), _assertion("b", "1980-02-02")),
        "proposed_value": "1980-01-01",
        "proposed_reason": "a ranks highest among the disagreeing sources",
        "policy_version": "builtin-1",
        "detected_at": T0 + timedelta(minutes=revision),
        "trigger_received_time": T0,
    }
    fields.update(overrides)
    return ConflictEvent(**fields)


def _at(minutes: int) -> datetime:
    return T0 + timedelta(hours=1, minutes=minutes)


def _opened() -> AlertRecord:
    record = apply_conflict_event(None, _event("OPENED", 1), now=_at(0))
    assert record is not None
    return record


def test_opened_creates_an_open_alert() -> None:
    record = _opened()
    alert = record.alert
    assert record.conflict_revision == 1
    assert alert.alert_id == "c" * 32
    assert alert.revision == 1
    assert alert.kind == "CONFLICT"
    assert alert.status == "OPEN"
    assert alert.patient_id == "E-1"
    assert alert.attribute == "Patient.birthDate"
    assert alert.severity == "HIGH"
    assert alert.assertions == _event("OPENED", 1).assertions
    assert alert.proposed_value == "1980-01-01"
    assert alert.opened_at == _event("OPENED", 1).detected_at
    assert alert.updated_at == _at(0)
    assert alert.resolved_at is None


def test_updated_bumps_the_revision_and_keeps_the_status() -> None:
    opened = _opened()
    third = (*_event("UPDATED", 2).assertions, _assertion("c", "1980-03-03"))
    updated = apply_conflict_event(opened, _event("UPDATED", 2, assertions=third), now=_at(5))
    assert updated is not None
    assert updated.alert.revision == 2
    assert updated.conflict_revision == 2
    assert updated.alert.status == "OPEN"
    assert updated.alert.assertions == third
    assert updated.alert.opened_at == opened.alert.opened_at
    assert updated.alert.updated_at == _at(5)


def test_an_acknowledged_alert_stays_acknowledged_on_update() -> None:
    opened = _opened()
    acknowledged = AlertRecord(
        alert=opened.alert.model_copy(update={"status": "ACKNOWLEDGED"}), conflict_revision=1
    )
    updated = apply_conflict_event(acknowledged, _event("UPDATED", 2), now=_at(5))
    assert updated is not None
    assert updated.alert.status == "ACKNOWLEDGED"
    assert updated.alert.revision == 2


def test_resolved_resolves_with_a_time() -> None:
    opened = _opened()
    resolved = apply_conflict_event(opened, _event("RESOLVED", 2, proposed_value=None), now=_at(9))
    assert resolved is not None
    assert resolved.alert.status == "RESOLVED"
    assert resolved.alert.resolved_at == _at(9)
    assert resolved.alert.revision == 2
    assert resolved.alert.opened_at == opened.alert.opened_at


def test_a_conflict_a_reviewer_dismissed_makes_a_dismissed_alert() -> None:
    opened = _opened()
    event = _event("RESOLVED", 2, proposed_value=None, decision="DISMISSED")
    dismissed = apply_conflict_event(opened, event, now=_at(9))
    assert dismissed is not None
    assert (dismissed.alert.status, dismissed.alert.resolved_at) == ("DISMISSED", _at(9))
    accepted = apply_conflict_event(
        opened, _event("RESOLVED", 2, decision="CHOSE_VALUE"), now=_at(9)
    )
    assert accepted is not None and accepted.alert.status == "RESOLVED"


def test_a_duplicate_or_older_conflict_revision_changes_nothing() -> None:
    opened = _opened()
    assert apply_conflict_event(opened, _event("OPENED", 1), now=_at(1)) is None
    updated = apply_conflict_event(opened, _event("UPDATED", 3), now=_at(2))
    assert updated is not None
    assert apply_conflict_event(updated, _event("UPDATED", 3), now=_at(3)) is None
    assert apply_conflict_event(updated, _event("UPDATED", 2), now=_at(3)) is None
    assert apply_conflict_event(updated, _event("OPENED", 1), now=_at(3)) is None


def test_a_skipped_revision_still_applies_once() -> None:
    updated = apply_conflict_event(_opened(), _event("UPDATED", 4), now=_at(2))
    assert updated is not None
    assert updated.conflict_revision == 4
    assert updated.alert.revision == 2


def test_stale_events_make_a_stale_alert() -> None:
    stale = apply_conflict_event(_opened(), _event("STALE", 2), now=_at(4))
    assert stale is not None
    assert stale.alert.kind == "STALE"
    assert stale.alert.status == "OPEN"


def test_a_stale_records_alert_names_its_source_and_stays_stale_when_it_resolves() -> None:
    raised = apply_conflict_event(None, _event("STALE", 1, stale_source="clinic"), now=_at(1))
    assert raised is not None
    assert (raised.alert.kind, raised.alert.stale_source) == ("STALE", "clinic")
    resolved = apply_conflict_event(
        raised, _event("RESOLVED", 2, stale_source="clinic"), now=_at(2)
    )
    assert resolved is not None
    assert (resolved.alert.kind, resolved.alert.status) == ("STALE", "RESOLVED")
    assert resolved.alert.stale_source == "clinic"
    # An event written before ConflictEvent v4 names no source: the alert keeps its own.
    older = apply_conflict_event(raised, _event("RESOLVED", 2), now=_at(2))
    assert older is not None and (older.alert.kind, older.alert.stale_source) == ("STALE", "clinic")


def test_change_reason_names_no_values() -> None:
    reason = change_reason(_event("UPDATED", 2))
    assert "updated" in reason
    assert "1980" not in reason
    assert "E-1" not in reason


# --- rendering ----------------------------------------------------------------------------------


def test_alert_json_has_the_fields_a_reviewer_needs() -> None:
    alert = _opened().alert
    shown = alert_json(alert)
    assert {"id", "kind", "attribute", "patient_id", "severity", "status", "assertions"} <= set(
        shown
    )
    assert shown["id"] == alert.alert_id
    assert shown["kind"] == "CONFLICT"
    assert shown["status"] == "OPEN"
    assert shown["severity"] == "HIGH"
    assert shown["patient_id"] == "E-1"
    assert shown["attribute"] == "Patient.birthDate"
    assert len(shown["assertions"]) == 2
    for shown_assertion, assertion in zip(shown["assertions"], alert.assertions, strict=True):
        assert {"source", "value", "event_time", "source_record_id"} <= set(shown_assertion)
        assert shown_assertion["source"] == assertion.source_system
        assert shown_assertion["value"] == assertion.value
        assert shown_assertion["source_record_id"] == assertion.provenance.source_record_id
        assert datetime.fromisoformat(shown_assertion["event_time"]) == (
            assertion.provenance.event_time
        )
    # it is plain JSON
    assert json.loads(json.dumps(shown)) == shown


def test_alert_json_of_a_resolved_alert() -> None:
    resolved = apply_conflict_event(_opened(), _event("RESOLVED", 2), now=_at(9))
    assert resolved is not None
    shown = alert_json(resolved.alert)
    assert shown["status"] == "RESOLVED"
    assert datetime.fromisoformat(shown["resolved_at"]) == _at(9)


def test_alert_line_is_one_line() -> None:
    alert = _opened().alert
    line = alert_line(alert)
    assert "\n" not in line
    assert line.splitlines() == [line]
    assert "E-1" in line
    assert "Patient.birthDate" in line
    assert "1980-01-01 (a) vs 1980-02-02 (b)" in line


def test_alert_line_stays_one_line_when_values_hold_line_breaks() -> None:
    """Values come from the sources; a line break in one must not start a forged line."""
    assertions = (
        _assertion("a", "x", display="Ana\n12:00:00 RESOLVED LOW E-9 forged"),
        _assertion("b\r\nc", "y"),
    )
    record = apply_conflict_event(None, _event("OPENED", 1, assertions=assertions), now=_at(0))
    assert record is not None
    line = alert_line(record.alert)
    assert line.splitlines() == [line]
