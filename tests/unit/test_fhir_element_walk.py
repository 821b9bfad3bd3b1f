"""The element checks of FHIR ingestion (zoned date-times, resolvable references, well-formed
codes) walk a resource with one call per object and array (fhir._Elements, issue 17); they
found exactly what the generator walk before them found, in the same order: every input is
ingested twice, once with the walk as it was (kept here, the reference), and the outcomes
must be identical (the same records with the same warnings, or the same rejection).

Inputs: the public FHIR samples, the demo data, the benchmark's FHIR mix, the hypothesis
strategies of the fast-path test, and resources built to hit every check at every depth
(codings under clinical and other elements, references to contained and Bundle resources,
naive date-times, `text` and `contained` where they are skipped, keys that look like paths)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_fhir_fast_path import (
    DEMO,
    SAMPLES,
    _broken,
    _comparable,
    _raw,
)
from test_ingestion_fhir import _JSON

from concord.deadletters import Rejection
from concord.ingestion import fhir
from concord.ingestion.codes import check_coding

LIMIT = 10**8


class _WalkedElements:
    """The walk as it was before issue 17's rewrite: a generator per level, a path for every
    element, each element's problems as it is met."""

    def __init__(
        self, contained: set[str], clinical: tuple[str, ...], bundle: fhir._Bundle | None
    ) -> None:
        self.contained, self.clinical, self.bundle = contained, clinical, bundle
        self.found: list[Rejection] = []

    def object(self, resource: Mapping[str, Any], where: str) -> None:
        for path, node in _walk(resource, where):
            self.found.extend(self._problems(path, node))

    def _problems(self, path: str, node: Any) -> Iterator[Rejection]:
        if isinstance(node, str):
            if fhir._NAIVE_DATETIME.match(node):
                yield Rejection(
                    "DATETIME_WITHOUT_ZONE",
                    "a date-time with a time of day must carry a time-zone offset",
                    location=path,
                )
            return
        reference = node.get("reference")
        if isinstance(reference, str) and not fhir._resolves(
            reference, self.contained, self.bundle
        ):
            yield Rejection(
                "UNRESOLVED_REFERENCE",
                "the reference names no resource of its Bundle or contained resources",
                location=f"{path}.reference",
            )
        if path.endswith("]") and ".coding[" in path:
            problem = check_coding(node, system_required=path.startswith(self.clinical))
            if problem is not None:
                code, reason = problem
                yield Rejection(code, reason, location=path)


def _walk(node: Any, path: str) -> Iterator[tuple[str, Any]]:
    if isinstance(node, dict):
        yield path, node
        for key, value in node.items():
            if key in ("contained", "text"):
                continue
            yield from _walk(value, f"{path}.{key}")
    elif isinstance(node, list):
        for position, item in enumerate(node):
            yield from _walk(item, f"{path}[{position}]")
    elif isinstance(node, str):
        yield path, node


class _Found:
    """How many events were compared and how many element problems the new walk reported."""

    def __init__(self) -> None:
        self.events = 0
        self.warnings = 0
        self.rejected = 0


def _assert_same(value: bytes, monkeypatch: pytest.MonkeyPatch, found: _Found) -> None:
    new = fhir.ingest_fhir(_raw(value), max_payload_bytes=LIMIT)
    with monkeypatch.context() as patch:
        patch.setattr(fhir, "_Elements", _WalkedElements)
        old = fhir.ingest_fhir(_raw(value), max_payload_bytes=LIMIT)
    assert _comparable(new) == _comparable(old)
    found.events += 1
    if isinstance(new, Rejection):
        found.rejected += 1
    else:
        found.warnings += sum(len(record.warnings) for record in new)


def _compare_all(values: list[bytes], monkeypatch: pytest.MonkeyPatch) -> _Found:
    found = _Found()
    for value in values:
        _assert_same(value, monkeypatch, found)
    return found


@pytest.mark.shared_data
def test_the_public_fhir_samples_get_the_same_outcome(monkeypatch: pytest.MonkeyPatch) -> None:
    paths = sorted((SAMPLES / "fhir-expected").rglob("*.json"))
    if not paths:
        pytest.skip(f"NOT RUN: the public FHIR samples are absent ({SAMPLES} not found)")
    bundles = [p.read_bytes() for p in paths]
    entries = [
        orjson.dumps(entry["resource"])
        for value in bundles
        for entry in orjson.loads(value).get("entry", [])
        if isinstance(entry.get("resource"), dict)
    ]
    found = _compare_all(bundles + entries, monkeypatch)
    assert found.events == len(bundles) + len(entries)


def test_the_demo_data_gets_the_same_outcome(monkeypatch: pytest.MonkeyPatch) -> None:
    lines = [
        line
        for path in sorted(Path(DEMO).glob("*.ndjson"))
        for line in path.read_bytes().splitlines()
        if line.strip()
    ]
    assert _compare_all(lines, monkeypatch).events == len(lines)


# --- resources built to hit every check --------------------------------------------------------

_SYSTEMS = st.sampled_from(
    ["http://loinc.org", "http://snomed.info/sct", "http://hl7.org/fhir/sid/icd-10-cm", "", None]
)
_CODES = st.sampled_from(["2345-7", "2345-8", "44054006", "E11.9", "E11.", "x", "", None, 7])
_STRINGS = st.sampled_from(
    [
        "2024-01-02T03:04",
        "2024-01-02T03:04:05",
        "2024-01-02T03:04:05.123",
        "2024-01-02T03:04:05Z",
        "2024-01-02",
        "#med",
        "#nowhere",
        "#",
        "urn:uuid:0b8b2a4e-5f0a-4d7e-9d64-2f3e0b8a1c11",
        "urn:uuid:7d3c1e22-1111-4a2b-8c3d-000000000000",
        "urn:oid:1.2.3",
        "Patient/p1",
        "http://example.org/fhir/Patient/p1",
        "plain",
    ]
)
_KEY_NAMES = st.sampled_from(
    [
        "coding",
        "code",
        "valueCodeableConcept",
        "category",
        "reference",
        "subject",
        "text",
        "contained",
        "note",
        "effectiveDateTime",
        "component",
        "a.coding",
        "coding[",
        "x",
    ]
)
_CODING = st.fixed_dictionaries(
    {}, optional={"system": _SYSTEMS, "code": _CODES, "display": _STRINGS}
)
_TREE = st.recursive(
    _STRINGS | _CODING | st.integers(-5, 5) | st.none(),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(_KEY_NAMES, inner, max_size=4)
        | st.fixed_dictionaries({"coding": st.lists(_CODING | inner, max_size=3)})
        | st.fixed_dictionaries({"reference": _STRINGS})
    ),
    max_leaves=16,
)
_LAST_UPDATED = st.sampled_from(["2024-01-02T03:04:05Z", "2024-01-02T03:04"])
_TYPES = st.sampled_from(["Observation", "Condition", "Patient", "MedicationRequest"])


@st.composite
def _resource(draw: st.DrawFn) -> dict[str, Any]:
    resource: dict[str, Any] = {
        "resourceType": draw(_TYPES),
        "id": "r1",
        "meta": {
            "lastUpdated": draw(st.sampled_from(["2024-01-02T03:04:05Z", "2024-01-02T03:04"]))
        },
        "status": "final",
        "subject": {"reference": draw(_STRINGS)},
        "contained": [{"resourceType": "Medication", "id": "med"}],
    }
    for key in draw(st.lists(_KEY_NAMES, max_size=5)):
        resource[key] = draw(_TREE)
    return resource


def _in_bundle(resource: dict[str, Any]) -> dict[str, Any]:
    patient = {"resourceType": "Patient", "id": "p1", "meta": resource["meta"]}
    return {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [
            {"fullUrl": "urn:uuid:0b8b2a4e-5f0a-4d7e-9d64-2f3e0b8a1c11", "resource": patient},
            {"fullUrl": "urn:uuid:9f1f5a70-0000-4000-8000-000000000001", "resource": resource},
        ],
    }


_FOUND: dict[str, _Found] = {}


@pytest.fixture(scope="module", autouse=True)
def _report() -> Iterator[None]:
    yield
    for name, found in _FOUND.items():
        print(
            f"\n{name}: {found.events} events compared, {found.rejected} rejected, "
            f"{found.warnings} element warnings"
        )


_SETTINGS = settings(
    max_examples=400,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


@_SETTINGS
@given(resource=_resource(), bundled=st.booleans())
def test_resources_built_to_hit_every_check_get_the_same_outcome(
    resource: dict[str, Any], bundled: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    document = _in_bundle(resource) if bundled else resource
    _assert_same(orjson.dumps(document), monkeypatch, _FOUND.setdefault("built", _Found()))


@_SETTINGS
@given(resource=_broken())
def test_broken_structures_get_the_same_outcome(
    resource: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    _assert_same(orjson.dumps(resource), monkeypatch, _FOUND.setdefault("broken", _Found()))


@_SETTINGS
@given(document=_JSON)
def test_arbitrary_json_gets_the_same_outcome(
    document: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    _assert_same(orjson.dumps(document), monkeypatch, _FOUND.setdefault("arbitrary", _Found()))


def test_the_built_resources_reach_every_check(monkeypatch: pytest.MonkeyPatch) -> None:
    """The comparison above means something only if the checks fire: a few fixed resources
    raise each warning and each rejection the walk can give, the same both ways."""
    observation = {
        "resourceType": "Observation",
        "id": "o1",
        "meta": {"lastUpdated": "2024-01-02T03:04:05Z"},
        "status": "final",
        "code": {"coding": [{"code": "2345-7"}, {"system": "http://loinc.org", "code": "x"}]},
        "subject": {"reference": "Patient/p1"},
        "effectiveDateTime": "2024-01-02T03:04",
        "performer": [{"reference": "#nowhere"}],
    }
    found = _Found()
    _assert_same(orjson.dumps(observation), monkeypatch, found)
    outcome = fhir.ingest_fhir(_raw(orjson.dumps(observation)), max_payload_bytes=LIMIT)
    assert not isinstance(outcome, Rejection)
    assert sorted(w.reason_code for w in outcome[0].warnings) == [
        "CODE_WITHOUT_SYSTEM",
        "DATETIME_WITHOUT_ZONE",
        "INVALID_CODE",
        "UNRESOLVED_REFERENCE",
    ]
    fatal = {**observation, "meta": {"lastUpdated": "2024-01-02T03:04"}}
    _assert_same(orjson.dumps(fatal), monkeypatch, found)
    rejected = fhir.ingest_fhir(_raw(orjson.dumps(fatal)), max_payload_bytes=LIMIT)
    assert isinstance(rejected, Rejection)
    assert rejected.location == "Observation.meta.lastUpdated"


@_SETTINGS
@given(
    resource=_resource(),
    clinical=st.sampled_from([(), ("Observation.code.coding[",), ("X.a.coding[", "X.coding[")]),
    bundled=st.booleans(),
)
def test_each_walk_finds_the_same_problems_in_the_same_order(
    resource: dict[str, Any], clinical: tuple[str, ...], bundled: bool
) -> None:
    """Below ingestion's structural validation (which rejects most built resources before
    their warnings would be seen): the problems found, each with its reason and location."""
    bundle = fhir._Bundle(_in_bundle(resource)["entry"]) if bundled else None
    where = "X" if clinical and clinical[0].startswith("X") else resource["resourceType"]
    new = fhir._Elements({"#med"}, clinical, bundle)
    new.object(resource, where)
    old = _WalkedElements({"#med"}, clinical, bundle)
    old.object(resource, where)
    assert [(p.reason_code, p.reason, p.location) for p in new.found] == [
        (p.reason_code, p.reason, p.location) for p in old.found
    ]
    _FOUND.setdefault("walked", _Found()).warnings += len(new.found)
