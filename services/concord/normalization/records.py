"""An ingested record → what it says about its patient and the facts it asserts, pure.

The normalization stage calls `read_record` on each record, resolves the identity requests
of a whole batch at once, then turns the drafts into facts with the enterprise ids.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import orjson

from concord.clinical_text.documents import DocumentText, fhir_documents, hl7_documents
from concord.events.models import IngestedRecord
from concord.hl7v2 import er7
from concord.ingestion.subjects import patient_in, patient_of
from concord.normalization.facts.claims import claim_drafts, claim_patient
from concord.normalization.facts.drafts import FactDraft
from concord.normalization.facts.fhir import fhir_drafts
from concord.normalization.facts.hl7v2 import hl7_drafts
from concord.normalization.identity.demographics import (
    Demographics,
    Identifier,
    cx_identifiers,
    from_fhir_patient,
    from_pid,
)
from concord.normalization.identity.resolution import IdentityRequest
from concord.normalization.terminology import Terminology

# Statuses with which a source withdraws a document (FHIR DocumentReference.status,
# DiagnosticReport.status): what was read from its text is withdrawn.
WITHDRAWN_STATUSES = frozenset({"entered-in-error", "cancelled"})
# ADT triggers that merge the MRG patient into the PID patient.
MERGE_TRIGGERS = frozenset({"A34", "A36", "A39", "A40"})


@dataclass(frozen=True)
class ReadRecord:
    request: IdentityRequest
    drafts: tuple[FactDraft, ...]
    # Its narrative texts, for the narrative worker; `withdrawn` when the source withdrew it.
    documents: tuple[DocumentText, ...] = ()
    withdrawn: bool = False


def read_record(
    record: IngestedRecord, terminology: Terminology, systems: Sequence[str]
) -> ReadRecord | None:
    """The identity request, fact drafts and narrative texts of a record; None when it
    asserts nothing Concord compares yet (encounters...), and for deletes and voids, which the
    stage turns into what their record asserted, withdrawn (facts/withdrawals.py)."""
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
    source = record.provenance.source_system
    if record.resource_type == "Patient":
        return _fhir_patient(resource, source, terminology, systems)
    drafts = tuple(fhir_drafts(resource, terminology))
    documents = tuple(fhir_documents(resource))
    if not drafts and not documents:
        return None
    patient = record.patient_ref or patient_of(resource)  # records ingested before v3 lack it
    if patient is None:
        return None  # a resource about nobody (a DocumentReference may be) asserts nothing
    withdrawn = resource.get("status") in WITHDRAWN_STATUSES and bool(documents)
    request = IdentityRequest(source=source, local_ids=(patient,))
    return ReadRecord(request, drafts, documents, withdrawn)


def _fhir_patient(
    resource: Mapping[str, Any], source: str, terminology: Terminology, systems: Sequence[str]
) -> ReadRecord | None:
    demographics = from_fhir_patient(resource, source)
    own = (f"Patient/{resource.get('id')}", *_identifier_ids(demographics.identifiers))
    links = _links(resource)
    if links.get("replaced-by"):
        # This Patient now lives on as another: the record says who absorbs it, and its own
        # demographics no longer describe anyone current.
        survivor = links["replaced-by"][0]
        return ReadRecord(IdentityRequest(source=source, local_ids=(survivor,), absorbs=own), ())
    drafts = tuple(fhir_drafts(resource, terminology))
    if not drafts and not links.get("replaces"):
        return None
    absorbs = tuple(links.get("replaces", ()))
    return ReadRecord(_described(own, demographics, systems, absorbs), drafts)


def _links(resource: Mapping[str, Any]) -> dict[str, list[str]]:
    """Patient.link by type: the Patient/<id> each names."""
    links: dict[str, list[str]] = {}
    for link in resource.get("link") or ():
        if not isinstance(link, dict):
            continue
        other = patient_in(link.get("other"))
        if other is not None and isinstance(link.get("type"), str):
            links.setdefault(link["type"], []).append(other)
    return links


def _hl7(
    record: IngestedRecord, terminology: Terminology, systems: Sequence[str]
) -> ReadRecord | None:
    message = er7.parse(record.payload)
    pid = message.first("PID")
    if pid is None:
        return None
    drafts = tuple(hl7_drafts(message, terminology, source_zone(record.source_time_zone)))
    documents = tuple(hl7_documents(message))
    source = record.provenance.source_system
    demographics = from_pid(pid, source)
    local_ids = _identifier_ids(demographics.identifiers)
    # A merge (A40 and its older forms): each MRG-1 names a patient the PID's absorbs.
    merged = message.msh.value(9, 2) in MERGE_TRIGGERS
    absorbs = tuple(
        local
        for mrg in (message.all("MRG") if merged else ())
        for local in _identifier_ids(cx_identifiers(mrg, 1, source))
    )
    if not local_ids or not (drafts or absorbs or documents):
        return None
    return ReadRecord(_described(local_ids, demographics, systems, absorbs), drafts, documents)


def _claim(
    record: IngestedRecord, terminology: Terminology, systems: Sequence[str]
) -> ReadRecord | None:
    line: Mapping[str, Any] = orjson.loads(record.payload)
    drafts = tuple(claim_drafts(line, terminology))
    source = record.provenance.source_system
    demographics = from_fhir_patient(claim_patient(line), source)
    local_ids = _identifier_ids(demographics.identifiers)
    if not drafts or not local_ids:
        return None
    return ReadRecord(_described(local_ids, demographics, systems), drafts)


def _described(
    local_ids: tuple[str, ...],
    demographics: Demographics,
    systems: Sequence[str],
    absorbs: tuple[str, ...] = (),
) -> IdentityRequest:
    """The request of a record that describes its patient."""
    return IdentityRequest(
        source=demographics.source,
        local_ids=local_ids,
        demographics=demographics,
        authoritative_id=authoritative_id(demographics, systems),
        absorbs=absorbs,
    )


def authoritative_id(demographics: Demographics, systems: Sequence[str]) -> str | None:
    """The value of the first configured authoritative identifier the patient has: the
    systems' order decides, not the identifiers'; blank values do not count."""
    for system in systems:
        for identifier in demographics.identifiers:
            if identifier.system == system and identifier.value.strip():
                return identifier.value.strip()
    return None


def _identifier_ids(identifiers: Iterable[Identifier]) -> tuple[str, ...]:
    return tuple(f"id:{i.system}|{i.value}" for i in identifiers)


def source_zone(name: str | None) -> ZoneInfo | None:
    try:
        return ZoneInfo(name) if name else None
    except (ZoneInfoNotFoundError, ValueError):
        return None
