"""HL7 v2 ingestion, pure: one ER7 message in, an IngestedRecord or a Rejection out.

Versions 2.3 to 2.8.2. Message types: every ADT trigger (PID demographics, AL1 allergies,
DG1 diagnoses; A40 merges with MRG), ORU^R01 results (OBR/OBX), RDE^O11/O25 pharmacy orders
(RXE) and RAS^O17 administrations (RXA). The payload is the message itself, decoded from the
character set MSH-18 names and re-encoded as UTF-8, with segments ended by carriage returns:
nothing is dropped, Z-segments included, and normalization reads it with the same reader.

What is checked is what a consumer of these facts relies on: MSH-7 and MSH-10 (the record's
version and id), the segments each type must carry, a patient identifier in PID-3, coded
fields (OBX-3, AL1-3, DG1-3, RXE-2, RXA-5) with a coding system and well-formed codes for the
systems Concord knows, numeric results that are numbers, and every timestamp read. A
timestamp without an offset is in the source's configured zone; a source without one is
rejected rather than guessed.

A message is rejected only for what it relies on as a whole: its header, a segment its type
must carry, the patient identifier, the source's zone. A field at fault is a warning the record
carries (docs/deadletters.md): a code without a coding system is kept as a local, unmapped
code, a malformed one as sent (unmapped); a result, timestamp or coded segment that cannot be
read is not read; a missing EVN leaves the event time to MSH-7. PID and the other segments'
facts still flow. A NUL or another C0 control character, sent as it is or hex-escaped
(`\\X00\\`), is never read (the reader drops it) and is a warning; in MSH, which is read as
sent, MSH-10 (the record's id) holding one rejects the message.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, tzinfo
from zoneinfo import ZoneInfo

from concord.deadletters import Rejection, warning
from concord.events.models import IngestedRecord, IngestionWarning
from concord.events.raw import RawEvent
from concord.hl7v2 import er7
from concord.ingestion.codes import CPT, ICD10_CM, LOINC, NDC, RXNORM, SNOMED_CT, check_coding
from concord.ingestion.common import check_envelope, control_warning, ingested_record
from concord.ingestion.record_time import HL7V2_TIME_FIELDS, RecordTime, hl7v2_basis
from concord.ingestion.subjects import hl7_patient
from concord.text import CONTROL_CHARACTERS

VERSIONS = frozenset(
    {"2.3", "2.3.1", "2.4", "2.5", "2.5.1", "2.6", "2.7", "2.7.1", "2.8"} | {"2.8.1", "2.8.2"}
)
# Message type -> accepted triggers (None: every trigger) and the segments it must carry.
MESSAGE_TYPES: dict[str, tuple[frozenset[str] | None, tuple[str, ...]]] = {
    "ADT": (None, ("PID",)),
    "ORU": (frozenset({"R01"}), ("PID", "OBR", "OBX")),
    "RDE": (frozenset({"O11", "O25"}), ("PID", "ORC", "RXE")),
    "RAS": (frozenset({"O17"}), ("PID", "ORC", "RXA")),
    # Documents with their content (issue 18): original, status change, addendum, edit and
    # replacement; the TXA says the document, its OBX lines are the text. The notifications
    # without content (T01, T03, T05, T07, T09, T11) carry nothing to read.
    "MDM": (frozenset({"T02", "T04", "T06", "T08", "T10"}), ("PID", "TXA")),
}
# HL7 table 0396 names of the code systems check_coding knows.
CODING_SYSTEMS = {
    "LN": LOINC,
    "SCT": SNOMED_CT,
    "SNM": SNOMED_CT,
    "I10": ICD10_CM,
    "I10C": ICD10_CM,
    "ICD10CM": ICD10_CM,
    "RXNORM": RXNORM,
    "NDC": NDC,
    "CPT": CPT,
    "C4": CPT,
}
# Segments a trigger must carry besides those of its message type.
TRIGGER_SEGMENTS: dict[str, tuple[str, ...]] = {"ADT^A40": ("MRG",)}
# Segments a type should carry but can be read without (a warning when absent): ADT's EVN
# gives the event time, which MSH-7 gives too.
EXPECTED_SEGMENTS: dict[str, tuple[str, ...]] = {"ADT": ("EVN",)}
# (segment, field) of the coded element each segment is about.
CODED_FIELDS = {"OBX": 3, "AL1": 3, "DG1": 3, "RXE": 2, "RXA": 5}
# Of those, the ones that must be coded: AL1/DG1 may name an allergen or diagnosis by text.
CODE_REQUIRED = frozenset({"OBX", "RXE", "RXA"})
# (segment, field) of the timestamps read downstream.
TIMESTAMP_FIELDS = {
    "EVN": (2, 6),
    "PID": (7, 29),
    "OBR": (7, 8, 14, 22),
    "OBX": (14, 19),
    "DG1": (5,),
    "AL1": (6,),
    "RXA": (3, 4),
    "SPM": (17,),
}
_TYPE_NAME = re.compile(r"(?a)^[A-Z0-9]{3}$")
_NUMBER = re.compile(r"(?a)^[+-]?(\d+(\.\d*)?|\.\d+)$")

# Codes longer than this are checked each time rather than remembered (_coding_problem).
_REMEMBERED_CODE_LENGTH = 64

ZoneLookup = Callable[[str], ZoneInfo | None]
# A message's timestamps read so far: (value, zone it was read in) -> the time in UTC, or None
# when it is not one. A message repeats its times (MSH-7 in EVN-2, OBR-7 in each OBX-14), and
# the event time's field is read again with the others; each is parsed once.
Times = dict[tuple[str, tzinfo | None], datetime | None]


def no_zones(_source: str) -> ZoneInfo | None:
    return None


def ingest_hl7v2(
    raw: RawEvent, *, max_payload_bytes: int, zone_of: ZoneLookup = no_zones
) -> list[IngestedRecord] | Rejection:
    source = check_envelope(raw, max_payload_bytes=max_payload_bytes)
    if isinstance(source, Rejection):
        return source
    try:
        message = er7.parse(raw.value or b"")
    except er7.Er7Error as exc:
        return Rejection("HL7_MALFORMED", exc.reason, location=exc.location)
    header = _check_header(message)
    if isinstance(header, Rejection):
        return header
    message_type, control_id = header
    zone = zone_of(source)
    times: Times = {}
    event_time = _event_time(message, zone, times)
    if isinstance(event_time, Rejection):
        return event_time
    warnings = _check_content(message, message_type.partition("^")[0], zone, times)
    if isinstance(warnings, Rejection):
        return warnings
    return [
        ingested_record(
            raw,
            source=source,
            record_format="HL7V2",
            resource_type=message_type,
            record_ref=f"{message_type}/{control_id}",
            version=message.msh.raw(7).strip(),
            payload=message.text.encode("utf-8"),
            event_time=event_time.moment,
            event_time_basis=event_time.basis,
            source_time_zone=zone.key if zone is not None else None,
            patient_ref=hl7_patient(message),
            warnings=warnings,
        )
    ]


def _check_header(message: er7.Er7Message) -> tuple[str, str] | Rejection:
    msh = message.msh
    version = msh.value(12)
    if version not in VERSIONS:
        return Rejection(
            "HL7_UNSUPPORTED_VERSION",
            f"MSH-12 must be an HL7 v2 version from 2.3 to 2.8.2 ({len(VERSIONS)} accepted)",
            location="MSH-12",
        )
    kind, trigger = msh.value(9, 1), msh.value(9, 2)
    if not (_TYPE_NAME.fullmatch(kind) and _TYPE_NAME.fullmatch(trigger)):
        return Rejection(
            "HL7_INVALID", "MSH-9 must name a message type and trigger event", location="MSH-9"
        )
    accepted = MESSAGE_TYPES.get(kind)
    if accepted is None or (accepted[0] is not None and trigger not in accepted[0]):
        return Rejection(
            "HL7_UNSUPPORTED_MESSAGE_TYPE", f"{kind}^{trigger} is not ingested", location="MSH-9"
        )
    control_id = msh.raw(10).strip()
    if not control_id:
        return Rejection(
            "HL7_INVALID", "MSH-10, the message control id, is empty", location="MSH-10"
        )
    if CONTROL_CHARACTERS.search(control_id):
        # The record's identity: read as sent (er7), so refused rather than read differently.
        return Rejection(
            "HL7_INVALID",
            "MSH-10, the message control id, holds a control character",
            location="MSH-10",
        )
    message_type = f"{kind}^{trigger}"
    for name in (*accepted[1], *TRIGGER_SEGMENTS.get(message_type, ())):
        if message.first(name) is None:
            return Rejection(
                "HL7_INVALID", f"{message_type} must carry the {name} segment", location=name
            )
    return message_type, control_id


def _event_time(
    message: er7.Er7Message, zone: ZoneInfo | None, times: Times
) -> RecordTime | Rejection:
    """When the source says the change happened: EVN-6, else EVN-2, else MSH-7
    (record_time.HL7V2_TIME_FIELDS), with the field it came from."""
    msh = message.msh
    if not msh.raw(7).strip():
        return Rejection("HL7_INVALID", "MSH-7, the message date/time, is empty", location="MSH-7")
    evn = message.first("EVN")
    for name, field in HL7V2_TIME_FIELDS:
        segment = msh if name == "MSH" else evn if name == "EVN" else message.first(name)
        if segment is None:
            continue
        value = segment.value(field).strip()
        if not value:
            continue
        moment = _timestamp(segment, field, zone, value, times)
        if isinstance(moment, Rejection):
            return moment
        if moment is not None:
            return RecordTime(moment, hl7v2_basis(name, field))
    return Rejection("HL7_INVALID", "MSH-7 is not a timestamp", location="MSH-7")


def _check_content(
    message: er7.Er7Message, kind: str, zone: ZoneInfo | None, times: Times
) -> list[IngestionWarning] | Rejection:
    """The warnings the message is accepted with, or what rejects it: a PID without an
    identifier (the message is about nobody Concord can name), or a local time the source's
    zone is needed for (every local time of the message would be guessed)."""
    pid = message.first("PID")
    if pid is not None and not any(value.strip() for value in pid.values(3)):
        return Rejection(
            "HL7_INVALID", "PID-3 holds no patient identifier", location=pid.location(3)
        )
    warnings = [
        warning(
            "HL7_INVALID",
            f"{kind} must carry the {name} segment: the event time is MSH-7's",
            location=name,
        )
        for name in EXPECTED_SEGMENTS.get(kind, ())
        if message.first(name) is None
    ]
    # A component both sent with a control character and escaping one is named once.
    controls = dict.fromkeys([*message.stripped, *er7.escaped_controls(message)])
    warnings += [control_warning(location) for location in controls]
    for segment in message.segments:
        field = CODED_FIELDS.get(segment.name)
        if field is not None:
            warnings += _check_coded(segment, field)
        if segment.name == "OBX":
            warnings += _check_result(segment)
        for ts_field in TIMESTAMP_FIELDS.get(segment.name, ()):
            value = segment.value(ts_field).strip()
            if not value:  # most of these fields are not sent
                continue
            problem = _check_timestamp(segment, ts_field, value, zone, times)
            if isinstance(problem, Rejection):
                return problem
            if problem is not None:
                warnings.append(problem)
    return warnings


def _check_timestamp(
    segment: er7.Segment, field: int, value: str, zone: ZoneInfo | None, times: Times
) -> IngestionWarning | Rejection | None:
    """The field's `value` (stripped, not empty) read as a timestamp."""
    # A date (birth date, YYYYMMDD or shorter) is not an instant: it needs no zone.
    moment = _timestamp(segment, field, zone if len(value) > 8 else UTC, value, times)
    if isinstance(moment, Rejection):
        return moment
    if moment is None:
        return warning(
            "HL7_INVALID",
            "the field is not an HL7 timestamp: it is not read",
            location=segment.location(field),
        )
    return None


def _check_coded(segment: er7.Segment, field: int) -> list[IngestionWarning]:
    code = segment.value(field, 1).strip()
    if not code:
        if segment.name not in CODE_REQUIRED:
            return []
        return [
            warning(
                "HL7_INVALID",
                f"{segment.name}-{field} must carry a code: the {segment.name} segment is not read",
                location=segment.location(field, 1),
            )
        ]
    system = segment.value(field, 3).strip()
    if not system:
        return [
            warning(
                "CODE_WITHOUT_SYSTEM",
                f"{segment.name}-{field} has a code but no coding system (component 3): kept "
                "as a local, unmapped code",
                location=segment.location(field, 3),
            )
        ]
    known = CODING_SYSTEMS.get(system.upper())
    problem = _coding_problem(known, code) if known is not None else None
    if problem is None:
        return []
    return [
        warning(
            problem[0],
            f"{segment.name}-{field}: {problem[1]}: kept as sent, an unmapped code",
            location=segment.location(field, 1),
        )
    ]


def _check_result(obx: er7.Segment) -> list[IngestionWarning]:
    value_type = obx.value(2).strip()
    values = obx.values(5)
    warnings = []
    if any(v.strip() for v in values) and not value_type:
        warnings.append(
            warning(
                "HL7_INVALID",
                "OBX-2 must give the value type of OBX-5: the result is not read",
                location=obx.location(2),
            )
        )
    if value_type == "NM" and not all(_NUMBER.fullmatch(v.strip()) for v in values if v.strip()):
        warnings.append(
            warning(
                "HL7_INVALID",
                "OBX-5 of value type NM is not a number: the result is not read",
                location=obx.location(5),
            )
        )
    if not obx.value(11).strip():
        warnings.append(
            warning(
                "HL7_INVALID",
                "OBX-11, the result status, is empty: the result is read without a status",
                location=obx.location(11),
            )
        )
    return warnings


def _timestamp(
    segment: er7.Segment, field: int, zone: tzinfo | None, value: str, times: Times
) -> datetime | Rejection | None:
    """The field's `value` (stripped, as the caller read it) as a UTC time."""
    key = (value, zone)
    if key in times:
        return times[key]
    moment = er7.parse_timestamp(value)
    if moment is None:
        times[key] = None
        return None
    if moment.tzinfo is None:
        if zone is None:
            return Rejection(
                "HL7_TIME_ZONE_UNKNOWN",
                "a timestamp has no offset and no time zone is configured for the source",
                location=segment.location(field),
            )
        moment = moment.replace(tzinfo=zone)
    try:
        utc: datetime | None = moment.astimezone(UTC)
    except OverflowError:  # past year 9999 (or before year 1) in UTC: not a time
        utc = None
    times[key] = utc
    return utc


def _coding_problem(system: str, code: str) -> tuple[str, str] | None:
    """check_coding of a code in a system it knows; remembered (_checked_coding) unless the
    code is longer than any real one."""
    if len(code) > _REMEMBERED_CODE_LENGTH:
        return check_coding({"system": system, "code": code})
    return _checked_coding(system, code)


@functools.lru_cache(maxsize=4096)
def _checked_coding(system: str, code: str) -> tuple[str, str] | None:
    """A feed sends the same few hundred codes over and over (a lab's LOINC panel, its
    allergens): each is checked once (its check digit) rather than in every message."""
    return check_coding({"system": system, "code": code})


def zones_from(mapping: Mapping[str, str], default: str | None) -> ZoneLookup:
    """A ZoneLookup from the configured source → IANA zone names (validated here, at start)."""
    zones = {source: ZoneInfo(name) for source, name in mapping.items()}
    fallback = ZoneInfo(default) if default else None
    return lambda source: zones.get(source, fallback)
