"""When a record became true, read from the record itself, pure (docs/event-time.md).

A record's event time orders the versions of what a source said: the conflicts stage keeps a
source's assertion until a fact with a later event time replaces it. It must therefore come
from the record, never from when Concord happened to read it: two systems that publish the
same content (a bulk export mirrored by two EHRs) must give it the same event time, and a
later version of a record (a condition that has since abated) a later one.

Per format, in order of preference:

- FHIR: `meta.lastUpdated`; the Bundle entry's `response.lastModified`; the resource's own
  times by its type (`FHIR_TIMES`); the Bundle's `timestamp` (else its `meta.lastUpdated`);
  the arrival time.
- HL7 v2: EVN-6, EVN-2, MSH-7 (`HL7V2_TIME_FIELDS`, read by hl7v2.py with the source's zone).
- Claim lines: `adjudicated_at`, `submitted_at` (`CLAIM_TIME_FIELDS`).

Each time comes with its basis, the element it was read from (`Condition.recordedDate`,
`EVN-2`, `claim.adjudicated_at`), kept in the record's provenance; `arrival` says the record
carried no time and Concord's receipt time stands in for one (its facts are flagged).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from concord.ingestion.common import instant

ARRIVAL = "arrival"
META_LAST_UPDATED = "meta.lastUpdated"
ENTRY_LAST_MODIFIED = "Bundle.entry.response.lastModified"
BUNDLE_TIMESTAMP = "Bundle.timestamp"
BUNDLE_LAST_UPDATED = "Bundle.meta.lastUpdated"
# No record is written in the future: a time of the resource's own later than this after its
# arrival (a typo, a planned end) is skipped. A day covers clocks and zones set wrong.
FUTURE_TOLERANCE = timedelta(days=1)

# Element paths (dotted, no arrays) grouped in tiers: the first tier with a usable value
# decides, and within a tier the latest value does. A tier lists the times the record reports
# as having happened; the record cannot have been written before any of them, so the latest
# is when its content was last true as written (an abatement after the recorded date means
# the record was updated at least then).
Tier = tuple[str, ...]
FHIR_TIMES: dict[str, tuple[Tier, ...]] = {
    # Demographics carry no time of their own (birthDate is not when the record was written).
    "Patient": (),
    "Condition": (
        (
            "recordedDate",
            "onsetDateTime",
            "onsetPeriod.start",
            "onsetPeriod.end",
            "abatementDateTime",
            "abatementPeriod.start",
            "abatementPeriod.end",
        ),
    ),
    "AllergyIntolerance": (
        ("recordedDate", "lastOccurrence", "onsetDateTime", "onsetPeriod.start", "onsetPeriod.end"),
    ),
    "MedicationRequest": (("authoredOn",),),
    "MedicationStatement": (
        ("dateAsserted", "effectiveDateTime", "effectivePeriod.start", "effectivePeriod.end"),
    ),
    # `issued` is when this version was released: the version's own stamp, so it comes first.
    "Observation": (
        ("issued",),
        ("effectiveDateTime", "effectiveInstant", "effectivePeriod.start", "effectivePeriod.end"),
    ),
    "DiagnosticReport": (
        ("issued",),
        ("effectiveDateTime", "effectivePeriod.start", "effectivePeriod.end"),
    ),
    "Procedure": (("performedDateTime", "performedPeriod.start", "performedPeriod.end"),),
    "Immunization": (("recorded", "occurrenceDateTime"),),
    "Encounter": (("period.start", "period.end"),),
    # `date`: when the document reference was created.
    "DocumentReference": (("date",), ("context.period.start", "context.period.end")),
    "Claim": (("created",), ("billablePeriod.start", "billablePeriod.end")),
    "ExplanationOfBenefit": (("created",), ("billablePeriod.start", "billablePeriod.end")),
}
# Any other type: the elements FHIR resources commonly use for when they were written.
GENERIC_TIMES: tuple[Tier, ...] = (
    ("issued", "recorded", "recordedDate", "authoredOn", "dateAsserted", "created", "date"),
)

# HL7 v2 (segment, field) in order: event occurred, recorded date/time, message date/time.
HL7V2_TIME_FIELDS: tuple[tuple[str, int], ...] = (("EVN", 6), ("EVN", 2), ("MSH", 7))
# Claim-line fields in order: adjudicated, else submitted.
CLAIM_TIME_FIELDS: tuple[str, ...] = ("adjudicated_at", "submitted_at")

# FHIR date / dateTime / instant: YYYY, YYYY-MM, YYYY-MM-DD, or a date with a time of day,
# which must then carry a zone.
_FHIR_DATETIME = re.compile(
    r"(?a)(?P<year>\d{4})(-(?P<month>\d{2})(-(?P<day>\d{2})"
    r"(T(?P<time>\d{2}:\d{2}:\d{2}(\.\d+)?)(?P<zone>Z|[+-]\d{2}:\d{2})?)?)?)?"
)


@dataclass(frozen=True)
class RecordTime:
    """When a record became true, and the element that says so (its basis)."""

    moment: datetime
    basis: str


def fhir_moment(value: object) -> datetime | None:
    """A FHIR date, dateTime or instant as an aware datetime; None when absent or unusable.

    A partial date stands for the start of its period in UTC (`2024` → 2024-01-01T00:00Z,
    `2024-03` → 2024-03-01T00:00Z): FHIR allows it in a dateTime, and it says no more. A time
    of day without a zone is invalid FHIR and gives None: the zone is not guessed."""
    if not isinstance(value, str):
        return None
    match = _FHIR_DATETIME.fullmatch(value)
    if match is None:
        return None
    if match["time"] is not None:
        return instant(value) if match["zone"] is not None else None
    try:
        return datetime(
            int(match["year"]), int(match["month"] or 1), int(match["day"] or 1), tzinfo=UTC
        )
    except ValueError:  # not a calendar date (2024-02-30, year 0000)
        return None


def resource_time(
    resource: Mapping[str, Any], *, not_after: datetime | None = None
) -> RecordTime | None:
    """The resource's own time by its type's rule (FHIR_TIMES, else GENERIC_TIMES), with the
    element it came from (`Condition.abatementDateTime`); None when it carries none. Values
    later than `not_after` are skipped."""
    resource_type = str(resource.get("resourceType", ""))
    for tier in FHIR_TIMES.get(resource_type, GENERIC_TIMES):
        found: RecordTime | None = None
        for path in tier:
            moment = fhir_moment(_element(resource, path))
            if moment is None or (not_after is not None and moment > not_after):
                continue
            if found is None or moment > found.moment:
                found = RecordTime(moment, f"{resource_type}.{path}")
        if found is not None:
            return found
    return None


def bundle_record_time(bundle: Mapping[str, Any]) -> RecordTime | None:
    """When the Bundle was assembled (`timestamp`), else last updated: the fallback for the
    entries that carry no time of their own."""
    timestamp = instant(bundle.get("timestamp"))
    if timestamp is not None:
        return RecordTime(timestamp, BUNDLE_TIMESTAMP)
    meta = bundle.get("meta")
    updated = instant(meta.get("lastUpdated")) if isinstance(meta, dict) else None
    return RecordTime(updated, BUNDLE_LAST_UPDATED) if updated is not None else None


def fhir_record_time(
    resource: Mapping[str, Any],
    *,
    arrival: datetime,
    last_modified: datetime | None = None,
    bundle: RecordTime | None = None,
    deleted: bool = False,
) -> RecordTime:
    """A FHIR resource's event time: `meta.lastUpdated`, the Bundle entry's
    `response.lastModified` (`last_modified`), the resource's own times, the Bundle's time,
    else `arrival` (basis `arrival`).

    A delete's content, when it carries one, tells what was deleted, not when: its own times
    are not read (`deleted`)."""
    meta = resource.get("meta")
    updated = instant(meta.get("lastUpdated")) if isinstance(meta, dict) else None
    if updated is not None:
        return RecordTime(updated, META_LAST_UPDATED)
    if last_modified is not None:
        return RecordTime(last_modified, ENTRY_LAST_MODIFIED)
    own = None if deleted else resource_time(resource, not_after=arrival + FUTURE_TOLERANCE)
    return own or bundle or RecordTime(arrival, ARRIVAL)


def claim_record_time(line: Mapping[str, Any]) -> RecordTime | None:
    """A claim line's event time in UTC: adjudicated, else submitted (`claim.<field>`)."""
    for name in CLAIM_TIME_FIELDS:
        moment = instant(line.get(name))
        if moment is not None:
            return RecordTime(moment.astimezone(UTC), f"claim.{name}")
    return None


def hl7v2_basis(segment: str, field: int) -> str:
    """The basis of an HL7 v2 event time: `EVN-2`, `MSH-7`."""
    return f"{segment}-{field}"


def _element(resource: Mapping[str, Any], path: str) -> object:
    node: object = resource
    for name in path.split("."):
        if not isinstance(node, dict):
            return None
        node = node.get(name)
    return node
