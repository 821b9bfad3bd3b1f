"""A fact before it knows its patient: what a record asserts, normalized.

The format modules (fhir.py, hl7v2.py) turn a record into FactDrafts; identity resolution
decides the enterprise patient id; `to_fact` joins the two with the record's provenance.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import datetime

from concord.events.models import (
    MERGE_ATTRIBUTE,
    UNMERGE_ATTRIBUTE,
    AttributeClass,
    ClinicalFact,
    FactStatus,
    IngestedRecord,
    Provenance,
)
from concord.ingestion.record_time import ARRIVAL
from concord.normalization.terminology import MappedCode
from concord.normalization.timing import Moment
from concord.normalization.units import NormalizedQuantity

UNMAPPED_CODE = "UNMAPPED_CODE"
# Doses read best in the units prescribers write, not in the SI kind's (kg, L).
DOSE_UNITS = ("mg", "mL")
PROVISIONAL_PATIENT = "PROVISIONAL_PATIENT"
# The record carried no time of its own, so its event time is when Concord received it
# (provenance.event_time_basis "arrival", docs/event-time.md): it says when the source
# published, not when the fact became true, and orders poorly against other sources.
EVENT_TIME_IS_ARRIVAL = "EVENT_TIME_IS_ARRIVAL"


@dataclass(frozen=True)
class FactDraft:
    attribute: str
    attribute_class: AttributeClass
    value: str | None
    display: str | None = None
    status: FactStatus = "ASSERTED"
    unit: str | None = None
    original_unit: str | None = None
    code: MappedCode | None = None
    # (system, code) as the source sent it, kept when a crosswalk mapped it.
    original_code: tuple[str, str] | None = None
    clinical_status: str | None = None
    verification_status: str | None = None
    effective: Moment | None = None
    effective_text: str | None = None
    flags: tuple[str, ...] = field(default=())
    # Which of a record's several observations of one attribute this is (an OBX-4 sub-id:
    # one report's specimens), so that each keeps a fact id of its own.
    instance: str | None = None


def code_key(code: MappedCode) -> str:
    """How a code appears in an attribute key: the bare code for the standard systems
    Concord keys by, else system|code so that two local systems never collide."""
    return code.code if code.mapped else f"{code.system}|{code.code}"


def code_flags(code: MappedCode) -> tuple[str, ...]:
    return () if code.mapped else (UNMAPPED_CODE,)


def quantity_value(quantity: NormalizedQuantity) -> tuple[str | None, str | None, tuple[str, ...]]:
    """(value, unit, flags) of a normalized quantity: the canonical value when it converted,
    else the value as sent with its unit as sent, flagged, so it is never a silent number."""
    if quantity.flag is None and quantity.value is not None:
        return _number(quantity.value), quantity.unit, ()
    flags = (quantity.flag,) if quantity.flag else ()
    return _number(quantity.original_value), quantity.original_unit, flags


def _number(value: float) -> str:
    # repr of a float round-trips; integral values drop the ".0" so "7" and "7.0" agree.
    return str(int(value)) if value.is_integer() else repr(value)


def provenance_flags(provenance: Provenance) -> tuple[str, ...]:
    """The flags a fact takes from its record's provenance."""
    return (EVENT_TIME_IS_ARRIVAL,) if provenance.event_time_basis == ARRIVAL else ()


def to_fact(
    draft: FactDraft,
    *,
    patient_id: str,
    record: IngestedRecord,
    subject: str | None = None,
    extra_flags: tuple[str, ...] = (),
) -> ClinicalFact:
    effective = draft.effective
    # The effective time is part of the id: one record may report the same test twice.
    parts = [record.record_id, draft.attribute]
    if draft.effective_text:
        parts.append(draft.effective_text)
    if draft.instance:
        parts.append(f"instance:{draft.instance}")
    identity = "\x1f".join(parts)
    code = draft.code
    original = draft.original_code if code is not None and code.crosswalk is not None else None
    return ClinicalFact(
        fact_id=hashlib.sha256(identity.encode()).hexdigest()[:32],
        patient_id=patient_id,
        attribute=draft.attribute,
        attribute_class=draft.attribute_class,
        value=draft.value,
        display=draft.display,
        status=draft.status,
        provenance=record.provenance,
        record_id=record.record_id,
        unit=draft.unit,
        original_unit=draft.original_unit,
        code=code.code if code is not None else None,
        code_system=code.system if code is not None else None,
        original_code=original[1] if original else None,
        original_code_system=original[0] if original else None,
        crosswalk=code.crosswalk if code is not None else None,
        clinical_status=draft.clinical_status,
        verification_status=draft.verification_status,
        effective_time=_utc(effective),
        effective_text=draft.effective_text,
        effective_precision=effective.precision if effective is not None else None,
        effective_offset_minutes=effective.original_offset_minutes if effective else None,
        flags=tuple(sorted({*draft.flags, *extra_flags, *provenance_flags(record.provenance)})),
        subject=subject,
    )


def _utc(moment: Moment | None) -> datetime | None:
    return moment.utc if moment is not None else None


def merge_fact(*, survivor: str, absorbed: str, record: IngestedRecord) -> ClinicalFact:
    """The signal that `absorbed` was merged into `survivor`, keyed by the survivor."""
    identity = "\x1f".join([record.record_id, MERGE_ATTRIBUTE, absorbed])
    return ClinicalFact(
        fact_id=hashlib.sha256(identity.encode()).hexdigest()[:32],
        patient_id=survivor,
        attribute=MERGE_ATTRIBUTE,
        attribute_class="DEMOGRAPHICS",
        value=absorbed,
        status="ASSERTED",
        provenance=record.provenance,
        record_id=record.record_id,
    )


# The source of what an operator decides about identity (an unmerge): no EHR said it.
OPERATOR_SOURCE = "concord-operator"


def unmerge_fact(*, survivor: str, absorbed: str, action_id: str, at: datetime) -> ClinicalFact:
    """The signal that `absorbed`, merged into `survivor` in error, is a patient again; keyed
    by the survivor, whose partition holds what the merge moved. `action_id` names the
    operator's action, so that publishing it twice is one unmerge."""
    identity = "\x1f".join([action_id, UNMERGE_ATTRIBUTE, absorbed])
    digest = hashlib.sha256(identity.encode()).hexdigest()
    return ClinicalFact(
        fact_id=digest[:32],
        patient_id=survivor,
        attribute=UNMERGE_ATTRIBUTE,
        attribute_class="DEMOGRAPHICS",
        value=absorbed,
        status="ASSERTED",
        provenance=Provenance(
            source_system=OPERATOR_SOURCE,
            source_record_id=f"unmerge/{action_id}",
            event_time=at,
            received_time=at,
            raw_topic="",
            raw_partition=-1,
            raw_offset=-1,
            payload_sha256=digest,
        ),
    )
