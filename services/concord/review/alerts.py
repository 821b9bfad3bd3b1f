"""Alerts as reviewers see them, pure: the list's filters and cursor, what a list row and a
detail show, and what a decision sends on concord.resolutions.

A list row shows no patient data beyond the enterprise id (no values, names or source
identifiers): the `sre` and list views stay free of PHI. The detail has the disagreeing values
side by side, each with its provenance back to the raw record, and the policy's proposal.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from datetime import datetime, timedelta
from typing import Annotated, Literal

import orjson
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, StringConstraints

from concord.events.models import (
    Alert,
    AlertKind,
    AlertStatus,
    AttributeClass,
    ConflictResolution,
    FactStatus,
    ResolutionDecision,
    Severity,
)

MAX_PAGE = 200
# Why a reviewer dismisses an alert: a code from this list, never free text on the wire (a
# comment can say more, and stays in the review service's database).
DISMISSAL_REASONS: dict[str, str] = {
    "SAME_MEANING": "the values mean the same (coding, units or precision differ)",
    "NOT_CLINICALLY_SIGNIFICANT": "a real difference, too small to matter clinically",
    "CORRECTED_AT_SOURCE": "a source has already corrected its record",
    "DUPLICATE_ALERT": "another alert covers the same disagreement",
    "TEST_RECORD": "a test or training record, not a patient",
    "OTHER": "another reason, given in a comment",
}
DismissalReason = Literal[
    "SAME_MEANING",
    "NOT_CLINICALLY_SIGNIFICANT",
    "CORRECTED_AT_SOURCE",
    "DUPLICATE_ALERT",
    "TEST_RECORD",
    "OTHER",
]
# PostgreSQL's text cannot hold NUL; a user name also goes into the audit trail, which takes no
# control characters at all.
NO_NUL = r"^[^\x00]*$"
NO_CONTROL = r"^[^\x00-\x1f\x7f]*$"
UserName = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=200, pattern=NO_CONTROL),
]
CommentText = Annotated[
    str, StringConstraints(strip_whitespace=True, min_length=1, max_length=4000, pattern=NO_NUL)
]
Value = Annotated[str, StringConstraints(min_length=1, max_length=2000, pattern=NO_NUL)]


class Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", hide_input_in_errors=True)


# --- the list --------------------------------------------------------------------------------


class InvalidCursor(ValueError):
    """A cursor this service did not hand out (or one from another filter)."""


class AlertFilter(Model):
    """Which alerts a list shows; every field narrows it (a tuple: any of its values)."""

    status: tuple[AlertStatus, ...] = ()
    kind: tuple[AlertKind, ...] = ()
    attribute_class: tuple[AttributeClass, ...] = ()
    severity: tuple[Severity, ...] = ()
    source: tuple[str, ...] = ()
    assignee: str | None = None
    min_age: timedelta | None = None  # opened at least this long ago
    max_age: timedelta | None = None  # opened at most this long ago


class Position(Model):
    """Where a page ends: the list is ordered by (opened_at, alert_id)."""

    opened_at: AwareDatetime
    alert_id: str


def encode_cursor(position: Position, alert_filter: AlertFilter) -> str:
    """An opaque cursor: the position and a digest of the filter it belongs to."""
    body = {
        "o": position.opened_at.isoformat(),
        "a": position.alert_id,
        "f": _filter_digest(alert_filter),
    }
    return base64.urlsafe_b64encode(orjson.dumps(body)).decode().rstrip("=")


def decode_cursor(cursor: str, alert_filter: AlertFilter) -> Position:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        body = orjson.loads(raw)
        position = Position(opened_at=datetime.fromisoformat(body["o"]), alert_id=body["a"])
        digest = body["f"]
    except (binascii.Error, ValueError, KeyError, TypeError) as error:
        raise InvalidCursor("the cursor is not one this service handed out") from error
    if digest != _filter_digest(alert_filter):
        raise InvalidCursor("the cursor belongs to a list with other filters")
    if "\x00" in position.alert_id:  # never handed out: PostgreSQL's text cannot hold it
        raise InvalidCursor("the cursor is not one this service handed out")
    return position


def _filter_digest(alert_filter: AlertFilter) -> str:
    encoded = orjson.dumps(alert_filter.model_dump(mode="json"), option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(encoded).hexdigest()[:16]


class ReviewState(Model):
    """The review service's own state of an alert."""

    acknowledged_by: str | None = None
    acknowledged_at: AwareDatetime | None = None
    assignee: str | None = None
    assigned_by: str | None = None
    assigned_at: AwareDatetime | None = None


class AlertSummary(Model):
    """A list row: no values, names or source identifiers; the enterprise id only."""

    alert_id: str
    kind: AlertKind
    status: AlertStatus
    severity: Severity
    patient_id: str = Field(description="The enterprise patient id (no other identifier)")
    attribute: str
    attribute_class: AttributeClass
    sources: tuple[str, ...] = Field(description="The source systems that assert a value")
    opened_at: AwareDatetime
    updated_at: AwareDatetime
    age_seconds: int
    revision: int
    assignee: str | None = None
    acknowledged: bool = False


class AlertPage(Model):
    alerts: tuple[AlertSummary, ...]
    next_cursor: str | None = Field(
        description="Pass as `cursor` for the next page; null on the last page"
    )


def summary_of(alert: Alert, review: ReviewState | None, *, now: datetime) -> AlertSummary:
    return AlertSummary(
        alert_id=alert.alert_id,
        kind=alert.kind,
        status=alert.status,
        severity=alert.severity,
        patient_id=alert.patient_id,
        attribute=alert.attribute,
        attribute_class=alert.attribute_class,
        sources=tuple(sorted({a.source_system for a in alert.assertions})),
        opened_at=alert.opened_at,
        updated_at=alert.updated_at,
        age_seconds=max(0, int((now - alert.opened_at).total_seconds())),
        revision=alert.revision,
        assignee=review.assignee if review else None,
        acknowledged=bool(review and review.acknowledged_at),
    )


# --- the detail ------------------------------------------------------------------------------


class RawRecordRef(Model):
    """Where a value came from: the raw record on its topic, and the source's own ids."""

    topic: str
    partition: int
    offset: int
    source_record_id: str
    source_record_version: str | None
    received_time: AwareDatetime
    event_time: AwareDatetime
    event_time_basis: str | None
    payload_sha256: str


class SourceValue(Model):
    source_system: str
    value: str | None
    display: str | None
    unit: str | None
    status: FactStatus
    effective_time: AwareDatetime | None
    fact_id: str
    provenance: RawRecordRef


class Comment(Model):
    author: str
    written_at: AwareDatetime
    body: str


class HistoryEntry(Model):
    revision: int
    status: str
    changed_at: AwareDatetime
    reason: str


class DecisionRecord(Model):
    resolution_id: str
    decision: ResolutionDecision
    chosen_value: str | None
    reason_code: str | None
    overrules: bool
    decided_by: str
    decided_at: AwareDatetime


class AlertDetail(Model):
    """An alert with PHI: the values side by side with their provenance."""

    summary: AlertSummary
    values: tuple[SourceValue, ...]
    proposed_value: str | None
    proposed_reason: str | None
    stale_source: str | None
    review: ReviewState
    comments: tuple[Comment, ...]
    history: tuple[HistoryEntry, ...]
    decisions: tuple[DecisionRecord, ...]


def values_of(alert: Alert) -> tuple[SourceValue, ...]:
    return tuple(
        SourceValue(
            source_system=a.source_system,
            value=a.value,
            display=a.display,
            unit=a.unit,
            status=a.status,
            effective_time=a.effective_time,
            fact_id=a.fact_id,
            provenance=RawRecordRef(
                topic=a.provenance.raw_topic,
                partition=a.provenance.raw_partition,
                offset=a.provenance.raw_offset,
                source_record_id=a.provenance.source_record_id,
                source_record_version=a.provenance.source_record_version,
                received_time=a.provenance.received_time,
                event_time=a.provenance.event_time,
                event_time_basis=a.provenance.event_time_basis,
                payload_sha256=a.provenance.payload_sha256,
            ),
        )
        for a in sorted(alert.assertions, key=lambda a: a.source_system)
    )


# --- decisions -------------------------------------------------------------------------------


class NotDecidable(ValueError):
    """The alert cannot take this decision now (names ids and states only)."""


class ResolveRequest(Model):
    """Resolve a conflict: accept the policy's proposal, choose one of the sources' values, or
    enter a correction (a value none of them sent)."""

    decision: Literal["accept", "choose", "correct"]
    value: Value | None = Field(None, description="The value that should stand (choose, correct)")
    comment: CommentText | None = None


class DismissRequest(Model):
    """Dismiss: not a disagreement that needs a decision, for a reason from the list."""

    reason: DismissalReason
    comment: CommentText | None = None


class AssignRequest(Model):
    assignee: UserName


class CommentRequest(Model):
    body: CommentText


def resolution_for(
    alert: Alert,
    request: ResolveRequest | DismissRequest,
    *,
    by: str,
    at: datetime,
) -> ConflictResolution:
    """The decision to publish; NotDecidable when the alert cannot take it."""
    if alert.kind == "STALE":
        raise NotDecidable(
            f"alert {alert.alert_id} is a stale record: it resolves when its source confirms "
            "or updates what it said"
        )
    if alert.status in ("RESOLVED", "DISMISSED"):
        raise NotDecidable(f"alert {alert.alert_id} is {alert.status.lower()} already")
    decision: ResolutionDecision
    chosen: str | None = None
    reason: str | None = None
    if isinstance(request, DismissRequest):
        if request.reason == "OTHER" and request.comment is None:
            raise NotDecidable("a dismissal for reason OTHER needs a comment that says why")
        decision, reason = "DISMISSED", request.reason
    elif request.decision == "accept":
        if request.value is not None:
            raise NotDecidable("accept takes no value: it is the policy's proposal")
        if alert.proposed_value is None:
            raise NotDecidable(f"alert {alert.alert_id} has no proposal to accept")
        decision = "ACCEPTED_PROPOSAL"
    else:
        if request.value is None:
            raise NotDecidable(f"{request.decision} needs the value that should stand")
        sent = {a.value for a in alert.assertions}
        if request.decision == "choose" and request.value not in sent:
            raise NotDecidable("choose takes one of the sources' values; a new value is correct")
        if request.decision == "correct" and request.value in sent:
            raise NotDecidable("that value is one of the sources': choose it instead")
        decision, chosen = "CHOSE_VALUE", request.value
    return ConflictResolution(
        resolution_id=hashlib.sha256(
            f"{alert.alert_id}\x1f{alert.revision}\x1f{by}\x1f{at.isoformat()}".encode()
        ).hexdigest()[:32],
        conflict_id=alert.alert_id,
        patient_id=alert.patient_id,
        attribute=alert.attribute,
        decision=decision,
        chosen_value=chosen,
        resolved_by=by,
        resolved_at=at,
        reason_code=reason,
    )


def overrules(alert: Alert, resolution: ConflictResolution) -> bool:
    """Whether a decision overrules the policy's proposal (a correction, in the metrics)."""
    return resolution.decision == "CHOSE_VALUE" and resolution.chosen_value != alert.proposed_value
