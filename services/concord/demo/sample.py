"""Deterministic generator of the demo's sample population and its answer key.

Thirty-six fictional patients (made-up names, no real people) are each held by two or three
of three fictional source systems. Every source sends FHIR R4 ``Patient`` resources, one per
NDJSON line, in its own file; the sending system travels in the Kafka ``source`` header, not
in the resource. A few disagreements on ``Patient.birthDate``, ``Patient.gender`` and
``Patient.name`` are planted, and ``updates.ndjson`` holds second versions of some records,
published after the initial load, that resolve some disagreements and open a new one.

The answer key is not copied from the planting table: it is computed from the generated FHIR
JSON with the comparison rules in :data:`COMPARISON_RULES` (and the generator checks that the
result matches what was planted). ``tests/unit/test_demo_sample.py`` recomputes it again,
independently, and regenerates the files to prove the committed copies are current.

Regenerate the committed files with ``python -m concord.demo.sample services/concord/demo``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import random
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import orjson
from pydantic import BaseModel, ConfigDict

from concord.config import DEFAULT_ENTERPRISE_ID_SYSTEM

SEED = 20261122
HOSPITAL = "hospital-ehr"
CLINIC = "clinic-ehr"
LAB = "lab-system"
SOURCES: tuple[str, ...] = (HOSPITAL, CLINIC, LAB)
SOURCE_FILES: dict[str, str] = {source: f"{source}.ndjson" for source in SOURCES}
UPDATES_FILE = "updates.ndjson"
ANSWER_KEY_FILE = "answer_key.json"

BIRTH_DATE = "Patient.birthDate"
GENDER = "Patient.gender"
NAME = "Patient.name"
ATTRIBUTES: tuple[str, ...] = (BIRTH_DATE, GENDER, NAME)

COMPARISON_RULES: dict[str, str] = {
    BIRTH_DATE: "Compared as the ISO date string exactly as sent (YYYY-MM-DD).",
    GENDER: "Compared as the FHIR administrative-gender code exactly as sent.",
    NAME: (
        "Take the first HumanName whose use is 'official', else the first HumanName. Key = "
        "family + '|' + the given names joined with single spaces; in each of the two parts, "
        "runs of whitespace collapse to one space and leading/trailing whitespace is dropped; "
        "then the key is case-folded (str.casefold). Accents are kept: 'José' and 'Jose' "
        "differ, 'SMITH' and 'Smith' do not. Other names (nickname, maiden...) are ignored."
    ),
}

ANSWER_KEY_DOC = (
    "Answer key of the Concord demo sample. Each source's initial records are in its own "
    "NDJSON file (sources: source -> file); publish each line to ehr.raw.fhir with the Kafka "
    "header source=<source>. Afterwards publish updates.ndjson line by line, each with the "
    "source named in 'updates' (line numbers are 1-based). A (patient_id, attribute) must "
    "raise an alert when the sources holding that patient do not all agree under "
    "comparison_rules; 'sources' lists every source asserting the attribute for the patient "
    "and 'values' what each asserts (the comparison key for Patient.name). "
    "expected_after_initial_load is the full set of open alerts after the initial load. "
    "After the updates: 'resolved' alerts close (values as they then stand), 'opened' are "
    "new, 'still_open' are initial alerts that stay open (values as they then stand); the "
    "open set is still_open + opened."
)


# --------------------------------------------------------------------------------------
# Comparison rules (the detector's, applied here to compute the answer key)
# --------------------------------------------------------------------------------------


def _collapse(text: str) -> str:
    return " ".join(text.split())


def name_key(names: Sequence[Mapping[str, Any]]) -> str | None:
    """The comparison key of a Patient.name list, per ``COMPARISON_RULES[NAME]``."""
    if not names:
        return None
    chosen = next((n for n in names if n.get("use") == "official"), names[0])
    family = _collapse(str(chosen.get("family", "")))
    given = _collapse(" ".join(str(g) for g in chosen.get("given", [])))
    return f"{family}|{given}".casefold()


def comparable_values(patient: Mapping[str, Any]) -> dict[str, str | None]:
    """The three compared attributes of one Patient resource, as the detector compares them."""
    return {
        BIRTH_DATE: patient.get("birthDate"),
        GENDER: patient.get("gender"),
        NAME: name_key(patient.get("name", [])),
    }


def enterprise_id(patient: Mapping[str, Any]) -> str:
    """The enterprise patient id a Patient carries (identifier with the enterprise system)."""
    for identifier in patient.get("identifier", []):
        if identifier.get("system") == DEFAULT_ENTERPRISE_ID_SYSTEM:
            return str(identifier["value"])
    raise ValueError("Patient carries no enterprise identifier")


# --------------------------------------------------------------------------------------
# Answer key model
# --------------------------------------------------------------------------------------


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class PatientEntry(_Model):
    patient_id: str
    category: str
    sources: list[str]


class UpdateEntry(_Model):
    source: str
    file: str
    line: int
    patient_id: str
    resource_id: str
    version_id: str
    last_updated: str
    note: str


class ExpectedAlert(_Model):
    patient_id: str
    attribute: str
    sources: list[str]
    values: dict[str, str | None]


class ExpectedAfterUpdates(_Model):
    resolved: list[ExpectedAlert]
    opened: list[ExpectedAlert]
    still_open: list[ExpectedAlert]


class AnswerKey(_Model):
    doc: str
    enterprise_id_system: str
    comparison_rules: dict[str, str]
    sources: dict[str, str]
    patients: list[PatientEntry]
    updates: list[UpdateEntry]
    expected_after_initial_load: list[ExpectedAlert]
    expected_after_updates: ExpectedAfterUpdates


# --------------------------------------------------------------------------------------
# The planting table
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Demo:
    """What one source says about one patient's demographics."""

    family: str
    given: tuple[str, ...]
    gender: str
    birth_date: str
    official: bool = True  # False: the name carries no 'use' (first name counts)
    nickname: str | None = None  # an extra use=nickname name, listed first (ignored)
    maiden: str | None = None  # an extra use=maiden name, listed after the official one


@dataclass(frozen=True)
class PatientSpec:
    number: int
    category: str
    records: dict[str, Demo]
    planted: frozenset[str] = field(default_factory=frozenset)

    @property
    def patient_id(self) -> str:
        return f"EP-{self.number:06d}"


@dataclass(frozen=True)
class UpdateSpec:
    source: str
    number: int
    changes: dict[str, Any]
    note: str
    address_changed: bool = False


def _d(family: str, given: str, gender: str, birth_date: str, **extra: Any) -> Demo:
    return Demo(family, tuple(given.split(" ")), gender, birth_date, **extra)


def _same(base: Demo, sources: Iterable[str], **per_source: Demo) -> dict[str, Demo]:
    return {s: per_source.get(s.replace("-", "_"), base) for s in sources}


def _v(base: Demo, **changes: Any) -> Demo:
    return dataclasses.replace(base, **changes)


H, C, L = HOSPITAL, CLINIC, LAB
ALL3 = (H, C, L)
B, G, N = BIRTH_DATE, GENDER, NAME


def _agreeing() -> list[PatientSpec]:
    quill = _d("Quillfeather", "Marigold", "female", "1984-02-17")
    puddle = _d("Puddlecombe", "Barnaby", "male", "1951-11-03")
    thistle = _d("Thistlewood", "Mary Ann", "female", "1990-06-30")
    wobble = _d("Wobblesworth", "Theodore", "male", "1968-09-09")
    fern = _d("Fernsby", "Clementine", "female", "2001-01-12")
    snoot = _d("Van der Snoot", "Ignatius", "male", "1977-04-22")
    bramble = _d("Brambleton", "Ophelia Rose", "female", "1959-12-25")
    snicker = _d("Snickersby", "Percival", "male", "2015-07-04")
    cat = "agree"
    return [
        PatientSpec(101, cat, _same(quill, ALL3)),
        PatientSpec(
            102,
            cat + ": case variants",
            _same(
                puddle,
                ALL3,
                clinic_ehr=_v(puddle, family="PUDDLECOMBE"),
                lab_system=_v(puddle, given=("barnaby",)),
            ),
        ),
        PatientSpec(
            103,
            cat + ": given names split vs joined, doubled space",
            {H: _v(thistle, given=("Mary", "Ann")), C: _v(thistle, given=("Mary  Ann",))},
        ),
        PatientSpec(
            104,
            cat + ": extra nickname on one source",
            _same(wobble, ALL3, hospital_ehr=_v(wobble, nickname="Teddy")),
        ),
        PatientSpec(
            105,
            cat + ": name without use on one source",
            {C: fern, L: _v(fern, official=False)},
        ),
        PatientSpec(
            106,
            cat + ": family case and whitespace",
            {H: snoot, L: _v(snoot, family="VAN  DER  SNOOT")},
        ),
        PatientSpec(
            107,
            cat + ": extra maiden name on one source",
            _same(bramble, ALL3, hospital_ehr=_v(bramble, maiden="Nettlebury")),
        ),
        PatientSpec(108, cat, {H: snicker, C: snicker}),
    ]


def _birth_dates() -> list[PatientSpec]:
    cat = "birthDate"
    rows: list[tuple[int, str, str, str, str, str, str, str]] = [
        # number, family, given, gender, first source, its date, second source, its date
        (201, "Grumblethorpe", "Augustin", "male", H, "1972-03-08", C, "1972-08-03"),
        (202, "Fizzwick", "Henrietta", "female", H, "1988-05-14", L, "1988-05-15"),
        (203, "Mumblesworth", "Cornelius", "male", C, "1945-10-30", L, "1954-10-30"),
        (204, "Crumpetti", "Lavinia", "female", H, "1999-01-01", C, "1990-01-01"),
        (205, "Bottomley-Fudge", "Rupert", "male", H, "1963-07-19", L, "1963-07-09"),
        (206, "Pickleworth", "Esmeralda", "female", H, "2010-12-03", C, "2010-03-12"),
        (207, "Nimblefoot", "Jasper", "male", C, "1980-11-11", L, "1981-11-11"),
        (208, "Tiddlywink", "Agatha", "female", H, "1933-04-05", L, "1933-04-25"),
    ]
    specs = []
    for number, family, given, gender, s1, d1, s2, d2 in rows:
        base = _d(family, given, gender, d1)
        specs.append(
            PatientSpec(number, cat, {s1: base, s2: _v(base, birth_date=d2)}, frozenset({B}))
        )
    return specs


def _genders() -> list[PatientSpec]:
    cat = "gender"
    rows: list[tuple[int, str, str, str, str, str, str, str]] = [
        (301, "Wafflesby", "Morgan", "1974-02-02", H, "female", C, "male"),
        (302, "Jumbleton", "Alexis", "1992-09-27", H, "male", L, "female"),
        (303, "Periwinkle", "Sam", "1983-06-06", C, "female", L, "male"),
        (304, "Hobnobber", "Riley", "2005-11-19", H, "other", C, "female"),
        (305, "Crinkleton", "Jordan", "1969-01-23", H, "male", L, "female"),
        (306, "Dapperfield", "Casey", "1955-08-14", C, "male", L, "female"),
    ]
    specs = []
    for number, family, given, birth, s1, g1, s2, g2 in rows:
        base = _d(family, given, g1, birth)
        specs.append(PatientSpec(number, cat, {s1: base, s2: _v(base, gender=g2)}, frozenset({G})))
    return specs


def _names() -> list[PatientSpec]:
    scrump = _d("Scrumpleton", "Winifred", "female", "1970-08-21")
    kettle = _d("Buttersworth", "Rosalind", "female", "1986-03-15", maiden="Kettleby")
    jose = _d("Montefiasco", "José", "male", "1979-07-07")
    zoe = _d("Flibbertigibbet", "Zoë", "female", "1995-10-10")
    bart = _d("Gobbledygook", "Bartholomew", "male", "1948-02-29")
    wiggle = _d("Wigglesworth", "Eleanor Grace", "female", "2003-05-05")
    cat = "name"
    planted = frozenset({N})
    return [
        PatientSpec(
            401, cat + ": family typo", {H: scrump, C: _v(scrump, family="Scrumpelton")}, planted
        ),
        PatientSpec(
            402,
            cat + ": family name after marriage",
            {H: kettle, C: _v(kettle, family="Kettleby", maiden=None)},
            planted,
        ),
        PatientSpec(403, cat + ": accent", {H: jose, L: _v(jose, given=("Jose",))}, planted),
        PatientSpec(404, cat + ": accent", {H: zoe, C: _v(zoe, given=("Zoe",))}, planted),
        PatientSpec(
            405, cat + ": given typo", {H: bart, L: _v(bart, given=("Bartholemew",))}, planted
        ),
        PatientSpec(
            406,
            cat + ": middle name missing",
            {C: wiggle, L: _v(wiggle, given=("Eleanor",))},
            planted,
        ),
    ]


def _two_attributes() -> list[PatientSpec]:
    fandango = _d("Fandango", "Quincy", "male", "1966-06-01")
    noodle = _d("Noodleman", "Gertrude", "female", "1957-09-17")
    pumper = _d("Pumpernickel", "Alex", "male", "1998-04-30")
    haber = _d("Haberdash", "Ruth", "female", "1940-12-31")
    cat = "two attributes"
    return [
        PatientSpec(
            501,
            cat + ": birthDate (day/month swap) and gender",
            {H: fandango, C: _v(fandango, gender="female", birth_date="1966-01-06")},
            frozenset({B, G}),
        ),
        PatientSpec(
            502,
            cat + ": birthDate and family typo",
            {H: noodle, L: _v(noodle, family="Noodelman", birth_date="1957-09-18")},
            frozenset({B, N}),
        ),
        PatientSpec(
            503,
            cat + ": gender and given name",
            {C: pumper, L: _v(pumper, given=("Alexa",), gender="female")},
            frozenset({G, N}),
        ),
        PatientSpec(
            504,
            cat + ": birthDate and hyphenated family, one of three",
            _same(
                haber, ALL3, clinic_ehr=_v(haber, family="Haberdash-Lyle", birth_date="1941-12-31")
            ),
            frozenset({B, N}),
        ),
    ]


def _splits() -> list[PatientSpec]:
    kerf = _d("Kerfuffle", "Dorothea", "female", "1975-02-14")
    shen = _d("Shenanigan", "Fitzgerald", "male", "1982-08-08")
    lolly = _d("Lollygag", "Harriet", "female", "1993-03-03")
    bally = _d("Ballyhoo", "Cedric", "male", "1961-05-20")
    return [
        PatientSpec(
            601,
            "three-way split: birthDate",
            _same(
                kerf,
                ALL3,
                clinic_ehr=_v(kerf, birth_date="1975-04-12"),
                lab_system=_v(kerf, birth_date="1957-02-14"),
            ),
            frozenset({B}),
        ),
        PatientSpec(
            602,
            "three-way split: name",
            _same(
                shen,
                ALL3,
                clinic_ehr=_v(shen, family="Shenanigans"),
                lab_system=_v(shen, given=("Fitz",)),
            ),
            frozenset({N}),
        ),
        PatientSpec(
            603,
            "one of three disagrees: gender",
            _same(lolly, ALL3, lab_system=_v(lolly, gender="male")),
            frozenset({G}),
        ),
        PatientSpec(
            604,
            "one of three disagrees: birthDate",
            _same(bally, ALL3, lab_system=_v(bally, birth_date="1961-05-02")),
            frozenset({B}),
        ),
    ]


def patient_specs() -> list[PatientSpec]:
    """The planting table: 36 patients, in the order their records are written."""
    return [
        *_agreeing(),
        *_birth_dates(),
        *_genders(),
        *_names(),
        *_two_attributes(),
        *_splits(),
    ]


def update_specs() -> list[UpdateSpec]:
    """Second versions of some records, in publishing order."""
    return [
        UpdateSpec(L, 202, {"birth_date": "1988-05-14"}, "lab-system corrects birthDate: resolves"),
        UpdateSpec(C, 303, {"gender": "male"}, "clinic-ehr corrects gender: resolves"),
        UpdateSpec(
            L,
            502,
            {"family": "Noodleman"},
            "lab-system corrects the family typo: name resolves, birthDate stays open",
        ),
        UpdateSpec(
            H,
            101,
            {"family": "Dunmore", "maiden": "Quillfeather"},
            "hospital-ehr records a married name: opens a name disagreement",
        ),
        UpdateSpec(
            C,
            601,
            {"birth_date": "1975-02-14"},
            "clinic-ehr corrects birthDate to match hospital-ehr: lab-system still differs, "
            "stays open",
        ),
        UpdateSpec(
            C,
            108,
            {"family": "SNICKERSBY"},
            "clinic-ehr moves the address and upper-cases the family name: no disagreement",
            address_changed=True,
        ),
    ]


# --------------------------------------------------------------------------------------
# FHIR rendering
# --------------------------------------------------------------------------------------

_ZONES: dict[str, timezone] = {
    HOSPITAL: timezone(timedelta(hours=-5)),
    CLINIC: UTC,
    LAB: timezone(timedelta(hours=1)),
}
_MRN_SYSTEMS: dict[str, str] = {
    HOSPITAL: "http://hospital-ehr.example.org/fhir/sid/mrn",
    CLINIC: "urn:oid:2.999.7001.1.2",
    LAB: "http://lab-system.example.com/patient-number",
}
_INITIAL_START = datetime(2026, 9, 28, 6, 0, tzinfo=UTC)
_UPDATES_START = datetime(2026, 11, 14, 9, 0, tzinfo=UTC)
_STREETS = ("Example Lane", "Sample Road", "Fictional Avenue", "Placeholder Way", "Demo Court")
_CITIES = ("Exampleton", "Sampleford", "Mockbury")


def _timestamp(moment: datetime, source: str) -> str:
    text = moment.astimezone(_ZONES[source]).isoformat(timespec="seconds")
    return text.replace("+00:00", "Z")


def _human_names(demo: Demo) -> list[dict[str, Any]]:
    names: list[dict[str, Any]] = []
    if demo.nickname is not None:
        names.append({"use": "nickname", "family": demo.family, "given": [demo.nickname]})
    official: dict[str, Any] = {"family": demo.family, "given": list(demo.given)}
    names.append({"use": "official", **official} if demo.official else official)
    if demo.maiden is not None:
        names.append({"use": "maiden", "family": demo.maiden, "given": list(demo.given)})
    return names


@dataclass
class _SourceRecord:
    """Everything about one source's record of one patient that stays across versions."""

    source: str
    patient_id: str
    resource_id: str
    mrn: str
    demo: Demo
    phone: str
    address: dict[str, Any] | None


class _Builder:
    def __init__(self, seed: int) -> None:
        # Sample data, not security: a seeded PRNG is what we want.
        self.rng = random.Random(seed)  # noqa: S311
        self.used_ids: set[str] = set()

    def _unique(self, make: Any) -> str:
        while True:
            value = str(make())
            if value not in self.used_ids:
                self.used_ids.add(value)
                return value

    def resource_id(self, source: str) -> str:
        rng = self.rng
        if source == HOSPITAL:
            return self._unique(lambda: uuid.UUID(int=rng.getrandbits(128), version=4))
        if source == CLINIC:
            return self._unique(lambda: f"cl-{rng.randrange(100000, 1000000)}")
        return self._unique(lambda: f"LS{rng.randrange(10**7, 10**8)}")

    def mrn(self, source: str) -> str:
        rng = self.rng
        prefix = {HOSPITAL: "H", CLINIC: "C", LAB: "L"}[source]
        return self._unique(lambda: f"{prefix}{rng.randrange(10**6, 10**7)}")

    def phone(self) -> str:
        return f"+1-555-01{self.rng.randrange(0, 100):02d}"  # 555-0100..0199: fictional

    def address(self) -> dict[str, Any]:
        rng = self.rng
        return {
            "use": "home",
            "line": [f"{rng.randrange(1, 999)} {rng.choice(_STREETS)}"],
            "city": rng.choice(_CITIES),
            "postalCode": f"{rng.randrange(0, 100000):05d}",
            "country": "ZZ",
        }

    def moment(self, start: datetime, slot: int, slot_hours: int) -> datetime:
        """A time in the ``slot``-th window of ``slot_hours`` after ``start``."""
        jitter = self.rng.randrange(0, slot_hours * 3600 // 4)
        return start + timedelta(hours=slot_hours * slot, seconds=jitter)

    def record(self, source: str, patient_id: str, demo: Demo) -> _SourceRecord:
        has_address = source == HOSPITAL or (source == CLINIC and self.rng.random() < 0.5)
        return _SourceRecord(
            source=source,
            patient_id=patient_id,
            resource_id=self.resource_id(source),
            mrn=self.mrn(source),
            demo=demo,
            phone=self.phone(),
            address=self.address() if has_address else None,
        )


def _patient_resource(record: _SourceRecord, version: str, last_updated: str) -> dict[str, Any]:
    source = record.source
    resource: dict[str, Any] = {
        "resourceType": "Patient",
        "id": record.resource_id,
        "meta": {"versionId": version, "lastUpdated": last_updated},
        "identifier": [
            {
                "use": "usual",
                "type": {
                    "coding": [
                        {"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "MR"}
                    ]
                },
                "system": _MRN_SYSTEMS[source],
                "value": record.mrn,
            },
            {"system": DEFAULT_ENTERPRISE_ID_SYSTEM, "value": record.patient_id},
        ],
        "active": True,
        "name": _human_names(record.demo),
    }
    if source != LAB:
        resource["telecom"] = [{"system": "phone", "value": record.phone, "use": "home"}]
    resource["gender"] = record.demo.gender
    resource["birthDate"] = record.demo.birth_date
    if record.address is not None:
        resource["address"] = [record.address]
    return resource


# --------------------------------------------------------------------------------------
# Answer key computation
# --------------------------------------------------------------------------------------

State = dict[tuple[str, str], dict[str, Any]]  # (patient_id, source) -> current resource


def disagreements(state: State) -> dict[tuple[str, str], ExpectedAlert]:
    """Every (patient_id, attribute) on which the sources holding the patient disagree."""
    by_patient: dict[str, dict[str, dict[str, str | None]]] = {}
    for (patient_id, source), resource in state.items():
        by_patient.setdefault(patient_id, {})[source] = comparable_values(resource)
    found: dict[tuple[str, str], ExpectedAlert] = {}
    for patient_id in sorted(by_patient):
        per_source = by_patient[patient_id]
        for attribute in ATTRIBUTES:
            values = {s: per_source[s][attribute] for s in sorted(per_source)}
            if len(set(values.values())) > 1:
                found[(patient_id, attribute)] = ExpectedAlert(
                    patient_id=patient_id,
                    attribute=attribute,
                    sources=sorted(values),
                    values=values,
                )
    return found


def _alerts_for(state: State, keys: Iterable[tuple[str, str]]) -> list[ExpectedAlert]:
    """The alerts for ``keys`` with the values as they stand in ``state``."""
    out = []
    for patient_id, attribute in sorted(keys):
        holders = sorted(s for (p, s) in state if p == patient_id)
        values = {s: comparable_values(state[(patient_id, s)])[attribute] for s in holders}
        out.append(
            ExpectedAlert(
                patient_id=patient_id, attribute=attribute, sources=holders, values=values
            )
        )
    return out


def _check_planted(specs: Sequence[PatientSpec], found: Iterable[tuple[str, str]]) -> None:
    planted = {(spec.patient_id, attribute) for spec in specs for attribute in spec.planted}
    if planted != set(found):
        raise AssertionError(f"planted {sorted(planted)} but computed {sorted(found)}")


# --------------------------------------------------------------------------------------
# Generation
# --------------------------------------------------------------------------------------


def _ndjson(resources: Iterable[Mapping[str, Any]]) -> bytes:
    return b"".join(orjson.dumps(resource) + b"\n" for resource in resources)


def _build_initial(
    builder: _Builder, specs: Sequence[PatientSpec]
) -> tuple[dict[str, list[dict[str, Any]]], dict[tuple[str, str], _SourceRecord], State]:
    files: dict[str, list[dict[str, Any]]] = {source: [] for source in SOURCES}
    records: dict[tuple[str, str], _SourceRecord] = {}
    state: State = {}
    for slot, spec in enumerate(specs):
        for source in SOURCES:
            demo = spec.records.get(source)
            if demo is None:
                continue
            record = builder.record(source, spec.patient_id, demo)
            stamp = _timestamp(builder.moment(_INITIAL_START, slot, 30), source)
            resource = _patient_resource(record, "1", stamp)
            files[source].append(resource)
            records[(spec.patient_id, source)] = record
            state[(spec.patient_id, source)] = resource
    return files, records, state


def _build_updates(
    builder: _Builder,
    updates: Sequence[UpdateSpec],
    records: dict[tuple[str, str], _SourceRecord],
    state: State,
) -> tuple[list[dict[str, Any]], list[UpdateEntry]]:
    lines: list[dict[str, Any]] = []
    entries: list[UpdateEntry] = []
    for index, update in enumerate(updates):
        patient_id = f"EP-{update.number:06d}"
        record = records[(patient_id, update.source)]
        record.demo = dataclasses.replace(record.demo, **update.changes)
        if update.address_changed:
            record.address = builder.address()
        stamp = _timestamp(builder.moment(_UPDATES_START, index, 4), update.source)
        resource = _patient_resource(record, "2", stamp)
        lines.append(resource)
        state[(patient_id, update.source)] = resource
        entries.append(
            UpdateEntry(
                source=update.source,
                file=UPDATES_FILE,
                line=index + 1,
                patient_id=patient_id,
                resource_id=record.resource_id,
                version_id="2",
                last_updated=stamp,
                note=update.note,
            )
        )
    return lines, entries


def build(seed: int = SEED) -> tuple[dict[str, bytes], AnswerKey]:
    """Every file of the sample (name -> bytes) and its answer key, without writing."""
    specs = patient_specs()
    builder = _Builder(seed)
    files, records, state = _build_initial(builder, specs)
    initial = disagreements(state)
    _check_planted(specs, initial)

    update_lines, update_entries = _build_updates(builder, update_specs(), records, state)
    after = disagreements(state)

    stamps = [r["meta"]["lastUpdated"] for rs in files.values() for r in rs]
    stamps += [entry.last_updated for entry in update_entries]
    if len(set(stamps)) != len(stamps):
        raise AssertionError("meta.lastUpdated values are not distinct")

    key = AnswerKey(
        doc=ANSWER_KEY_DOC,
        enterprise_id_system=DEFAULT_ENTERPRISE_ID_SYSTEM,
        comparison_rules=COMPARISON_RULES,
        sources=dict(SOURCE_FILES),
        patients=[
            PatientEntry(
                patient_id=spec.patient_id,
                category=spec.category,
                sources=[s for s in SOURCES if s in spec.records],
            )
            for spec in specs
        ],
        updates=update_entries,
        expected_after_initial_load=list(initial.values()),
        expected_after_updates=ExpectedAfterUpdates(
            resolved=_alerts_for(state, initial.keys() - after.keys()),
            opened=[after[k] for k in sorted(after.keys() - initial.keys())],
            still_open=[after[k] for k in sorted(after.keys() & initial.keys())],
        ),
    )
    out = {SOURCE_FILES[source]: _ndjson(files[source]) for source in SOURCES}
    out[UPDATES_FILE] = _ndjson(update_lines)
    answer = json.dumps(key.model_dump(mode="json"), indent=2, ensure_ascii=False) + "\n"
    out[ANSWER_KEY_FILE] = answer.encode("utf-8")
    return out, key


def generate(out_dir: Path) -> AnswerKey:
    """Write the sample's NDJSON files and ``answer_key.json`` into ``out_dir``."""
    files, key = build()
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        (out_dir / name).write_bytes(content)
    return key


def sample_dir() -> Path:
    """The package folder holding the committed sample files."""
    return Path(__file__).resolve().parent


def load_answer_key(directory: Path | None = None) -> AnswerKey:
    """The answer key of the committed sample (or of one generated into ``directory``)."""
    path = (directory or sample_dir()) / ANSWER_KEY_FILE
    return AnswerKey.model_validate_json(path.read_bytes())


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m concord.demo.sample", description="Regenerate the demo sample files."
    )
    parser.add_argument("out_dir", type=Path, help="folder to write the files into")
    args = parser.parse_args(argv)
    key = generate(args.out_dir)
    after = key.expected_after_updates
    print(
        f"{len(key.patients)} patients, {len(key.expected_after_initial_load)} alerts after "
        f"the initial load; {len(key.updates)} updates: {len(after.resolved)} resolved, "
        f"{len(after.opened)} opened, {len(after.still_open)} still open -> {args.out_dir}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
