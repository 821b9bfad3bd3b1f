"""Every raw event sent to the running ingestion worker is accounted for: it ends in
concord.ingested or in concord.deadletter, never both, never neither, and the worker lives.

Arbitrary and mutated FHIR JSON and HL7 v2 bytes (hypothesis), and every public sample."""

from __future__ import annotations

import asyncio
import collections
import copy
import time
import uuid
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaConsumer
from aiokafka.structs import TopicPartition
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from concord.events import codec
from concord.publishing import read_file
from concord.stack.processes import health_ok, is_alive
from concord.stack.stack import StackInfo
from concord.topics import DEADLETTER, INGESTED, PARTITIONS, RAW_FHIR, RAW_HL7V2
from pipeline_tools import publish

pytestmark = pytest.mark.e2e

SAMPLES = Path(__file__).resolve().parents[3] / "shared" / "data" / "fhir-converter-samples"
INGESTED_OUTCOME = "INGESTED"
Coordinate = tuple[str, int, int]


async def outcomes(
    bootstrap: str, wanted: set[Coordinate], *, within: float = 60.0, settle: float = 1.0
) -> dict[Coordinate, list[str]]:
    """Each wanted raw record's outcomes: INGESTED per record emitted from it, or the reason code
    of its dead letter. Reads on for `settle` seconds after the last one appears, so a second
    outcome would be seen too."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, fetch_max_wait_ms=50
    )
    await consumer.start()
    found: dict[Coordinate, list[str]] = collections.defaultdict(list)
    try:
        partitions = [
            TopicPartition(t, p) for t in (INGESTED, DEADLETTER) for p in range(PARTITIONS)
        ]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        deadline = time.monotonic() + within
        complete_at: float | None = None
        while time.monotonic() < deadline:
            if complete_at is not None and time.monotonic() - complete_at > settle:
                break
            batch = await consumer.getmany(timeout_ms=100, max_records=10_000)
            for records in batch.values():
                for record in records:
                    coordinate, outcome = _outcome(record.topic, record.value)
                    if coordinate in wanted:
                        found[coordinate].append(outcome)
            if complete_at is None and wanted <= found.keys():
                complete_at = time.monotonic()
    finally:
        await consumer.stop()
    return found


def _outcome(topic: str, value: bytes) -> tuple[Coordinate, str]:
    if topic == INGESTED:
        provenance = codec.INGESTED_RECORD.decode(value).provenance
        where = (provenance.raw_topic, provenance.raw_partition, provenance.raw_offset)
        return where, INGESTED_OUTCOME
    letter = codec.DEAD_LETTER.decode(value)
    where = (letter.original_topic, letter.original_partition, letter.original_offset)
    return where, letter.reason_code


async def send_and_account(
    zoned_stack: StackInfo, inputs: list[tuple[str, bytes]], label: str
) -> collections.Counter[str]:
    """Publish (topic, value) pairs, each from its own source (so that de-duplication, which
    is per source, cannot hide one), and check that each has exactly one kind of outcome."""
    run = uuid.uuid4().hex[:8]
    coordinates: list[Coordinate] = []
    for topic in (RAW_FHIR, RAW_HL7V2):
        events = [(f"{label}-{run}-{n}", v) for n, (t, v) in enumerate(inputs) if t == topic]
        if events:
            sent = await publish(zoned_stack.bootstrap_servers, events, topic=topic)
            coordinates += [(topic, partition, offset) for partition, offset in sent]
    found = await outcomes(zoned_stack.bootstrap_servers, set(coordinates))
    counts: collections.Counter[str] = collections.Counter()
    for coordinate in coordinates:
        kinds = found.get(coordinate, [])
        assert kinds, f"{coordinate} ended in neither concord.ingested nor concord.deadletter"
        dead = [kind for kind in kinds if kind != INGESTED_OUTCOME]
        assert not dead or len(kinds) == 1, f"{coordinate} ended in {kinds}"
        assert dead != ["INGESTION_FAILED"], f"the ingestion core raised on {coordinate}"
        counts[dead[0] if dead else INGESTED_OUTCOME] += 1
    return counts


def assert_worker_alive(zoned_stack: StackInfo) -> None:
    worker = zoned_stack.workers["ingestion"]
    assert is_alive(worker), "the ingestion worker died"
    assert worker.port is not None and health_ok(worker.port), "the ingestion worker is unhealthy"


# --- seeds and mutations -----------------------------------------------------------------------

OBSERVATION: dict[str, Any] = {
    "resourceType": "Observation",
    "id": "o1",
    "meta": {"versionId": "2", "lastUpdated": "2024-03-01T08:00:00-05:00"},
    "status": "final",
    "code": {"coding": [{"system": "http://loinc.org", "code": "2345-7"}]},
    "subject": {"reference": "urn:uuid:6f1c4c1e-8f65-4d5e-9a55-3f1c1d1e2b3a"},
    "effectiveDateTime": "2024-03-01T07:30:00-05:00",
    "valueQuantity": {"value": 99, "unit": "mg/dL", "system": "http://unitsofmeasure.org"},
}
PATIENT: dict[str, Any] = {
    "resourceType": "Patient",
    "id": "p1",
    "meta": {"versionId": "1", "lastUpdated": "2024-03-01T08:00:00-05:00"},
    "identifier": [{"system": "urn:test:mrn", "value": "M1"}],
    "name": [{"family": "Testperson", "given": ["Alex"]}],
    "birthDate": "1970-05-12",
    "gender": "female",
}
CONDITION: dict[str, Any] = {
    "resourceType": "Condition",
    "id": "c1",
    "clinicalStatus": {
        "coding": [
            {
                "system": "http://terminology.hl7.org/CodeSystem/condition-clinical",
                "code": "active",
            }
        ]
    },
    "code": {"coding": [{"system": "http://snomed.info/sct", "code": "44054006"}]},
    "subject": {"reference": "Patient/p1"},
    "recordedDate": "2024-03-01T07:30:00-05:00",
}
BUNDLE: dict[str, Any] = {
    "resourceType": "Bundle",
    "type": "collection",
    "entry": [
        {"fullUrl": "urn:uuid:6f1c4c1e-8f65-4d5e-9a55-3f1c1d1e2b3a", "resource": PATIENT},
        {"resource": OBSERVATION},
    ],
}
FHIR_SEEDS = [PATIENT, CONDITION, BUNDLE]
HL7_SEEDS = [
    "MSH|^~\\&|EPIC|GH|CONCORD|GH|20240301083000-0500||ADT^A08^ADT_A01|CTRL-1|P|2.5.1\r"
    "EVN|A08|20240301082500\r"
    "PID|1||M1^^^GH^MR~E-77^^^MPI^PI||Testperson^Ann\\S\\Marie||19700512|F\r"
    "AL1|1|DA|70618^Penicillin^RXNORM|SV|Hives\r"
    "DG1|1||E11.9^Type 2 diabetes^I10|||F\r"
    "ZPD|custom|kept\r",
    "MSH|^~\\&|LAB|GH|CONCORD|GH|20240301090000||ORU^R01^ORU_R01|CTRL-2|P|2.8\r"
    "PID|1||M1^^^GH^MR||Testperson^Ann||19700512|F\r"
    "OBR|1||ACC-9|58410-2^CBC panel^LN|||20240301070000\r"
    "OBX|1|NM|2345-7^Glucose^LN||99|mg/dL^mg/dL^UCUM|70-99|N|||F|||20240301070000\r",
]

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=12),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=6,
)


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [prefix] if prefix else []
    if isinstance(node, dict):
        for key, value in node.items():
            found += _paths(value, (*prefix, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            found += _paths(value, (*prefix, index))
    return found


@st.composite
def mutated_json(draw: st.DrawFn) -> bytes:
    document = copy.deepcopy(draw(st.sampled_from(FHIR_SEEDS)))
    for _ in range(draw(st.integers(0, 3))):
        paths = _paths(document)
        if not paths:
            break
        *parents, last = draw(st.sampled_from(paths))
        parent = document
        for step in parents:
            parent = parent[step]
        if draw(st.booleans()):
            del parent[last]
        else:
            parent[last] = draw(json_values)
    return orjson.dumps(document)


@st.composite
def mutated_hl7(draw: st.DrawFn) -> bytes:
    segments = draw(st.sampled_from(HL7_SEEDS)).rstrip("\r").split("\r")
    for _ in range(draw(st.integers(0, 3))):
        index = draw(st.integers(0, len(segments) - 1))
        fields = segments[index].split("|")
        choice = draw(st.sampled_from(["field", "drop", "duplicate"]))
        if choice == "field" and len(fields) > 1:
            position = draw(st.integers(1, len(fields) - 1))
            fields[position] = draw(st.text(alphabet="ABC019^~&\\|-+. \x00é", max_size=12))
            segments[index] = "|".join(fields)
        elif choice == "drop":
            del segments[index]
        else:
            segments.insert(index, segments[index])
        if not segments:
            break
    ending = draw(st.sampled_from(["\r", "\n", "\r\n"]))
    return ending.join(segments).encode(draw(st.sampled_from(["utf-8", "latin-1"])), "replace")


def _byte_damage(data: bytes, position: int, junk: bytes) -> bytes:
    cut = position % (len(data) + 1)
    return data[:cut] + junk + data[cut + len(junk) :]


damaged = st.builds(
    _byte_damage, mutated_json() | mutated_hl7(), st.integers(0), st.binary(max_size=4)
)
raw_inputs = st.one_of(
    st.tuples(st.just(RAW_FHIR), mutated_json()),
    st.tuples(st.just(RAW_HL7V2), mutated_hl7()),
    st.tuples(st.sampled_from([RAW_FHIR, RAW_HL7V2]), damaged | st.binary(max_size=64)),
)


@settings(
    max_examples=6,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(inputs=st.lists(raw_inputs, min_size=10, max_size=40))
def test_arbitrary_and_mutated_inputs_end_in_exactly_one_place(
    zoned_stack: StackInfo, inputs: list[tuple[str, bytes]]
) -> None:
    counts = asyncio.run(send_and_account(zoned_stack, inputs, "pbt"))
    assert sum(counts.values()) == len(inputs)
    assert_worker_alive(zoned_stack)


def test_unmutated_seeds_are_ingested(zoned_stack: StackInfo) -> None:
    """The mutations start from valid inputs: otherwise the property above tests little."""
    inputs = [(RAW_FHIR, orjson.dumps(seed)) for seed in FHIR_SEEDS]
    inputs += [(RAW_HL7V2, seed.encode()) for seed in HL7_SEEDS]
    counts = asyncio.run(send_and_account(zoned_stack, inputs, "seed"))
    assert counts == {INGESTED_OUTCOME: len(inputs)}


@pytest.mark.shared_data
def test_every_public_sample_through_the_running_worker(zoned_stack: StackInfo) -> None:
    hl7 = sorted((SAMPLES / "hl7v2").glob("*.hl7"))
    fhir = sorted((SAMPLES / "fhir-expected").rglob("*.json"))
    if not hl7 or not fhir:
        pytest.skip(f"NOT RUN: the public samples are absent ({SAMPLES} not found)")
    report = {}
    for label, paths in (("FHIR Bundles", fhir), ("HL7 v2 messages", hl7)):
        inputs = [(m.topic, m.value) for path in paths for m in read_file(path, "samples")]
        started = time.monotonic()
        counts = asyncio.run(send_and_account(zoned_stack, inputs, "samples"))
        assert sum(counts.values()) == len(inputs)
        report[label] = (len(inputs), dict(counts.most_common()), time.monotonic() - started)
        # Most of each set is valid: a rule that rejected most of them would be wrong.
        assert counts[INGESTED_OUTCOME] > len(inputs) * 0.4, counts
    assert_worker_alive(zoned_stack)
    for label, (total, counts, seconds) in report.items():
        print(f"\n{total} {label} through the running worker in {seconds:.1f}s: {counts}")
