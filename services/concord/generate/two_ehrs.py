"""One person's generated Bundle as the records of two EHRs, pure.

EHR A holds the resources as the generator wrote them, one per NDJSON line: the Bundle's
`urn:uuid:` references become `Type/id` (what a FHIR server's export holds), the Patient's
medical record number moves into A's own identifier system, and the generator's own patient
identifier is left out (the same value in any copy, it would be a shared enterprise
identifier). EHR B holds the same resources with B's own resource ids (every reference
rewritten to them), its own MRN system and values, and no other change. Nothing else the two
share identifies the patient across them but the person's demographics and the national
identifiers the generator writes (SSN, driver's licence), as two real EHRs would.
"""

from __future__ import annotations

import copy
import hashlib
import uuid
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from concord.generate.synthea_engine import GENERATOR_ID_SYSTEM
from concord.ingestion import record_time

Resource = dict[str, Any]
MRN_TYPE_CODE = "MR"
URN_UUID = "urn:uuid:"
# Resources the generator writes into every Bundle that mentions them (the facilities and
# clinicians): an EHR holds each once.
SHARED_TYPES = frozenset({"Organization", "Location", "Practitioner", "PractitionerRole"})
# The types whose records become facts Concord compares: the answer key lists these.
FACT_TYPES = frozenset(
    {"Patient", "Observation", "Condition", "AllergyIntolerance", "MedicationRequest"}
    | {"MedicationStatement"}
)


@dataclass(frozen=True)
class Ehr:
    """One of the two EHRs: its name is the `source` it publishes as."""

    name: str

    @property
    def mrn_system(self) -> str:
        return f"urn:concord:mrn:{self.name}"


@dataclass
class PersonRecord:
    """One person's resources as EHR A holds them (the generator's ids, `Type/id` references)."""

    index: int
    person_id: str
    generator_id: str | None
    resources: list[Resource]

    @property
    def patient(self) -> Resource:
        return self.resources[0]


def person_id(index: int) -> str:
    return f"SYN-{index + 1:06d}"


def flatten(index: int, bundle: Mapping[str, Any], ehr: Ehr) -> PersonRecord:
    """EHR A's copy of a generated Bundle: its resources in Bundle order, the Patient first.
    The Bundle's resources are rewritten in place and become the copy."""
    entries = [e for e in bundle.get("entry", ()) if isinstance(e.get("resource"), dict)]
    refs = {
        str(e["fullUrl"]): ref_of(e["resource"])
        for e in entries
        if isinstance(e.get("fullUrl"), str)
    }
    resources = [_rewrite(e["resource"], refs) for e in entries]
    patients = [r for r in resources if r.get("resourceType") == "Patient"]
    if len(patients) != 1:
        raise ValueError(f"person {index}: the Bundle holds {len(patients)} Patients, not one")
    patient = patients[0]
    resources.remove(patient)
    generator_id = next(
        (
            i.get("value")
            for i in patient.get("identifier", ())
            if i.get("system") == GENERATOR_ID_SYSTEM
        ),
        None,
    )
    patient["identifier"] = [
        i for i in patient.get("identifier", ()) if i.get("system") != GENERATOR_ID_SYSTEM
    ]
    mrn = mrn_identifier(patient)
    if mrn is None:
        raise ValueError(f"person {index}: the Patient has no medical record number")
    mrn["system"] = ehr.mrn_system
    return PersonRecord(index, person_id(index), generator_id, [patient, *resources])


def ref_of(resource: Mapping[str, Any]) -> str:
    return f"{resource['resourceType']}/{resource['id']}"


def mrn_identifier(patient: Mapping[str, Any]) -> dict[str, Any] | None:
    for identifier in patient.get("identifier", ()):
        codings = identifier.get("type", {}).get("coding", ())
        if any(c.get("code") == MRN_TYPE_CODE for c in codings):
            found: dict[str, Any] = identifier
            return found
    return None


def mrn_of(patient: Mapping[str, Any]) -> str:
    identifier = mrn_identifier(patient)
    return str(identifier["value"]) if identifier is not None else ""


def _rewrite(node: Any, refs: Mapping[str, str]) -> Any:
    """References rewritten in place through `refs` (old reference -> new)."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "reference" and isinstance(value, str) and value in refs:
                node[key] = refs[value]
            else:
                _rewrite(value, refs)
    elif isinstance(node, list):
        for item in node:
            _rewrite(item, refs)
    return node


@dataclass
class Rebrander:
    """EHR B's ids and MRNs: each A reference gets one B id, the same in every person's
    records (a facility is one resource), derived from the seed; each person one B MRN."""

    ehr: Ehr
    seed: int
    ids: dict[str, str] = field(default_factory=dict)
    mrns: set[str] = field(default_factory=set)

    def new_ref(self, ref: str) -> str:
        known = self.ids.get(ref)
        if known is None:
            digest = hashlib.sha256(f"{self.seed}|{self.ehr.name}|{ref}".encode()).digest()
            resource_type = ref.partition("/")[0]
            known = f"{resource_type}/{uuid.UUID(bytes=digest[:16], version=4)}"
            self.ids[ref] = known
        return known

    def new_mrn(self, person: PersonRecord) -> str:
        counter = 0
        while True:
            text = f"{self.seed}|{self.ehr.name}|mrn|{person.index}|{counter}"
            value = str(int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big"))
            mrn = value[-8:].rjust(8, "0")
            if mrn not in self.mrns:
                self.mrns.add(mrn)
                return mrn
            counter += 1

    def rebrand(self, person: PersonRecord, resources: Iterable[Resource]) -> list[Resource]:
        """Makes copies of A's (possibly planted) resources B's, in place: new ids,
        references and MRN."""
        out = []
        for resource in resources:
            ref = ref_of(resource)
            refs = {r: self.new_ref(r) for r in references_in(resource)}
            copied = _rewrite(resource, refs)
            copied["id"] = self.new_ref(ref).partition("/")[2]
            out.append(copied)
        patient = out[0]
        mrn = mrn_identifier(patient)
        if mrn is not None:
            mrn["system"] = self.ehr.mrn_system
            mrn["value"] = self.new_mrn(person)
        return out


def references_in(node: Any) -> Iterator[str]:
    """Every `Type/id` reference below node."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "reference" and isinstance(value, str):
                if "/" in value and not value.startswith(("#", URN_UUID, "http")):
                    yield value
            else:
                yield from references_in(value)
    elif isinstance(node, list):
        for item in node:
            yield from references_in(item)


def resource_time(resource: Mapping[str, Any]) -> datetime | None:
    """When the resource says it became true, by Concord's own rule for a record's event time
    (ingestion/record_time.py): what decides which of a source's records is its latest."""
    found = record_time.resource_time(resource)
    return found.moment if found is not None else None


def comparable(resource: Mapping[str, Any], *, drop_ids: bool = True) -> Any:
    """A resource with its id, its references' targets and its MRN value blanked: what two
    EHRs' copies of one record have in common when nothing else differs."""
    copied = copy.deepcopy(dict(resource))
    if drop_ids:
        copied.pop("id", None)
    _blank(copied)
    if copied.get("resourceType") == "Patient":
        mrn = mrn_identifier(copied)
        if mrn is not None:
            mrn["system"] = mrn["value"] = "*"
    return copied


def _blank(node: Any) -> None:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "reference" and isinstance(value, str) and "/" in value:
                node[key] = value.partition("/")[0] + "/*"
            else:
                _blank(value)
    elif isinstance(node, list):
        for item in node:
            _blank(item)
