"""Planted disagreements for a generated population published as two EHRs, pure.

A planted person's EHR B copy differs from EHR A's in exactly one element of one resource,
chosen so that it is what Concord compares: the *latest* assertion of its attribute (no other
resource of the person asserts that attribute at the same time). The kinds are
generate/planted.py's, and each plant lists what it must raise by attribute key as Concord
keys it (normalization's own `fhir_drafts`, and the derived oncology attributes of the
built-in policy). Kinds the generated histories cannot carry for a person (no allergy, no
cancer) are not planted on them.

Stale records come from the content itself, not from plants: an active medication whose
latest statement is older than the policy's reconfirmation window is stale at each EHR that
holds it (`baseline_stale`), and the answer key lists each with the record that makes it so.
"""

from __future__ import annotations

import random
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from fnmatch import fnmatchcase
from functools import cache
from typing import Any

from concord.conflicts.compare import ACTIVE, status_position
from concord.conflicts.policy import DEFAULT_POLICY
from concord.generate import planted
from concord.generate.synthea_engine import REFERENCE_DATE
from concord.generate.two_ehrs import PersonRecord, Resource, ref_of, resource_time
from concord.normalization.facts.drafts import FactDraft
from concord.normalization.facts.fhir import fhir_drafts
from concord.normalization.terminology import Terminology

SNOMED = "http://snomed.info/sct"
STAGE_GROUP = "Oncology.stageGroup"
METASTATIC = "Oncology.metastatic"
PRIMARY_SITE = "Oncology.primarySite"
# The kinds planted here, in the order they are taken in turn (planted.py's, without the
# stale kinds: stale records come from the histories themselves).
KINDS: tuple[str, ...] = (
    planted.BIRTH_DATE,
    planted.SEX,
    planted.NAME,
    planted.ALLERGY_STATUS,
    planted.MEDICATION_STATUS,
    planted.MEDICATION_DOSE,
    planted.CONDITION_STATUS,
    planted.LAB_VALUE,
    planted.ONCOLOGY_METASTATIC,
    planted.ONCOLOGY_STAGE,
    planted.ONCOLOGY_BIOMARKER,
    planted.ONCOLOGY_PRIMARY,
)
_SURNAMES = ("Okafor", "Lindqvist", "Brennan", "Takahashi", "Moreau", "Castillo", "Novak")
# SNOMED CT concepts the generator's cancer modules write, by family: a stage is changed
# within its family (stages 1-3 only: stage 4 would say metastatic too).
_STAGES: dict[str, dict[str, tuple[int, str]]] = {
    "stage": {
        "258215001": (1, "Stage 1 (qualifier value)"),
        "258219007": (2, "Stage 2 (qualifier value)"),
        "258224005": (3, "Stage 3 (qualifier value)"),
    },
    "ajcc": {
        code: (group, f"American Joint Committee on Cancer stage {name} (qualifier value)")
        for code, group, name in (
            ("1222724007", 1, "IA"),
            ("1222728005", 1, "IB"),
            ("1222766008", 2, "IIA"),
            ("1222769001", 2, "IIB"),
            ("1222802001", 3, "IIIA"),
            ("1222805004", 3, "IIIB"),
            ("1222806003", 3, "IIIC"),
        )
    },
    "nsclc": {
        code: (group, f"Non-small cell carcinoma of lung, TNM stage {group} (disorder)")
        for code, group in (("424132000", 1), ("425048006", 2), ("422968005", 3))
    },
    "sclc": {
        code: (
            group,
            f"Primary small cell malignant neoplasm of lung, TNM stage {group} (disorder)",
        )
        for code, group in (("67811000119102", 1), ("67821000119109", 2), ("67831000119107", 3))
    },
}
# AJCC distant metastases category (LOINC 21907-1 clinical, 21901-4 pathological), as the
# generator's breast cancer module codes it.
_METASTASIS = {
    "1229901006": ("1229903009", "American Joint Committee on Cancer cM1 (qualifier value)"),
    "1229903009": ("1229901006", "American Joint Committee on Cancer cM0 (qualifier value)"),
}
_M_CATEGORY = ("Observation/21907-1", "Observation/21901-4")
_STAGE_GROUP_OBSERVATION = "Observation/21908-9"
# Primary cancers a B copy may name instead (the policy derives a primary site from both).
_PRIMARIES = {
    "93880001": "Primary malignant neoplasm of lung (disorder)",
    "93761005": "Primary malignant neoplasm of colon (disorder)",
}
_RESULT_DISPLAYS = {
    "10828004": "Positive (qualifier value)",
    "260385009": "Negative (qualifier value)",
    "260373001": "Detected (qualifier value)",
    "260415000": "Not detected (qualifier value)",
}

Path = tuple[str | int, ...]


@dataclass
class Plant:
    """B's copy of `record_ref` (A's reference) has `b_value` at `path` where A has `a_value`."""

    kind: str
    person_id: str
    record_ref: str
    path: Path
    a_value: Any
    b_value: Any
    expect: list[planted.Expected] = field(default_factory=list)

    @property
    def element(self) -> str:
        text = str(self.path[0])
        for part in self.path[1:]:
            text += f"[{part}]" if isinstance(part, int) else f".{part}"
        return text

    def apply(self, resources: Sequence[Resource]) -> None:
        """Makes the change in B's copy (still under A's ids)."""
        (target,) = [r for r in resources if ref_of(r) == self.record_ref]
        node: Any = target
        for part in self.path[:-1]:
            node = node[part]
        node[self.path[-1]] = self.b_value


@dataclass(frozen=True)
class Assertion:
    resource: Resource
    draft: FactDraft
    time: datetime | None


@dataclass
class PersonIndex:
    """A person's facts by attribute, and the latest assertion of each where one resource
    alone holds the latest time."""

    person: PersonRecord
    by_attribute: dict[str, list[Assertion]]
    latest: dict[str, Assertion]

    @property
    def patient(self) -> Resource:
        return self.person.patient


def stream(seed: int, purpose: str) -> random.Random:
    """A random stream of its own per purpose, from the seed."""
    return random.Random(f"{seed}:pysynthea:{purpose}")  # noqa: S311 - synthetic data


@cache
def terminology() -> Terminology:
    return Terminology.load()


def facts(resource: Mapping[str, Any]) -> list[FactDraft]:
    return fhir_drafts(resource, terminology())


def index(person: PersonRecord, resources: Iterable[Resource] | None = None) -> PersonIndex:
    by_attribute: dict[str, list[Assertion]] = defaultdict(list)
    for resource in person.resources if resources is None else resources:
        time = resource_time(resource)
        for draft in facts(resource):
            by_attribute[draft.attribute].append(Assertion(resource, draft, time))
    latest: dict[str, Assertion] = {}
    for attribute, assertions in by_attribute.items():
        timed = [a for a in assertions if a.time is not None]
        if not timed or len(timed) != len(assertions):
            continue
        newest = max(a.time for a in timed if a.time is not None)
        at_newest = [a for a in timed if a.time == newest]
        if len({ref_of(a.resource) for a in at_newest}) == 1:
            latest[attribute] = at_newest[0]
    return PersonIndex(person, dict(by_attribute), latest)


# --- the policy's derived oncology attributes ----------------------------------------------


@cache
def _derived_patterns() -> tuple[str, ...]:
    return tuple(p.attribute for d in DEFAULT_POLICY.derived for p in d.when)


def implies_derived(attribute: str) -> bool:
    """Whether the built-in policy derives an oncology attribute from this one."""
    return any(fnmatchcase(attribute, pattern) for pattern in _derived_patterns())


@cache
def _biomarkers() -> dict[str, tuple[str, dict[str, str]]]:
    """Observation attribute -> (derived attribute, value map) for receptor and gene status."""
    table: dict[str, tuple[str, dict[str, str]]] = {}
    for derivation in DEFAULT_POLICY.derived:
        if derivation.attribute.startswith("Oncology.biomarker/") and derivation.value_map:
            for pattern in derivation.when:
                if pattern.attribute.startswith("Observation/"):
                    table[pattern.attribute] = (derivation.attribute, dict(derivation.value_map))
    return table


@cache
def _primary_sites() -> dict[str, str]:
    """Condition attribute (one code, no pattern) -> the primary site the policy derives."""
    sites: dict[str, str] = {}
    for derivation in DEFAULT_POLICY.derived:
        if derivation.attribute != PRIMARY_SITE or derivation.value is None:
            continue
        for pattern in derivation.when:
            if pattern.attribute.startswith("Condition/") and "*" not in pattern.attribute:
                sites[pattern.attribute] = derivation.value
    return sites


# --- candidates: what each kind can be planted on, for one person ------------------------------

Candidate = tuple[Resource, str]  # the resource, and the attribute it asserts


def _latest(
    person: PersonIndex, prefix: str, resource_type: str, keep: Callable[[Assertion], bool]
) -> list[Candidate]:
    return [
        (a.resource, attribute)
        for attribute, a in sorted(person.latest.items())
        if attribute.startswith(prefix)
        and a.resource.get("resourceType") == resource_type
        and keep(a)
    ]


def _is_active(assertion: Assertion) -> bool:
    return (
        assertion.draft.status == "ASSERTED"
        and status_position(assertion.draft.clinical_status) == ACTIVE
    )


def _coding(resource: Mapping[str, Any], element: str) -> Mapping[str, Any]:
    codings = resource.get(element, {}).get("coding") or [{}]
    first: Mapping[str, Any] = codings[0]
    return first


def candidates(person: PersonIndex, kind: str) -> list[Candidate]:
    finder = _FINDERS[kind]
    return finder(person)


def _demographic(element: str) -> Callable[[PersonIndex], list[Candidate]]:
    def find(person: PersonIndex) -> list[Candidate]:
        patient = person.patient
        if element == "gender" and patient.get("gender") not in ("male", "female"):
            return []
        if element == "name" and _official_name(patient) is None:
            return []
        return [(patient, element)] if patient.get(element) else []

    return find


def _official_name(patient: Mapping[str, Any]) -> int | None:
    names = patient.get("name") or []
    for position, name in enumerate(names):
        if name.get("use") == "official" and name.get("family"):
            return position
    return 0 if names and names[0].get("family") else None


def _only_active(person: PersonIndex) -> Callable[[Assertion], bool]:
    """The latest record of its attribute and the only active one. A source holding several
    records of a condition or an allergy believes it active while any of them says so
    (conflicts/beliefs.py: a recurring condition's resolved episodes do not resolve the
    active one), so changing this record's status is what changes the source's belief."""

    def only(a: Assertion) -> bool:
        records = person.by_attribute[a.draft.attribute]
        active = {ref_of(r.resource) for r in records if _is_active(r)}
        return _is_active(a) and active == {ref_of(a.resource)}

    return only


def _alone(person: PersonIndex) -> Callable[[Assertion], bool]:
    """The active record is the only record of its attribute: recoding it moves the whole
    concept to another code."""

    def alone(a: Assertion) -> bool:
        records = person.by_attribute[a.draft.attribute]
        return _is_active(a) and {ref_of(r.resource) for r in records} == {ref_of(a.resource)}

    return alone


def _allergies(person: PersonIndex) -> list[Candidate]:
    return _latest(person, "AllergyIntolerance/", "AllergyIntolerance", _only_active(person))


def _medication_statuses(person: PersonIndex) -> list[Candidate]:
    def flips(a: Assertion) -> bool:
        return not a.draft.attribute.endswith("/dose") and a.resource.get("status") in (
            "active",
            "stopped",
        )

    return _latest(person, "Medication/", "MedicationRequest", flips)


def _doses(person: PersonIndex) -> list[Candidate]:
    found = []
    for resource, attribute in _latest(person, "Medication/", "MedicationRequest", _is_active):
        dose = person.latest.get(f"{attribute}/dose")
        if dose is not None and dose.resource is resource and _dose_value(resource) is not None:
            found.append((resource, f"{attribute}/dose"))
    return found


def _dose_path() -> Path:
    return ("dosageInstruction", 0, "doseAndRate", 0, "doseQuantity", "value")


def _dose_value(resource: Mapping[str, Any]) -> float | None:
    node: Any = resource
    for part in _dose_path():
        try:
            node = node[part]
        except (KeyError, IndexError, TypeError):
            return None
    return node if isinstance(node, int | float) and node > 0 else None


def _conditions(person: PersonIndex) -> list[Candidate]:
    only = _only_active(person)

    def plain(a: Assertion) -> bool:
        attribute = a.draft.attribute
        return only(a) and not attribute.endswith("/stage") and not implies_derived(attribute)

    return _latest(person, "Condition/", "Condition", plain)


def _lab_values(person: PersonIndex) -> list[Candidate]:
    def numeric(a: Assertion) -> bool:
        value = a.resource.get("valueQuantity", {}).get("value")
        return (
            isinstance(value, int | float)
            and value > 0
            and not a.resource.get("component")
            and not implies_derived(a.draft.attribute)
        )

    found = _latest(person, "Observation/", "Observation", numeric)
    laboratory = [c for c in found if _category(c[0]) == "laboratory"]
    return laboratory or found


def _category(resource: Mapping[str, Any]) -> str | None:
    for category in resource.get("category", ()):
        for coding in category.get("coding", ()):
            code = coding.get("code")
            return code if isinstance(code, str) else None
    return None


def _metastatic(person: PersonIndex) -> list[Candidate]:
    found = []
    for attribute in _M_CATEGORY:
        a = person.latest.get(attribute)
        if a is not None and _value_code(a.resource) in _METASTASIS:
            found.append((a.resource, attribute))
    return found


def _value_code(resource: Mapping[str, Any]) -> str | None:
    coding = _coding(resource, "valueCodeableConcept")
    code = coding.get("code") if coding.get("system") == SNOMED else None
    return code if isinstance(code, str) else None


def _stage_family(code: str | None) -> str | None:
    return next((family for family, codes in _STAGES.items() if code in codes), None)


def _stages(person: PersonIndex) -> list[Candidate]:
    found = []
    observed = person.latest.get(_STAGE_GROUP_OBSERVATION)
    if observed is not None and _stage_family(_value_code(observed.resource)) is not None:
        found.append((observed.resource, _STAGE_GROUP_OBSERVATION))
    for resource, attribute in _latest(person, "Condition/", "Condition", _alone(person)):
        coding = _coding(resource, "code")
        if coding.get("system") == SNOMED and _stage_family(coding.get("code")) is not None:
            found.append((resource, attribute))
    return found


def _biomarker_candidates(person: PersonIndex) -> list[Candidate]:
    found = []
    for attribute, (_, value_map) in sorted(_biomarkers().items()):
        a = person.latest.get(attribute)
        if a is not None and a.draft.value in value_map and _opposite(a, value_map) is not None:
            found.append((a.resource, attribute))
    return found


def _opposite(a: Assertion, value_map: Mapping[str, str]) -> str | None:
    """A code of the same system saying the opposite (positive <-> negative)."""
    said = value_map[str(a.draft.value)]
    system = str(a.draft.value).rpartition("|")[0]
    for value, meaning in value_map.items():
        if meaning != said and value.rpartition("|")[0] == system:
            return value.rpartition("|")[2]
    return None


def _primaries(person: PersonIndex) -> list[Candidate]:
    sites = _primary_sites()
    return [
        (resource, attribute)
        for resource, attribute in _latest(person, "Condition/", "Condition", _alone(person))
        if attribute in sites
    ]


_FINDERS: dict[str, Callable[[PersonIndex], list[Candidate]]] = {
    planted.BIRTH_DATE: _demographic("birthDate"),
    planted.SEX: _demographic("gender"),
    planted.NAME: _demographic("name"),
    planted.ALLERGY_STATUS: _allergies,
    planted.MEDICATION_STATUS: _medication_statuses,
    planted.MEDICATION_DOSE: _doses,
    planted.CONDITION_STATUS: _conditions,
    planted.LAB_VALUE: _lab_values,
    planted.ONCOLOGY_METASTATIC: _metastatic,
    planted.ONCOLOGY_STAGE: _stages,
    planted.ONCOLOGY_BIOMARKER: _biomarker_candidates,
    planted.ONCOLOGY_PRIMARY: _primaries,
}


def feasible(person: PersonIndex) -> list[str]:
    return [kind for kind in KINDS if candidates(person, kind)]


# --- choosing who gets which plant ---------------------------------------------------------


def choose(feasible_kinds: Mapping[str, Sequence[str]], count: int, seed: int) -> dict[str, str]:
    """person_id -> kind for `count` persons: kinds taken in turn, each round the kinds with
    the fewest persons left first, so that every kind some person can carry is planted
    before any is planted twice; persons in an order drawn from the seed."""
    order = sorted(feasible_kinds)
    stream(seed, "plants").shuffle(order)
    chosen: dict[str, str] = {}
    while len(chosen) < count:
        left = {
            kind: [p for p in order if p not in chosen and kind in feasible_kinds[p]]
            for kind in KINDS
        }
        rounds = sorted((k for k in KINDS if left[k]), key=lambda k: (len(left[k]), KINDS.index(k)))
        if not rounds:
            break
        for kind in rounds:
            if len(chosen) == count:
                break
            free = [p for p in left[kind] if p not in chosen]
            if free:
                chosen[free[0]] = kind
    return chosen


# --- planting --------------------------------------------------------------------------------


def plant(person: PersonIndex, kind: str, seed: int) -> Plant:
    """The plant of this kind for this person: its change and what it must raise."""
    rng = stream(seed, f"plant:{person.person.person_id}")
    resource, attribute = rng.choice(candidates(person, kind))
    made = _PLANTERS[kind](person, resource, attribute, rng)
    made.kind = kind
    made.person_id = person.person.person_id
    made.record_ref = ref_of(resource)
    return made


def _made(path: Path, a_value: Any, b_value: Any, *expect: tuple[str, str]) -> Plant:
    return Plant(
        "",
        "",
        "",
        path,
        a_value,
        b_value,
        [planted.Expected(kind, attribute) for kind, attribute in expect],
    )


def _birth_date(
    person: PersonIndex, resource: Resource, attribute: str, rng: random.Random
) -> Plant:
    true = date.fromisoformat(str(resource["birthDate"]))
    shift = timedelta(days=rng.randrange(1, 400) * rng.choice((-1, 1)))
    sent = true + shift if true + shift < REFERENCE_DATE.date() else true - abs(shift)
    return _made(
        ("birthDate",),
        true.isoformat(),
        sent.isoformat(),
        (planted.BIRTH_DATE, "Patient.birthDate"),
    )


def _sex(person: PersonIndex, resource: Resource, attribute: str, rng: random.Random) -> Plant:
    said = resource["gender"]
    sent = "female" if said == "male" else "male"
    return _made(("gender",), said, sent, (planted.SEX, "Patient.gender"))


def _name(person: PersonIndex, resource: Resource, attribute: str, rng: random.Random) -> Plant:
    position = _official_name(resource)
    assert position is not None  # noqa: S101 - a candidate has one
    family = resource["name"][position]["family"]
    sent = rng.choice([s for s in _SURNAMES if s != family])
    return _made(("name", position, "family"), family, sent, (planted.NAME, "Patient.name"))


def _allergy(person: PersonIndex, resource: Resource, attribute: str, rng: random.Random) -> Plant:
    verification = _coding(resource, "verificationStatus").get("code")
    element, sent = rng.choice([("clinicalStatus", "inactive"), ("verificationStatus", "refuted")])
    if element == "verificationStatus" and verification is None:
        element, sent = "clinicalStatus", "inactive"
    said = _coding(resource, element).get("code")
    return _made((element, "coding", 0, "code"), said, sent, (planted.ALLERGY_STATUS, attribute))


def _medication_status(
    person: PersonIndex, resource: Resource, attribute: str, rng: random.Random
) -> Plant:
    said = resource["status"]
    sent = "stopped" if said == "active" else "active"
    return _made(("status",), said, sent, (planted.MEDICATION_STATUS, attribute))


def _medication_dose(
    person: PersonIndex, resource: Resource, attribute: str, rng: random.Random
) -> Plant:
    said = _dose_value(resource)
    assert said is not None  # noqa: S101 - a candidate has one
    sent = said * 2
    return _made(_dose_path(), said, sent, (planted.MEDICATION_DOSE, attribute))


def _condition_status(
    person: PersonIndex, resource: Resource, attribute: str, rng: random.Random
) -> Plant:
    said = _coding(resource, "clinicalStatus").get("code")
    return _made(
        ("clinicalStatus", "coding", 0, "code"),
        said,
        "resolved",
        (planted.CONDITION_STATUS, attribute),
    )


def _lab_value(
    person: PersonIndex, resource: Resource, attribute: str, rng: random.Random
) -> Plant:
    said = resource["valueQuantity"]["value"]
    sent = round(said * 1.25, 6)
    if isinstance(said, int) and sent == int(sent):
        sent = int(sent)
    return _made(("valueQuantity", "value"), said, sent, (planted.LAB_VALUE, attribute))


def _metastatic_plant(
    person: PersonIndex, resource: Resource, attribute: str, rng: random.Random
) -> Plant:
    said = dict(_coding(resource, "valueCodeableConcept"))
    code, display = _METASTASIS[str(said["code"])]
    return _made(
        ("valueCodeableConcept", "coding", 0),
        said,
        {"system": SNOMED, "code": code, "display": display},
        (planted.ONCOLOGY_METASTATIC, attribute),
        (planted.ONCOLOGY_METASTATIC, METASTATIC),
    )


def _stage_plant(
    person: PersonIndex, resource: Resource, attribute: str, rng: random.Random
) -> Plant:
    observation = resource.get("resourceType") == "Observation"
    element = "valueCodeableConcept" if observation else "code"
    said = dict(_coding(resource, element))
    family = _STAGES[str(_stage_family(said.get("code")))]
    group = family[str(said["code"])][0]
    others = sorted(code for code, (g, _) in family.items() if g != group)
    code = rng.choice(others)
    expect = [(planted.ONCOLOGY_STAGE, attribute)] if observation else []
    return _made(
        (element, "coding", 0),
        said,
        {"system": SNOMED, "code": code, "display": family[code][1]},
        *expect,
        (planted.ONCOLOGY_STAGE, STAGE_GROUP),
    )


def _biomarker_plant(
    person: PersonIndex, resource: Resource, attribute: str, rng: random.Random
) -> Plant:
    derived, value_map = _biomarkers()[attribute]
    said = dict(_coding(resource, "valueCodeableConcept"))
    code = _opposite(person.latest[attribute], value_map)
    sent: dict[str, Any] = {"system": said.get("system"), "code": code}
    if code in _RESULT_DISPLAYS:
        sent["display"] = _RESULT_DISPLAYS[str(code)]
    return _made(
        ("valueCodeableConcept", "coding", 0),
        said,
        sent,
        (planted.ONCOLOGY_BIOMARKER, attribute),
        (planted.ONCOLOGY_BIOMARKER, derived),
    )


def _primary_plant(
    person: PersonIndex, resource: Resource, attribute: str, rng: random.Random
) -> Plant:
    sites = _primary_sites()
    said = dict(_coding(resource, "code"))
    code = next(c for c in _PRIMARIES if sites.get(f"Condition/{c}") != sites[attribute])
    return _made(
        ("code", "coding", 0),
        said,
        {"system": SNOMED, "code": code, "display": _PRIMARIES[code]},
        (planted.ONCOLOGY_PRIMARY, PRIMARY_SITE),
    )


_PLANTERS: dict[str, Callable[[PersonIndex, Resource, str, random.Random], Plant]] = {
    planted.BIRTH_DATE: _birth_date,
    planted.SEX: _sex,
    planted.NAME: _name,
    planted.ALLERGY_STATUS: _allergy,
    planted.MEDICATION_STATUS: _medication_status,
    planted.MEDICATION_DOSE: _medication_dose,
    planted.CONDITION_STATUS: _condition_status,
    planted.LAB_VALUE: _lab_value,
    planted.ONCOLOGY_METASTATIC: _metastatic_plant,
    planted.ONCOLOGY_STAGE: _stage_plant,
    planted.ONCOLOGY_BIOMARKER: _biomarker_plant,
    planted.ONCOLOGY_PRIMARY: _primary_plant,
}


# --- stale records the histories hold ----------------------------------------------------------


@dataclass
class StaleCounts:
    expected: int = 0
    ambiguous: int = 0  # the latest statements of one drug tie in time and differ in status


def baseline_stale(
    person: PersonIndex, source: str, refs: Callable[[str], str], counts: StaleCounts
) -> list[planted.Expected]:
    """Each active medication (its latest MedicationRequest/Statement) is stale at `source`
    once the reconfirmation window has passed since it was stated. `refs` maps A's record
    reference to this source's."""
    found = []
    for attribute, assertions in sorted(person.by_attribute.items()):
        if not attribute.startswith("Medication/") or attribute.endswith("/dose"):
            continue
        rule = DEFAULT_POLICY.rule(attribute, "MEDICATION")
        if rule is None or rule.reconfirm_within is None:
            continue
        newest = max((a.time for a in assertions if a.time is not None), default=None)
        at_newest = [a for a in assertions if a.time == newest]
        active = [_is_active(a) for a in at_newest]
        if newest is None or not any(active):
            continue
        if not all(active):
            counts.ambiguous += 1
            continue
        record = ref_of(at_newest[0].resource)
        days = rule.reconfirm_within.days
        found.append(
            planted.Expected(
                planted.STALE_RECONFIRM,
                attribute,
                source,
                newest + rule.reconfirm_within,
                refs(record),
                f"{record} says active on {newest.date().isoformat()}; not confirmed again "
                f"within {days} days",
            )
        )
    counts.expected += len(found)
    return found


def tally(plants: Iterable[Plant]) -> Counter[str]:
    return Counter(p.kind for p in plants)
