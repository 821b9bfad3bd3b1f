"""A source's delete (a FHIR DELETE, a voided claim line) as facts, pure: what the record's
last upsert asserted, withdrawn.

A delete names only its record (a FHIR DELETE is often a bare `Type/id`), not the patient or
what the record said; so the normalization stage remembers, per source record, the patient
and the fact keys of its upserts (`record_facts.py`), and a delete turns that memory into
DELETED facts. The conflicts stage reads DELETED as the source withdrawing its assertion, and
event time decides against the source's other facts of the attribute.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime

from concord.events.models import IDENTITY_SIGNALS, AttributeClass, ClinicalFact, IngestedRecord
from concord.normalization.facts.drafts import provenance_flags

# (source system, the source's own id of the record without its version): Observation/123,
# ClaimLine/<claim>/<line>. Every version of a record, and its delete, share it.
RecordKey = tuple[str, str]

# The formats whose records a source can delete. An HL7 v2 message is an event, not a
# resource: ingestion gives none a DELETE, and no later message names one by its control id,
# so remembering them would only grow the table.
WITHDRAWABLE_FORMATS = frozenset({"FHIR_R4", "CLAIM"})


@dataclass(frozen=True)
class RememberedFact:
    attribute: str
    attribute_class: AttributeClass


@dataclass(frozen=True)
class Remembered:
    """What one source record's last upsert asserted: about whom (the enterprise id and the
    source's own handle, `subject`), when (its event time), and which fact keys."""

    key: RecordKey
    patient_id: str
    subject: str | None
    event_time: datetime
    facts: tuple[RememberedFact, ...]
    # Whom the subject is linked to now in the identity index, when the store knows: a merge
    # since (a provisional id its Patient placed, an A40) moved the record's assertions there.
    linked_patient_id: str | None = None


def record_key(record: IngestedRecord) -> RecordKey | None:
    """The key that finds a record's memory from any of its versions or its delete; None for
    a format whose records are never deleted."""
    if record.format not in WITHDRAWABLE_FORMATS:
        return None
    return (record.provenance.source_system, record.provenance.source_record_id)


def remembered(record: IngestedRecord, facts: Iterable[ClinicalFact]) -> Remembered | None:
    """What to remember of an upsert from the facts published for it; None when there is
    nothing a delete could withdraw (no fact, a merge, a format never deleted)."""
    key = record_key(record)
    if key is None or record.operation != "UPSERT":
        return None
    # A merge or unmerge signal is Concord's own statement about identity, not the source's.
    asserted = [f for f in facts if f.attribute not in IDENTITY_SIGNALS]
    if not asserted:
        return None
    keys = {(f.attribute, f.attribute_class) for f in asserted}
    return Remembered(
        key=key,
        patient_id=asserted[0].patient_id,
        subject=asserted[0].subject,
        event_time=record.provenance.event_time,
        facts=tuple(RememberedFact(a, c) for a, c in sorted(keys)),
    )


def latest(memories: Iterable[Remembered]) -> dict[RecordKey, Remembered]:
    """Per record, the memory of its newest upsert (by event time; the later one of a tie):
    an older version arriving late does not replace what a newer one asserted, just as the
    conflicts stage keeps the newer assertion."""
    newest: dict[RecordKey, Remembered] = {}
    for memory in memories:
        current = newest.get(memory.key)
        if current is None or memory.event_time >= current.event_time:
            newest[memory.key] = memory
    return newest


def withdrawal_facts(record: IngestedRecord, memories: Sequence[Remembered]) -> list[ClinicalFact]:
    """The DELETED facts of a delete: each attribute its record's upserts asserted, once, for
    the patient of the newest memory naming it, with the delete's provenance (its event time
    decides in the conflicts stage). Ids derive from the delete's record id (which includes
    its version) and the attribute, so a redelivered delete repeats the same facts.

    `memories`: the record's memory as stored, and those of its upserts in the same batch: a
    delete older than an upsert beside it (a re-create) withdraws what only the older
    versions said, while its facts of the re-created attributes lose on event time."""
    by_attribute: dict[str, tuple[Remembered, RememberedFact]] = {}
    for memory in sorted(memories, key=lambda m: m.event_time):
        for fact in memory.facts:
            by_attribute[fact.attribute] = (memory, fact)
    facts = []
    for attribute, (memory, fact) in sorted(by_attribute.items()):
        identity = "\x1f".join([record.record_id, attribute])
        facts.append(
            ClinicalFact(
                fact_id=hashlib.sha256(identity.encode()).hexdigest()[:32],
                patient_id=_patient(record, memory),
                attribute=attribute,
                attribute_class=fact.attribute_class,
                value=None,
                status="DELETED",
                provenance=record.provenance,
                record_id=record.record_id,
                flags=provenance_flags(record.provenance),
                subject=memory.subject,
            )
        )
    return facts


def _patient(record: IngestedRecord, memory: Remembered) -> str:
    # A record about a patient follows the patient's merges, as its assertions did. A Patient
    # record does not: once merged, its demographics are the absorbed patient's, and its
    # delete must not withdraw what the survivor's own record says under the same source.
    if record.resource_type == "Patient":
        return memory.patient_id
    return memory.linked_patient_id or memory.patient_id
