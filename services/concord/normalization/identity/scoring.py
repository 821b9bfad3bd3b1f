"""Fellegi-Sunter scoring of a compared pair, and the decision its score leads to.

Each field level has an m probability (how often a TRUE match shows that level) and a u
probability (how often two DIFFERENT people do). Its weight is log2(m/u): bits of evidence
for (positive) or against (negative) the pair being one person. The disagreement level of a
field takes the probability mass its agreement levels leave, so its weight is
log2((1 - Σm) / (1 - Σu)); a missing field weighs 0. The score is the sum of the weights,
and the breakdown keeps every term. Where the values come from: docs/identity.md.

Two corrections to the independence the model assumes, both where relatives are concerned
(the discounted term stays in the breakdown with weight 0, marked `discounted`):

- Postal code and phone are shared by a household. When a personal field (given name, birth
  date, sex) says "another person", a shared address or phone is what a twin, a parent or a
  spouse would also have, so their positive weight is discounted. Without this, twins at one
  address out-score a true match who moved.
- Given names are sex-specific. When the sexes differ, a fuzzy given-name agreement is what a
  brother and sister's names often have (Daniel/Danielle, and John/Jane sound alike to NYSIIS
  and Metaphone), so only an exact given name keeps its weight.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, model_validator

from concord.normalization.identity.compare import Field, Level, compare
from concord.normalization.identity.demographics import Demographics

# (m, u) per agreement level. m: share of true-match pairs at that level; u: share of pairs
# of different people. The disagreement level (DIFFERENT, or CONFLICTING for identifiers)
# gets the rest.
M_U: dict[Field, dict[Level, tuple[float, float]]] = {
    # u is tiny for a shared (system, value); a source's duplicate registrations under two
    # MRNs of one system are what CONFLICTING (m = 0.1) allows for.
    Field.IDENTIFIERS: {Level.SHARED: (0.9, 1e-6)},
    # u(exact) ≈ Σ p² of surname frequencies (~0.002 for US surnames); m leaves ~2% for
    # name changes (marriage) and ~6% for misspellings caught by the fuzzy levels.
    Field.FAMILY: {
        Level.EXACT: (0.92, 0.002),
        Level.PHONETIC: (0.03, 0.002),
        Level.CLOSE: (0.03, 0.003),
    },
    # u(exact) ≈ Σ p² of first-name frequencies across both sexes (~0.004).
    Field.GIVEN: {
        Level.EXACT: (0.88, 0.004),
        Level.NICKNAME: (0.04, 0.002),
        Level.PHONETIC: (0.02, 0.003),
        Level.CLOSE: (0.02, 0.004),
        Level.INITIAL: (0.01, 0.002),
    },
    # Generational suffixes are rare; when both sides carry one, Jr. and Sr. are a father
    # and son far more often than a clerk's slip.
    Field.SUFFIX: {Level.EXACT: (0.95, 0.3)},
    # u(exact) ≈ 1 / (365.25 x ~55 years of birth dates among candidates); a swap needs a day
    # ≤ 12; a one-digit slip has ~25 neighbouring dates; a year alone ≈ 1/90.
    Field.BIRTH_DATE: {
        Level.EXACT: (0.95, 5e-5),
        Level.SWAPPED: (0.005, 2e-5),
        Level.TYPO: (0.02, 8e-4),
        Level.PARTIAL: (0.01, 1e-4),
        Level.SAME_YEAR: (0.008, 0.011),
    },
    # Sex is recorded wrongly in ~1.5% of registrations; half of random pairs agree.
    Field.SEX: {Level.EXACT: (0.985, 0.5)},
    # A hospital's patients live in ~50 postal codes; ~20% of people move between visits.
    Field.POSTAL_CODE: {
        Level.SAME_ADDRESS: (0.6, 1e-4),
        Level.EXACT: (0.2, 0.02),
    },
    # Phones change more often than addresses (m of agreement 0.65 only).
    Field.PHONE: {
        Level.EXACT: (0.6, 1e-4),
        Level.LAST7: (0.05, 1e-4),
    },
}
DISAGREEMENT: dict[Field, Level] = {
    field: Level.CONFLICTING if field is Field.IDENTIFIERS else Level.DIFFERENT for field in Field
}
HOUSEHOLD_FIELDS = frozenset({Field.POSTAL_CODE, Field.PHONE})
PERSONAL_DISAGREEMENT: dict[Field, frozenset[Level]] = {
    Field.GIVEN: frozenset({Level.DIFFERENT}),
    Field.BIRTH_DATE: frozenset({Level.DIFFERENT, Level.SAME_YEAR}),
    Field.SEX: frozenset({Level.DIFFERENT}),
}
_PERSONAL_DISAGREEMENT_PAIRS = frozenset(
    (field, level) for field, levels in PERSONAL_DISAGREEMENT.items() for level in levels
)


# A unique identifier's values differ (two SSNs): outside the partition of levels above, as it
# is about another kind of system than CONFLICTING's MRNs. m: about 1% of one person's records
# carry a mistyped or borrowed SSN; u ≈ 1. A pair with it is never linked without a reviewer.
CONTRADICTING_M = 0.01
VETOES_LINK = frozenset({(Field.IDENTIFIERS, Level.CONTRADICTING)})


def _weights() -> dict[tuple[Field, Level], float]:
    weights: dict[tuple[Field, Level], float] = {}
    for field, levels in M_U.items():
        for level, (m, u) in levels.items():
            weights[field, level] = math.log2(m / u)
        rest_m = 1.0 - sum(m for m, _ in levels.values())
        rest_u = 1.0 - sum(u for _, u in levels.values())
        weights[field, DISAGREEMENT[field]] = math.log2(rest_m / rest_u)
        weights[field, Level.MISSING] = 0.0
    weights[Field.IDENTIFIERS, Level.CONTRADICTING] = math.log2(CONTRADICTING_M)
    return weights


WEIGHTS: dict[tuple[Field, Level], float] = _weights()


class FieldWeight(BaseModel):
    model_config = ConfigDict(frozen=True)

    field: Field
    level: Level
    weight: float
    # The level's weight was positive but set to 0: evidence a relative would share too.
    discounted: bool = False


class Score(BaseModel):
    model_config = ConfigDict(frozen=True)

    total: float
    breakdown: tuple[FieldWeight, ...]


def weigh(
    levels: Iterable[tuple[Field, Level]],
) -> tuple[float, tuple[tuple[Field, Level, float, bool], ...]]:
    """(total, terms) without building models: the matcher scores every candidate this
    way and builds the breakdown only for the ones it reports."""
    levels = tuple(levels)
    household_only = not _PERSONAL_DISAGREEMENT_PAIRS.isdisjoint(levels)
    sexes_differ = (Field.SEX, Level.DIFFERENT) in levels
    terms: list[tuple[Field, Level, float, bool]] = []
    total = 0.0
    for field, level in levels:
        weight = WEIGHTS[field, level]
        discounted = weight > 0 and (
            (household_only and field in HOUSEHOLD_FIELDS)
            or (sexes_differ and field is Field.GIVEN and level is not Level.EXACT)
        )
        if discounted:
            weight = 0.0
        # Summed in field order, so a pair's total is bit-for-bit the same either way round.
        total += weight
        terms.append((field, level, weight, discounted))
    return total, tuple(terms)


def to_score(total: float, terms: Iterable[tuple[Field, Level, float, bool]]) -> Score:
    return Score(
        total=total,
        breakdown=tuple(
            FieldWeight(field=field, level=level, weight=weight, discounted=discounted)
            for field, level, weight, discounted in terms
        ),
    )


def score(a: Demographics, b: Demographics) -> Score:
    return to_score(*weigh(compare(a, b)))


class Decision(StrEnum):
    LINK = "LINK"  # the record is the best candidate's patient
    REVIEW = "REVIEW"  # provisional new id and an identity review task
    NEW = "NEW"  # a new enterprise id


class Thresholds(BaseModel):
    """Score cut-offs, in bits. The defaults and how they were chosen: docs/identity.md."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    link_threshold: float = 20.0
    review_threshold: float = 13.0
    # A LINK also needs the best candidate this many bits ahead of the runner-up: two known
    # patients that both fit are a question for a reviewer (perhaps they are one person).
    ambiguity_margin: float = 5.0

    @model_validator(mode="after")
    def _ordered(self) -> Thresholds:
        if self.review_threshold > self.link_threshold:
            raise ValueError("review_threshold must not exceed link_threshold")
        if self.ambiguity_margin < 0:
            raise ValueError("ambiguity_margin must not be negative")
        return self


def decide(
    best: float | None,
    runner_up: float | None,
    thresholds: Thresholds,
    *,
    vetoed: bool = False,
) -> Decision:
    """`vetoed`: the best candidate's record holds a different value of a unique identifier,
    so however well the rest agrees, a person decides (five people once shared a given name,
    birth date, address and phone, and differed only in surname and SSN)."""
    if best is None or best < thresholds.review_threshold:
        return Decision.NEW
    if best < thresholds.link_threshold or vetoed:
        return Decision.REVIEW
    if runner_up is not None and best - runner_up < thresholds.ambiguity_margin:
        return Decision.REVIEW
    return Decision.LINK
