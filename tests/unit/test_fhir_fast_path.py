"""The fast structural check (concord.ingestion.fhir_fast) changes no decision: every input is
ingested twice, with the fast path and with every resource sent to fhir.resources (the path
before it), and the outcomes must be identical: the same IngestedRecords (payload, ids,
provenance, warnings) or the same Rejection (reason code, reason, location).

Inputs: the public FHIR samples (shared_data), the demo data, the test fixtures of the FHIR
ingestion tests, the benchmark's FHIR mix, the hypothesis strategies of test_ingestion_fhir,
and mutations of valid resources that break their structure. A last test shows the comparison
fails when the fast path accepts what the model refuses."""

from __future__ import annotations

import collections
import copy
import sys
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_ingestion_fhir import _JSON, _PATIENT_KEYS
from test_ingestion_fhir import _bundle as _collection
from test_ingestion_fhir import _patient as _test_patient
from test_ingestion_fhir_clinical import MINIMAL, _observation

from concord.config import IngestionSettings
from concord.deadletters import Rejection
from concord.events.models import IngestedRecord
from concord.events.raw import RawEvent
from concord.ingestion import fhir, fhir_fast
from concord.ingestion.app import ingest_functions

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = ROOT.parent / "shared" / "data" / "fhir-converter-samples"
DEMO = ROOT / "services" / "concord" / "demo"
sys.path.insert(0, str(ROOT / "benchmarks"))
from benchlib.raw_formats import (  # noqa: E402
    fhir_bundle,
    fhir_condition,
    fhir_events,
    fhir_observation,
    fhir_patient,
)

RECEIVED = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
LIMIT = 10**8
Outcome = list[IngestedRecord] | Rejection


def _raw(value: bytes) -> RawEvent:
    return RawEvent(
        topic="ehr.raw.fhir",
        partition=0,
        offset=7,
        key=b"k",
        value=value,
        headers=(("source", b"ehr-alpha"),),
        received_time=RECEIVED,
    )


class _Counts:
    """How many resources the fast path was asked about, and how many it accepted."""

    def __init__(self) -> None:
        self.asked = 0
        self.accepted = 0

    def check(self, resource: Mapping[str, Any]) -> bool:
        verdict = fhir_fast.structurally_valid(resource)
        self.asked += 1
        self.accepted += verdict
        return verdict


def _both(
    value: bytes, monkeypatch: pytest.MonkeyPatch, counts: _Counts | None = None
) -> tuple[Outcome, Outcome]:
    """(with the fast path, with every resource validated by fhir.resources)."""
    counts = counts or _Counts()
    with monkeypatch.context() as patch:
        patch.setattr(fhir, "FAST_PATH", True)
        patch.setattr(fhir, "structurally_valid", counts.check)
        fast = fhir.ingest_fhir(_raw(value), max_payload_bytes=LIMIT)
    with monkeypatch.context() as patch:
        patch.setattr(fhir, "FAST_PATH", False)
        slow = fhir.ingest_fhir(_raw(value), max_payload_bytes=LIMIT)
    return fast, slow


def _assert_same(
    value: bytes, monkeypatch: pytest.MonkeyPatch, counts: _Counts | None = None
) -> None:
    fast, slow = _both(value, monkeypatch, counts)
    assert _comparable(fast) == _comparable(slow)


def _comparable(outcome: Outcome) -> Any:
    if isinstance(outcome, Rejection):
        return ("rejected", outcome.reason_code, outcome.reason, outcome.location)
    # Each IngestedRecord whole: payload bytes, record id, provenance, warnings.
    return ("ingested", [record.model_dump() for record in outcome])


def _compare_all(label: str, values: list[bytes], monkeypatch: pytest.MonkeyPatch) -> _Counts:
    counts = _Counts()
    for value in values:
        _assert_same(value, monkeypatch, counts)
    print(
        f"\n{label}: {len(values)} events, {counts.asked} resources compared, "
        f"{counts.accepted} accepted by the fast path, {counts.asked - counts.accepted} by "
        "fhir.resources"
    )
    return counts


# --- the fixed inputs ---------------------------------------------------------------------------


@pytest.mark.shared_data
def test_the_public_fhir_samples_get_the_same_outcome(monkeypatch: pytest.MonkeyPatch) -> None:
    paths = sorted((SAMPLES / "fhir-expected").rglob("*.json"))
    if not paths:
        pytest.skip(f"NOT RUN: the public FHIR samples are absent ({SAMPLES} not found)")
    counts = _compare_all("public samples", [p.read_bytes() for p in paths], monkeypatch)
    # Also each entry alone, and each entry with its resource broken (below).
    singles = [
        orjson.dumps(entry["resource"])
        for p in paths
        for entry in orjson.loads(p.read_bytes()).get("entry", [])
        if isinstance(entry.get("resource"), dict)
    ]
    alone = _compare_all("public samples' entries alone", singles, monkeypatch)
    assert counts.accepted > 0 and alone.accepted > 0


def test_the_demo_data_gets_the_same_outcome(monkeypatch: pytest.MonkeyPatch) -> None:
    lines = [
        line
        for path in sorted(DEMO.glob("*.ndjson"))
        for line in path.read_bytes().splitlines()
        if line.strip()
    ]
    counts = _compare_all("demo data", lines, monkeypatch)
    assert counts.accepted > 0


def test_the_fhir_test_fixtures_get_the_same_outcome(monkeypatch: pytest.MonkeyPatch) -> None:
    documents: list[Any] = [*MINIMAL.values(), _observation(), _test_patient()]
    documents.append(_collection(*MINIMAL.values()))
    counts = _compare_all("test fixtures", [orjson.dumps(d) for d in documents], monkeypatch)
    assert counts.accepted > 0


def test_the_benchmark_mix_gets_the_same_outcome(monkeypatch: pytest.MonkeyPatch) -> None:
    events, _ = fhir_events("eq", 400)
    counts = _compare_all("benchmark mix", events, monkeypatch)
    assert counts.accepted == counts.asked  # all of the benchmark's mix is valid R4


# Resources the hypothesis tests below compared, per test (printed at the end of the module).
_GENERATED: dict[str, _Counts] = collections.defaultdict(_Counts)


@pytest.fixture(scope="module", autouse=True)
def _report_generated() -> Iterator[None]:
    yield
    for name, counts in _GENERATED.items():
        print(
            f"\n{name}: {counts.asked} resources compared, {counts.accepted} accepted by the "
            f"fast path, {counts.asked - counts.accepted} by fhir.resources"
        )


# --- the existing hypothesis strategies ---------------------------------------------------------


@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(
    changes=st.dictionaries(_PATIENT_KEYS, _JSON, max_size=4),
    drops=st.sets(_PATIENT_KEYS, max_size=3),
    in_bundle=st.booleans(),
)
def test_mutated_patients_get_the_same_outcome(
    changes: dict[str, Any], drops: set[str], in_bundle: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    patient = {k: v for k, v in {**_test_patient(), **changes}.items() if k not in drops}
    document = _collection(_test_patient("ok"), patient) if in_bundle else patient
    _assert_same(orjson.dumps(document), monkeypatch, _GENERATED["mutated patients"])


@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(document=_JSON)
def test_arbitrary_json_gets_the_same_outcome(
    document: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    _assert_same(orjson.dumps(document), monkeypatch, _GENERATED["arbitrary JSON"])


# --- structure broken on purpose ----------------------------------------------------------------

_BASES: dict[str, Callable[[], dict[str, Any]]] = {
    "benchmark Patient": lambda: fhir_patient("mp", 3),
    "benchmark Observation": lambda: fhir_observation("mo", "Patient/mp", 5),
    "benchmark Condition": lambda: fhir_condition("mc", "Patient/mp", 7),
    **{
        f"minimal {name}": (lambda r=resource: copy.deepcopy(r))
        for name, resource in MINIMAL.items()
    },
}
# Values that break an element one way or another: wrong JSON types, empty values, bad dates,
# codes with whitespace, ids too long, numbers out of range, nulls, objects and arrays where
# scalars go.
_BAD_VALUES: list[Any] = [
    None,
    True,
    False,
    0,
    1.0,
    "x",
    "1",
    -1,
    2**31,
    1.5,
    "",
    " ",
    "a  b",
    " lead",
    "x" * 65,
    "1980-13-45",
    "2024-02-30",
    "2024-01-02T03:04",
    "2024-01-02T03:04:05",
    "2024-01-02T24:00:00Z",
    "2024-01-02T03:04:60Z",
    "2024-01-02T03:04:05+15:00",
    "0000-01-01",
    "1980",
    "1980-02",
    "2024-01-02T03:04:05.1234567Z",
    "2024-1-2",
    "true",
    "12.50",
    "urn:uuid:not-a-uuid",
    "not a uri",
    [],
    {},
    [None],
    ["x"],
    [{}],
    {"x": 1},
]
_BAD_LEAVES = st.sampled_from(_BAD_VALUES)
_KEYS_ADDED = [
    "x",
    "valueString",
    "valueBoolean",
    "_birthDate",
    "_status",
    "fhir_comments",
    "resourceType",
    "contained",
    "extension",
    "modifierExtension",
    "birthDate__ext",
    "class_fhir",
    "onsetString",
    "effectivePeriod",
    "deceasedBoolean",
    "text",
]
_BAD_KEYS = st.sampled_from(_KEYS_ADDED)


def _slots(node: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    """Every place in a resource: each key of each object, each item of each array."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield (*path, key)
            yield from _slots(value, (*path, key))
    elif isinstance(node, list):
        for position, item in enumerate(node):
            yield (*path, position)
            yield from _slots(item, (*path, position))


def _parent(node: Any, path: tuple[Any, ...]) -> Any:
    for step in path[:-1]:
        node = node[step]
    return node


@st.composite
def _broken(draw: st.DrawFn) -> dict[str, Any]:
    resource = _BASES[draw(st.sampled_from(sorted(_BASES)))]()
    for _ in range(draw(st.integers(min_value=1, max_value=3))):
        slots = list(_slots(resource))
        if not slots:
            break
        path = draw(st.sampled_from(slots))
        parent = _parent(resource, path)
        step = path[-1]
        action = draw(st.sampled_from(["replace", "wrap", "unwrap", "drop", "add", "swap"]))
        if action == "replace":
            # A copy: a later "add" may write into it, and _BAD_VALUES must stay as it is,
            # or the next example draws something else from the same choices (flaky data).
            parent[step] = copy.deepcopy(draw(_BAD_LEAVES | _JSON))
        elif action == "wrap":  # an array where a single value goes (or an array of arrays)
            parent[step] = [parent[step]]
        elif action == "unwrap" and isinstance(parent[step], list) and parent[step]:
            parent[step] = parent[step][0]  # a single value where an array goes
        elif action == "drop" and isinstance(parent, dict):
            del parent[step]  # a required element missing, perhaps
        elif action == "add" and isinstance(parent[step], dict):
            parent[step][draw(_BAD_KEYS)] = copy.deepcopy(draw(_BAD_LEAVES | _JSON))
        elif action == "swap" and isinstance(parent[step], dict) and isinstance(step, str):
            parent[step] = draw(st.sampled_from([v for v in _BASES.values()]))()
    return resource


@settings(
    max_examples=600,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(resource=_broken(), where=st.sampled_from(["alone", "collection", "transaction"]))
def test_broken_structures_get_the_same_outcome(
    resource: dict[str, Any], where: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    if where == "alone":
        document: Any = resource
    elif where == "collection":
        document = _collection(_test_patient("ok"), resource)
    else:
        document = fhir_bundle("mb", 11)
        document["entry"][1]["resource"] = resource
    _assert_same(orjson.dumps(document), monkeypatch, _GENERATED["broken structures"])


@pytest.mark.parametrize("base", sorted(_BASES))
def test_every_element_broken_every_way_gets_the_same_outcome(
    base: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Exhaustively: each element of a benchmark resource replaced by each bad value, and
    each bad key added to each object (with a string, an object and an array value)."""
    counts = _GENERATED[f"every element of the {base}, broken"]
    resource = _BASES[base]()
    for path in _slots(resource):
        for bad in _BAD_VALUES:
            broken = copy.deepcopy(resource)
            _parent(broken, path)[path[-1]] = copy.deepcopy(bad)
            _assert_same(orjson.dumps(broken), monkeypatch, counts)
    for path in [(), *_slots(resource)]:
        for key in _KEYS_ADDED:
            for value in ("x", {"x": 1}, ["x"]):
                broken = copy.deepcopy(resource)
                target = _parent(broken, (*path, None)) if path else broken
                if isinstance(target, dict):
                    target[key] = value
                    _assert_same(orjson.dumps(broken), monkeypatch, counts)


def test_some_broken_structures_are_rejected_and_some_accepted(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The mutations reach both outcomes, and the fast path doubts what it must."""
    birth = fhir_patient("b", 1) | {"birthDate": "1980-13-45"}
    extra = fhir_patient("b", 1) | {"x": 1}
    two_values = fhir_observation("o", "Patient/b", 1) | {"valueString": "high"}
    for resource in (birth, extra, two_values):
        fast, slow = _both(orjson.dumps(resource), monkeypatch)
        assert isinstance(slow, Rejection) and slow.reason_code == "FHIR_INVALID"
        assert _comparable(fast) == _comparable(slow)
        assert not fhir_fast.structurally_valid(resource)
    assert fhir_fast.structurally_valid(fhir_patient("b", 1))


# --- the comparison can fail ------------------------------------------------------------------


@pytest.mark.parametrize(
    "resource",
    [
        fhir_patient("b", 1) | {"birthDate": "1980-13-45"},
        fhir_patient("b", 1) | {"x": 1},
        fhir_observation("o", "Patient/b", 1) | {"valueString": "high"},
    ],
)
def test_a_fast_path_that_accepts_too_much_is_caught(
    resource: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A fast path that accepted what the model refuses would change the decision, and the
    comparison every test above makes says so."""
    monkeypatch.setattr(fhir_fast, "structurally_valid", lambda resource: True)
    with pytest.raises(AssertionError):
        _assert_same(orjson.dumps(resource), monkeypatch)


def test_a_worker_builds_the_checks_before_its_first_event(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """ingest_functions (the stage's and the MLLP gateway's) builds the structural checks of
    every type ingestion reads and of each element type they hold, so that no event pays for
    building them; what it builds is what a lazy walk would have built."""
    monkeypatch.setattr(fhir_fast, "_RESOURCES", {})
    monkeypatch.setattr(fhir_fast, "_ELEMENTS", {})
    ingest_functions(IngestionSettings(database_url="postgresql://unused@127.0.0.1/x"))

    prepared = {*fhir.SUPPORTED_TYPES, *fhir.CARRIED_TYPES, "Bundle"}
    assert set(fhir_fast._RESOURCES) == prepared
    unbuilt = [m for m in fhir_fast._ELEMENTS.values() if m.fields is None]
    assert all(m.fields is not None for m in fhir_fast._RESOURCES.values())
    assert unbuilt == []
    assert len(fhir_fast._ELEMENTS) > 50  # Identifier, Reference, Extension, CodeableConcept...
    # Nothing is left for an event to build: checking one builds no model.
    known = len(fhir_fast._ELEMENTS)
    assert fhir_fast.structurally_valid(_test_patient())
    assert len(fhir_fast._ELEMENTS) == known
