"""The review service's pure core for alerts: list rows without PHI, the cursor, the detail's
provenance, and what each decision sends on concord.resolutions."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from pydantic import ValidationError

from builders import assertion_at
from concord.events.models import Alert
from concord.review.alerts import (
    AlertFilter,
    DismissRequest,
    InvalidCursor,
    NotDecidable,
    Position,
    ResolveRequest,
    decode_cursor,
    encode_cursor,
    overrules,
    resolution_for,
    summary_of,
    values_of,
)

T0 = datetime(2026, 11, 20, 9, 0, tzinfo=UTC)
NAME_A, NAME_B = "Zyxwvut^Ana", "Zyxwvut^Anna"  # a patient's names: PHI


def _alert(**overrides: object) -> Alert:
    fields: dict[str, object] = {
        "alert_id": "a" * 32,
        "revision": 3,
        "kind": "CONFLICT",
        "status": "OPEN",
        "patient_id": "E-42",
        "attribute": "Patient.name",
        "attribute_class": "DEMOGRAPHICS",
        "severity": "HIGH",
        "assertions": (
            assertion_at("lab", NAME_B, T0, fact_id="f-lab", record="Patient/L-7"),
            assertion_at("hospital", NAME_A, T0, fact_id="f-hosp", record="Patient/MRN-991"),
        ),
        "proposed_value": NAME_A,
        "proposed_reason": "hospital ranks highest",
        "opened_at": T0,
        "updated_at": T0 + timedelta(minutes=5),
    }
    fields.update(overrides)
    return Alert(**fields)  # type: ignore[arg-type]


def test_a_list_row_carries_no_value_name_or_source_identifier() -> None:
    row = summary_of(_alert(), None, now=T0 + timedelta(hours=2))
    text = row.model_dump_json()
    for phi in (NAME_A, NAME_B, "MRN-991", "L-7"):
        assert phi not in text
    assert row.patient_id == "E-42"
    assert row.sources == ("hospital", "lab")
    assert row.age_seconds == 7200
    assert (row.acknowledged, row.assignee) == (False, None)


def test_the_detail_sets_values_side_by_side_with_their_raw_record() -> None:
    values = values_of(_alert())
    assert [(v.source_system, v.value) for v in values] == [
        ("hospital", NAME_A),
        ("lab", NAME_B),
    ]
    hospital = values[0].provenance
    assert (hospital.topic, hospital.partition, hospital.offset) == ("ehr.raw.fhir", 0, 0)
    assert hospital.source_record_id == "Patient/MRN-991"


def test_a_cursor_round_trips_and_belongs_to_its_filter() -> None:
    open_high = AlertFilter(status=("OPEN",), severity=("HIGH",))
    position = Position(opened_at=T0, alert_id="b" * 32)
    cursor = encode_cursor(position, open_high)
    assert decode_cursor(cursor, open_high) == position
    with pytest.raises(InvalidCursor, match="other filters"):
        decode_cursor(cursor, AlertFilter(status=("OPEN",)))
    for forged in ("not-base64!", "e30", cursor[:-3]):
        with pytest.raises(InvalidCursor):
            decode_cursor(forged, open_high)


def test_accept_sends_the_proposal_decision() -> None:
    sent = resolution_for(_alert(), ResolveRequest(decision="accept"), by="rev-1", at=T0)
    assert (sent.decision, sent.chosen_value, sent.conflict_id) == (
        "ACCEPTED_PROPOSAL", None, "a" * 32,
    )  # fmt: skip
    assert (sent.resolved_by, sent.patient_id, sent.reason_code) == ("rev-1", "E-42", None)
    assert not overrules(_alert(), sent)


def test_choose_takes_a_sources_value_and_correct_a_new_one() -> None:
    chose = resolution_for(
        _alert(), ResolveRequest(decision="choose", value=NAME_B), by="rev-1", at=T0
    )
    assert (chose.decision, chose.chosen_value) == ("CHOSE_VALUE", NAME_B)
    assert overrules(_alert(), chose)  # the policy proposed NAME_A
    corrected = resolution_for(
        _alert(), ResolveRequest(decision="correct", value="Zyxwvut^Anja"), by="r", at=T0
    )
    assert corrected.chosen_value == "Zyxwvut^Anja" and overrules(_alert(), corrected)
    with pytest.raises(NotDecidable, match="one of the sources' values"):
        resolution_for(_alert(), ResolveRequest(decision="choose", value="X"), by="r", at=T0)
    with pytest.raises(NotDecidable, match="choose it instead"):
        resolution_for(_alert(), ResolveRequest(decision="correct", value=NAME_A), by="r", at=T0)
    with pytest.raises(NotDecidable, match="needs the value"):
        resolution_for(_alert(), ResolveRequest(decision="choose"), by="r", at=T0)


def test_a_dismissal_carries_its_reason_code_and_other_needs_a_comment() -> None:
    sent = resolution_for(_alert(), DismissRequest(reason="SAME_MEANING"), by="r", at=T0)
    assert (sent.decision, sent.reason_code) == ("DISMISSED", "SAME_MEANING")
    with pytest.raises(NotDecidable, match="needs a comment"):
        resolution_for(_alert(), DismissRequest(reason="OTHER"), by="r", at=T0)
    with pytest.raises(ValidationError):
        DismissRequest(reason="BECAUSE")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("overrides", "why"),
    [
        ({"status": "RESOLVED"}, "resolved already"),
        ({"status": "DISMISSED"}, "dismissed already"),
        ({"kind": "STALE"}, "stale record"),
        ({"proposed_value": None}, "no proposal to accept"),
    ],
)
def test_what_cannot_be_decided_says_why(overrides: dict[str, object], why: str) -> None:
    with pytest.raises(NotDecidable, match=why):
        resolution_for(_alert(**overrides), ResolveRequest(decision="accept"), by="r", at=T0)


def test_the_same_reviewer_deciding_at_another_time_sends_another_resolution() -> None:
    once = resolution_for(_alert(), ResolveRequest(decision="accept"), by="r", at=T0)
    again = resolution_for(
        _alert(), ResolveRequest(decision="accept"), by="r", at=T0 + timedelta(seconds=1)
    )
    assert once.resolution_id != again.resolution_id
