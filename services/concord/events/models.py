"""Pydantic twins of the Avro schemas in schemas/: one model per record, field for field.

tests/unit/test_contracts.py proves each twin and its schema agree in both directions.
"""

from __future__ import annotations

from typing import Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict

RecordFormat = Literal["FHIR_R4", "HL7V2", "CLAIM"]
RecordOperation = Literal["UPSERT", "DELETE"]
AttributeClass = Literal[
    "DEMOGRAPHICS", "ALLERGY", "MEDICATION", "CONDITION", "LABORATORY", "ONCOLOGY"
]
FactStatus = Literal["ASSERTED", "DELETED", "ENTERED_IN_ERROR", "REFUTED"]
ConflictEventKind = Literal["OPENED", "UPDATED", "RESOLVED", "STALE"]
Severity = Literal["LOW", "MEDIUM", "HIGH", "CRITICAL"]
AlertKind = Literal["CONFLICT", "STALE"]
AlertStatus = Literal["OPEN", "ACKNOWLEDGED", "RESOLVED", "DISMISSED"]


class Event(BaseModel):
    """Base of every wire model: immutable, and strict about unknown fields."""

    # Validation errors name fields, never the values (PHI) they were given.
    model_config = ConfigDict(frozen=True, extra="forbid", hide_input_in_errors=True)


class TextEvidence(Event):
    """Where in a document the words that state a fact are, and how sure the reading is."""

    kind: str  # pathology-text | note-text (concord.clinical_text.concepts.DocumentKind)
    document: str  # the part of the record: content/0, OBX/22637-3/1, ...
    section: str | None = None
    start: int
    end: int
    excerpt: str
    assertion: str
    confidence: float
    method: str


class Provenance(Event):
    source_system: str
    source_record_id: str
    source_record_version: str | None = None
    event_time: AwareDatetime
    received_time: AwareDatetime
    raw_topic: str
    raw_partition: int
    raw_offset: int
    payload_sha256: str
    raw_location: str | None = None
    # The element event_time was read from (docs/event-time.md); "arrival" when the record
    # carried no time and received_time stands in for one.
    event_time_basis: str | None = None
    text: TextEvidence | None = None  # for a fact read from clinical text


class IngestionWarning(Event):
    """An element-level problem a record was accepted with: the element was left out or kept
    as sent and flagged (docs/deadletters.md says which, per reason code). The message names
    fields and rules, never values, like a dead letter's reason."""

    reason_code: str  # from the dead-letter catalogue (concord.deadletters.REASON_CODES)
    location: str | None = None
    message: str


class IngestedRecord(Event):
    record_id: str
    format: RecordFormat
    resource_type: str
    payload: bytes
    provenance: Provenance
    operation: RecordOperation = "UPSERT"
    source_time_zone: str | None = None
    patient_ref: str | None = None
    warnings: tuple[IngestionWarning, ...] = ()


# A ClinicalFact with this attribute is no clinical statement: it says that the enterprise id
# in `value` was merged into `patient_id` (HL7 A40, FHIR Patient.link), so that the conflicts
# stage moves what the absorbed patient's sources asserted to the survivor.
MERGE_ATTRIBUTE = "Patient.mergedFrom"
# Its undoing (an operator's unmerge): the enterprise id in `value` is restored, and what its
# sources asserted leaves `patient_id` again.
UNMERGE_ATTRIBUTE = "Patient.unmergedFrom"
# Identity signals, not clinical statements: the conflicts stage re-keys facts on them.
IDENTITY_SIGNALS = frozenset({MERGE_ATTRIBUTE, UNMERGE_ATTRIBUTE})


class ClinicalFact(Event):
    fact_id: str
    patient_id: str
    attribute: str
    attribute_class: AttributeClass
    value: str | None = None
    display: str | None = None
    status: FactStatus
    provenance: Provenance
    record_id: str | None = None
    unit: str | None = None
    original_unit: str | None = None
    code: str | None = None
    code_system: str | None = None
    original_code: str | None = None
    original_code_system: str | None = None
    crosswalk: str | None = None
    clinical_status: str | None = None
    verification_status: str | None = None
    effective_time: AwareDatetime | None = None
    effective_text: str | None = None
    effective_precision: str | None = None
    effective_offset_minutes: int | None = None
    flags: tuple[str, ...] = ()
    subject: str | None = None


class ClinicalDocument(Event):
    """One narrative text of one record, its patient resolved (schemas/clinical_document.avsc)."""

    document_id: str
    patient_id: str
    subject: str | None = None
    record_id: str
    provenance: Provenance
    part: str
    kind: str
    media_type: str
    authored_time: AwareDatetime | None = None
    authored_text: str | None = None
    type_system: str | None = None
    type_code: str | None = None
    text: str | None = None
    truncated: bool = False
    withdrawn: bool = False
    flags: tuple[str, ...] = ()


class Assertion(Event):
    source_system: str
    value: str | None = None
    display: str | None = None
    status: FactStatus
    fact_id: str
    provenance: Provenance
    unit: str | None = None
    effective_time: AwareDatetime | None = None


class ConflictEvent(Event):
    conflict_id: str
    revision: int
    kind: ConflictEventKind
    patient_id: str
    attribute: str
    attribute_class: AttributeClass
    severity: Severity
    assertions: tuple[Assertion, ...]
    proposed_value: str | None = None
    proposed_reason: str | None = None
    policy_version: str
    detected_at: AwareDatetime
    trigger_received_time: AwareDatetime
    stale_source: str | None = None  # a stale record's: whose assertion is stale
    decision: str | None = None  # a RESOLVED event a reviewer's decision caused: which


ResolutionDecision = Literal["ACCEPTED_PROPOSAL", "CHOSE_VALUE", "DISMISSED"]


class ConflictResolution(Event):
    resolution_id: str
    conflict_id: str
    patient_id: str
    attribute: str
    decision: ResolutionDecision
    chosen_value: str | None = None
    resolved_by: str
    resolved_at: AwareDatetime
    reason_code: str | None = None  # a dismissal's, from the review service's list


class Alert(Event):
    alert_id: str
    revision: int
    kind: AlertKind
    status: AlertStatus
    patient_id: str
    attribute: str
    attribute_class: AttributeClass
    severity: Severity
    assertions: tuple[Assertion, ...]
    proposed_value: str | None = None
    proposed_reason: str | None = None
    opened_at: AwareDatetime
    updated_at: AwareDatetime
    resolved_at: AwareDatetime | None = None
    stale_source: str | None = None  # kind STALE: whose assertion is stale


class Header(Event):
    key: str
    value: bytes | None = None


class DeadLetter(Event):
    stage: str
    reason_code: str
    reason: str
    location: str | None = None
    original_topic: str
    original_partition: int
    original_offset: int
    original_key: bytes | None = None
    original_value: bytes | None = None
    original_headers: tuple[Header, ...] = ()
    failed_at: AwareDatetime
