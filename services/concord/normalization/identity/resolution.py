"""Which enterprise patient a record is about: identifiers first, then demographics, pure.

Order, as issue 4 asks: a configured authoritative identifier (an enterprise MPI id)
first — the patient it was linked to, else the identifier's value becomes the enterprise id,
absorbing a known patient the record matches (who arrived before without it); then
the crosswalk of what this source's local ids were linked to before; then probabilistic
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
from collections.abc import Collection, Mapping
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field

from concord.normalization.identity.blocking import blocking_keys
from concord.normalization.identity.demographics import Demographics
from concord.normalization.identity.index import IdentityIndex, InMemoryIdentityIndex, KnownPerson
from concord.normalization.identity.matcher import DEFAULT_THRESHOLDS, MatchDecision, match
from concord.normalization.identity.scoring import Decision, Thresholds

LocalId = tuple[str, str]  # (source, local id such as "Patient/123" or "id:<system>|<value>")
# The authoritative identifier is the same whichever source sends it.
AUTHORITATIVE_SOURCE = "*authoritative*"


class How(StrEnum):
    AUTHORITATIVE = "AUTHORITATIVE"
    CROSSWALK = "CROSSWALK"
    MATCHED = "MATCHED"
    REVIEW = "REVIEW"
    NEW = "NEW"
    UNDESCRIBED = "UNDESCRIBED"
    MERGED = "MERGED"  # a local id re-linked because its patient was merged into another
    UNMERGED = "UNMERGED"  # a local id given back to its patient: an operator undid a merge


class IdentityRequest(BaseModel):
    """What a record says about its patient. Its local ids hold MRNs: kept out of reprs and
    validation errors."""

    model_config = ConfigDict(frozen=True, hide_input_in_errors=True)

    source: str
    # The record's own handles on its patient, most specific first: for a FHIR Patient its
    # reference (Patient/123) and identifiers, for a clinical resource its subject reference,
    # for HL7 v2 the PID-3 identifiers, then PID-19's SSN and PID-20's driver's licence.
    local_ids: tuple[str, ...] = Field(min_length=1, repr=False)
    demographics: Demographics | None = None
    authoritative_id: str | None = Field(default=None, repr=False)
    # Local ids (of the same source) of patients merged into this one: HL7 A40's MRG-1, a
    # FHIR Patient.link of type replaces.
    absorbs: tuple[str, ...] = Field(default=(), repr=False)

    @property
    def keys(self) -> list[LocalId]:
        """Crosswalk keys, the authoritative identifier first."""
        local = [(self.source, local) for local in self.local_ids]
        if self.authoritative_id:
            return [(AUTHORITATIVE_SOURCE, self.authoritative_id), *local]
        return local

    @property
    def own_id(self) -> str:
        """The enterprise id the record creates if it names a new patient."""
        return new_enterprise_id(self.source, self.local_ids[0])

    @property
    def absorbed_keys(self) -> list[LocalId]:
        return [(self.source, local) for local in self.absorbs]


class Resolution(BaseModel):
    model_config = ConfigDict(frozen=True)

    enterprise_id: str
    how: How
    # Not yet confirmed: awaiting review, or a patient known only by reference.
    provisional: bool = False
    match: MatchDecision | None = None
    # The known patient a reviewer should compare this record with (REVIEW only).
    review_candidate: str | None = None
    # Enterprise ids merged into this one by the record (their facts now belong here).
    absorbed: tuple[str, ...] = ()


def new_enterprise_id(source: str, local_id: str) -> str:
    digest = hashlib.sha256(f"{source}\x1f{local_id}".encode()).hexdigest()
    return f"E{digest[:19].upper()}"


class _Without:
    """An index without some patients: those the MPI already knows by an id of their own."""

    def __init__(self, index: IdentityIndex, left_out: Collection[str]) -> None:
        self.index = index
        self.left_out = left_out

    def candidates(self, keys: Collection[str]) -> list[KnownPerson]:
        found = self.index.candidates(keys)
        return [person for person in found if person.enterprise_id not in self.left_out]

    def add(self, person: KnownPerson) -> None:
        raise TypeError("a filtered view of the index is read-only")


def resolve(
    request: IdentityRequest,
    *,
    crosswalk: Mapping[LocalId, str],
    index: IdentityIndex,
    thresholds: Thresholds = DEFAULT_THRESHOLDS,
    authoritative_ids: Collection[str] = frozenset(),
    kept_apart: Collection[str] = frozenset(),
) -> Resolution:
    """The record's patient, and the patients its merge absorbs (the order: module doc).

    `authoritative_ids`: the enterprise ids the MPI already names (linked from an
    authoritative identifier). A record with an MPI id of its own is never matched to one of
    them: the MPI says they are two people (twins, namesakes), whatever the demographics say.

    `kept_apart`: the enterprise ids a reviewer said this record's patient is not (a
    never-link pair): never candidates, so matching neither links the record to one of them
    nor asks a reviewer about one again."""
    resolution = _place(request, crosswalk, index, thresholds, authoritative_ids, kept_apart)
    if not request.absorbs and not resolution.absorbed:
        return resolution  # most records merge nothing: no copy
    absorbed = sorted(
        ({crosswalk[key] for key in request.absorbed_keys if key in crosswalk}
         | set(resolution.absorbed)) - {resolution.enterprise_id}
    )  # fmt: skip
    return resolution.model_copy(update={"absorbed": tuple(absorbed)})


def _place(
    request: IdentityRequest,
    crosswalk: Mapping[LocalId, str],
    index: IdentityIndex,
    thresholds: Thresholds,
    authoritative_ids: Collection[str],
    kept_apart: Collection[str],
) -> Resolution:
    authoritative = request.authoritative_id
    keys = request.keys
    known = next((crosswalk[key] for key in keys if key in crosswalk), None)
    if known is not None and _undescribed(request, known, index):
        # Results came before their Patient and got its provisional id: the Patient places
        # them now, merging them into the patient it matches, if another.
        placed = _decide(request, index, thresholds, authoritative_ids, kept_apart)
        if placed.enterprise_id == known:
            return placed
        return placed.model_copy(update={"absorbed": (*placed.absorbed, known)})
    if known is not None:
        how = How.AUTHORITATIVE if authoritative and keys[0] in crosswalk else How.CROSSWALK
        return Resolution(enterprise_id=known, how=how)
    return _decide(request, index, thresholds, authoritative_ids, kept_apart)


def _undescribed(request: IdentityRequest, known: str, index: IdentityIndex) -> bool:
    """Whether `known` is the provisional id results gave this Patient before it came: the id
    its own first local id derives, and no demographics of it in the index yet."""
    if request.demographics is None:
        return False
    if known != request.own_id:
        return False
    candidates = index.candidates(blocking_keys(request.demographics))
    return all(person.enterprise_id != known for person in candidates)


def _decide(
    request: IdentityRequest,
    index: IdentityIndex,
    thresholds: Thresholds,
    authoritative_ids: Collection[str],
    kept_apart: Collection[str],
) -> Resolution:
    """A record no crosswalk places: by its MPI id, else by its demographics."""
    authoritative = request.authoritative_id
    if request.demographics is None:
        if authoritative:
            return Resolution(enterprise_id=authoritative, how=How.AUTHORITATIVE)
        return Resolution(enterprise_id=request.own_id, how=How.UNDESCRIBED, provisional=True)
    left_out = {*authoritative_ids, *kept_apart} if authoritative else kept_apart
    searched = _Without(index, left_out) if left_out else index
    decision = match(request.demographics, searched, thresholds)
    linked = decision.kind == Decision.LINK and decision.enterprise_id is not None
    if linked and authoritative:
        # A patient first seen without the MPI id: the MPI id names the patient from now on,
        # and the earlier one is merged into it (its facts follow).
        return Resolution(
            enterprise_id=authoritative,
            how=How.MATCHED,
            match=decision,
            absorbed=(decision.enterprise_id,) if decision.enterprise_id else (),
        )
    if linked and decision.enterprise_id is not None:
        return Resolution(enterprise_id=decision.enterprise_id, how=How.MATCHED, match=decision)
    if authoritative:
        # The MPI says who this is; a near miss is no question for a reviewer.
        return Resolution(enterprise_id=authoritative, how=How.AUTHORITATIVE, match=decision)
    if decision.kind == Decision.REVIEW:
        return Resolution(
            enterprise_id=request.own_id,
            how=How.REVIEW,
            provisional=True,
            match=decision,
            review_candidate=decision.enterprise_id,
        )
    return Resolution(enterprise_id=request.own_id, how=How.NEW, match=decision)


def apply(
    request: IdentityRequest,
    resolution: Resolution,
    crosswalk: dict[LocalId, str],
    index: InMemoryIdentityIndex,
) -> list[tuple[LocalId, How]]:
    """Apply a decision to an in-memory crosswalk and index, so that the records after it see
    it: the store does so for a batch, the evaluation for a whole population. Returns the
    local ids it linked, and how, for the caller to persist."""
    eid = resolution.enterprise_id
    linked: list[tuple[LocalId, How]] = []
    for key in request.keys:
        if key not in crosswalk or resolution.how == How.AUTHORITATIVE:
            crosswalk[key] = eid
            linked.append((key, resolution.how))
    for key in request.absorbed_keys:
        crosswalk[key] = eid
        linked.append((key, How.MERGED))
    views: list[Demographics] = []
    for absorbed in resolution.absorbed:
        for key, known_as in list(crosswalk.items()):
            if known_as == absorbed:
                crosswalk[key] = eid
        old = index.get(absorbed)
        if old is not None:
            views += old.demographics
            index.remove(absorbed)
    if request.demographics is not None:
        views.append(request.demographics)
    if views:
        known = index.get(eid)
        current = list(known.demographics) if known is not None else []
        current += [view for view in views if view not in current]
        index.add(KnownPerson(enterprise_id=eid, demographics=tuple(current)))
    return linked
