"""Which enterprise patient a record is about: identifiers first, then demographics, pure.

Order, as issue 4 asks: a configured authoritative identifier (an enterprise MPI id) wins;
then the crosswalk of what this source's local ids were linked to before; then probabilistic
matching. A match above the link threshold links; between the thresholds the record gets a
provisional id of its own and a review task names the candidate (uncertain pairs go to a
person, never a silent merge); below, a new enterprise id. A clinical record that names a
patient nobody has described yet (an Observation before its Patient) gets a provisional id
from its patient reference, which the Patient record's arrival then links.

New ids are derived from the record that created them, so that a redelivered record gets
the same id and two workers deciding the same record agree.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field

from concord.normalization.identity.demographics import Demographics
from concord.normalization.identity.index import IdentityIndex
from concord.normalization.identity.matcher import DEFAULT_THRESHOLDS, MatchDecision, match
from concord.normalization.identity.scoring import Decision, Thresholds

LocalId = tuple[str, str]  # (source, local id such as "Patient/123" or "id:<system>|<value>")


class How(StrEnum):
    AUTHORITATIVE = "AUTHORITATIVE"
    CROSSWALK = "CROSSWALK"
    MATCHED = "MATCHED"
    REVIEW = "REVIEW"
    NEW = "NEW"
    UNDESCRIBED = "UNDESCRIBED"


class IdentityRequest(BaseModel):
    """What a record says about its patient."""

    model_config = ConfigDict(frozen=True)

    source: str
    # The record's own handles on its patient, most specific first: for a FHIR Patient its
    # reference (Patient/123) and identifiers, for a clinical resource its subject reference,
    # for HL7 v2 the PID-3 identifiers.
    local_ids: tuple[str, ...] = Field(min_length=1)
    demographics: Demographics | None = None
    authoritative_id: str | None = None

    @property
    def keys(self) -> list[LocalId]:
        return [(self.source, local) for local in self.local_ids]


class Resolution(BaseModel):
    model_config = ConfigDict(frozen=True)

    enterprise_id: str
    how: How
    # Not yet confirmed: awaiting review, or a patient known only by reference.
    provisional: bool = False
    match: MatchDecision | None = None
    # The known patient a reviewer should compare this record with (REVIEW only).
    review_candidate: str | None = None


def new_enterprise_id(source: str, local_id: str) -> str:
    digest = hashlib.sha256(f"{source}\x1f{local_id}".encode()).hexdigest()
    return f"E{digest[:19].upper()}"


def resolve(
    request: IdentityRequest,
    *,
    crosswalk: Mapping[LocalId, str],
    index: IdentityIndex,
    thresholds: Thresholds = DEFAULT_THRESHOLDS,
) -> Resolution:
    if request.authoritative_id:
        return Resolution(enterprise_id=request.authoritative_id, how=How.AUTHORITATIVE)
    known = next((crosswalk[key] for key in request.keys if key in crosswalk), None)
    if known is not None:
        return Resolution(enterprise_id=known, how=How.CROSSWALK)
    own = new_enterprise_id(request.source, request.local_ids[0])
    if request.demographics is None:
        return Resolution(enterprise_id=own, how=How.UNDESCRIBED, provisional=True)
    decision = match(request.demographics, index, thresholds)
    if decision.kind == Decision.LINK and decision.enterprise_id is not None:
        return Resolution(enterprise_id=decision.enterprise_id, how=How.MATCHED, match=decision)
    if decision.kind == Decision.REVIEW:
        return Resolution(
            enterprise_id=own,
            how=How.REVIEW,
            provisional=True,
            match=decision,
            review_candidate=decision.enterprise_id,
        )
    return Resolution(enterprise_id=own, how=How.NEW, match=decision)
