"""FHIR ingestion, pure: raw bytes in, IngestedRecords with provenance or a Rejection out."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from concord.deadletters import REASON_CODES, Rejection
from concord.events.models import IngestedRecord
from concord.events.raw import RawEvent
from concord.ingestion.fhir import ingest_fhir

RECEIVED = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
LIMIT = 64 * 1024
# Distinctive fake values: none of them may appear in a rejection's reason.
FAMILY = "Zyxwvut"
GIVEN = "Qwertzuio"
BIRTH = "1937-04-23"
PHONE = "555-0199-8877"
ENTERPRISE = "EID-77441"


def _patient(pid: str = "p1", version: str | None = "3", **overrides: Any) -> dict[str, Any]:
    meta: dict[str, Any] = {"lastUpdated": "2024-01-02T03:04:05+02:00"}
    if version is not None:
        meta["versionId"] = version
    patient: dict[str, Any] = {
        "resourceType": "Patient",
        "id": pid,
        "meta": meta,
        "identifier": [{"system": "urn:concord:enterprise-patient-id", "value": ENTERPRISE}],
        "name": [{"use": "official", "family": FAMILY, "given": [GIVEN]}],
        "telecom": [{"system": "phone", "value": PHONE}],
        "gender": "female",
        "birthDate": BIRTH,
    }
    patient.update(overrides)
    return patient


def _bundle(*resources: Any) -> dict[str, Any]:
    return {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [{"resource": r} for r in resources],
    }


def _raw(
    value: Any,
    headers: Mapping[str, bytes] | None = None,
    *,
    topic: str = "ehr.raw.fhir",
    partition: int = 2,
    offset: int = 117,
) -> RawEvent:
    data = value if isinstance(value, bytes) or value is None else orjson.dumps(value)
    return RawEvent(
        topic=topic,
        partition=partition,
        offset=offset,
        key=b"k",
        value=data,
        headers=(("source", b"ehr-alpha"),) if headers is None else tuple(headers.items()),
        received_time=RECEIVED,
    )


def _ingest(
    value: Any, headers: Mapping[str, bytes] | None = None
) -> list[IngestedRecord] | Rejection:
    return ingest_fhir(_raw(value, headers), max_payload_bytes=LIMIT)


def _rejected(value: Any, headers: Mapping[str, bytes] | None = None) -> Rejection:
    outcome = _ingest(value, headers)
    assert isinstance(outcome, Rejection), outcome
    assert outcome.reason_code in REASON_CODES
    for secret in (FAMILY, GIVEN, BIRTH, PHONE, ENTERPRISE, "1980-13-45", "p1"):
        assert secret not in outcome.reason
    return outcome


def _accepted(value: Any) -> list[IngestedRecord]:
    outcome = _ingest(value)
    assert isinstance(outcome, list), outcome
    return outcome


# --- accepted -----------------------------------------------------------------------------------


def test_a_valid_patient_becomes_one_record_with_provenance() -> None:
    raw = _raw(_patient())
    outcome = ingest_fhir(raw, max_payload_bytes=LIMIT)
    assert isinstance(outcome, list)
    [record] = outcome
    assert record.format == "FHIR_R4"
    assert record.resource_type == "Patient"
    assert orjson.loads(record.payload) == _patient()
    p = record.provenance
    assert p.source_system == "ehr-alpha"
    assert p.source_record_id == "Patient/p1"
    assert p.source_record_version == "3"
    assert p.event_time == datetime(2024, 1, 2, 1, 4, 5, tzinfo=UTC)
    assert p.event_time.utcoffset() is not None
    assert p.event_time_basis == "meta.lastUpdated"
    assert p.received_time == RECEIVED
    assert (p.raw_topic, p.raw_partition, p.raw_offset) == ("ehr.raw.fhir", 2, 117)
    assert raw.value is not None
    assert p.payload_sha256 == hashlib.sha256(raw.value).hexdigest()


def test_source_header_is_trimmed() -> None:
    outcome = _ingest(_patient(), {"source": b"  ehr-alpha \n"})
    assert isinstance(outcome, list)
    assert outcome[0].provenance.source_system == "ehr-alpha"


def test_z_suffix_and_offsets_give_the_same_instant() -> None:
    zulu = _accepted(_patient(meta={"versionId": "1", "lastUpdated": "2024-01-02T01:04:05Z"}))
    minus = _accepted(_patient(meta={"versionId": "1", "lastUpdated": "2024-01-01T20:04:05-05:00"}))
    assert zulu[0].provenance.event_time == minus[0].provenance.event_time
    assert minus[0].provenance.event_time.utcoffset() == timedelta(hours=-5)
    assert zulu[0].provenance.event_time.tzinfo is not None


def test_a_patient_without_last_updated_is_as_of_its_arrival_and_says_so() -> None:
    # A Patient carries no time of its own (docs/event-time.md).
    [record] = _accepted(_patient(meta={"versionId": "1"}))
    assert record.provenance.event_time == RECEIVED
    assert record.provenance.event_time_basis == "arrival"


def test_a_bundle_of_three_patients_gives_three_records_sharing_the_raw_event() -> None:
    raw = _raw(_bundle(_patient("a"), _patient("b"), _patient("c")), offset=9000)
    outcome = ingest_fhir(raw, max_payload_bytes=LIMIT)
    assert isinstance(outcome, list)
    assert [r.provenance.source_record_id for r in outcome] == [
        "Patient/a",
        "Patient/b",
        "Patient/c",
    ]
    assert {r.provenance.raw_offset for r in outcome} == {9000}
    assert raw.value is not None
    assert {r.provenance.payload_sha256 for r in outcome} == {hashlib.sha256(raw.value).hexdigest()}
    assert len({r.record_id for r in outcome}) == 3
    assert all(orjson.loads(r.payload)["resourceType"] == "Patient" for r in outcome)


def test_record_id_is_deterministic_and_changes_with_the_version() -> None:
    first = _accepted(_patient(version="3"))[0]
    again = _accepted(_patient(version="3"))[0]
    newer = _accepted(_patient(version="4"))[0]
    assert first.record_id == again.record_id
    assert first.record_id != newer.record_id
    other_source = ingest_fhir(
        _raw(_patient(version="3"), {"source": b"ehr-beta"}), max_payload_bytes=LIMIT
    )
    assert isinstance(other_source, list)
    assert other_source[0].record_id != first.record_id


def test_record_id_of_an_unversioned_resource_follows_its_content() -> None:
    a = _accepted(_patient(version=None))[0]
    same = _accepted(_patient(version=None))[0]
    changed = _accepted(_patient(version=None, gender="male"))[0]
    assert a.record_id == same.record_id
    assert a.record_id != changed.record_id


def test_record_id_ignores_key_order_of_the_json() -> None:
    patient = _patient()
    reversed_keys = dict(reversed(list(patient.items())))
    assert _accepted(patient)[0].record_id == _accepted(reversed_keys)[0].record_id


# --- rejected -----------------------------------------------------------------------------------


@pytest.mark.parametrize("value", [None, b""])
def test_empty_value(value: bytes | None) -> None:
    assert _rejected(value).reason_code == "EMPTY_PAYLOAD"


def test_too_large() -> None:
    big = _patient(text={"status": "generated", "div": "<div>" + "x" * LIMIT + "</div>"})
    assert _rejected(big).reason_code == "PAYLOAD_TOO_LARGE"


@pytest.mark.parametrize("headers", [{}, {"source": b""}, {"source": b"   "}, {"Source": b"x"}])
def test_missing_or_empty_source_header(headers: Mapping[str, bytes]) -> None:
    assert _rejected(_patient(), headers).reason_code == "MISSING_SOURCE_HEADER"


@pytest.mark.parametrize(
    "value",
    [
        b'{"resourceType": "Patient", "name": [{"family": "Zyxwvut"',
        b"not json at all Zyxwvut",
        b'{"resourceType": "Patient", "id": "\xff\xfe"}',
    ],
)
def test_malformed_json(value: bytes) -> None:
    assert _rejected(value).reason_code == "MALFORMED_JSON"


@pytest.mark.parametrize(
    "value",
    [
        [_patient()],
        {"id": "p1", "name": [{"family": FAMILY}]},
        {"resourceType": 7, "id": "p1"},
        "Zyxwvut",
        42,
    ],
)
def test_not_fhir(value: Any) -> None:
    assert _rejected(value).reason_code == "NOT_FHIR"


def test_a_fhir_type_concord_does_not_compare_is_kept_for_provenance() -> None:
    organization = {"resourceType": "Organization", "id": "o1", "name": FAMILY}
    [record] = _accepted(organization)
    assert record.resource_type == "Organization"
    assert record.provenance.source_record_id == "Organization/o1"
    assert record.warnings == ()


def test_unsupported_type_reason_does_not_echo_the_input() -> None:
    """The resourceType is a value of the input like any other: a feed that puts something
    else there (here a family name) must not get it into the dead-letter reason."""
    outcome = _rejected({"resourceType": FAMILY + "Smith", "id": "x"})
    assert outcome.reason_code == "UNSUPPORTED_RESOURCE_TYPE"
    assert FAMILY not in outcome.reason


def test_fhir_invalid_birth_date_names_the_element_not_the_value() -> None:
    outcome = _rejected(_patient(birthDate="1980-13-45"))
    assert outcome.reason_code == "FHIR_INVALID"
    assert outcome.location == "Patient.birthDate"
    assert "birthDate" in outcome.reason


def test_fhir_invalid_structure_deep_in_the_resource() -> None:
    outcome = _rejected(_patient(name=[{"family": FAMILY, "given": GIVEN}]))
    assert outcome.reason_code == "FHIR_INVALID"
    assert outcome.location is not None
    assert outcome.location.startswith("Patient.name")


def test_bad_gender_code() -> None:
    outcome = _rejected(_patient(gender="Zyxwvut"))
    assert outcome.reason_code == "FHIR_INVALID"
    assert outcome.location == "Patient.gender"
    assert FAMILY not in outcome.reason


@pytest.mark.parametrize("gender", ["male", "female", "other", "unknown"])
def test_every_administrative_gender_is_accepted(gender: str) -> None:
    assert len(_accepted(_patient(gender=gender))) == 1


def test_missing_id() -> None:
    patient = _patient()
    del patient["id"]
    outcome = _rejected(patient)
    assert outcome.reason_code == "MISSING_RESOURCE_ID"
    assert outcome.location == "Patient.id"


@pytest.mark.parametrize("last_updated", ["2024-01-02T03:04:05", "2024-01-02T03:04:05.123"])
def test_last_updated_without_a_zone(last_updated: str) -> None:
    outcome = _rejected(_patient(meta={"versionId": "1", "lastUpdated": last_updated}))
    assert outcome.reason_code == "DATETIME_WITHOUT_ZONE"
    assert outcome.location == "Patient.meta.lastUpdated"


def _left_out(records: list[IngestedRecord]) -> list[tuple[str, str | None]]:
    """The entries a Bundle left out, as its first record's warnings name them."""
    assert all(not record.warnings for record in records[1:])
    return [(w.reason_code, w.location) for w in records[0].warnings]


def test_a_bundle_with_one_bad_entry_keeps_the_others_and_names_the_entry() -> None:
    records = _accepted(
        _bundle(_patient("a"), _patient("b", birthDate="1980-13-45"), _patient("c"))
    )
    assert [r.provenance.source_record_id for r in records] == ["Patient/a", "Patient/c"]
    assert _left_out(records) == [("FHIR_INVALID", "Bundle.entry[1].resource.birthDate")]


def test_a_bundle_entry_without_an_id_names_the_entry() -> None:
    nameless = _patient("b")
    del nameless["id"]
    records = _accepted(_bundle(_patient("a"), nameless))
    assert _left_out(records) == [("MISSING_RESOURCE_ID", "Bundle.entry[1].resource.id")]


def test_a_bundle_entry_without_a_resource() -> None:
    records = _accepted(
        {"resourceType": "Bundle", "type": "batch", "entry": [{"resource": _patient()}, {"x": 1}]}
    )
    assert _left_out(records) == [("NOT_FHIR", "Bundle.entry[1].resource")]


def test_a_bundle_none_of_whose_entries_passes_is_rejected_whole() -> None:
    nameless = _patient("b")
    del nameless["id"]
    outcome = _rejected(_bundle(_patient("a", birthDate="1980-13-45"), nameless))
    assert outcome.reason_code == "FHIR_INVALID"
    assert outcome.location == "Bundle.entry[0].resource.birthDate"


def test_bundle_entries_of_types_not_ingested_are_skipped() -> None:
    [record] = _accepted(_bundle(_patient("a"), {"resourceType": "Organization", "id": "o"}))
    assert record.provenance.source_record_id == "Patient/a"
    assert record.provenance.raw_location == "Bundle.entry[0]"


def test_a_bundle_of_only_types_not_ingested_is_kept_as_one_bundle_record() -> None:
    [record] = _accepted(_bundle({"resourceType": "Organization", "id": "o"}))
    assert record.resource_type == "Bundle"
    assert record.warnings == ()


def test_a_bundle_of_only_resources_that_are_not_fhir_is_dead_lettered() -> None:
    outcome = _rejected(_bundle({"resourceType": FAMILY, "id": "o"}))
    assert outcome.reason_code == "UNSUPPORTED_RESOURCE_TYPE"
    assert outcome.location == "Bundle.entry[0].resource.resourceType"


def test_a_bundle_whose_entry_is_not_an_array() -> None:
    outcome = _rejected(
        {"resourceType": "Bundle", "type": "batch", "entry": {"resource": _patient()}}
    )
    assert outcome.reason_code == "FHIR_INVALID"
    assert outcome.location == "Bundle.entry"


def test_an_empty_bundle_is_not_silently_dropped() -> None:
    """Nothing is dropped (ARCHITECTURE.md): every raw event ends downstream or in the
    dead-letter topic. A Bundle with no entries yields no record, so it must be rejected."""
    for empty in ({"resourceType": "Bundle"}, {"resourceType": "Bundle", "entry": []}):
        outcome = _ingest(empty)
        assert isinstance(outcome, Rejection) or len(outcome) > 0, empty


def test_no_rejection_reason_quotes_the_input() -> None:
    """The same distinctive values, in every kind of rejection the patient can earn."""
    cases: list[Any] = [
        _patient(birthDate="1980-13-45"),
        _patient(gender=FAMILY),
        _patient(meta={"lastUpdated": BIRTH + "T00:00:00"}),
        _patient(name=[{"family": FAMILY, "given": GIVEN}]),
        _patient(telecom=[{"system": "phone", "value": 5550199}]),
        _patient(birthDate=BIRTH + "T10:00:00Z"),
        _bundle(_patient("b", gender=FAMILY)),
        orjson.dumps(_patient())[:-5],
    ]
    for case in cases:
        outcome = _rejected(case)  # asserts no secret in the reason
        assert FAMILY not in (outcome.location or "")
    # ... and in the warning that names an entry left out of a Bundle
    [record] = _accepted(_bundle(_patient("a"), _patient("b", gender=FAMILY)))
    [warning] = record.warnings
    for secret in (FAMILY, GIVEN, BIRTH, PHONE, ENTERPRISE):
        assert secret not in warning.message and secret not in str(warning.location)


# --- never raises -------------------------------------------------------------------------------

_KEYS = st.sampled_from(
    [
        "resourceType",
        "id",
        "meta",
        "versionId",
        "lastUpdated",
        "identifier",
        "system",
        "value",
        "name",
        "family",
        "given",
        "use",
        "gender",
        "birthDate",
        "telecom",
        "entry",
        "resource",
        "extension",
        "url",
        "valueString",
        "active",
        "deceasedBoolean",
    ]
) | st.text(max_size=6)
_LEAVES = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12)
    | st.sampled_from(
        ["", "Patient", "Bundle", "1980-01-01", "2024-01-02T03:04:05Z", "male", "official", "1"]
    )
)
_JSON = st.recursive(
    _LEAVES,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_KEYS, inner, max_size=4),
    max_leaves=12,
)
_PATIENT_KEYS = st.sampled_from([*sorted(_patient()), "extension", "address", "contained", "x"])


def _never_raises(raw: RawEvent) -> None:
    outcome = ingest_fhir(raw, max_payload_bytes=LIMIT)
    assert isinstance(outcome, Rejection) or (
        isinstance(outcome, list) and all(isinstance(r, IngestedRecord) for r in outcome)
    )


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(value=st.binary(max_size=512), source=st.binary(max_size=12))
def test_arbitrary_bytes_never_raise(value: bytes, source: bytes) -> None:
    _never_raises(_raw(value, {"source": source}))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    changes=st.dictionaries(_PATIENT_KEYS, _JSON, max_size=4),
    drops=st.sets(_PATIENT_KEYS, max_size=3),
    in_bundle=st.booleans(),
)
def test_mutated_patients_never_raise(
    changes: dict[str, Any], drops: set[str], in_bundle: bool
) -> None:
    patient = {k: v for k, v in {**_patient(), **changes}.items() if k not in drops}
    document = _bundle(_patient("ok"), patient) if in_bundle else patient
    _never_raises(_raw(orjson.dumps(document)))


@settings(max_examples=200, deadline=None)
@given(document=_JSON)
def test_arbitrary_json_never_raises(document: Any) -> None:
    _never_raises(_raw(orjson.dumps(document)))


def test_zone_of_event_time_is_kept_as_an_instant() -> None:
    [record] = _accepted(
        _patient(meta={"versionId": "1", "lastUpdated": "2024-01-02T03:04:05.5+05:30"})
    )
    expected = datetime(
        2024, 1, 2, 3, 4, 5, 500000, tzinfo=timezone(timedelta(hours=5, minutes=30))
    )
    assert record.provenance.event_time == expected
    assert record.provenance.event_time.astimezone(UTC) == datetime(
        2024, 1, 1, 21, 34, 5, 500000, tzinfo=UTC
    )
