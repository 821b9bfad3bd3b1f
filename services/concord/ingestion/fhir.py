"""FHIR R4 ingestion, pure: raw bytes in, IngestedRecords or a Rejection out.

R4 input is validated with fhir.resources' R4B models. R4B is "strictly backward compatible
with R4" except for the medication-regulation, evidence, subscription and Substance resources
(hl7.org/fhir/R4B/history.html); none of the types ingested here changed, so an R4 resource
of these types is valid R4B and vice versa. The structural check is the library's; on top of
it, the rules that matter clinically: an id, a reference to the patient, every code with its
system (and check digits or format for LOINC, SNOMED CT, ICD-10-CM, RxNorm, NDC, CPT),
date-times with a zone, and references that resolve inside their Bundle.

A record is rejected whole only when it cannot be read, cannot be tied to a patient, or is
not the format it claims (docs/deadletters.md gives the rule per reason code). An element at
fault is a warning the record carries: a date-time without a zone is left out of the stored
resource, a code without a system or malformed for its system and a reference that names
nothing are kept as sent. In a Bundle, an entry at fault is left out and the others are
ingested, its warning carried by the Bundle's first record; a Bundle none of whose entries
could be ingested is dead-lettered whole, with the first entry's reason and location. A
string carrying NUL or another C0 control character (escaped in the JSON) is read without it,
with a warning; the raw event keeps the bytes as sent.

A FHIR R4 resource of a type Concord neither checks nor compares (Immunization, Procedure,
...) is kept for provenance, unchecked: alone, as a record of its own; in a Bundle beside
types Concord checks, it is skipped (those records' provenance points at the raw event); a
Bundle of nothing else is kept as one Bundle record. A resource that one of ours references
and needs to be understood alone (a Medication, a Specimen) travels with it as a contained
resource.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

import orjson
from fhir.resources.R4B import get_fhir_model_class
from pydantic import ValidationError

from concord.deadletters import Rejection, as_warning
from concord.events.models import IngestedRecord, IngestionWarning, RecordOperation
from concord.events.raw import RawEvent
from concord.ingestion.codes import check_coding
from concord.ingestion.common import (
    control_warning,
    ingested_record,
    instant,
    json_without_controls,
    load_json,
)
from concord.ingestion.fhir_fast import prepare, structurally_valid
from concord.ingestion.fhir_types import is_r4_type
from concord.ingestion.record_time import (
    ARRIVAL,
    RecordTime,
    bundle_record_time,
    fhir_record_time,
)
from concord.ingestion.subjects import PATIENT_REFERENCE, patient_of

# Accept what fhir_fast.structurally_valid proves the R4B model accepts without building the
# model; False sends every resource to the model (the equivalence test runs both).
FAST_PATH = True
# The types Concord checks and ingests; any other FHIR R4 type is kept for provenance only.
SUPPORTED_TYPES = frozenset(PATIENT_REFERENCE)
# The codes Concord compares across sources: without a system they cannot be compared.
# Codings elsewhere (identifier types, admit sources) are checked only for well-formed codes.
CLINICAL_CODES: dict[str, tuple[str, ...]] = {
    "Observation": ("code", "valueCodeableConcept"),
    "Condition": ("code",),
    "AllergyIntolerance": ("code",),
    "MedicationStatement": ("medicationCodeableConcept",),
    "MedicationRequest": ("medicationCodeableConcept",),
    "DiagnosticReport": ("code",),
}
CARRIED_TYPES = frozenset({"Medication", "Specimen"})
BUNDLE_TYPES = frozenset(
    {
        "document",
        "message",
        "transaction",
        "transaction-response",
        "batch",
        "batch-response",
        "history",
        "searchset",
        "collection",
    }
)
# Required bindings the model library does not enforce: a status outside its value set
# would be read differently by every consumer.
REQUIRED_CODES: dict[str, dict[str, frozenset[str]]] = {
    "Patient": {"gender": frozenset("male female other unknown".split())},
    "Observation": {
        "status": frozenset(
            "registered preliminary final amended corrected cancelled entered-in-error "
            "unknown".split()
        )
    },
    "DiagnosticReport": {
        "status": frozenset(
            "registered partial preliminary final amended corrected appended cancelled "
            "entered-in-error unknown".split()
        )
    },
    "MedicationStatement": {
        "status": frozenset(
            "active completed entered-in-error intended stopped on-hold unknown not-taken".split()
        )
    },
    "MedicationRequest": {
        "status": frozenset(
            "active on-hold cancelled completed entered-in-error stopped draft unknown".split()
        ),
        "intent": frozenset(
            "proposal plan order original-order reflex-order filler-order instance-order "
            "option".split()
        ),
    },
    "Encounter": {
        "status": frozenset(
            "planned arrived triaged in-progress onleave finished cancelled entered-in-error "
            "unknown".split()
        )
    },
    "DocumentReference": {"status": frozenset("current superseded entered-in-error".split())},
    "AllergyIntolerance": {
        "criticality": frozenset("low high unable-to-assess".split()),
        "type": frozenset("allergy intolerance".split()),
    },
}
_NAIVE_DATETIME = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(:\d{2}(\.\d+)?)?$")
_HISTORY_URL = re.compile(r"^([A-Za-z]+)/([A-Za-z0-9\-.]{1,64})(/_history/([A-Za-z0-9\-.]+))?$")


@dataclass(frozen=True)
class _Entry:
    """One resource to ingest, with what its Bundle entry says about it."""

    resource: Mapping[str, Any]
    where: str  # the location prefix for rejections, e.g. Bundle.entry[3].resource
    operation: RecordOperation = "UPSERT"
    version: str | None = None
    last_modified: datetime | None = None  # the entry's response.lastModified
    bundle_time: RecordTime | None = None  # the Bundle's, for a resource without times


class _Bundle:
    """fullUrl and Type/id index of a Bundle, for resolving references between its entries."""

    def __init__(self, entries: list[Mapping[str, Any]]) -> None:
        self.by_url: dict[str, Mapping[str, Any]] = {}
        for entry in entries:
            resource = entry.get("resource")
            if not isinstance(resource, dict):
                continue
            full_url = entry.get("fullUrl")
            if isinstance(full_url, str):
                self.by_url[full_url] = resource
            ref = _ref_of(resource)
            if ref is not None:
                self.by_url.setdefault(ref, resource)

    def resolve(self, reference: str) -> Mapping[str, Any] | None:
        return self.by_url.get(reference)


def prepare_checks() -> int:
    """Build the structural checks of the resource types Concord reads (and of the Bundles
    and carried resources they come in) before the first event needs them: a worker that
    starts pays ~0.2 s once, rather than its first events ~100 ms between them. Returns how
    many models were built."""
    return prepare(sorted(SUPPORTED_TYPES | CARRIED_TYPES | {"Bundle"}))


def ingest_fhir(raw: RawEvent, *, max_payload_bytes: int) -> list[IngestedRecord] | Rejection:
    """Validate one raw FHIR event: a resource, or a Bundle of them, keeping what can be kept."""
    loaded = load_json(raw, max_payload_bytes=max_payload_bytes)
    if isinstance(loaded, Rejection):
        return loaded
    source, sent = loaded
    # What is read is cleaned; the bytes as sent stay on the raw topic, which provenance names.
    document, controls = json_without_controls(raw.value or b"", sent)
    if not isinstance(document, dict) or not isinstance(document.get("resourceType"), str):
        return Rejection("NOT_FHIR", "the JSON is not an object with a resourceType")
    resource_type = document["resourceType"]
    records: list[IngestedRecord] | Rejection
    if resource_type == "Bundle":
        records = _ingest_bundle(raw, source, document)
    elif not is_r4_type(resource_type):
        return _unsupported(resource_type)
    else:
        outcome = _accept(raw, source, _Entry(document, resource_type), None)
        records = [outcome] if isinstance(outcome, IngestedRecord) else outcome
    if isinstance(records, Rejection) or not controls:
        return records
    return _with_controls(records, [f"{resource_type}{path}" for path in controls])


def _with_controls(records: list[IngestedRecord], locations: list[str]) -> list[IngestedRecord]:
    """The records, each with a warning for the strings its control characters were removed
    from: a Bundle entry's own on the entry's record, the rest (the Bundle's elements, entries
    not ingested) on the first record, as for entries left out."""
    added: list[list[IngestionWarning]] = [[] for _ in records]
    for location in locations:
        owner = next(
            (
                position
                for position, record in enumerate(records)
                if record.provenance.raw_location is not None
                and location.startswith(f"{record.provenance.raw_location}.")
            ),
            0,
        )
        added[owner].append(control_warning(location))
    return [
        record.model_copy(update={"warnings": (*record.warnings, *more)}) if more else record
        for record, more in zip(records, added, strict=True)
    ]


def _ingest_bundle(
    raw: RawEvent, source: str, bundle: Mapping[str, Any]
) -> list[IngestedRecord] | Rejection:
    if not isinstance(bundle.get("type"), str) or bundle["type"] not in BUNDLE_TYPES:
        return Rejection(
            "FHIR_INVALID", "Bundle.type is not a code of bundle-type", location="Bundle.type"
        )
    entries = bundle.get("entry") or []
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        return Rejection(
            "FHIR_INVALID", "Bundle.entry is not an array of objects", location="Bundle.entry"
        )
    if not entries:
        return Rejection("EMPTY_BUNDLE", "the Bundle has no entries", location="Bundle.entry")
    assembled = bundle_record_time(bundle)
    index = _Bundle(entries)
    records: list[IngestedRecord] = []
    refused: list[Rejection] = []  # entries left out
    for position, entry in enumerate(entries):
        item = _bundle_entry(entry, f"Bundle.entry[{position}]", assembled)
        outcome = item if isinstance(item, Rejection) else _bundle_member(raw, source, item, index)
        if isinstance(outcome, Rejection):
            refused.append(outcome)
        elif outcome is not None:
            records.append(outcome)
    if records:
        return _with_refused(records, refused)
    if refused:
        return refused[0]  # nothing could be ingested: the Bundle waits whole for a fix
    return [_bundle_record(raw, source, bundle, assembled)]


def _bundle_member(
    raw: RawEvent, source: str, item: _Entry, index: _Bundle
) -> IngestedRecord | Rejection | None:
    """An entry's record; None for a type kept only in the raw event (not checked)."""
    resource_type = str(item.resource.get("resourceType"))
    if resource_type in SUPPORTED_TYPES:
        return _accept(raw, source, item, index)
    if is_r4_type(resource_type):
        return None
    return Rejection(
        "UNSUPPORTED_RESOURCE_TYPE",
        "the entry's resourceType is not a FHIR R4 resource type",
        location=f"{item.where}.resourceType",
    )


def _with_refused(records: list[IngestedRecord], refused: list[Rejection]) -> list[IngestedRecord]:
    """The Bundle's records, the first carrying a warning for each entry left out."""
    if not refused:
        return records
    first = records[0]
    left_out = [as_warning(entry, "the entry is not ingested") for entry in refused]
    return [first.model_copy(update={"warnings": (*first.warnings, *left_out)}), *records[1:]]


def _bundle_record(
    raw: RawEvent, source: str, bundle: Mapping[str, Any], assembled: RecordTime | None
) -> IngestedRecord:
    """A Bundle of types Concord neither checks nor compares (an A40 message's MessageHeader,
    Linkage, Provenance, Organizations): kept for provenance as one record of the Bundle,
    named by its id or, without one, by its content."""
    payload = orjson.dumps(bundle, option=orjson.OPT_SORT_KEYS)
    bundle_id = bundle.get("id")
    if not isinstance(bundle_id, str) or not bundle_id:
        bundle_id = hashlib.sha256(payload).hexdigest()[:32]
    version = _object(bundle.get("meta")).get("versionId")
    when = assembled or RecordTime(raw.received_time, ARRIVAL)
    return ingested_record(
        raw,
        source=source,
        record_format="FHIR_R4",
        resource_type="Bundle",
        record_ref=f"Bundle/{bundle_id}",
        version=version if isinstance(version, str) else None,
        payload=payload,
        event_time=when.moment,
        event_time_basis=when.basis,
        content=_content(bundle, bundle.get("contained")),
    )


def _bundle_entry(
    entry: Mapping[str, Any], where: str, assembled: RecordTime | None
) -> _Entry | Rejection:
    request = _object(entry.get("request"))
    response = _object(entry.get("response"))
    resource = entry.get("resource")
    operation: RecordOperation = "DELETE" if request.get("method") == "DELETE" else "UPSERT"
    version = _etag_version(response.get("etag"))
    last_modified = instant(response.get("lastModified"))
    if resource is None and operation == "DELETE":
        # A history DELETE carries no resource: the request URL names what was deleted.
        match = _HISTORY_URL.match(str(request.get("url", "")))
        if match is None:
            return Rejection(
                "FHIR_INVALID",
                "a DELETE without a resource must name it as Type/id in request.url",
                location=f"{where}.request.url",
            )
        resource = {"resourceType": match[1], "id": match[2]}
        version = version or match[4]
    if not isinstance(resource, dict) or not isinstance(resource.get("resourceType"), str):
        return Rejection(
            "NOT_FHIR", "a Bundle entry holds no FHIR resource", location=f"{where}.resource"
        )
    return _Entry(resource, f"{where}.resource", operation, version, last_modified, assembled)


def _accept(
    raw: RawEvent, source: str, entry: _Entry, bundle: _Bundle | None
) -> IngestedRecord | Rejection:
    """One resource with the warnings it is accepted with, or what rejects it. Only the types
    Concord checks are checked element by element; any other is kept as sent."""
    warnings: list[IngestionWarning] = []
    resource_type = str(entry.resource["resourceType"])
    if resource_type in SUPPORTED_TYPES:
        checked = _check_elements(entry.resource, resource_type, entry.where, bundle)
        if isinstance(checked, Rejection):
            return checked
        resource, warnings = checked
        entry = replace(entry, resource=resource)
    outcome = _ingest_entry(raw, source, entry, bundle)
    if isinstance(outcome, Rejection) or not warnings:
        return outcome
    return outcome.model_copy(update={"warnings": tuple(warnings)})


def _ingest_entry(
    raw: RawEvent, source: str, entry: _Entry, bundle: _Bundle | None
) -> IngestedRecord | Rejection:
    resource = entry.resource
    resource_type = str(resource["resourceType"])
    deleted_stub = entry.operation == "DELETE" and set(resource) == {"resourceType", "id"}
    rejection = None if deleted_stub else _validate(resource, entry.where, bundle)
    if rejection is not None:
        return rejection
    resource_id = resource.get("id")
    if not isinstance(resource_id, str) or not resource_id:
        return Rejection(
            "MISSING_RESOURCE_ID", f"the {resource_type} has no id", location=f"{entry.where}.id"
        )
    meta = _object(resource.get("meta"))
    if "lastUpdated" in meta and instant(meta["lastUpdated"]) is None:
        return Rejection(
            "DATETIME_WITHOUT_ZONE",
            "meta.lastUpdated must be an instant with a time zone",
            location=f"{entry.where}.meta.lastUpdated",
        )
    when = fhir_record_time(
        resource,
        arrival=raw.received_time,
        last_modified=entry.last_modified,
        bundle=entry.bundle_time,
        deleted=entry.operation == "DELETE",
    )
    version = meta.get("versionId") if isinstance(meta.get("versionId"), str) else entry.version
    stored = _self_contained(resource, bundle) if bundle else resource
    payload = orjson.dumps(stored, option=orjson.OPT_SORT_KEYS)
    content = _content(stored, resource.get("contained"))
    return ingested_record(
        raw,
        source=source,
        record_format="FHIR_R4",
        resource_type=resource_type,
        record_ref=f"{resource_type}/{resource_id}",
        version=version,
        payload=payload,
        event_time=when.moment,
        event_time_basis=when.basis,
        operation=entry.operation,
        location=entry.where.removesuffix(".resource") if bundle else None,
        patient_ref=patient_of(stored),
        content=content,
    )


# Elements that may differ between two sendings of one version: meta (versionId is part of the
# version key already; lastUpdated, tags and source may be set on the way) and the narrative,
# which a server may generate again. Concord reads neither as a fact.
_VOLATILE = frozenset({"meta", "text"})


def _content(stored: Mapping[str, Any], sent_contained: Any) -> bytes:
    """What tells two records of one version apart (ingested_record): the stored resource but
    its volatile elements, with the contained resources it was sent with, not those carried
    from its Bundle (which depend on the Bundle it came in). Keys sorted, so a version sent
    again with its keys in another order, or indented, is the same content."""
    body = {key: value for key, value in stored.items() if key not in _VOLATILE}
    body.pop("contained", None)
    if sent_contained is not None:
        body["contained"] = sent_contained
    return orjson.dumps(body, option=orjson.OPT_SORT_KEYS)


def _validate(resource: Mapping[str, Any], where: str, bundle: _Bundle | None) -> Rejection | None:
    # The element-level rules have run first (_accept): their reasons say exactly what to fix,
    # where the model library's would only say that an element failed.
    resource_type = str(resource["resourceType"])
    if resource_type not in SUPPORTED_TYPES:
        return None  # kept for provenance as sent: Concord reads nothing of it
    rejection = _validate_structure(resource, where)
    if rejection is None:
        rejection = _check_required_codes(resource, resource_type, where)
    if rejection is None:
        rejection = _check_patient_reference(resource, resource_type, where, bundle)
    return rejection


def _check_elements(
    resource: Mapping[str, Any], resource_type: str, where: str, bundle: _Bundle | None
) -> tuple[Mapping[str, Any], list[IngestionWarning]] | Rejection:
    """Zoned date-times, resolvable references and well-formed codes, at any depth: the
    resource to store, with a warning per element at fault, or what rejects it.

    A date-time without a zone is left out of the stored resource (FHIR requires the zone and
    Concord does not guess it; what is stored stays valid R4); a code without a system or
    malformed for its system, and a reference that names nothing here, are kept as sent. What
    the whole resource relies on rejects it: meta.lastUpdated, the version's own time, and the
    reference to the patient."""
    listed = resource.get("contained")
    contained = {
        f"#{c['id']}"
        for c in (listed if isinstance(listed, list) else ())
        if isinstance(c, dict) and isinstance(c.get("id"), str)
    }
    clinical = tuple(
        f"{where}.{element}.coding[" for element in CLINICAL_CODES.get(resource_type, ())
    )
    patient = PATIENT_REFERENCE.get(resource_type)
    fatal = {f"{where}.meta.lastUpdated"} | ({f"{where}.{patient}.reference"} if patient else set())
    warnings: list[IngestionWarning] = []
    unzoned: set[str] = set()
    elements = _Elements(contained, clinical, bundle)
    elements.object(resource, where)
    for problem in elements.found:
        if problem.location in fatal:
            return problem
        if problem.reason_code == "DATETIME_WITHOUT_ZONE":
            unzoned.add(problem.location or "")
        warnings.append(as_warning(problem, _OUTCOMES[problem.reason_code]))
    return (_without(resource, where, unzoned) if unzoned else resource), warnings


# What becomes of an element at fault, per reason (the warning says it).
_OUTCOMES = {
    "DATETIME_WITHOUT_ZONE": "the element is left out",
    "UNRESOLVED_REFERENCE": "kept as sent",
    "CODE_WITHOUT_SYSTEM": "kept as sent, an unmapped code",
    "INVALID_CODE": "kept as sent, an unmapped code",
}


class _Elements:
    """The problems of every object and string below a resource, each located by its FHIR
    path (Observation.code.coding[0]), in the order a depth-first walk meets them: an
    object's own, then its members' in key order. Contained resources are only resolved, not
    walked, and `text` (narrative) is skipped, at any depth.

    One call per object and array, and a string's path built only when it is at fault: a
    generator per level (as before) passed every element up through each level above it,
    and built a path for every string, which made this walk ~40% of a FHIR event's time."""

    def __init__(
        self, contained: set[str], clinical: tuple[str, ...], bundle: _Bundle | None
    ) -> None:
        self.contained = contained
        self.clinical = clinical
        self.bundle = bundle
        self.found: list[Rejection] = []

    def object(self, node: Mapping[str, Any], path: str) -> None:
        reference = node.get("reference")
        if isinstance(reference, str) and not _resolves(reference, self.contained, self.bundle):
            self.found.append(
                Rejection(
                    "UNRESOLVED_REFERENCE",
                    "the reference names no resource of its Bundle or contained resources",
                    location=f"{path}.reference",
                )
            )
        if path.endswith("]") and ".coding[" in path:
            problem = check_coding(node, system_required=path.startswith(self.clinical))
            if problem is not None:
                code, reason = problem
                self.found.append(Rejection(code, reason, location=path))
        for key, value in node.items():
            if key in ("contained", "text"):
                continue
            if isinstance(value, str):
                if _NAIVE_DATETIME.match(value):
                    self.found.append(_unzoned(f"{path}.{key}"))
            elif isinstance(value, dict):
                self.object(value, f"{path}.{key}")
            elif isinstance(value, list):
                self.array(value, f"{path}.{key}")

    def array(self, items: list[Any], path: str) -> None:
        for position, item in enumerate(items):
            if isinstance(item, str):
                if _NAIVE_DATETIME.match(item):
                    self.found.append(_unzoned(f"{path}[{position}]"))
            elif isinstance(item, dict):
                self.object(item, f"{path}[{position}]")
            elif isinstance(item, list):
                self.array(item, f"{path}[{position}]")


def _unzoned(path: str) -> Rejection:
    return Rejection(
        "DATETIME_WITHOUT_ZONE",
        "a date-time with a time of day must carry a time-zone offset",
        location=path,
    )


_LEFT_OUT = object()


def _without(node: Any, path: str, paths: set[str]) -> Any:
    """node without the strings at `paths` (as _Elements names them), and without the objects and
    arrays that leaves empty: FHIR allows no empty element."""
    if isinstance(node, dict):
        kept = {
            key: child
            for key, value in node.items()
            if (child := _without(value, f"{path}.{key}", paths)) is not _LEFT_OUT
        }
        return kept if kept or not node else _LEFT_OUT
    if isinstance(node, list):
        items = [
            child
            for position, item in enumerate(node)
            if (child := _without(item, f"{path}[{position}]", paths)) is not _LEFT_OUT
        ]
        return items if items or not node else _LEFT_OUT
    return _LEFT_OUT if path in paths else node


def _check_required_codes(
    resource: Mapping[str, Any], resource_type: str, where: str
) -> Rejection | None:
    for element, codes in REQUIRED_CODES.get(resource_type, {}).items():
        value = resource.get(element)
        if value is not None and value not in codes:
            return Rejection(
                "FHIR_INVALID",
                f"{resource_type}.{element} is not a code of its value set "
                f"({', '.join(sorted(codes))})",
                location=f"{where}.{element}",
            )
    return None


def _validate_structure(resource: Mapping[str, Any], where: str) -> Rejection | None:
    if FAST_PATH and structurally_valid(resource):
        return None  # what the model would accept; anything doubted goes to the model
    resource_type = str(resource["resourceType"])
    try:
        get_fhir_model_class(resource_type).model_validate(resource)
    except ValidationError as exc:
        errors = exc.errors()
        # The library's messages quote input and so does the location of an unknown element
        # (its key): such a key is shown as `*`. Other locations and error types are FHIR's.
        paths = [_error_path(err["loc"], err["type"]) for err in errors]
        kinds = sorted({err["type"] for err in errors})
        return Rejection(
            "FHIR_INVALID",
            f"{resource_type} fails FHIR R4 validation at {', '.join(sorted(set(paths))[:10])} "
            f"({', '.join(kinds[:5])})",
            location=f"{where}.{paths[0]}",
        )
    except Exception as exc:  # the model library trips on some malformed input itself
        return Rejection(
            "FHIR_INVALID",
            f"{resource_type} could not be validated ({type(exc).__name__})",
            location=where,
        )
    return None


def _error_path(loc: tuple[int | str, ...], kind: str) -> str:
    parts = [str(part) for part in loc]
    if kind == "extra_forbidden" and parts:
        parts[-1] = "*"
    return ".".join(parts)


def _check_patient_reference(
    resource: Mapping[str, Any], resource_type: str, where: str, bundle: _Bundle | None
) -> Rejection | None:
    element = PATIENT_REFERENCE[resource_type]
    if element is None:
        return None
    subject = resource.get(element)
    reference = subject.get("reference") if isinstance(subject, dict) else None
    target = bundle.resolve(reference) if bundle and isinstance(reference, str) else None
    points_to_patient = isinstance(reference, str) and (
        reference.startswith("Patient/")
        or "/Patient/" in reference
        or (target is not None and target.get("resourceType") == "Patient")
    )
    by_identifier = isinstance(subject, dict) and isinstance(subject.get("identifier"), dict)
    if points_to_patient or (reference is None and by_identifier):
        return None
    return Rejection(
        "MISSING_PATIENT_REFERENCE",
        f"{resource_type}.{element} must reference the Patient",
        location=f"{where}.{element}",
    )


def _resolves(reference: str, contained: set[str], bundle: _Bundle | None) -> bool:
    if reference.startswith("#"):
        return reference in contained or reference == "#"
    if reference.startswith(("urn:uuid:", "urn:oid:")):
        return bundle is not None and bundle.resolve(reference) is not None
    # Type/id and absolute URLs may name resources the source holds outside this event.
    return True


def _self_contained(resource: Mapping[str, Any], bundle: _Bundle) -> dict[str, Any]:
    """The resource with in-Bundle references rewritten to Type/id, and the Medication or
    Specimen it references carried along as contained resources, so it stands alone."""
    contained: list[Any] = list(resource.get("contained") or ())
    carried: dict[str, str] = {}

    def rewrite(node: Any) -> Any:
        if isinstance(node, list):
            return [rewrite(item) for item in node]
        if not isinstance(node, dict):
            return node
        out = {key: rewrite(value) for key, value in node.items()}
        reference = node.get("reference")
        target = bundle.resolve(reference) if isinstance(reference, str) else None
        if target is None:
            return out
        ref = _ref_of(target)
        if target.get("resourceType") in CARRIED_TYPES and ref is not None:
            if ref not in carried:
                carried[ref] = f"#{target['id']}"
                contained.append(dict(target))
            out["reference"] = carried[ref]
        elif ref is not None:
            out["reference"] = ref
        return out

    body = {key: rewrite(value) for key, value in resource.items() if key != "contained"}
    if contained:
        body["contained"] = contained
    return body


def _ref_of(resource: Mapping[str, Any]) -> str | None:
    resource_id = resource.get("id")
    if isinstance(resource_id, str) and resource_id:
        return f"{resource.get('resourceType')}/{resource_id}"
    return None


def _etag_version(etag: object) -> str | None:
    if not isinstance(etag, str) or not etag:
        return None
    return etag.removeprefix("W/").strip('"') or None


def _object(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, dict) else {}


def _unsupported(resource_type: str) -> Rejection:
    # Every FHIR R4 type is accepted, so this one is arbitrary input: it is not repeated.
    del resource_type
    return Rejection("UNSUPPORTED_RESOURCE_TYPE", "the resourceType is not a FHIR R4 resource type")
