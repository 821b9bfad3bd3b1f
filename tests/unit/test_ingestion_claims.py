"""Claim-line ingestion, pure: a claim line in, one IngestedRecord or a Rejection out."""

from __future__ import annotations

import copy
import hashlib
import json
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator

from concord.deadletters import REASON_CODES, Rejection
from concord.events.codec import schema_dir
from concord.events.models import IngestedRecord
from concord.events.raw import RawEvent
from concord.ingestion.claims import MAX_PROBLEMS_NAMED, ingest_claim
from concord.ingestion.codes import CPT, CPT_PATTERN, ICD10_CM, ICD10_CM_PATTERN, NDC_PATTERN
from concord.ingestion.common import record_id, version_key

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "services" / "concord" / "demo" / "claims-sample.ndjson"
SCHEMA = schema_dir() / "raw" / "claim-line.schema.json"
RECEIVED = datetime(2026, 10, 1, 12, 0, tzinfo=UTC)
LIMIT = 64 * 1024
HCPCS = "https://www.cms.gov/Medicare/Coding/HCPCSReleaseCodeSets"
# Distinctive fake values: none may appear in a rejection's reason or location.
FAMILY = "Zyxwvut"
GIVEN = "Qwertzuio"
BIRTH = "1937-04-23"
ENTERPRISE = "EID-77441"
MEMBER = "MBR-5550199"
SECRETS = (FAMILY, GIVEN, BIRTH, ENTERPRISE, MEMBER)


def _line(**overrides: Any) -> dict[str, Any]:
    line: dict[str, Any] = {
        "claim_id": "CLM-1001",
        "line_number": 2,
        "claim_version": "3",
        "status": "original",
        "patient": {
            "identifiers": [{"system": "urn:concord:enterprise-patient-id", "value": ENTERPRISE}],
            "member_id": MEMBER,
            "family": FAMILY,
            "given": [GIVEN],
            "birth_date": BIRTH,
            "sex": "female",
        },
        "payer": {"id": "PAYER1", "name": "Example Plan"},
        "service_date_from": "2026-09-14",
        "service_date_to": "2026-09-14",
        "submitted_at": "2026-09-15T08:12:44-04:00",
        "adjudicated_at": "2026-09-22T16:05:10-04:00",
        "diagnoses": [
            {"code": "C50.911", "system": ICD10_CM, "sequence": 1},
            {"code": "C78.00", "system": ICD10_CM, "sequence": 2, "present_on_admission": "Y"},
        ],
        "diagnosis_pointers": [1, 2],
        "procedure": {"code": "J9355", "system": HCPCS, "units": 42},
        "drug": {"ndc": "50242-0132-01", "quantity": 420, "unit": "ME"},
        "billed_amount": 6843.2,
    }
    line.update(overrides)
    return line


def _raw(value: Any, headers: tuple[tuple[str, bytes | None], ...] | None = None) -> RawEvent:
    data = value if isinstance(value, bytes) or value is None else orjson.dumps(value)
    return RawEvent(
        topic="ehr.raw.claims",
        partition=3,
        offset=4242,
        key=b"CLM-1001",
        value=data,
        headers=(("source", b"payer-gateway"),) if headers is None else headers,
        received_time=RECEIVED,
    )


def _accepted(value: Any) -> IngestedRecord:
    outcome = ingest_claim(_raw(value), max_payload_bytes=LIMIT)
    assert isinstance(outcome, list), outcome
    [record] = outcome
    return record


def _rejected(value: Any, *also_secret: str) -> Rejection:
    outcome = ingest_claim(_raw(value), max_payload_bytes=LIMIT)
    assert isinstance(outcome, Rejection), outcome
    assert outcome.reason_code in REASON_CODES
    for secret in (*SECRETS, *also_secret):
        assert secret not in outcome.reason
        assert secret not in (outcome.location or "")
    return outcome


def _invalid(value: Any, *also_secret: str) -> Rejection:
    rejection = _rejected(value, *also_secret)
    assert rejection.reason_code == "CLAIM_INVALID"
    return rejection


def _without(line: dict[str, Any], *names: str) -> dict[str, Any]:
    return {key: value for key, value in line.items() if key not in names}


# --- the schema and the documented examples ------------------------------------------------


def test_the_schema_is_a_valid_2020_12_schema_with_anchored_patterns() -> None:
    schema = json.loads(SCHEMA.read_text())
    Draft202012Validator.check_schema(schema)
    patterns = re.findall(r'"pattern": "((?:[^"\\]|\\.)*)"', SCHEMA.read_text())
    assert patterns
    # ingestion matches patterns whole (ECMA-262's reading), which equals re.search only
    # for anchored ones.
    for pattern in patterns:
        assert pattern.startswith("^") and pattern.endswith("$"), pattern


def test_the_schema_checks_codes_as_the_fhir_checks_do() -> None:
    """The schema restates ingestion/codes.py's formats: they must not drift apart."""
    patterns = set(re.findall(r'"pattern": "((?:[^"\\]|\\.)*)"', SCHEMA.read_text()))
    for pattern in (ICD10_CM_PATTERN, NDC_PATTERN, CPT_PATTERN):
        assert json.dumps(pattern)[1:-1] in patterns, pattern


def test_every_example_line_validates_and_is_ingested() -> None:
    validator = Draft202012Validator(
        json.loads(SCHEMA.read_text()), format_checker=Draft202012Validator.FORMAT_CHECKER
    )
    lines = SAMPLE.read_bytes().splitlines()
    assert 4 <= len(lines) <= 6
    for text in lines:
        assert list(validator.iter_errors(orjson.loads(text))) == []
        _accepted(text)


def test_the_example_in_the_docs_is_valid() -> None:
    docs = (ROOT / "docs" / "claims.md").read_text()
    [example] = re.findall(r"```json\n(.*?)\n```", docs, flags=re.DOTALL)
    _accepted(orjson.loads(example))


# --- accepted ------------------------------------------------------------------------------


def test_a_valid_line_becomes_one_record_with_provenance() -> None:
    raw = _raw(_line())
    outcome = ingest_claim(raw, max_payload_bytes=LIMIT)
    assert isinstance(outcome, list)
    [record] = outcome
    assert record.format == "CLAIM"
    assert record.resource_type == "ClaimLine"
    assert record.operation == "UPSERT"
    assert record.source_time_zone is None
    assert record.payload == orjson.dumps(_line(), option=orjson.OPT_SORT_KEYS)
    key = version_key("payer-gateway", "ClaimLine/CLM-1001/2", "3")
    assert record.record_id == record_id(key, record.payload)
    p = record.provenance
    assert p.source_system == "payer-gateway"
    assert p.source_record_id == "ClaimLine/CLM-1001/2"
    assert p.source_record_version == "3"
    assert p.event_time == datetime(2026, 9, 22, 20, 5, 10, tzinfo=UTC)
    assert p.event_time_basis == "claim.adjudicated_at"
    assert p.event_time.utcoffset() is not None and not p.event_time.utcoffset()
    assert p.received_time == RECEIVED
    assert (p.raw_topic, p.raw_partition, p.raw_offset) == ("ehr.raw.claims", 3, 4242)
    assert raw.value is not None
    assert p.payload_sha256 == hashlib.sha256(raw.value).hexdigest()
    assert p.raw_location is None


def test_without_adjudication_the_event_time_is_the_submission_time() -> None:
    record = _accepted(_without(_line(), "adjudicated_at"))
    assert record.provenance.event_time == datetime(2026, 9, 15, 12, 12, 44, tzinfo=UTC)
    assert record.provenance.event_time_basis == "claim.submitted_at"


def test_the_record_id_is_deterministic_and_changes_with_the_version() -> None:
    first, again = _accepted(_line()), _accepted(_line())
    later = _accepted(_line(claim_version="4", status="replacement"))
    assert first.record_id == again.record_id
    assert later.record_id != first.record_id
    assert later.provenance.source_record_id == first.provenance.source_record_id


def test_a_void_is_a_delete_of_the_line() -> None:
    void = _accepted(_line(status="void"))
    assert void.operation == "DELETE"
    assert void.provenance.source_record_id == "ClaimLine/CLM-1001/2"
    assert void.record_id != _accepted(_line()).record_id


def test_optional_parts_may_be_left_out() -> None:
    minimal = _without(
        _line(patient={"identifiers": [{"system": "urn:x", "value": ENTERPRISE}]}),
        "service_date_to",
        "adjudicated_at",
        "diagnosis_pointers",
        "procedure",
        "drug",
        "billed_amount",
    )
    assert _accepted(minimal).operation == "UPSERT"


@pytest.mark.parametrize("code", ["C50.911", "C50911", "I10", "Z51.11", "S72.001A", "U07.1"])
def test_icd10_cm_codes_with_or_without_the_dot_are_accepted(code: str) -> None:
    diagnoses = [{"code": code, "system": ICD10_CM, "sequence": 1}]
    _accepted(_line(diagnoses=diagnoses, diagnosis_pointers=[1]))


@pytest.mark.parametrize(
    ("system", "code"),
    [(CPT, "96413"), (CPT, "3046F"), (CPT, "0001U"), (CPT, "0042T"), (HCPCS, "J9355")],
)
def test_cpt_and_hcpcs_codes_are_accepted(system: str, code: str) -> None:
    _accepted(_line(procedure={"code": code, "system": system, "modifiers": ["25", "JW"]}))


@pytest.mark.parametrize(
    "ndc", ["0173-0682-20", "50242-132-01", "50242-0132-1", "50242-0132-01", "5024213201"]
)
def test_ndcs_in_every_documented_format_are_accepted(ndc: str) -> None:
    _accepted(_line(drug={"ndc": ndc, "quantity": 1, "unit": "UN"}))


# --- the envelope --------------------------------------------------------------------------


def test_a_missing_source_header_is_rejected() -> None:
    outcome = ingest_claim(_raw(_line(), headers=()), max_payload_bytes=LIMIT)
    assert isinstance(outcome, Rejection)
    assert outcome.reason_code == "MISSING_SOURCE_HEADER"


def test_an_unprintable_source_header_is_rejected() -> None:
    outcome = ingest_claim(_raw(_line(), headers=(("source", b"a\x00b"),)), max_payload_bytes=LIMIT)
    assert isinstance(outcome, Rejection)
    assert outcome.reason_code == "INVALID_SOURCE_HEADER"


@pytest.mark.parametrize(
    ("value", "code"),
    [
        (None, "EMPTY_PAYLOAD"),
        (b"", "EMPTY_PAYLOAD"),
        (b"{" + b" " * LIMIT + b"}", "PAYLOAD_TOO_LARGE"),
        (b'{"claim_id": "CLM-1001",', "MALFORMED_JSON"),
        (b"\xff\xfe{}", "MALFORMED_JSON"),
    ],
)
def test_unreadable_values_are_rejected(value: bytes | None, code: str) -> None:
    assert _rejected(value).reason_code == code


@pytest.mark.parametrize("document", [[_line()], "a claim", 7, b"null"])
def test_json_that_is_not_an_object_is_invalid_at_the_root(document: Any) -> None:
    rejection = _invalid(document)
    assert rejection.location == "Claim"
    assert "mistyped: expected object" in rejection.reason


# --- schema failures: every path and rule named, no value --------------------------------


@pytest.mark.parametrize(
    ("line", "path", "rule"),
    [
        (_without(_line(), "claim_id"), "claim_id", "missing"),
        (_line(patient={"family": FAMILY}), "patient.identifiers", "missing"),
        (_line(patient={"identifiers": []}), "patient.identifiers", "too few items"),
        (
            _line(patient={"identifiers": [{"system": "urn:x"}]}),
            "patient.identifiers[0].value",
            "missing",
        ),
        (_line(line_number="2"), "line_number", "mistyped: expected integer"),
        (_line(line_number=0), "line_number", "out of range: at least 1"),
        (
            _line(patient={"identifiers": [{"system": "urn:x", "value": 77441}]}),
            "patient.identifiers[0].value",
            "mistyped: expected string",
        ),
        (_line(claim_version=3), "claim_version", "mistyped: expected string"),
        (_line(diagnoses=[]), "diagnoses", "too few items"),
        (_line(status="cancelled"), "status", "not one of original, replacement, void"),
        (
            _line(payer={"id": "P", "nmae": FAMILY}),
            "payer.*",
            "unexpected property, did you mean name?",
        ),
        (_line(diagnosis=[]), "*", "unexpected property, did you mean diagnoses?"),
        (_line(claim_id="CLM/1001"), "claim_id", "malformed"),
        (
            _line(patient={"identifiers": [{"system": "urn:x", "value": "E"}], "sex": "F"}),
            "patient.sex",
            "not one of female, male, other, unknown",
        ),
        (
            _line(diagnoses=[{"code": "C50.911", "system": "urn:icd10", "sequence": 1}]),
            "diagnoses[0].system",
            "must be http://hl7.org/fhir/sid/icd-10-cm",
        ),
        (
            _line(procedure={"code": "99214", "system": "http://snomed.info/sct"}),
            "procedure.system",
            "not one of",
        ),
        (
            _line(drug={"ndc": "0173-0682-20", "quantity": 0, "unit": "UN"}),
            "drug.quantity",
            "out of range",
        ),
        (_line(service_date_from="2026-02-30"), "service_date_from", "malformed: not a valid date"),
        (_line(service_date_from="14/09/2026"), "service_date_from", "malformed: not a YYYY-MM-DD"),
        (
            _line(
                patient={
                    "identifiers": [{"system": "urn:x", "value": "E"}],
                    "birth_date": "1937-4-23",
                }
            ),
            "patient.birth_date",
            "malformed",
        ),
    ],
)
def test_a_schema_failure_names_its_path_and_rule(line: Any, path: str, rule: str) -> None:
    rejection = _invalid(line, "1937-4-23", "cancelled", "CLM/1001", "urn:icd10", "14/09/2026")
    assert f"{path} ({rule}" in rejection.reason
    assert rejection.location == f"Claim.{path}"


def test_a_line_without_an_event_time_is_missing_one_of_the_two() -> None:
    rejection = _invalid(_without(_line(), "adjudicated_at", "submitted_at"))
    assert "missing: one of adjudicated_at, submitted_at" in rejection.reason
    assert rejection.location == "Claim"


def test_every_failing_location_is_named_and_the_first_is_the_location() -> None:
    line = _line(line_number="two", status="gone")
    line["diagnoses"][1]["code"] = "not a code"
    del line["payer"]["id"]
    line["patient"]["nickname"] = GIVEN
    rejection = _invalid(line, "two", "gone", "not a code")
    for path in (
        "line_number",
        "status",
        "payer.id",
        "diagnoses[1].code",
        "patient.*",
    ):
        assert f"{path} (" in rejection.reason
    assert rejection.location is not None
    first = rejection.reason.removeprefix("the claim line breaks its format at ").split(" (")[0]
    assert rejection.location == f"Claim.{first}"


def test_a_property_name_that_is_not_field_shaped_is_not_repeated() -> None:
    patient = _line()["patient"] | {f"{FAMILY} {GIVEN} 1937": "x"}
    rejection = _invalid(_line(patient=patient))
    assert "patient.* (unexpected property)" in rejection.reason


def test_a_property_name_shaped_like_a_field_is_not_repeated_either() -> None:
    """A surname or a member id used as a key looks like a field name: input is never echoed."""
    patient = _line()["patient"] | {FAMILY: "x", "MBR5550199": "y"}
    rejection = _invalid(_line(patient=patient), "MBR5550199")
    assert "patient.* (unexpected property" in rejection.reason
    assert rejection.location == "Claim.patient.*"


def test_a_flood_of_problems_is_summarised() -> None:
    # Identifiers are unbounded: one mistyped value each is one problem each.
    identifiers = [{"system": "urn:x", "value": n} for n in range(MAX_PROBLEMS_NAMED + 7)]
    rejection = _invalid(_line(patient={"identifiers": identifiers}))
    assert rejection.reason.endswith("; and 7 more")


@pytest.mark.parametrize(
    "code",
    ["C50.91111", "c50.911", "C5", "5C0.9", "C50.9-1", "C50.911\n", "C\uff150.911", "C50..9"],
)
def test_malformed_icd10_cm_codes_are_rejected(code: str) -> None:
    diagnoses = [{"code": code, "system": ICD10_CM, "sequence": 1}]
    rejection = _invalid(_line(diagnoses=diagnoses, diagnosis_pointers=[1]), code)
    assert "diagnoses[0].code (malformed: not an ICD-10-CM code" in rejection.reason


@pytest.mark.parametrize(
    ("system", "code", "name"),
    [
        (CPT, "9641", "CPT"),
        (CPT, "96413X", "CPT"),
        (CPT, "3046X", "CPT"),
        (CPT, "J9355", "CPT"),
        (CPT, "96413\n", "CPT"),
        (HCPCS, "W1234", "HCPCS Level II"),
        (HCPCS, "J935", "HCPCS Level II"),
        (HCPCS, "96413", "HCPCS Level II"),
        (HCPCS, "j9355", "HCPCS Level II"),
    ],
)
def test_malformed_procedure_codes_are_rejected(system: str, code: str, name: str) -> None:
    rejection = _invalid(_line(procedure={"code": code, "system": system}), code)
    assert f"procedure.code (malformed: not a {name} code" in rejection.reason
    assert rejection.location == "Claim.procedure.code"


@pytest.mark.parametrize(
    "ndc",
    [
        "50242-0132-011",
        "502420132011",
        "502420132",
        "5024-013-01",
        "50242 0132 01",
        "ABCDE-0132-01",
    ],
)
def test_malformed_ndcs_are_rejected(ndc: str) -> None:
    rejection = _invalid(_line(drug={"ndc": ndc, "quantity": 1, "unit": "UN"}), ndc)
    assert "drug.ndc (malformed: not an NDC" in rejection.reason


@pytest.mark.parametrize(
    "when",
    ["2026-09-22T16:05:10", "2026-09-22T16:05", "2026-09-22", "2026-09-22 16:05:10+00:00"],
)
def test_a_date_time_without_offset_is_rejected(when: str) -> None:
    rejection = _invalid(_line(adjudicated_at=when), when)
    assert "adjudicated_at (malformed: not a date-time with seconds and a UTC offset" in (
        rejection.reason
    )
    assert rejection.location == "Claim.adjudicated_at"


@pytest.mark.parametrize(
    "when", ["2026-02-30T10:00:00Z", "2026-09-22T25:00:00Z", "2026-09-22T10:00:00+24:00"]
)
def test_a_date_time_that_names_no_real_instant_is_rejected(when: str) -> None:
    rejection = _invalid(_line(submitted_at=when), when)
    assert "submitted_at (malformed: not a real date-time)" in rejection.reason


# --- rules the schema cannot state --------------------------------------------------------


def test_the_service_period_cannot_end_before_it_starts() -> None:
    rejection = _invalid(_line(service_date_to="2026-09-13"), "2026-09-13")
    assert "service_date_to (out of order: before service_date_from)" in rejection.reason


def test_diagnosis_sequences_are_unique() -> None:
    diagnoses = [
        {"code": "C50.911", "system": ICD10_CM, "sequence": 1},
        {"code": "C78.00", "system": ICD10_CM, "sequence": 1},
    ]
    rejection = _invalid(_line(diagnoses=diagnoses, diagnosis_pointers=[1]))
    assert "diagnoses[1].sequence (repeated" in rejection.reason
    assert rejection.location == "Claim.diagnoses[1].sequence"


def test_a_diagnosis_pointer_must_name_a_diagnosis() -> None:
    rejection = _invalid(_line(diagnosis_pointers=[1, 3]))
    assert "diagnosis_pointers[1] (dangling" in rejection.reason


# --- robustness ------------------------------------------------------------------------------

_JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=12,
)


def _containers(node: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [path]
    items = node.items() if isinstance(node, dict) else enumerate(node)
    for key, child in items:
        if isinstance(child, dict | list):
            found += _containers(child, (*path, key))
    return found


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_a_mutated_claim_never_raises(data: st.DataObject) -> None:
    line = copy.deepcopy(_line())
    for _ in range(data.draw(st.integers(min_value=1, max_value=3))):
        path = data.draw(st.sampled_from(_containers(line)))
        target: Any = line
        for key in path:
            target = target[key]
        keys = list(target) if isinstance(target, dict) else list(range(len(target)))
        if keys and data.draw(st.booleans()):
            key = data.draw(st.sampled_from(keys))
            if data.draw(st.booleans()):
                del target[key]
            else:
                target[key] = data.draw(_JSON)
        elif isinstance(target, dict):
            target[data.draw(st.text(max_size=10))] = data.draw(_JSON)
        else:
            target.append(data.draw(_JSON))
    outcome = ingest_claim(_raw(line), max_payload_bytes=LIMIT)
    assert isinstance(outcome, list | Rejection)
    if isinstance(outcome, list):
        assert len(outcome) == 1
    else:
        assert outcome.reason_code == "CLAIM_INVALID"
        for secret in SECRETS:
            assert secret not in outcome.reason


@settings(max_examples=200, deadline=None)
@given(value=st.binary(max_size=256))
def test_arbitrary_bytes_never_raise(value: bytes) -> None:
    outcome = ingest_claim(_raw(value), max_payload_bytes=LIMIT)
    assert isinstance(outcome, Rejection)
