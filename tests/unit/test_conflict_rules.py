"""Conflict detection, pure: facts move an attribute's state; disagreement opens a conflict."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from concord.conflicts.policy import DEFAULT_POLICY, AttributeRule, SourcePolicy
from concord.conflicts.rules import (
    UNMERGE_TOMBSTONE_PREFIX,
    AttributeState,
    HistoricFact,
    apply_fact,
    apply_resolution,
    as_assertion,
    evaluate,
    precedence,
    rebuild,
)
from concord.events.models import ClinicalFact, ConflictEvent, ConflictResolution, Provenance

T0 = datetime(2024, 3, 1, 8, 0, tzinfo=UTC)
NOW = datetime(2024, 3, 1, 9, 0, tzinfo=UTC)
BIRTH = "Patient.birthDate"


def _fact(
    source: str,
    value: str | None,
    *,
    version: int = 1,
    minutes: float = 0,
    patient: str = "E-1",
    attribute: str = BIRTH,
    status: str = "ASSERTED",
) -> ClinicalFact:
    record = f"{source}/Patient/p/{version}"
    return ClinicalFact(
        fact_id=hashlib.sha256(f"{record}\x1f{attribute}".encode()).hexdigest()[:32],
        patient_id=patient,
        attribute=attribute,
        attribute_class="DEMOGRAPHICS",
        value=value,
        display=value,
        status=status,  # type: ignore[arg-type]
        provenance=Provenance(
            source_system=source,
            source_record_id="Patient/p",
            source_record_version=str(version),
            event_time=T0 + timedelta(minutes=minutes),
            received_time=NOW,
            raw_topic="ehr.raw.fhir",
            raw_partition=0,
            raw_offset=version,
            payload_sha256="00" * 32,
        ),
    )


def _state(attribute: str = BIRTH) -> AttributeState:
    return AttributeState(patient_id="E-1", attribute=attribute, attribute_class="DEMOGRAPHICS")


def _step(
    state: AttributeState, fact: ClinicalFact, policy: SourcePolicy = DEFAULT_POLICY
) -> ConflictEvent | None:
    """What the conflicts stage does per fact: apply, and evaluate only what changed."""
    if not apply_fact(state, fact):
        return None
    return evaluate(state, policy, now=NOW, trigger_received_time=fact.provenance.received_time)


def _run(facts: list[ClinicalFact]) -> tuple[AttributeState, list[ConflictEvent]]:
    state = _state()
    events = [e for f in facts if (e := _step(state, f)) is not None]
    return state, events


# --- the lifecycle ------------------------------------------------------------------------------


def test_two_sources_agreeing_raise_nothing() -> None:
    state, events = _run([_fact("a", "1980-01-01"), _fact("b", "1980-01-01")])
    assert events == []
    assert state.conflict is None
    assert set(state.assertions) == {"a", "b"}


def test_one_source_alone_raises_nothing() -> None:
    assert _run([_fact("a", "1980-01-01")])[1] == []


def test_two_sources_disagreeing_open_a_conflict() -> None:
    a, b = _fact("a", "1980-01-01"), _fact("b", "1980-02-02", minutes=5)
    state, [event] = _run([a, b])
    assert event.kind == "OPENED"
    assert event.revision == 1
    assert event.patient_id == "E-1"
    assert event.attribute == BIRTH
    assert event.attribute_class == "DEMOGRAPHICS"
    assert event.severity == "CRITICAL"
    assert event.policy_version == DEFAULT_POLICY.version
    assert event.detected_at == NOW
    assert event.trigger_received_time == NOW
    assert [x.source_system for x in event.assertions] == ["a", "b"]
    assert event.assertions == (as_assertion(a), as_assertion(b))
    assert event.proposed_value == "1980-02-02"  # no ranked source: the newest
    assert state.conflict is not None
    assert state.conflict.status == "OPEN"
    assert state.conflict.conflict_id == event.conflict_id


def test_conflict_id_and_final_state_do_not_depend_on_arrival_order() -> None:
    a, b = _fact("a", "1980-01-01"), _fact("b", "1980-02-02", minutes=5)
    s1, [e1] = _run([a, b])
    s2, [e2] = _run([b, a])
    assert e1.conflict_id == e2.conflict_id
    assert len(e1.conflict_id) == 32
    assert s1.assertions == s2.assertions
    assert s1.conflict == s2.conflict
    assert e1.model_dump() == e2.model_dump()


def test_conflict_id_is_per_patient_and_attribute() -> None:
    _, [mine] = _run([_fact("a", "x"), _fact("b", "y")])
    other = AttributeState(patient_id="E-2", attribute=BIRTH, attribute_class="DEMOGRAPHICS")
    _step(other, _fact("a", "x", patient="E-2"))
    theirs = _step(other, _fact("b", "y", patient="E-2"))
    assert theirs is not None
    assert theirs.conflict_id != mine.conflict_id


def test_a_third_source_with_yet_another_value_updates_the_conflict() -> None:
    state, events = _run(
        [_fact("a", "1980-01-01"), _fact("b", "1980-02-02"), _fact("c", "1980-03-03")]
    )
    opened, updated = events
    assert (opened.kind, opened.revision) == ("OPENED", 1)
    assert (updated.kind, updated.revision) == ("UPDATED", 2)
    assert updated.conflict_id == opened.conflict_id
    assert [x.source_system for x in updated.assertions] == ["a", "b", "c"]
    assert state.conflict is not None and state.conflict.revision == 2


def test_a_third_source_agreeing_with_one_side_also_updates() -> None:
    _, events = _run([_fact("a", "x"), _fact("b", "y"), _fact("c", "x")])
    assert [(e.kind, e.revision) for e in events] == [("OPENED", 1), ("UPDATED", 2)]


def test_redelivery_changes_nothing() -> None:
    a, b = _fact("a", "x"), _fact("b", "y")
    state, _ = _run([a, b])
    before = (dict(state.assertions), state.conflict)
    assert apply_fact(state, b) is False
    assert apply_fact(state, a) is False
    assert _step(state, b) is None
    assert (dict(state.assertions), state.conflict) == before
    # and evaluating again without a change raises nothing either
    assert evaluate(state, DEFAULT_POLICY, now=NOW, trigger_received_time=NOW) is None


def test_an_older_version_arriving_late_does_not_replace_the_newer() -> None:
    state = _state()
    newer = _fact("a", "1980-01-01", version=2, minutes=10)
    older = _fact("a", "1999-09-09", version=1, minutes=0)
    assert apply_fact(state, newer) is True
    assert apply_fact(state, older) is False
    assert state.assertions["a"].fact_id == newer.fact_id
    assert state.assertions["a"].value == "1980-01-01"


def test_a_newer_version_replaces_the_older() -> None:
    state = _state()
    assert apply_fact(state, _fact("a", "x", version=1, minutes=0))
    assert apply_fact(state, _fact("a", "y", version=2, minutes=1))
    assert state.assertions["a"].value == "y"


def test_sources_agreeing_again_resolve_the_conflict() -> None:
    state, events = _run([_fact("a", "x"), _fact("b", "y"), _fact("b", "x", version=2, minutes=1)])
    opened, resolved = events
    assert (resolved.kind, resolved.revision) == ("RESOLVED", 2)
    assert resolved.conflict_id == opened.conflict_id
    assert resolved.proposed_value is None
    assert state.conflict is not None and state.conflict.status == "RESOLVED"


def test_a_retraction_that_leaves_one_value_resolves() -> None:
    _, events = _run(
        [_fact("a", "x"), _fact("b", "y"), _fact("b", "y", version=2, minutes=1, status="REFUTED")]
    )
    assert [e.kind for e in events] == ["OPENED", "RESOLVED"]


def test_disagreeing_again_after_resolution_opens_a_new_conflict() -> None:
    state, events = _run(
        [
            _fact("a", "x"),
            _fact("b", "y"),
            _fact("b", "x", version=2, minutes=1),
            _fact("a", "z", version=2, minutes=2),
        ]
    )
    opened, resolved, reopened = events
    assert [e.kind for e in events] == ["OPENED", "RESOLVED", "OPENED"]
    assert reopened.revision == 1
    assert reopened.conflict_id != opened.conflict_id
    assert resolved.conflict_id == opened.conflict_id
    assert state.conflict is not None
    assert state.conflict.conflict_id == reopened.conflict_id
    assert state.conflict.status == "OPEN"


def test_the_same_assertions_disagreeing_again_reopen_the_same_conflict() -> None:
    # What an unmerge does: the assertions that disagreed before the merge come back.
    state, [opened] = _run([_fact("a", "x"), _fact("b", "y")])
    before = dict(state.assertions)
    state.assertions["b"] = as_assertion(_fact("b", None, version=2, status="DELETED"))
    resolved = evaluate(state, DEFAULT_POLICY, now=NOW, trigger_received_time=NOW)
    state.assertions.update(before)
    reopened = evaluate(state, DEFAULT_POLICY, now=NOW, trigger_received_time=NOW)
    assert resolved is not None and reopened is not None
    assert (resolved.kind, reopened.kind) == ("RESOLVED", "OPENED")
    assert reopened.conflict_id == opened.conflict_id
    assert [opened.revision, resolved.revision, reopened.revision] == [1, 2, 3]


# --- unmerge: rebuilding from the history ---------------------------------------------------


def _history(owner: str, fact: ClinicalFact) -> HistoricFact:
    return HistoricFact(
        owner=owner,
        attribute=fact.attribute,
        attribute_class=fact.attribute_class,
        assertion=as_assertion(fact),
    )


def _holding(patient: str, *facts: ClinicalFact) -> AttributeState:
    state = AttributeState(patient_id=patient, attribute=BIRTH, attribute_class="DEMOGRAPHICS")
    for fact in facts:
        state.assertions[fact.provenance.source_system] = as_assertion(fact)
    return state


def test_an_unmerge_gives_each_patient_what_its_own_subjects_last_said() -> None:
    # Source a knew both patients under two subjects; the merge kept A's newer fact on B.
    a_of_absorbed = _fact("a", "1980-01-01", version=1, minutes=10, patient="A")
    a_of_survivor = _fact("a", "1990-02-02", version=2, minutes=5, patient="B")
    b_of_survivor = _fact("b", "1990-02-02", version=3, minutes=1, patient="B")
    absorbed = _holding("A")
    absorbed.assertions["a"] = as_assertion(a_of_absorbed).model_copy(
        update={"fact_id": "merged:x", "value": None, "status": "DELETED"}
    )
    survivor = _holding("B", a_of_absorbed, b_of_survivor)
    history = [
        _history("A", a_of_absorbed),
        _history("B", a_of_survivor),
        _history("B", b_of_survivor),
    ]
    states = {("A", BIRTH): absorbed, ("B", BIRTH): survivor}
    changed = rebuild(states, history)
    assert sorted((s.patient_id, source) for s, source in changed) == [("A", "a"), ("B", "a")]
    assert absorbed.assertions["a"].fact_id == a_of_absorbed.fact_id
    # The survivor's own, older fact is back, although the merge had replaced it.
    assert survivor.assertions["a"].fact_id == a_of_survivor.fact_id
    assert survivor.assertions["b"].fact_id == b_of_survivor.fact_id
    assert rebuild(states, history) == []  # a redelivered unmerge changes nothing


def test_a_source_only_the_absorbed_patient_had_leaves_the_survivor() -> None:
    moved = _fact("c", "1980-01-01", minutes=10, patient="A")
    survivor = _holding("B", moved)
    [(state, source)] = rebuild({("B", BIRTH): survivor}, [_history("A", moved)])
    tombstone = state.assertions[source]
    assert tombstone.fact_id.startswith(UNMERGE_TOMBSTONE_PREFIX)
    assert (tombstone.status, tombstone.value) == ("DELETED", None)
    # Same event time: the source's next fact about the survivor still wins.
    assert tombstone.provenance.event_time == moved.provenance.event_time
    assert apply_fact(state, _fact("c", "1990-02-02", version=2, minutes=11, patient="B"))


def test_assertions_the_history_does_not_know_are_left_alone() -> None:
    unknown = _fact("d", "1970-01-01", patient="B")
    survivor = _holding("B", unknown)
    assert rebuild({("B", BIRTH): survivor}, []) == []
    assert survivor.assertions["d"].fact_id == unknown.fact_id


# --- policy -------------------------------------------------------------------------------------


def test_propose_prefers_the_best_ranked_source() -> None:
    policy = SourcePolicy(version="p1", source_rank=("lab", "ehr"))
    unranked_newest = as_assertion(_fact("claims", "c", minutes=30))
    ehr = as_assertion(_fact("ehr", "e", minutes=20))
    lab = as_assertion(_fact("lab", "l", minutes=0))
    value, why = policy.propose([unranked_newest, ehr, lab])
    assert value == "l"
    assert why is not None and "lab" in why
    value, _ = policy.propose([unranked_newest, ehr])
    assert value == "e"


def test_propose_without_ranked_sources_picks_the_newest() -> None:
    policy = SourcePolicy(version="p1", source_rank=("lab",))
    old = as_assertion(_fact("a", "old", minutes=0))
    new = as_assertion(_fact("b", "new", minutes=5))
    value, why = policy.propose([new, old])
    assert value == "new"
    assert why is not None and "b" in why
    assert policy.propose([]) == (None, None)


def test_evaluate_proposes_by_policy_and_records_its_version() -> None:
    policy = SourcePolicy(version="ranked-7", source_rank=("a",))
    state = _state()
    _step(state, _fact("a", "ranked", minutes=0), policy)
    event = _step(state, _fact("b", "newer", minutes=60), policy)
    assert event is not None
    assert event.proposed_value == "ranked"
    assert event.policy_version == "ranked-7"


@pytest.mark.parametrize(
    ("attribute", "severity"),
    [("Patient.birthDate", "CRITICAL"), ("Patient.gender", "HIGH"), ("Patient.name", "MEDIUM")],
)
def test_default_severity_per_attribute(attribute: str, severity: str) -> None:
    assert DEFAULT_POLICY.severity(attribute) == severity
    state = _state(attribute)
    _step(state, _fact("a", "x", attribute=attribute))
    event = _step(state, _fact("b", "y", attribute=attribute))
    assert event is not None and event.severity == severity


def test_attributes_without_an_override_get_their_class_severity_else_the_default() -> None:
    # The built-in policy gives demographics a severity of their own.
    assert DEFAULT_POLICY.severity("Patient.maritalStatus") == "HIGH"
    custom = SourcePolicy(
        version="c",
        default_severity="LOW",
        attributes={"Patient.birthDate": AttributeRule(severity="CRITICAL")},
    )
    assert custom.severity("Patient.birthDate") == "CRITICAL"
    assert custom.severity("Patient.gender") == "LOW"  # its class is listed without one


# --- order independence (property) --------------------------------------------------------------

_SOURCES = ("a", "b", "c")


@st.composite
def _fact_sets(draw: st.DrawFn) -> list[ClinicalFact]:
    facts = []
    for source in draw(st.lists(st.sampled_from(_SOURCES), min_size=1, max_size=3, unique=True)):
        versions = draw(st.integers(min_value=1, max_value=4))
        for version in range(1, versions + 1):
            facts.append(
                _fact(
                    source,
                    draw(st.sampled_from(["x", "y", "z"])),
                    version=version,
                    minutes=draw(st.integers(min_value=0, max_value=5)),  # ties happen
                    status=draw(st.sampled_from(["ASSERTED"] * 4 + ["REFUTED"])),
                )
            )
    return facts


def _check_revisions(events: list[ConflictEvent]) -> None:
    last: dict[str, ConflictEvent] = {}
    for event in events:
        previous = last.get(event.conflict_id)
        if previous is None:
            assert (event.kind, event.revision) == ("OPENED", 1)
        else:
            assert previous.kind != "RESOLVED"
            assert event.kind in ("UPDATED", "RESOLVED")
            assert event.revision == previous.revision + 1
        last[event.conflict_id] = event


@settings(max_examples=300, deadline=None)
@given(facts=_fact_sets(), data=st.data())
def test_any_arrival_order_gives_the_same_final_state(
    facts: list[ClinicalFact], data: st.DataObject
) -> None:
    in_order = sorted(facts, key=precedence)
    shuffled = data.draw(st.permutations(facts))

    expected_state, expected_events = _run(in_order)
    state, events = _run(shuffled)

    newest = {}
    for fact in facts:
        source = fact.provenance.source_system
        best = newest.get(source)
        if best is None or precedence(fact) > precedence(best):
            newest[source] = fact
    assert {s: a.fact_id for s, a in state.assertions.items()} == {
        s: f.fact_id for s, f in newest.items()
    }
    assert state.assertions == expected_state.assertions

    active = {f.value for f in newest.values() if f.status == "ASSERTED" and f.value is not None}
    is_open = state.conflict is not None and state.conflict.status == "OPEN"
    was_open = expected_state.conflict is not None and expected_state.conflict.status == "OPEN"
    assert is_open == was_open == (len(active) > 1)

    _check_revisions(events)
    _check_revisions(expected_events)


# --- reviewers' decisions ---------------------------------------------------------------------


def _decision(conflict_id: str, decision: str = "CHOSE_VALUE") -> ConflictResolution:
    return ConflictResolution(
        resolution_id="r-1",
        conflict_id=conflict_id,
        patient_id="E-1",
        attribute=BIRTH,
        decision=decision,  # type: ignore[arg-type]
        chosen_value="1980-01-01" if decision == "CHOSE_VALUE" else None,
        resolved_by="reviewer-7",
        resolved_at=NOW,
    )


def test_a_reviewers_decision_resolves_the_open_conflict_once() -> None:
    state, [opened] = _run([_fact("a", "1980-01-01"), _fact("b", "1980-02-02", minutes=5)])
    resolved = apply_resolution(state, _decision(opened.conflict_id), DEFAULT_POLICY, now=NOW)
    assert resolved is not None
    assert (resolved.conflict_id, resolved.kind, resolved.revision) == (
        opened.conflict_id, "RESOLVED", 2,
    )  # fmt: skip
    assert resolved.proposed_value == "1980-01-01"
    assert resolved.proposed_reason == "resolved by reviewer reviewer-7: chose_value"
    assert resolved.decision == "CHOSE_VALUE"
    assert apply_resolution(state, _decision(opened.conflict_id), DEFAULT_POLICY, now=NOW) is None


def test_a_dismissal_carries_its_decision_and_reason_code_to_the_event() -> None:
    state, [opened] = _run([_fact("a", "1980-01-01"), _fact("b", "1980-02-02", minutes=5)])
    dismissal = _decision(opened.conflict_id, "DISMISSED").model_copy(
        update={"reason_code": "SAME_MEANING"}
    )
    resolved = apply_resolution(state, dismissal, DEFAULT_POLICY, now=NOW)
    assert resolved is not None
    assert (resolved.kind, resolved.decision, resolved.proposed_value) == (
        "RESOLVED", "DISMISSED", None,
    )  # fmt: skip
    assert resolved.proposed_reason == "dismissed by reviewer reviewer-7: same_meaning"


def test_a_decision_on_another_conflict_changes_nothing() -> None:
    state, [_opened] = _run([_fact("a", "1980-01-01"), _fact("b", "1980-02-02", minutes=5)])
    assert apply_resolution(state, _decision("not-this-one"), DEFAULT_POLICY, now=NOW) is None
    assert state.conflict is not None and state.conflict.status == "OPEN"


def test_the_decided_disagreement_stays_resolved_until_a_source_says_something_new() -> None:
    state, [opened] = _run([_fact("a", "1980-01-01"), _fact("b", "1980-02-02", minutes=5)])
    apply_resolution(state, _decision(opened.conflict_id, "DISMISSED"), DEFAULT_POLICY, now=NOW)
    # Source b sends the same value again: the reviewer already decided this disagreement.
    assert _step(state, _fact("b", "1980-02-02", version=2, minutes=6)) is None
    reopened = _step(state, _fact("b", "1980-03-03", version=3, minutes=7))
    assert reopened is not None and reopened.kind == "OPENED"
    assert reopened.conflict_id != opened.conflict_id
