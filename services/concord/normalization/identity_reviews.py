"""Identity review tasks decided by a person: the decisions, what a list and a detail show,
what a decision did, and why one cannot be made. Shared by the identity store (which decides),
its port and the review service; no I/O."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict

from concord.events.models import ClinicalFact
from concord.normalization.identity.demographics import Demographics
from concord.normalization.identity.scoring import FieldWeight


class ReviewDecision(StrEnum):
    LINKED = "LINKED"  # one patient: the record's provisional id merged into the candidate
    KEPT_APART = "KEPT_APART"  # two people: a never-link pair, matching never asks again


# Work a caller adds to a decision's transaction (the review service's audit row), given the
# transaction's connection (an asyncpg.Connection: Any here, to keep the module pure).
InTransaction = Callable[[Any], Awaitable[object]]


class ReviewError(Exception):
    """A review decision that cannot be made; names task and enterprise ids only (never
    demographics), and changes nothing."""


class UnknownReviewTask(ReviewError):
    """No review task has this id (the review API: 404)."""

    def __init__(self, task_id: str) -> None:
        self.task_id = task_id
        super().__init__(
            f"no identity review task {task_id}; `concord identity reviews --all` lists them"
        )


class ReviewConflict(ReviewError):
    """The decision contradicts what is decided already (the review API: 409)."""


class AlreadyDecided(ReviewConflict):
    """The task was decided the other way."""

    def __init__(self, task_id: str, decision: ReviewDecision, by: str | None) -> None:
        self.task_id = task_id
        self.decision = decision
        self.decided_by = by
        said = "linked" if decision == ReviewDecision.LINKED else "kept apart"
        undo = (
            "; `concord identity unmerge` undoes the link"
            if decision == ReviewDecision.LINKED
            else ""
        )
        super().__init__(f"task {task_id} was already decided: {said} by {by or '-'}{undo}")


class KeptApart(ReviewConflict):
    """A link of two patients a reviewer kept apart (another task of theirs)."""

    def __init__(self, task_id: str, record: str, candidate: str) -> None:
        self.task_id = task_id
        super().__init__(
            f"task {task_id}: {record} and {candidate} were kept apart by a reviewer "
            "(another task): they are not linked"
        )


class AlreadyOnePatient(ReviewConflict):
    """Keeping apart two records that are one patient now (a source's merge since)."""

    def __init__(self, task_id: str, holder: str) -> None:
        self.task_id = task_id
        self.holder = holder
        super().__init__(
            f"task {task_id}: both records are one patient now, {holder}; "
            "`concord identity merges` shows the merge, `concord identity unmerge` undoes it"
        )


class ReviewEntry(BaseModel):
    """A review task as lists show it: ids, the score and its breakdown (fields and levels,
    never values), and the decision."""

    model_config = ConfigDict(frozen=True)

    task_id: str
    source: str  # the source of the record matched
    provisional_enterprise_id: str  # the id the record got meanwhile
    candidate_enterprise_id: str  # the known patient it may be
    score: float
    breakdown: tuple[FieldWeight, ...]
    created_at: datetime
    status: str  # OPEN, DECIDED
    decision: ReviewDecision | None = None
    decided_by: str | None = None
    decided_at: datetime | None = None


class ReviewView(BaseModel):
    """One source's record of a patient, as the index holds it (normalized values). PHI: for
    the detail view only, never for logs or lists."""

    model_config = ConfigDict(frozen=True)

    source: str
    view_id: str  # the record's first local id (Patient/<id>, an MRN)
    enterprise_id: str
    demographics: Demographics
    updated_at: datetime


class ReviewSide(BaseModel):
    """One side of a review task: the patient as the task named it, the patient holding its
    records now (a merge since moves them), and its source views."""

    model_config = ConfigDict(frozen=True)

    enterprise_id: str
    current_enterprise_id: str
    views: tuple[ReviewView, ...]


class ReviewTask(ReviewEntry):
    """A review task in full, for the detail page: both sides' demographics side by side.
    `record` is the side of the record matched (its provisional id), `candidate` the known
    patient. Once linked, `record` holds the views the link moved, `candidate` the others."""

    view_id: str  # the record matched: its first local id
    record: ReviewSide
    candidate: ReviewSide


class LinkDecision(BaseModel):
    """What `link` did. `changed` is False when the task was linked before (nothing done now;
    the ids are then the task's). `fact` is the MERGE signal written to the identity outbox
    (None when nothing was merged now: unchanged, or the two were one patient already)."""

    model_config = ConfigDict(frozen=True)

    task_id: str
    absorbed: str
    survivor: str
    decided_by: str
    decided_at: datetime
    changed: bool
    fact: ClinicalFact | None = None


class KeepApartDecision(BaseModel):
    """What `keep_apart` did. `changed` is False when the task was kept apart before.
    `pairs`: the never-link pairs of source views recorded now."""

    model_config = ConfigDict(frozen=True)

    task_id: str
    record: str  # the enterprise ids of both sides, as they are now
    candidate: str
    decided_by: str
    decided_at: datetime
    changed: bool
    pairs: int = 0
