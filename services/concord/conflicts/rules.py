"""Conflict detection, pure: apply a fact to a patient attribute's state; decide what changed.

Event time decides which assertion of a source stands: a late, older version never replaces
a newer one. Redelivery changes nothing, so it raises nothing.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Literal

from concord.conflicts.beliefs import (
    TOMBSTONE_KEY,
    believed,
    is_tombstone,
    keeps_records,
    precedence,
    record_key,
)
from concord.conflicts.compare import (
    MERGE_TOMBSTONE_PREFIX,
    UNMERGE_TOMBSTONE_PREFIX,
    participants,
    said_by_a_source,
)
from concord.conflicts.compare import disagree as disagreeing
from concord.conflicts.policy import ClassRule, SourcePolicy
from concord.events.models import (
    Assertion,
    AttributeClass,
    ClinicalFact,
    ConflictEvent,
    ConflictResolution,
)


@dataclass(frozen=True)
class ConflictState:
    """The conflict a patient attribute is in (or was last in)."""

    conflict_id: str
    revision: int
    status: Literal["OPEN", "RESOLVED"]
    digest: str
    opened_at: datetime
    updated_at: datetime
    # Resolved by a reviewer: the same disagreement does not reopen it, a changed one does.
    reviewed: bool = False


@dataclass(frozen=True)
class Hold:
    """A disagreement or stale record found but not raised yet: the policy's `suppress_for`
    asks it to last until `until` (found at `since`). If it is gone before then, nothing was
    ever raised: a backlog in which one source's newer record is processed a moment after
    another's raises no alert that resolves seconds later."""

    since: datetime
    until: datetime


# The key of the conflict's own hold in AttributeState.held (stale records' are sources).
CONFLICT_HOLD = ""


@dataclass
class AttributeState:
    """What every source currently asserts about one patient attribute, and its conflict."""

    patient_id: str
    attribute: str
    attribute_class: AttributeClass
    # Each source's belief (beliefs.py): what is compared.
    assertions: dict[str, Assertion] = field(default_factory=dict)
    # Each source's current records by record key, for the classes a source may hold several
    # records of (beliefs.RECORD_CLASSES); a source with one record may have none here.
    records: dict[str, dict[str, Assertion]] = field(default_factory=dict)
    conflict: ConflictState | None = None
    # Each source's stale record on the attribute, if it had one (staleness.py).
    stale: dict[str, ConflictState] = field(default_factory=dict)
    # What waits out suppress_for: CONFLICT_HOLD for the conflict, a source for its staleness.
    held: dict[str, Hold] = field(default_factory=dict)

    def records_of(self, source: str) -> dict[str, Assertion]:
        """The source's current records: those kept, else its belief as its only record."""
        kept = self.records.get(source)
        if kept:
            return kept
        belief = self.assertions.get(source)
        return {} if belief is None else {record_key(belief): belief}

    def set_records(self, source: str, records: dict[str, Assertion]) -> None:
        """Replace the source's records and derive its belief from them."""
        belief = believed(records, self.attribute_class)
        if belief is None:
            self.records.pop(source, None)
            self.assertions.pop(source, None)
            return
        self.assertions[source] = belief
        # One record is its own belief: nothing more to keep (nor to store).
        if len(records) > 1 and keeps_records(self.attribute_class):
            self.records[source] = records
        else:
            self.records.pop(source, None)

    def hold(self, key: str, now: datetime, window: timedelta) -> Hold | None:
        """The hold of `key`, started now if new; None once it has lasted `window` (and is
        removed), or when there is no window: then the record is raised now."""
        if window <= timedelta(0):
            self.held.pop(key, None)
            return None
        hold = self.held.setdefault(key, Hold(now, now + window))
        if hold.until > now:
            return hold
        del self.held[key]
        return None


def hash_of(*parts: str) -> str:
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:32]


def as_assertion(fact: ClinicalFact) -> Assertion:
    return Assertion(
        source_system=fact.provenance.source_system,
        value=fact.value,
        display=fact.display,
        status=fact.status,
        fact_id=fact.fact_id,
        provenance=fact.provenance,
        unit=fact.unit,
        effective_time=fact.effective_time,
    )


def supersedes(fact: ClinicalFact, current: Assertion | None) -> bool:
    """Whether a fact replaces its source's current assertion, by `precedence`."""
    if current is None:
        return True
    if fact.fact_id == current.fact_id:
        return False
    return precedence(fact) > precedence(current)


def apply_fact(state: AttributeState, fact: ClinicalFact) -> bool:
    """Record the fact as an assertion of its source's if it is newer than what it replaces
    (the same record's earlier version; for a tombstone, or a class with one value at a time,
    the source's belief), and derive the source's belief again; return whether it was."""
    source = fact.provenance.source_system
    assertion = as_assertion(fact)
    if not keeps_records(state.attribute_class) or is_tombstone(assertion):
        if not supersedes(fact, state.assertions.get(source)):
            return False
        state.set_records(source, {record_key(assertion): assertion})
        return True
    records = dict(state.records_of(source))
    tombstone = records.get(TOMBSTONE_KEY)
    if tombstone is not None and is_tombstone(tombstone):
        # The source stopped speaking of the patient (a merge, an unmerge) after this fact.
        if not supersedes(fact, tombstone):
            return False
        del records[TOMBSTONE_KEY]
    key = record_key(assertion)
    if not supersedes(fact, records.get(key)):
        return False
    records[key] = assertion
    state.set_records(source, records)
    return True


def evaluate(
    state: AttributeState,
    policy: SourcePolicy,
    *,
    now: datetime,
    trigger_received_time: datetime,
) -> ConflictEvent | None:
    """Compare the sources' assertions by the policy's rule for the attribute; update
    state.conflict and return the event, if any."""
    rule = policy.rule(state.attribute, state.attribute_class) or ClassRule()
    active = participants(list(state.assertions.values()), rule)
    disagree = disagreeing(active, rule)
    digest = hash_of(*(f"{a.source_system}={a.value}" for a in active))
    current = state.conflict
    kind: Literal["OPENED", "UPDATED", "RESOLVED"]
    if disagree and current is not None and current.reviewed and current.digest == digest:
        return None  # a reviewer decided this very disagreement
    if disagree and (current is None or current.status == "RESOLVED"):
        if state.hold(CONFLICT_HOLD, now, rule.suppress_for) is not None:
            return None
        kind = "OPENED"
        conflict_id = hash_of(
            state.patient_id, state.attribute, *(f"{a.source_system}:{a.fact_id}" for a in active)
        )
        new = ConflictState(
            conflict_id=conflict_id,
            # The same assertions disagreeing again (an unmerge restores them) reopen the same
            # conflict: its revisions go on, so that consumers see the reopening.
            revision=current.revision + 1
            if current is not None and current.conflict_id == conflict_id
            else 1,
            status="OPEN",
            digest=digest,
            opened_at=now,
            updated_at=now,
        )
    elif disagree and current is not None and current.digest != digest:
        kind = "UPDATED"
        new = replace(current, revision=current.revision + 1, digest=digest, updated_at=now)
    elif not disagree and current is not None and current.status == "OPEN":
        kind = "RESOLVED"
        new = replace(
            current, revision=current.revision + 1, status="RESOLVED", digest=digest, updated_at=now
        )
    else:
        if not disagree:
            state.held.pop(CONFLICT_HOLD, None)  # gone before it lasted: never raised
        return None
    state.conflict = new
    proposed, why = policy.propose(active, rule) if disagree else (None, "the sources agree")
    return conflict_event(state, new, kind, policy, now, trigger_received_time, (proposed, why))


def apply_resolution(
    state: AttributeState, resolution: ConflictResolution, policy: SourcePolicy, *, now: datetime
) -> ConflictEvent | None:
    """A reviewer's decision resolves the open conflict it names; a decision on a conflict
    already resolved, or since replaced by another, changes nothing (and so a redelivered one
    neither)."""
    current = state.conflict
    if current is None or current.conflict_id != resolution.conflict_id:
        return None
    if current.status != "OPEN":
        return None
    new = replace(
        current, revision=current.revision + 1, status="RESOLVED", updated_at=now, reviewed=True
    )
    state.conflict = new
    if resolution.decision == "CHOSE_VALUE":
        value = resolution.chosen_value
    elif resolution.decision == "ACCEPTED_PROPOSAL":
        rule = policy.rule(state.attribute, state.attribute_class) or ClassRule()
        value = policy.propose(participants(list(state.assertions.values()), rule), rule)[0]
    else:
        value = None
    if resolution.decision == "DISMISSED":
        why = f"dismissed by reviewer {resolution.resolved_by}"
        if resolution.reason_code:
            why += f": {resolution.reason_code.lower()}"
    else:
        why = f"resolved by reviewer {resolution.resolved_by}: {resolution.decision.lower()}"
    event = conflict_event(
        state, new, "RESOLVED", policy, now, resolution.resolved_at, (value, why)
    )
    return event.model_copy(update={"decision": resolution.decision})


def conflict_event(
    state: AttributeState,
    record: ConflictState,
    kind: Literal["OPENED", "UPDATED", "RESOLVED", "STALE"],
    policy: SourcePolicy,
    now: datetime,
    received: datetime,
    proposal: tuple[str | None, str | None],
    stale_source: str | None = None,
) -> ConflictEvent:
    """The event of a conflict (or stale) record's new revision, with every assertion."""
    return ConflictEvent(
        conflict_id=record.conflict_id,
        revision=record.revision,
        kind=kind,
        patient_id=state.patient_id,
        attribute=state.attribute,
        attribute_class=state.attribute_class,
        severity=policy.severity(state.attribute, state.attribute_class),
        assertions=tuple(sorted(state.assertions.values(), key=lambda a: a.source_system)),
        proposed_value=proposal[0],
        proposed_reason=proposal[1],
        policy_version=policy.version,
        detected_at=now,
        trigger_received_time=received,
        stale_source=stale_source,
    )


def merged_facts(absorbed: AttributeState, merge: ClinicalFact) -> list[ClinicalFact]:
    """For one attribute of a patient merged into `merge.patient_id`: each source's records
    as facts about the survivor, and a tombstone replacing them on the absorbed patient. A
    redelivered merge finds only tombstones, and adds nothing."""
    common = {"attribute": absorbed.attribute, "attribute_class": absorbed.attribute_class}
    facts: list[ClinicalFact] = []
    for source in sorted(absorbed.assertions):
        records = [a for _, a in sorted(absorbed.records_of(source).items())]
        said = [a for a in records if said_by_a_source(a)]
        if not said:
            continue  # a tombstone moves nothing
        facts.extend(
            ClinicalFact(
                fact_id=assertion.fact_id,
                patient_id=merge.patient_id,
                value=assertion.value,
                display=assertion.display,
                status=assertion.status,
                provenance=assertion.provenance,
                unit=assertion.unit,
                effective_time=assertion.effective_time,
                **common,
            )
            for assertion in said
        )
        belief = absorbed.assertions[source]
        when = max(*(a.provenance.event_time for a in said), merge.provenance.event_time)
        facts.append(
            ClinicalFact(
                fact_id=MERGE_TOMBSTONE_PREFIX + hash_of(merge.fact_id, source, absorbed.attribute),
                patient_id=absorbed.patient_id,
                value=None,
                status="DELETED",
                provenance=belief.provenance.model_copy(update={"event_time": when}),
                **common,
            )
        )
    return facts


@dataclass(frozen=True)
class HistoricFact:
    """A fact as the history keeps it, and the patient its source's subject belongs to now."""

    owner: str
    attribute: str
    attribute_class: AttributeClass
    assertion: Assertion


def rebuild(
    states: Mapping[tuple[str, str], AttributeState], history: Iterable[HistoricFact]
) -> list[tuple[AttributeState, str]]:
    """After an unmerge: each source's assertion on each attribute in `states` becomes the
    newest fact of the source's subjects the patient owns now, whatever its age (the merge had
    replaced it). An assertion whose fact now belongs to another patient, with nothing of the
    patient's own to take its place, becomes a tombstone of the same event time, so that the
    source's next fact wins. Assertions the history does not know are left alone. Returns the
    (state, source) pairs changed; doing it twice changes nothing."""
    facts = list(history)
    known = {fact.assertion.fact_id for fact in facts}
    newest: dict[tuple[str, str, str], Assertion] = {}
    for fact in facts:
        key = (fact.owner, fact.attribute, fact.assertion.source_system)
        best = newest.get(key)
        if best is None or precedence(fact.assertion) > precedence(best):
            newest[key] = fact.assertion
    changed: list[tuple[AttributeState, str]] = []
    for (patient, attribute), state in states.items():
        sources = set(state.assertions) | {
            source for (p, a, source) in newest if (p, a) == (patient, attribute)
        }
        for source in sorted(sources):
            current = state.assertions.get(source)
            target = newest.get((patient, attribute, source))
            if target is None and current is not None and current.fact_id in known:
                target = current.model_copy(
                    update={
                        "fact_id": UNMERGE_TOMBSTONE_PREFIX
                        + hash_of(current.fact_id, patient, attribute),
                        "value": None,
                        "display": None,
                        "status": "DELETED",
                    }
                )
            if target is not None and (current is None or current.fact_id != target.fact_id):
                # The newest fact stands for the source: its other records are not rebuilt.
                state.set_records(source, {record_key(target): target})
                changed.append((state, source))
    return changed
