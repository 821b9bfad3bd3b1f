"""An ingested record → what it says about its patient and the facts it asserts, pure.

The normalization stage calls `read_record` on each record, resolves the identity requests
of a whole batch at once, then turns the drafts into facts with the enterprise ids.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import orjson

from concord.events.models import IngestedRecord
from concord.hl7v2 import er7
from concord.ingestion.subjects import patient_of
from concord.normalization.facts.claims import claim_drafts, claim_patient
from concord.normalization.facts.drafts import FactDraft
from concord.normalization.facts.fhir import fhir_drafts
from concord.normalization.facts.hl7v2 import hl7_drafts
from concord.normalization.identity.demographics import (
    Demographics,
    from_fhir_patient,
    from_pid,
)
from concord.normalization.identity.resolution import IdentityRequest
from concord.normalization.terminology import Terminology


@dataclass(frozen=True)
class ReadRecord:
    request: IdentityRequest
    drafts: tuple[FactDraft, ...]


def read_record(
    record: IngestedRecord, terminology: Terminology, systems: Sequence[str]
) -> ReadRecord | None:
    """The identity request and fact drafts of a record; None when it asserts no fact
    Concord compares yet (deletes and voids, encounters, documents...)."""
    if record.operation != "UPSERT":
        return None
    if record.format == "FHIR_R4":
        return _fhir(record, terminology, systems)
    if record.format == "HL7V2":
        return _hl7(record, terminology, systems)
    if record.format == "CLAIM":
        return _claim(record, terminology, systems)
    return None


def _fhir(
    record: IngestedRecord, terminology: Terminology, systems: Sequence[str]
) -> ReadRecord | None:
    resource: Mapping[str, Any] = orjson.loads(record.payload)
    drafts = tuple(fhir_drafts(resource, terminology))
    if not drafts:
        return None
    source = record.provenance.source_system
    if record.resource_type == "Patient":
        demographics = from_fhir_patient(resource, source)
        authority = _authority(demographics, systems)
        request = IdentityRequest(
            source=source,
            local_ids=(f"Patient/{resource.get('id')}", *_identifier_ids(demographics)),
            demographics=demographics,
            authoritative_id=authority,
        )
        return ReadRecord(request, drafts)
    patient = patient_of(resource)
    if patient is None:
        return None  # ingestion requires one; a resource without it asserts nothing here
    return ReadRecord(IdentityRequest(source=source, local_ids=(patient,)), drafts)


def _hl7(
    record: IngestedRecord, terminology: Terminology, systems: Sequence[str]
) -> ReadRecord | None:
    message = er7.parse(record.payload)
    pid = message.first("PID")
    if pid is None:
        return None
    drafts = tuple(hl7_drafts(message, terminology, _zone(record.source_time_zone)))
    source = record.provenance.source_system
    demographics = from_pid(pid, source)
    local_ids = _identifier_ids(demographics)
    if not drafts or not local_ids:
        return None
    authority = _authority(demographics, systems)
    request = IdentityRequest(
        source=source,
        local_ids=local_ids,
        demographics=demographics,
        authoritative_id=authority,
    )
    return ReadRecord(request, drafts)


def _claim(
    record: IngestedRecord, terminology: Terminology, systems: Sequence[str]
) -> ReadRecord | None:
    line: Mapping[str, Any] = orjson.loads(record.payload)
    drafts = tuple(claim_drafts(line, terminology))
    source = record.provenance.source_system
    demographics = from_fhir_patient(claim_patient(line), source)
    local_ids = _identifier_ids(demographics)
    if not drafts or not local_ids:
        return None
    request = IdentityRequest(
        source=source,
        local_ids=local_ids,
        demographics=demographics,
        authoritative_id=_authority(demographics, systems),
    )
    return ReadRecord(request, drafts)


def _authority(demographics: Demographics, systems: Sequence[str]) -> str | None:
    """The value of the first configured authoritative identifier the patient has."""
    for system in systems:
        for identifier in demographics.identifiers:
            if identifier.system == system and identifier.value.strip():
                return identifier.value.strip()
    return None


def _identifier_ids(demographics: Demographics) -> tuple[str, ...]:
    return tuple(f"id:{i.system}|{i.value}" for i in demographics.identifiers)


def _zone(name: str | None) -> ZoneInfo | None:
    try:
        return ZoneInfo(name) if name else None
    except (ZoneInfoNotFoundError, ValueError):
        return None
