"""Stale assertions, pure: when an assertion has outlived what the policy allows.

Two kinds, per source's assertion on one attribute (`ClassRule`):

- `max_age`: the assertion is older than this while another source holds a newer, different
  one (a year-old result against this week's; an address two moves ago);
- `reconfirm_within`: an active assertion its source has not said again within this window
  (an active medication nobody confirmed for 90 days).

Each stale assertion is its own stale record (a `STALE` conflict event with an id of its own)
until its source says something new or the newer one goes away: then it resolves. Nothing
here reads a clock: `now` is given, and `next_due` tells the timer when to look again.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Literal

from concord.conflicts.compare import ACTIVE, agree, participants
from concord.conflicts.policy import ClassRule, SourcePolicy
from concord.conflicts.rules import (
    CONFLICT_HOLD,
    AttributeState,
    ConflictState,
    conflict_event,
    hash_of,
)
from concord.events.models import Assertion, ConflictEvent


@dataclass(frozen=True)
class Staleness:
    source: str
    fact_id: str
    due: datetime  # since when it is stale
    reason: str
    newer: Assertion | None = None  # MAX_AGE: the newer, different assertion


def _time(assertion: Assertion) -> datetime:
    """When the assertion was true: its effective time (a result's specimen), else when the
    source said it."""
    return assertion.effective_time or assertion.provenance.event_time


def candidates(state: AttributeState, rule: ClassRule) -> list[Staleness]:
    """Every staleness the state's assertions will have, with the time each becomes true."""
    found: list[Staleness] = []
    taking_part = participants(list(state.assertions.values()), rule)
    for mine in taking_part:
        if rule.max_age is not None:
            newer = [
                other
                for other in taking_part
                if other.source_system != mine.source_system
                and _time(other) > _time(mine)
                and not agree(mine, other, rule)
            ]
            if newer:
                newest = max(newer, key=_time)
                days = rule.max_age.days
                found.append(
                    Staleness(
                        mine.source_system,
                        mine.fact_id,
                        _time(mine) + rule.max_age,
                        f"{mine.source_system}'s assertion is older than {days} days while "
                        f"{newest.source_system} holds a newer, different one",
                        newest,
                    )
                )
        active = mine.value == ACTIVE if rule.compare == "status" else True
        if rule.reconfirm_within is not None and active:
            days = rule.reconfirm_within.days
            found.append(
                Staleness(
                    mine.source_system,
                    mine.fact_id,
                    mine.provenance.event_time + rule.reconfirm_within,
                    f"{mine.source_system} has not confirmed this active assertion within "
                    f"{days} days",
                )
            )
    return found


def stale_now(
    state: AttributeState,
    rule: ClassRule,
    now: datetime,
    found: list[Staleness] | None = None,
) -> dict[str, Staleness]:
    """The stale assertions by source (the earliest kind, if both). `found`: candidates()
    already computed for this state."""
    stale: dict[str, Staleness] = {}
    for finding in sorted(candidates(state, rule) if found is None else found, key=_due):
        if finding.due <= now:
            stale.setdefault(finding.source, finding)
    return stale


def next_due(
    state: AttributeState,
    rule: ClassRule | None,
    now: datetime,
    found: list[Staleness] | None = None,
) -> datetime | None:
    """When to look at the state again: the earliest staleness still to come, or the end of
    a hold. `found`: candidates() already computed for this state."""
    if found is None:
        found = candidates(state, rule) if rule is not None else []
    coming = [s.due for s in found if s.due > now]
    coming += [hold.until for hold in state.held.values()]
    return min(coming, default=None)


def _due(finding: Staleness) -> datetime:
    return finding.due


def stale_id(state: AttributeState, finding: Staleness) -> str:
    return hash_of(state.patient_id, state.attribute, "stale", finding.source, finding.fact_id)


def staleness_events(
    state: AttributeState,
    policy: SourcePolicy,
    *,
    now: datetime,
    trigger_received_time: datetime,
) -> list[ConflictEvent]:
    """Compare what is stale now with what was: a new stale assertion raises a STALE event,
    one no longer stale (its source spoke again, the newer one went away) resolves. Updates
    state.stale; doing it twice raises nothing twice."""
    return check_staleness(state, policy, now=now, trigger_received_time=trigger_received_time)[0]


def check_staleness(
    state: AttributeState,
    policy: SourcePolicy,
    *,
    now: datetime,
    trigger_received_time: datetime,
) -> tuple[list[ConflictEvent], datetime | None]:
    """staleness_events(), and when to look again (next_due), from one pass over the
    candidates."""
    rule = policy.rule(state.attribute, state.attribute_class)
    found = candidates(state, rule) if rule is not None else []
    stale = stale_now(state, rule, now, found) if rule is not None else {}
    events: list[ConflictEvent] = []
    for source, current in sorted(state.stale.items()):
        finding = stale.get(source)
        if current.status == "OPEN" and (finding is None or finding.fact_id != current.digest):
            resolved = replace(current, revision=current.revision + 1, status="RESOLVED",
                               updated_at=now)  # fmt: skip
            state.stale[source] = resolved
            events.append(
                _event(state, source, resolved, "RESOLVED", policy, now, trigger_received_time)
            )
    for source in [s for s in state.held if s != CONFLICT_HOLD and s not in stale]:
        del state.held[source]  # no longer stale before it lasted: never raised
    window = rule.suppress_for if rule is not None else timedelta(0)
    for source, finding in sorted(stale.items()):
        before = state.stale.get(source)
        if before is not None and before.status == "OPEN":
            continue
        if state.hold(source, now, window) is not None:
            continue
        conflict_id = stale_id(state, finding)
        if before is not None and before.conflict_id == conflict_id:
            # The same assertion stale again (the newer one came back): the same record,
            # reopened, its revisions going on.
            opened = replace(before, revision=before.revision + 1, status="OPEN", updated_at=now)
        else:
            opened = ConflictState(conflict_id, 1, "OPEN", finding.fact_id, now, now)
        state.stale[source] = opened
        events.append(
            _event(state, source, opened, "STALE", policy, now, trigger_received_time, finding)
        )
    return events, next_due(state, rule, now, found)


def _event(
    state: AttributeState,
    source: str,
    stale: ConflictState,
    kind: Literal["STALE", "RESOLVED"],
    policy: SourcePolicy,
    now: datetime,
    received: datetime,
    finding: Staleness | None = None,
) -> ConflictEvent:
    if finding is None:
        proposal: tuple[str | None, str | None] = (None, "no longer stale")
    elif finding.newer is not None:
        proposal = (finding.newer.value, finding.reason)
    else:
        proposal = (None, finding.reason)
    return conflict_event(state, stale, kind, policy, now, received, proposal, source)
