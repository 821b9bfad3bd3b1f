"""The demo's sample population: valid FHIR, reproducible, and its answer key is right.

The disagreements are recomputed here from the generated FHIR JSON with a comparison written
independently of the generator's, so the sample and its answer key cannot drift apart.
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from fhir.resources.R4B.patient import Patient

from concord.config import DEFAULT_ENTERPRISE_ID_SYSTEM
from concord.demo import sample
from concord.demo.sample import AnswerKey, generate, load_answer_key, sample_dir

ATTRIBUTES = ("Patient.birthDate", "Patient.gender", "Patient.name")

# ---------------------------------------------------------------------------------------
# The detector's comparison rules, written again from their description
# ---------------------------------------------------------------------------------------


def _norm(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


def compared(resource: dict[str, Any], attribute: str) -> str | None:
    if attribute == "Patient.birthDate":
        return resource.get("birthDate")
    if attribute == "Patient.gender":
        return resource.get("gender")
    names = resource.get("name") or []
    if not names:
        return None
    official = [n for n in names if n.get("use") == "official"]
    chosen = official[0] if official else names[0]
    family = _norm(chosen.get("family", ""))
    given = _norm(" ".join(chosen.get("given", [])))
    return (family + "|" + given).casefold()


def open_alerts(
    state: dict[tuple[str, str], dict[str, Any]],
) -> dict[tuple[str, str], dict[str, str | None]]:
    """(patient_id, attribute) -> {source: compared value}, for every disagreement."""
    holders: dict[str, list[str]] = {}
    for patient_id, source in state:
        holders.setdefault(patient_id, []).append(source)
    alerts = {}
    for patient_id, sources in holders.items():
        for attribute in ATTRIBUTES:
            values = {s: compared(state[(patient_id, s)], attribute) for s in sources}
            if len(set(values.values())) > 1:
                alerts[(patient_id, attribute)] = values
    return alerts


def key_alerts(entries: list[Any]) -> dict[tuple[str, str], dict[str, str | None]]:
    out = {}
    for entry in entries:
        assert sorted(entry.values) == sorted(entry.sources)
        out[(entry.patient_id, entry.attribute)] = dict(entry.values)
    assert len(out) == len(entries), "duplicate alerts in the answer key"
    return out


def enterprise_id(resource: dict[str, Any]) -> str:
    ids = [
        i["value"]
        for i in resource["identifier"]
        if i.get("system") == DEFAULT_ENTERPRISE_ID_SYSTEM
    ]
    assert len(ids) == 1
    return str(ids[0])


def read_ndjson(path: Path) -> list[dict[str, Any]]:
    raw = path.read_bytes()
    assert raw.endswith(b"\n")
    return [json.loads(line) for line in raw.decode("utf-8").splitlines()]


# ---------------------------------------------------------------------------------------
# Fixtures
# ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def key() -> AnswerKey:
    return load_answer_key()


@pytest.fixture(scope="module")
def initial(key: AnswerKey) -> dict[str, list[dict[str, Any]]]:
    return {source: read_ndjson(sample_dir() / name) for source, name in key.sources.items()}


@pytest.fixture(scope="module")
def updates(key: AnswerKey) -> list[tuple[str, dict[str, Any]]]:
    files = {u.file for u in key.updates}
    assert files == {"updates.ndjson"}
    lines = read_ndjson(sample_dir() / "updates.ndjson")
    assert sorted(u.line for u in key.updates) == list(range(1, len(lines) + 1))
    return [(u.source, lines[u.line - 1]) for u in sorted(key.updates, key=lambda u: u.line)]


def initial_state(
    initial: dict[str, list[dict[str, Any]]],
) -> dict[tuple[str, str], dict[str, Any]]:
    state = {}
    for source, resources in initial.items():
        for resource in resources:
            slot = (enterprise_id(resource), source)
            assert slot not in state, f"{slot} appears twice in {source}"
            state[slot] = resource
    return state


def last_updated(resource: dict[str, Any]) -> datetime:
    return datetime.fromisoformat(resource["meta"]["lastUpdated"])


# ---------------------------------------------------------------------------------------
# Tests
# ---------------------------------------------------------------------------------------


def test_committed_files_are_exactly_what_generate_writes(tmp_path: Path) -> None:
    returned = generate(tmp_path)
    written = sorted(p.name for p in tmp_path.iterdir())
    assert written == sorted(["answer_key.json", "updates.ndjson", *returned.sources.values()])
    for name in written:
        assert (tmp_path / name).read_bytes() == (sample_dir() / name).read_bytes(), name
    assert returned == load_answer_key()
    assert load_answer_key(tmp_path) == returned


def test_command_line_regenerates(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert sample.main([str(tmp_path / "out")]) == 0
    assert "36 patients" in capsys.readouterr().out
    committed = (sample_dir() / "answer_key.json").read_bytes()
    assert (tmp_path / "out" / "answer_key.json").read_bytes() == committed


def test_every_record_is_a_valid_r4_patient_with_provenance(
    key: AnswerKey,
    initial: dict[str, list[dict[str, Any]]],
    updates: list[tuple[str, dict[str, Any]]],
) -> None:
    assert key.enterprise_id_system == DEFAULT_ENTERPRISE_ID_SYSTEM
    records = [(s, r) for s, rs in initial.items() for r in rs] + updates
    mrn_systems: dict[str, set[str]] = {}
    for source, resource in records:
        patient = Patient.model_validate(resource)
        assert patient.id == resource["id"]
        assert resource["resourceType"] == "Patient"
        assert re.fullmatch(r"EP-\d{6}", enterprise_id(resource))
        others = [i for i in resource["identifier"] if i["system"] != DEFAULT_ENTERPRISE_ID_SYSTEM]
        assert len(others) == 1 and others[0]["value"]
        mrn_systems.setdefault(source, set()).add(others[0]["system"])
        assert resource["meta"]["versionId"] in {"1", "2"}
        assert last_updated(resource).tzinfo is not None
        assert resource["name"] and resource["gender"] and resource["birthDate"]
    # one MRN system per source, different between sources
    assert all(len(systems) == 1 for systems in mrn_systems.values())
    assert len(set.union(*mrn_systems.values())) == len(key.sources) == 3
    stamps = [r["meta"]["lastUpdated"] for _, r in records]
    assert len(set(stamps)) == len(stamps), "lastUpdated must be distinct per record"
    for source, resources in initial.items():
        assert len({r["id"] for r in resources}) == len(resources), source
        assert all(r["meta"]["versionId"] == "1" for r in resources)


def test_population_shape(key: AnswerKey, initial: dict[str, list[dict[str, Any]]]) -> None:
    state = initial_state(initial)
    holders = Counter(patient_id for patient_id, _ in state)
    assert len(holders) == 36
    assert set(holders.values()) == {2, 3}
    assert {p.patient_id: len(p.sources) for p in key.patients} == dict(holders)
    for entry in key.patients:
        assert {s for (p, s) in state if p == entry.patient_id} == set(entry.sources)


def test_answer_key_matches_recomputed_disagreements(
    key: AnswerKey,
    initial: dict[str, list[dict[str, Any]]],
    updates: list[tuple[str, dict[str, Any]]],
) -> None:
    state = initial_state(initial)
    before = open_alerts(state)
    assert key_alerts(key.expected_after_initial_load) == before

    for source, resource in updates:
        slot = (enterprise_id(resource), source)
        previous = state[slot]  # an update is a new version of an existing record
        assert resource["id"] == previous["id"]
        assert int(resource["meta"]["versionId"]) > int(previous["meta"]["versionId"])
        assert last_updated(resource) > last_updated(previous)
        state[slot] = resource
    after = open_alerts(state)

    expected = key.expected_after_updates
    assert set(key_alerts(expected.resolved)) == before.keys() - after.keys()
    assert key_alerts(expected.opened) == {k: after[k] for k in after.keys() - before.keys()}
    assert key_alerts(expected.still_open) == {k: after[k] for k in after.keys() & before.keys()}
    for (patient_id, attribute), values in key_alerts(expected.resolved).items():
        assert len(set(values.values())) == 1
        assert values == {s: compared(state[(patient_id, s)], attribute) for s in values}


def test_planted_disagreements_cover_the_brief(
    key: AnswerKey, initial: dict[str, list[dict[str, Any]]]
) -> None:
    state = initial_state(initial)
    alerts = open_alerts(state)
    per_patient: dict[str, set[str]] = {}
    for patient_id, attribute in alerts:
        per_patient.setdefault(patient_id, set()).add(attribute)
    patients = {p for p, _ in state}
    agreeing = patients - per_patient.keys()
    single = Counter(next(iter(a)) for a in per_patient.values() if len(a) == 1)
    assert len(agreeing) >= 8
    assert single["Patient.birthDate"] >= 8
    assert single["Patient.gender"] >= 6
    assert single["Patient.name"] >= 6
    assert sum(len(a) == 2 for a in per_patient.values()) >= 4
    three_way = [v for v in alerts.values() if len(v) == 3 and len(set(v.values())) == 3]
    odd_one_out = [v for v in alerts.values() if len(v) == 3 and len(set(v.values())) == 2]
    assert three_way and odd_one_out
    assert len(three_way) + len(odd_one_out) >= 4

    # a day/month swap among the birthDate disagreements
    def swapped(a: str, b: str) -> bool:
        return a[:4] == b[:4] and a[5:7] == b[8:10] and a[8:10] == b[5:7] and a != b

    dates = [
        sorted(str(x) for x in v.values())
        for (_, attr), v in alerts.items()
        if attr == "Patient.birthDate" and len(v) == 2
    ]
    assert any(swapped(str(a), str(b)) for a, b in dates)

    # accents make a disagreement: the two names differ only by a diacritic
    def strip_accents(text: str) -> str:
        decomposed = unicodedata.normalize("NFD", text)
        return "".join(c for c in decomposed if not unicodedata.combining(c))

    names = [v for (_, attr), v in alerts.items() if attr == "Patient.name"]
    assert any(len({strip_accents(str(x)) for x in v.values()}) == 1 for v in names)


def test_agreeing_patients_include_the_traps(initial: dict[str, list[dict[str, Any]]]) -> None:
    """Case, whitespace and nickname variants that must NOT count as disagreement."""
    state = initial_state(initial)
    alerts = open_alerts(state)
    by_patient: dict[str, list[dict[str, Any]]] = {}
    for (patient_id, _), resource in state.items():
        by_patient.setdefault(patient_id, []).append(resource)
    agreeing = {p: rs for p, rs in by_patient.items() if not any(k[0] == p for k in alerts)}

    def raw_official(resource: dict[str, Any]) -> str:
        chosen = next(n for n in resource["name"] if n.get("use") in {"official", None})
        return str(chosen["family"]) + "|" + "/".join(chosen["given"])

    raw_variants = [rs for rs in agreeing.values() if len({raw_official(r) for r in rs}) > 1]
    assert len(raw_variants) >= 3  # case, whitespace, split given names
    nicknames = [
        rs
        for rs in agreeing.values()
        if any(n.get("use") == "nickname" for r in rs for n in r["name"])
    ]
    assert nicknames
    assert any(r["name"][0].get("use") == "nickname" for rs in nicknames for r in rs)


def test_updates_resolve_and_open(key: AnswerKey) -> None:
    after = key.expected_after_updates
    assert len(after.resolved) >= 2
    assert len(after.opened) >= 1
    initially_flagged = {a.patient_id for a in key.expected_after_initial_load}
    assert any(a.patient_id not in initially_flagged for a in after.opened)
    assert len(after.still_open) == len(key.expected_after_initial_load) - len(after.resolved)
    sources_of = {p.patient_id: set(p.sources) for p in key.patients}
    for update in key.updates:
        assert update.source in sources_of[update.patient_id]


@pytest.mark.parametrize(
    ("a", "b", "same"),
    [
        ({"family": "SMITH", "given": ["Jo"]}, {"family": "Smith", "given": ["jo"]}, True),
        (
            {"family": "Smith", "given": ["Mary", "Ann"]},
            {"family": "Smith", "given": ["Mary  Ann"]},
            True,
        ),
        ({"family": "Núñez", "given": ["José"]}, {"family": "Núñez", "given": ["Jose"]}, False),
    ],
)
def test_reference_name_rule(a: dict[str, Any], b: dict[str, Any], same: bool) -> None:
    ra = {"name": [{"use": "nickname", "family": "X", "given": ["Y"]}, {"use": "official", **a}]}
    rb = {"name": [b]}
    assert (compared(ra, "Patient.name") == compared(rb, "Patient.name")) is same
    # and the generator's implementation agrees with this one
    assert sample.name_key(ra["name"]) == compared(ra, "Patient.name")
    assert sample.name_key(rb["name"]) == compared(rb, "Patient.name")
