"""Probabilistic matching of one record against the identity index.

The caller links deterministically first (a configured authoritative identifier; the same
source's MRN already in the crosswalk — `shares_identifier` helps); what reaches `match` is
a record that no identifier places. The decision names the best candidate, its score and
breakdown, and the runner-up, so a reviewer, or a later audit, sees why.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from concord.normalization.identity.blocking import blocking_keys
from concord.normalization.identity.compare import Field, Level, compare
from concord.normalization.identity.demographics import Demographics
from concord.normalization.identity.index import IdentityIndex, KnownPerson
from concord.normalization.identity.scoring import (
    VETOES_LINK,
    Decision,
    FieldWeight,
    Thresholds,
    decide,
    to_score,
    weigh,
)

DEFAULT_THRESHOLDS = Thresholds()

_Terms = tuple[tuple[Field, Level, float, bool], ...]


class MatchDecision(BaseModel):
    model_config = ConfigDict(frozen=True)

    kind: Decision
    # The best-scoring candidate, whatever the kind (None when no candidate was found): for
    # LINK the record's patient, for REVIEW the patient a reviewer should compare it with.
    enterprise_id: str | None
    score: float | None
    breakdown: tuple[FieldWeight, ...] = ()
    runner_up_id: str | None = None
    runner_up_score: float | None = None
    candidates_compared: int = 0


def _best_view(record: Demographics, person: KnownPerson) -> tuple[float, _Terms]:
    best: tuple[float, _Terms] | None = None
    for view in person.demographics:
        total, terms = weigh(compare(record, view))
        # Strictly greater: among equal views the first stays, so the breakdown is stable.
        if best is None or total > best[0]:
            best = (total, terms)
    assert best is not None  # noqa: S101 - KnownPerson requires at least one view
    return best


def match(
    record: Demographics, index: IdentityIndex, thresholds: Thresholds = DEFAULT_THRESHOLDS
) -> MatchDecision:
    """Score the record against every candidate sharing a blocking key; a candidate's score
    is that of its best-matching source view. Ties go to the smaller enterprise id."""
    scored: dict[str, tuple[float, _Terms]] = {}
    for person in index.candidates(blocking_keys(record)):
        if person.enterprise_id not in scored:
            scored[person.enterprise_id] = _best_view(record, person)
    if not scored:
        return MatchDecision(kind=Decision.NEW, enterprise_id=None, score=None)
    ranked = sorted(scored.items(), key=lambda item: (-item[1][0], item[0]))
    best_id, (best_total, best_terms) = ranked[0]
    runner_up = ranked[1] if len(ranked) > 1 else None
    runner_up_score = runner_up[1][0] if runner_up else None
    return MatchDecision(
        kind=decide(
            best_total,
            runner_up_score,
            thresholds,
            vetoed=any((field, level) in VETOES_LINK for field, level, _, _ in best_terms),
        ),
        enterprise_id=best_id,
        score=best_total,
        breakdown=to_score(best_total, best_terms).breakdown,
        runner_up_id=runner_up[0] if runner_up else None,
        runner_up_score=runner_up_score,
        candidates_compared=len(scored),
    )
