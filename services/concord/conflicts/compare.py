"""Whether the sources' assertions about one attribute disagree, by the policy's comparison.

Pure. Each comparison says which assertions take part and what each one's position is:

- `exact` and `code`: asserted values, equal or not (codes were mapped to a standard by
  normalization, so equal codes are equivalent ones);
- `numeric`: numbers within the tolerance, in the same unit; with a specimen window, only
  results whose effective times are that close compare (two results of one specimen);
- `status`: what each source says about the thing — active, inactive, refuted, withdrawn
  (entered in error, deleted). Active against any of the others is a disagreement: an allergy
  active in one source and refuted in another.

Tombstones Concord writes itself (a merge's, an unmerge's) say nothing and take no part.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import combinations

from concord.conflicts.policy import ClassRule
from concord.events.models import Assertion

# Tombstones Concord writes itself: a merge's on the absorbed patient, an unmerge's where a
# source no longer speaks of a patient. They sort after any fact id (hex) of the same time.
MERGE_TOMBSTONE_PREFIX = "merged:"
UNMERGE_TOMBSTONE_PREFIX = "unmerged:"
SYNTHETIC_PREFIXES = (MERGE_TOMBSTONE_PREFIX, UNMERGE_TOMBSTONE_PREFIX)

ACTIVE = "active"
INACTIVE = "inactive"
REFUTED = "refuted"
WITHDRAWN = "entered-in-error"

# Clinical and medication statuses (FHIR value sets; HL7 v2 maps to them) by position. A
# status not listed (unknown, draft, completed) takes no position: an administration or a
# dispense that "completed" says the drug was given, not whether it is still taken.
_STATUS_POSITIONS = {
    "active": ACTIVE,
    "recurrence": ACTIVE,
    "relapse": ACTIVE,
    "on-hold": ACTIVE,
    "intended": ACTIVE,
    "inactive": INACTIVE,
    "remission": INACTIVE,
    "resolved": INACTIVE,
    "stopped": INACTIVE,
    "cancelled": INACTIVE,
    "not-taken": INACTIVE,
    "entered-in-error": WITHDRAWN,
}


def status_position(value: str | None) -> str | None:
    """What a status value says: active, inactive, entered-in-error, or None (no position)."""
    return _STATUS_POSITIONS.get((value or "").casefold())


def said_by_a_source(assertion: Assertion) -> bool:
    return not assertion.fact_id.startswith(SYNTHETIC_PREFIXES)


def position(assertion: Assertion, rule: ClassRule) -> str | None:
    """What the assertion says, as compared; None when it takes no part."""
    if not said_by_a_source(assertion):
        return None
    if rule.compare == "status":
        if assertion.status == "REFUTED":
            return REFUTED
        if assertion.status in ("ENTERED_IN_ERROR", "DELETED"):
            return WITHDRAWN
        return status_position(assertion.value)
    if assertion.status != "ASSERTED" or assertion.value is None:
        return None
    return assertion.value


def participants(assertions: Sequence[Assertion], rule: ClassRule) -> list[Assertion]:
    """The assertions that take part, each with its position as value, by source."""
    taking_part = []
    for assertion in sorted(assertions, key=lambda a: a.source_system):
        said = position(assertion, rule)
        if said is None:
            continue
        # Assertions are frozen: one whose position is its value is shared, not copied.
        same = said == assertion.value
        taking_part.append(assertion if same else assertion.model_copy(update={"value": said}))
    return taking_part


def disagree(taking_part: Sequence[Assertion], rule: ClassRule) -> bool:
    """Whether any two comparable participants disagree."""
    if rule.compare == "status":
        said = {a.value for a in taking_part}
        return ACTIVE in said and len(said) > 1
    return any(
        _comparable(a, b, rule) and not agree(a, b, rule) for a, b in combinations(taking_part, 2)
    )


def _comparable(a: Assertion, b: Assertion, rule: ClassRule) -> bool:
    window = rule.specimen_window
    if window is None:
        return True
    if a.effective_time is None or b.effective_time is None:
        return False  # one specimen cannot be told: two results of unknown times are two
    return abs(a.effective_time - b.effective_time) <= window


def agree(a: Assertion, b: Assertion, rule: ClassRule) -> bool:
    """Whether two participants (values: their positions) say the same, whatever their times."""
    if rule.compare == "numeric" and rule.tolerance is not None:
        numbers = _number(a.value), _number(b.value)
        if numbers[0] is not None and numbers[1] is not None:
            if a.unit != b.unit:
                return True  # not convertible into one unit: not comparable, not a conflict
            return rule.tolerance.agree(numbers[0], numbers[1])
    return a.value == b.value


def _number(value: str | None) -> float | None:
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None
