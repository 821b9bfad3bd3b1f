"""An alert's life, pure: one alert per conflict, moved by the conflict's events.

A conflict event already applied (its revision at or below the one the alert has seen) changes
nothing, so redelivered conflict events never produce a second alert or a second publication.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from concord.events.models import Alert, AlertStatus, ConflictEvent


@dataclass(frozen=True)
class AlertRecord:
    """An alert as stored: the alert and the last conflict revision it reflects."""

    alert: Alert
    conflict_revision: int


def apply_conflict_event(
    current: AlertRecord | None, event: ConflictEvent, *, now: datetime
) -> AlertRecord | None:
    """The alert after the event, or None when the event was already applied."""
    if current is not None and event.revision <= current.conflict_revision:
        return None
    status: AlertStatus
    if event.kind == "RESOLVED":
        status = "DISMISSED" if event.decision == "DISMISSED" else "RESOLVED"
    elif current is None or current.alert.status in ("RESOLVED", "DISMISSED"):
        status = "OPEN"
    else:
        status = current.alert.status
    alert = Alert(
        alert_id=event.conflict_id,
        revision=1 if current is None else current.alert.revision + 1,
        kind="STALE" if _stale(current, event) else "CONFLICT",
        status=status,
        patient_id=event.patient_id,
        attribute=event.attribute,
        attribute_class=event.attribute_class,
        severity=event.severity,
        assertions=event.assertions,
        proposed_value=event.proposed_value,
        proposed_reason=event.proposed_reason,
        opened_at=event.detected_at if current is None else current.alert.opened_at,
        updated_at=now,
        resolved_at=now if status in ("RESOLVED", "DISMISSED") else None,
        stale_source=event.stale_source or (current.alert.stale_source if current else None),
    )
    return AlertRecord(alert=alert, conflict_revision=event.revision)


def _stale(current: AlertRecord | None, event: ConflictEvent) -> bool:
    """A stale record's alert stays one when it resolves (a RESOLVED event says no kind)."""
    stale_before = current is not None and current.alert.kind == "STALE"
    return event.kind == "STALE" or event.stale_source is not None or stale_before


def change_reason(event: ConflictEvent) -> str:
    """Why the alert changed, for its history (no PHI: kinds and counts only)."""
    sources = len(event.assertions)
    return f"conflict {event.kind.lower()} (revision {event.revision}, {sources} sources)"
