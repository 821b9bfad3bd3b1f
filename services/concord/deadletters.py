"""The dead-letter contract shared by every stage: what was rejected, why, and the original bytes.

Reason codes are a closed catalogue (docs/deadletters.md): metrics label by code, and the
reason text names fields and rules, never values, so no PHI reaches the dead-letter topic's
reason or the logs. The same codes name the warnings a record is accepted with when only an
element of it is at fault (`IngestionWarning`): whether a code rejects the record or warns is
the rule docs/deadletters.md states per code.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime

from concord.events.models import DeadLetter, Header, IngestionWarning
from concord.events.raw import RawEvent

REASON_CODES: dict[str, str] = {
    "EMPTY_PAYLOAD": "The record has no value (a tombstone or an empty message).",
    "PAYLOAD_TOO_LARGE": "The record is larger than the configured maximum.",
    "MISSING_SOURCE_HEADER": "The Kafka header 'source' (the sending system) is absent or empty.",
    "INVALID_SOURCE_HEADER": "The 'source' header is not printable UTF-8 of 1-128 characters.",
    "EMPTY_BUNDLE": "A Bundle with no entries: nothing to ingest.",
    "MALFORMED_JSON": "The value is not UTF-8 JSON.",
    "NOT_FHIR": "The JSON is not a FHIR resource (no resourceType, or not an object).",
    "UNSUPPORTED_RESOURCE_TYPE": "A resourceType that is not a FHIR R4 resource type.",
    "FHIR_INVALID": "The resource breaks FHIR R4 rules; location names the element.",
    "MISSING_RESOURCE_ID": "The resource has no id, so its versions cannot be told apart.",
    "MISSING_PATIENT_REFERENCE": "A clinical resource does not reference the Patient it is about.",
    "UNRESOLVED_REFERENCE": "A urn:uuid, urn:oid or #contained reference names nothing present.",
    "DATETIME_WITHOUT_ZONE": "A date-time with a time of day has no time-zone offset.",
    "CODE_WITHOUT_SYSTEM": "A coding carries a code but no code system.",
    "INVALID_CODE": "A LOINC, SNOMED CT, ICD-10-CM, RxNorm, NDC or CPT code is malformed.",
    "CONTROL_CHARACTER": "A string held NUL or another C0 control character (not tab, LF, CR).",
    "HL7_MALFORMED": "The bytes are not an HL7 v2 message (no MSH, bad separators or charset).",
    "HL7_UNSUPPORTED_VERSION": "MSH-12 is not an HL7 v2 version from 2.3 to 2.8.2.",
    "HL7_UNSUPPORTED_MESSAGE_TYPE": "A message type or trigger Concord does not ingest (MSH-9).",
    "HL7_INVALID": "A required segment or field is missing or malformed; location names it.",
    "HL7_TIME_ZONE_UNKNOWN": "A timestamp has no offset and the source has no configured zone.",
    "CLAIM_INVALID": "A claim line breaks its JSON schema or rules; reason names every path.",
    "INGESTION_FAILED": "Ingestion raised an unexpected error (a Concord bug); kept for replay.",
    "MISSING_ENTERPRISE_ID": "Before identity matching: a Patient without an enterprise id.",
    "NORMALIZATION_FAILED": "Normalization raised an unexpected error (a Concord bug); kept.",
    "UNDECODABLE_EVENT": "An Avro event between stages could not be decoded.",
    "CONFLICTS_FAILED": "The conflicts stage failed on this record alone, not transiently; kept.",
    "ALERTING_FAILED": "The alerting stage failed on this record alone, not transiently; kept.",
    "NARRATIVE_FAILED": "The narrative stage failed on this document alone (a Concord bug); kept.",
    "OUTPUT_TOO_LARGE": "What a stage made of the record is over the producer's size limit.",
}


@dataclass(frozen=True)
class Rejection:
    """A core's verdict that a record cannot go on. reason must not contain input values."""

    reason_code: str
    reason: str
    location: str | None = None

    def __post_init__(self) -> None:
        if self.reason_code not in REASON_CODES:
            raise ValueError(f"unknown dead-letter reason code {self.reason_code!r}")


def warning(reason_code: str, message: str, location: str | None = None) -> IngestionWarning:
    """An element-level problem a record is accepted with. message must not contain input
    values: it names the rule and what became of the element."""
    if reason_code not in REASON_CODES:
        raise ValueError(f"unknown reason code {reason_code!r}")
    return IngestionWarning(reason_code=reason_code, location=location, message=message)


def as_warning(problem: Rejection, outcome: str) -> IngestionWarning:
    """A problem that would have rejected a record, as a warning on the record that is accepted
    anyway: same code and location, the reason followed by what became of the element."""
    return warning(problem.reason_code, f"{problem.reason}: {outcome}", problem.location)


def dead_letter(raw: RawEvent, rejection: Rejection, *, stage: str, at: datetime) -> DeadLetter:
    return DeadLetter(
        stage=stage,
        reason_code=rejection.reason_code,
        reason=rejection.reason,
        location=rejection.location,
        original_topic=raw.topic,
        original_partition=raw.partition,
        original_offset=raw.offset,
        original_key=raw.key,
        original_value=raw.value,
        original_headers=tuple(Header(key=k, value=v) for k, v in raw.headers),
        failed_at=at,
    )


def fingerprint(value: bytes) -> str:
    """Bytes named without their content: length and SHA-256, enough to tell whether a record
    found at a letter's coordinates is the one that failed."""
    return f"{len(value)} bytes, SHA-256 {hashlib.sha256(value).hexdigest()}"


PAYLOAD_NOT_KEPT = "not kept: the letter would be over the producer's limit"


def payload_not_kept(letter: DeadLetter) -> bool:
    """Whether without_payload left the original out of this letter: there is nothing to
    replay, the record must be read at its coordinates."""
    return PAYLOAD_NOT_KEPT in letter.reason


def without_payload(letter: DeadLetter, *, limit: int, everything: bool = False) -> DeadLetter:
    """The letter without the original bytes, for when with them it would be over the
    producer's limit of `limit` bytes: the coordinates stay, and the reason says what was left
    out (the value by length and SHA-256), so that the record can be read at its coordinates
    while the topic retains it. `everything` also leaves out the key and headers (a letter
    whose key or headers alone are too large); the key, which names a patient, by length
    only."""
    left_out: list[str] = []
    if letter.original_value is not None:
        left_out.append(f"the original value ({fingerprint(letter.original_value)})")
    update: dict[str, object] = {"original_value": None}
    if everything:
        if letter.original_key is not None:
            left_out.append(f"the original key ({len(letter.original_key)} bytes)")
        if letter.original_headers:
            left_out.append(f"the original headers ({len(letter.original_headers)})")
        update.update(original_key=None, original_headers=())
    note = f"; {', '.join(left_out) or 'nothing'} {PAYLOAD_NOT_KEPT} of {limit} bytes"
    update["reason"] = letter.reason + note
    return letter.model_copy(update=update)
