"""Conflict detection scored against an answer key, pure: found, missed, false positives,
transients, stale records by source, due times, identity errors, persons outside the cohort,
redelivery and out-of-order events, and the printed report."""

from __future__ import annotations

import json
import random
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from concord.conflicts.evaluation import ConflictScores, KindScore, score, stale_source
from concord.conflicts.rules import AttributeState
from concord.conflicts.staleness import Staleness, stale_id
from concord.events.models import Assertion, AttributeClass, ConflictEvent, Provenance

STARTED = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
FINISHED = STARTED + timedelta(minutes=10)
CLINIC, LAB = "clinic", "lab"
BIRTH = "Patient.birthDate"
GENDER = "Patient.gender"
A1C = "Observation/4548-4"
# P1: a planted birth date disagreement; P2: a planted stale result (clinic's); P3: a
# control; P9: in the set's records, outside the cohort.
COHORT = ("P1", "P2", "P3")
EVERYONE = (*COHORT, "P9")


def _ref(source: str, person: str) -> str:
    return f"Patient/{source}-{person}"


def _fact(source: str, person: str) -> str:
    return f"fact-{source}-{person}"


def _said(source: str, person: str, value: str) -> Assertion:
    return Assertion(
        source_system=source,
        value=value,
        status="ASSERTED",
        fact_id=_fact(source, person),
        provenance=Provenance(
            source_system=source,
            source_record_id=_ref(source, person),
            event_time=STARTED - timedelta(days=1),
            received_time=STARTED,
            raw_topic="ehr.raw.fhir",
            raw_partition=0,
            raw_offset=0,
            payload_sha256="00" * 32,
        ),
    )


def _event(
    kind: str,
    revision: int,
    *,
    conflict_id: str = "c1",
    person: str = "P1",
    attribute: str = BIRTH,
    attribute_class: AttributeClass = "DEMOGRAPHICS",
    assertions: tuple[Assertion, ...] | None = None,
) -> ConflictEvent:
    if assertions is None:
        assertions = (_said(CLINIC, person, "1980-01-01"), _said(LAB, person, "1980-02-02"))
    fields: dict[str, Any] = {
        "conflict_id": conflict_id,
        "revision": revision,
        "kind": kind,
        "patient_id": f"E-{person}",
        "attribute": attribute,
        "attribute_class": attribute_class,
        "severity": "HIGH",
        "assertions": assertions,
        "policy_version": "builtin-1",
        "detected_at": STARTED + timedelta(minutes=revision),
        "trigger_received_time": STARTED,
    }
    return ConflictEvent(**fields)


def _stale_id(source: str, person: str = "P2") -> str:
    """The id the conflicts stage gives the stale record of `source`'s A1c result."""
    state = AttributeState(f"E-{person}", A1C, "LABORATORY")
    return stale_id(state, Staleness(source, _fact(source, person), STARTED, "older"))


def _stale_event(
    kind: str, revision: int, *, source: str = CLINIC, person: str = "P2"
) -> ConflictEvent:
    return _event(
        kind,
        revision,
        conflict_id=_stale_id(source, person),
        person=person,
        attribute=A1C,
        attribute_class="LABORATORY",
        assertions=(_said(CLINIC, person, "6.1"), _said(LAB, person, "8.0")),
    )


def _birth_date_plant() -> dict[str, Any]:
    return {
        "kind": "birth_date",
        "person_id": "P1",
        "sources": [CLINIC, LAB],
        "expect": [{"kind": "birth_date", "attribute": BIRTH}],
    }


def _stale_plant(due: datetime = STARTED - timedelta(days=30)) -> dict[str, Any]:
    return {
        "kind": "stale_max_age",
        "person_id": "P2",
        "sources": [CLINIC, LAB],
        "expect": [
            {
                "kind": "stale_max_age",
                "attribute": A1C,
                "stale_source": CLINIC,
                "due": due.isoformat(),
            }
        ],
    }


def _key(*plants: dict[str, Any]) -> dict[str, Any]:
    if not plants:
        plants = (_birth_date_plant(), _stale_plant())
    control = {"kind": "control", "person_id": "P3", "expect": []}
    return {
        "records": [
            {"source": s, "record_ref": _ref(s, p), "person_id": p}
            for p in EVERYONE
            for s in (CLINIC, LAB)
        ],
        "scenarios": {"conflicts": [*plants, control]},
    }


def _score(events: list[ConflictEvent], key: dict[str, Any] | None = None) -> ConflictScores:
    return score(key or _key(), events, started=STARTED, finished=FINISHED)


def _counts(scores: ConflictScores, kind: str) -> tuple[int, int, int, int]:
    k = scores.kinds[kind]
    return (k.expected, k.found, k.false_positives, k.transient)


# Found, missed, false positive, transient


def test_an_expected_conflict_open_at_the_end_is_found() -> None:
    scores = _score([_event("OPENED", 1)], _key(_birth_date_plant()))
    assert _counts(scores, "birth_date") == (1, 1, 0, 0)
    assert scores.kinds["birth_date"].precision == 1.0
    assert scores.kinds["birth_date"].recall == 1.0
    assert scores.missed == [] and scores.spurious == [] and scores.passing == []
    assert "control" not in scores.kinds
    assert scores.perfect


def test_an_updated_expected_conflict_is_still_open_and_found() -> None:
    scores = _score([_event("OPENED", 1), _event("UPDATED", 2)], _key(_birth_date_plant()))
    assert _counts(scores, "birth_date") == (1, 1, 0, 0)


def test_an_expected_conflict_resolved_by_the_end_is_missed() -> None:
    scores = _score([_event("OPENED", 1), _event("RESOLVED", 2)], _key(_birth_date_plant()))
    assert _counts(scores, "birth_date") == (1, 0, 0, 0)  # missed, and not a transient
    assert scores.kinds["birth_date"].recall == 0.0
    assert scores.missed == [
        {"kind": "birth_date", "person": "P1", "attribute": BIRTH, "stale_source": None}
    ]
    assert scores.passing == []
    assert not scores.perfect


def test_an_expected_conflict_never_raised_is_missed() -> None:
    scores = _score([], _key(_birth_date_plant()))
    assert _counts(scores, "birth_date") == (1, 0, 0, 0)
    assert [m["person"] for m in scores.missed] == ["P1"]


def test_an_unexpected_conflict_open_for_a_cohort_person_is_a_false_positive() -> None:
    unexpected = _event("OPENED", 1, conflict_id="c3", person="P3", attribute=GENDER)
    scores = _score([_event("OPENED", 1), unexpected], _key(_birth_date_plant()))
    assert _counts(scores, "birth_date") == (1, 1, 0, 0)
    assert _counts(scores, "sex") == (0, 0, 1, 0)
    assert scores.kinds["sex"].precision == 0.0
    assert scores.spurious == [
        {"kind": "sex", "persons": ["P3"], "attribute": GENDER, "stale_source": None}
    ]
    assert not scores.perfect


def test_a_conflict_on_another_attribute_of_a_planted_person_is_a_false_positive() -> None:
    other = _event("OPENED", 1, conflict_id="c2", attribute="Patient.name")
    scores = _score([_event("OPENED", 1), other], _key(_birth_date_plant()))
    assert _counts(scores, "birth_date") == (1, 1, 0, 0)
    assert _counts(scores, "name") == (0, 0, 1, 0)


def test_a_false_positive_lowers_the_precision_of_the_kind_it_is_counted_against() -> None:
    # Expected and found once, raised a second time on another attribute of the same kind.
    plant = _birth_date_plant()
    plant["expect"] = [{"kind": "medication_status", "attribute": "Medication/6809"}]
    found = _event("OPENED", 1, attribute="Medication/6809", attribute_class="MEDICATION")
    other = _event(
        "OPENED", 1, conflict_id="c2", attribute="Medication/1191", attribute_class="MEDICATION"
    )
    scores = _score([found, other], _key(plant))
    assert _counts(scores, "medication_status") == (1, 1, 1, 0)
    assert scores.kinds["medication_status"].precision == 0.5
    assert scores.kinds["medication_status"].recall == 1.0


def test_an_unexpected_conflict_opened_then_resolved_is_transient() -> None:
    events = [
        _event("OPENED", 1),
        _event("OPENED", 1, conflict_id="c3", person="P3", attribute=GENDER),
        _event("RESOLVED", 2, conflict_id="c3", person="P3", attribute=GENDER),
    ]
    scores = _score(events, _key(_birth_date_plant()))
    assert _counts(scores, "sex") == (0, 0, 0, 1)
    assert scores.kinds["sex"].precision == 1.0
    assert scores.spurious == []
    assert scores.passing == [
        {"kind": "sex", "persons": ["P3"], "attribute": GENDER, "stale_source": None}
    ]
    assert scores.perfect  # a transient costs no precision


def test_a_resolution_never_raised_counts_as_nothing() -> None:
    only_resolved = _event("RESOLVED", 2, conflict_id="c3", person="P3", attribute=GENDER)
    scores = _score([_event("OPENED", 1), only_resolved], _key(_birth_date_plant()))
    assert "sex" not in scores.kinds
    assert scores.spurious == [] and scores.passing == []


# Stale records


def test_stale_source_recovers_the_source_from_the_stale_records_id() -> None:
    assert stale_source(_stale_event("STALE", 1, source=CLINIC)) == CLINIC
    assert stale_source(_stale_event("STALE", 1, source=LAB)) == LAB
    assert stale_source(_event("OPENED", 1)) is None  # a conflict's id names no source


def test_a_stale_record_for_the_expected_source_is_found() -> None:
    scores = _score([_stale_event("STALE", 1, source=CLINIC)], _key(_stale_plant()))
    assert _counts(scores, "stale_max_age") == (1, 1, 0, 0)
    assert scores.missed == [] and scores.spurious == []
    assert scores.perfect


def test_a_stale_record_for_the_other_source_is_a_false_positive_and_not_found() -> None:
    scores = _score([_stale_event("STALE", 1, source=LAB)], _key(_stale_plant()))
    assert _counts(scores, "stale_max_age") == (1, 0, 1, 0)
    assert scores.spurious == [
        {"kind": "stale_max_age", "persons": ["P2"], "attribute": A1C, "stale_source": LAB}
    ]
    assert scores.missed == [
        {"kind": "stale_max_age", "person": "P2", "attribute": A1C, "stale_source": CLINIC}
    ]


def test_a_medication_stale_record_unexpected_counts_against_stale_reconfirm() -> None:
    attribute = "Medication/6809"
    state = AttributeState("E-P3", attribute, "MEDICATION")
    conflict_id = stale_id(state, Staleness(CLINIC, _fact(CLINIC, "P3"), STARTED, "unconfirmed"))
    event = _event(
        "STALE",
        1,
        conflict_id=conflict_id,
        person="P3",
        attribute=attribute,
        attribute_class="MEDICATION",
        assertions=(_said(CLINIC, "P3", "active"),),
    )
    scores = _score([event], _key())
    assert _counts(scores, "stale_reconfirm") == (0, 0, 1, 0)
    assert scores.spurious[0]["stale_source"] == CLINIC


def test_a_conflict_on_the_stale_attribute_is_not_the_stale_record() -> None:
    conflict = _event(
        "OPENED",
        1,
        person="P2",
        attribute=A1C,
        attribute_class="LABORATORY",
        assertions=(_said(CLINIC, "P2", "6.1"), _said(LAB, "P2", "8.0")),
    )
    scores = _score([conflict], _key(_stale_plant()))
    assert _counts(scores, "stale_max_age") == (1, 0, 0, 0)
    assert _counts(scores, "lab_value") == (0, 0, 1, 0)
    assert scores.spurious[0]["stale_source"] is None


def test_a_stale_record_resolved_by_the_end_is_missed() -> None:
    events = [_stale_event("STALE", 1), _stale_event("RESOLVED", 2)]
    scores = _score(events, _key(_stale_plant()))
    assert _counts(scores, "stale_max_age") == (1, 0, 0, 0)
    assert [m["stale_source"] for m in scores.missed] == [CLINIC]


def test_a_stale_record_resolved_and_stale_again_is_found() -> None:
    events = [_stale_event("STALE", 1), _stale_event("RESOLVED", 2), _stale_event("STALE", 3)]
    scores = _score(events, _key(_stale_plant()))
    assert _counts(scores, "stale_max_age") == (1, 1, 0, 0)


# Due times


def test_a_stale_expectation_due_after_the_run_is_not_scored() -> None:
    scores = _score([], _key(_stale_plant(due=FINISHED + timedelta(days=1))))
    assert (scores.not_yet_due, scores.due_during_run) == (1, 0)
    assert _counts(scores, "stale_max_age") == (0, 0, 0, 0)
    assert scores.missed == []
    assert scores.perfect


def test_a_stale_expectation_due_during_the_run_is_counted_apart() -> None:
    scores = _score([], _key(_stale_plant(due=STARTED + timedelta(minutes=5))))
    assert (scores.not_yet_due, scores.due_during_run) == (0, 1)
    assert _counts(scores, "stale_max_age") == (0, 0, 0, 0)
    assert scores.missed == []


def test_a_stale_expectation_due_exactly_at_the_end_is_due_during_the_run() -> None:
    scores = _score([], _key(_stale_plant(due=FINISHED)))
    assert (scores.not_yet_due, scores.due_during_run) == (0, 1)


def test_a_stale_expectation_due_when_the_run_began_is_scored() -> None:
    scores = _score([], _key(_stale_plant(due=STARTED)))
    assert (scores.not_yet_due, scores.due_during_run) == (0, 0)
    assert _counts(scores, "stale_max_age") == (1, 0, 0, 0)


def test_a_stale_record_raised_for_an_expectation_due_during_the_run_is_not_scored() -> None:
    key = _key(_stale_plant(due=STARTED + timedelta(minutes=5)))
    scores = _score([_stale_event("STALE", 1, source=CLINIC)], key)
    assert scores.due_during_run == 1
    assert scores.spurious == []
    assert scores.perfect


# Identity: whose records a conflict is about


def test_a_conflict_between_two_persons_records_is_a_false_positive() -> None:
    crossed = _event(
        "OPENED",
        1,
        assertions=(_said(CLINIC, "P1", "1980-01-01"), _said(LAB, "P3", "1980-02-02")),
    )
    scores = _score([crossed], _key(_birth_date_plant()))
    assert _counts(scores, "birth_date") == (1, 0, 1, 0)
    assert scores.spurious == [
        {"kind": "birth_date", "persons": ["P1", "P3"], "attribute": BIRTH, "stale_source": None}
    ]
    assert [m["person"] for m in scores.missed] == ["P1"]


def test_a_conflict_between_a_cohort_person_and_an_outsider_is_a_false_positive() -> None:
    crossed = _event(
        "OPENED",
        1,
        assertions=(_said(CLINIC, "P1", "1980-01-01"), _said(LAB, "P9", "1980-02-02")),
    )
    scores = _score([crossed], _key(_birth_date_plant()))
    assert _counts(scores, "birth_date") == (1, 0, 1, 0)
    assert scores.outside_cohort == Counter()


def test_a_conflict_about_a_person_outside_the_cohort_is_counted_by_class_not_scored() -> None:
    events = [
        _event("OPENED", 1),
        _event("OPENED", 1, conflict_id="o1", person="P9", attribute=GENDER),
        _event(
            "OPENED",
            1,
            conflict_id="o2",
            person="P9",
            attribute="Medication/6809",
            attribute_class="MEDICATION",
        ),
        _event(
            "RESOLVED",
            2,
            conflict_id="o2",
            person="P9",
            attribute="Medication/6809",
            attribute_class="MEDICATION",
        ),
        # Resolved, never raised: not counted at all.
        _event("RESOLVED", 2, conflict_id="o3", person="P9", attribute="Patient.name"),
    ]
    scores = _score(events, _key(_birth_date_plant()))
    assert scores.outside_cohort == Counter({"DEMOGRAPHICS": 1, "MEDICATION": 1})
    assert set(scores.kinds) == {"birth_date"}
    assert scores.spurious == [] and scores.passing == []
    assert scores.perfect


def test_a_conflict_about_records_not_in_the_key_is_counted_as_other_records() -> None:
    stranger = _event("OPENED", 1, conflict_id="x1", person="P-unknown")
    scores = _score([_event("OPENED", 1), stranger], _key(_birth_date_plant()))
    assert scores.other_records == 1
    assert scores.outside_cohort == Counter()
    assert _counts(scores, "birth_date") == (1, 1, 0, 0)
    assert scores.perfect


# Two records for one expectation


@pytest.mark.parametrize("order", ["first", "second"])
def test_two_records_for_one_expected_key_are_one_found_and_one_false_positive(
    order: str,
) -> None:
    events = [_event("OPENED", 1, conflict_id="c1"), _event("OPENED", 1, conflict_id="c2")]
    if order == "second":
        events.reverse()
    scores = _score(events, _key(_birth_date_plant()))
    assert _counts(scores, "birth_date") == (1, 1, 1, 0)
    assert scores.kinds["birth_date"].precision == 0.5
    assert scores.kinds["birth_date"].recall == 1.0
    assert [s["persons"] for s in scores.spurious] == [["P1"]]


def test_a_resolved_record_and_an_open_one_for_one_expected_key_are_found() -> None:
    events = [
        _event("OPENED", 1, conflict_id="c1"),
        _event("RESOLVED", 2, conflict_id="c1"),
        _event("OPENED", 1, conflict_id="c2"),
    ]
    scores = _score(events, _key(_birth_date_plant()))
    assert _counts(scores, "birth_date") == (1, 1, 0, 0)
    assert scores.missed == []


# Redelivery and order


def _mixed_events() -> list[ConflictEvent]:
    """Found (reopened), missed (resolved), a false positive and a transient."""
    return [
        _event("OPENED", 1),
        _event("RESOLVED", 2),
        _event("OPENED", 3),
        _stale_event("STALE", 1),
        _stale_event("RESOLVED", 2),
        _event("OPENED", 1, conflict_id="c3", person="P3", attribute=GENDER),
        _event("OPENED", 1, conflict_id="c4", person="P3", attribute="Patient.name"),
        _event("UPDATED", 2, conflict_id="c4", person="P3", attribute="Patient.name"),
        _event("RESOLVED", 3, conflict_id="c4", person="P3", attribute="Patient.name"),
    ]


def _summary(scores: ConflictScores) -> dict[str, Any]:
    def items(entries: list[dict[str, Any]]) -> list[str]:
        return sorted(json.dumps(e, sort_keys=True) for e in entries)

    return {
        "kinds": {name: _counts(scores, name) for name in scores.kinds},
        "missed": items(scores.missed),
        "spurious": items(scores.spurious),
        "passing": items(scores.passing),
        "not_yet_due": scores.not_yet_due,
        "due_during_run": scores.due_during_run,
        "outside_cohort": scores.outside_cohort,
        "other_records": scores.other_records,
    }


def test_the_mixed_events_score_as_intended() -> None:
    summary = _summary(_score(_mixed_events()))
    assert summary["kinds"] == {
        "birth_date": (1, 1, 0, 0),
        "stale_max_age": (1, 0, 0, 0),
        "sex": (0, 0, 1, 0),
        "name": (0, 0, 0, 1),
    }


@pytest.mark.parametrize(
    "arrange",
    [
        pytest.param(lambda es: list(reversed(es)), id="reversed"),
        pytest.param(lambda es: random.Random(7).sample(es, len(es)), id="shuffled"),
        pytest.param(lambda es: es + es, id="every-event-twice"),
        pytest.param(lambda es: [e for e in es for _ in (0, 1)], id="each-event-redelivered"),
        pytest.param(lambda es: list(reversed(es)) + es, id="reversed-then-again"),
    ],
)
def test_out_of_order_and_redelivered_events_score_as_in_order(arrange: Any) -> None:
    in_order = _summary(_score(_mixed_events()))
    assert _summary(_score(arrange(_mixed_events()))) == in_order


def test_a_resolution_delivered_before_its_opening_still_leaves_it_missed() -> None:
    events = [_event("RESOLVED", 2), _event("OPENED", 1)]
    scores = _score(events, _key(_birth_date_plant()))
    assert _counts(scores, "birth_date") == (1, 0, 0, 0)


# The report


def test_kind_score_precision_and_recall() -> None:
    assert (KindScore().precision, KindScore().recall) == (1.0, 1.0)
    score_ = KindScore(expected=4, found=3, false_positives=1, transient=5)
    assert (score_.precision, score_.recall) == (0.75, 0.75)


def _rows(report: str) -> dict[str, list[str]]:
    return {line.split()[0]: line.split() for line in report.splitlines()}


def test_the_report_has_a_row_per_kind_and_an_all_row() -> None:
    events = [
        _event("OPENED", 1),
        _event("OPENED", 1, conflict_id="c3", person="P3", attribute=GENDER),
        _event("OPENED", 1, conflict_id="c4", person="P3", attribute="Patient.name"),
        _event("RESOLVED", 2, conflict_id="c4", person="P3", attribute="Patient.name"),
    ]
    scores = _score(events)  # the stale plant: never raised, missed
    report = scores.report()
    lines = report.splitlines()
    assert lines[0].split() == [
        "kind",
        "expected",
        "found",
        "false+",
        "transient",
        "precision",
        "recall",
    ]
    assert [line.split()[0] for line in lines[1:6]] == [
        "birth_date",
        "name",
        "sex",
        "stale_max_age",
        "all",
    ]
    rows = _rows(report)
    assert rows["birth_date"] == ["birth_date", "1", "1", "0", "0", "1.00", "1.00"]
    assert rows["name"] == ["name", "0", "0", "0", "1", "1.00", "1.00"]
    assert rows["sex"] == ["sex", "0", "0", "1", "0", "0.00", "1.00"]
    assert rows["stale_max_age"] == ["stale_max_age", "1", "0", "0", "0", "1.00", "0.00"]
    assert rows["all"] == ["all", "2", "1", "1", "1", "0.50", "0.50"]
    assert any(line.startswith("missed: ") and "stale_max_age" in line for line in lines)
    assert any(line.startswith("false positive: ") and GENDER in line for line in lines)
    assert any(line.startswith("transient: ") and "Patient.name" in line for line in lines)
    assert not scores.perfect


def test_the_report_lists_what_was_not_scored() -> None:
    key = _key(
        _birth_date_plant(),
        _stale_plant(due=FINISHED + timedelta(days=1)),
        {
            "kind": "stale_max_age",
            "person_id": "P2",
            "sources": [CLINIC, LAB],
            "expect": [
                {
                    "kind": "stale_max_age",
                    "attribute": "Observation/2345-7",
                    "stale_source": LAB,
                    "due": (STARTED + timedelta(minutes=1)).isoformat(),
                }
            ],
        },
    )
    events = [
        _event("OPENED", 1),
        _event("OPENED", 1, conflict_id="o1", person="P9", attribute=GENDER),
    ]
    report = _score(events, key).report()
    assert "stale records not scored: 1 not yet due, 1 fell due during the run" in report
    assert "raised outside the cohort (not scored): DEMOGRAPHICS 1" in report


def test_perfect_only_when_every_kind_scores_one_on_both() -> None:
    assert _score([_event("OPENED", 1), _stale_event("STALE", 1)]).perfect
    assert ConflictScores().perfect
    imprecise = ConflictScores(kinds={"a": KindScore(1, 1, 0, 0), "b": KindScore(1, 1, 1, 0)})
    assert not imprecise.perfect
    incomplete = ConflictScores(kinds={"a": KindScore(1, 1, 0, 3), "b": KindScore(2, 1, 0, 0)})
    assert not incomplete.perfect
    transient_only = ConflictScores(kinds={"a": KindScore(1, 1, 0, 3)})
    assert transient_only.perfect
