"""What the normalization stage needs from outside it, as Protocols: the adapters
(identity_store.py, record_facts.py, runtime/outbox.py) and the tests' fakes implement them."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Protocol

from concord.normalization.facts.withdrawals import RecordKey, Remembered
from concord.normalization.identity.resolution import IdentityRequest, Resolution
from concord.runtime.batch import OutboundRecord
from concord.runtime.ports import OutboxPort

if TYPE_CHECKING:
    from concord.normalization.identity_reviews import (
        InTransaction,
        KeepApartDecision,
        LinkDecision,
        ReviewTask,
    )

# The record that tells other stages of a merge: (index of the request, survivor, absorbed).
MergeSignal = Callable[[int, str, str], OutboundRecord]


class IdentityStore(Protocol):
    """The identity index (identity_store.py)."""

    async def resolve_batch(
        self, requests: Sequence[IdentityRequest], merge_signal: MergeSignal | None = None
    ) -> list[Resolution]:
        """Each request's resolution, in order, decided and recorded durably; the signal
        `merge_signal` makes of each merge decided is written to the identity outbox in the
        same transaction."""


class IdentityReviews(Protocol):
    """Review tasks decided by a person (identity_store.py; the review service and `concord
    identity link | keep-apart`). Errors: identity_store.UnknownReviewTask (no such task),
    identity_store.ReviewConflict (decided the other way, or contradicting another
    decision)."""

    async def review_task(self, task_id: str) -> ReviewTask | None:
        """The task with both sides' demographics and the score breakdown, or None."""

    async def link(
        self, task_id: str, *, by: str, at: datetime, also: InTransaction | None = None
    ) -> LinkDecision:
        """One patient: merged, its signal in the identity outbox, the task decided (and
        `also` done, in the same transaction)."""

    async def keep_apart(
        self, task_id: str, *, by: str, at: datetime, also: InTransaction | None = None
    ) -> KeepApartDecision:
        """Two people: never-link pairs recorded, the task decided (and `also` done)."""


class RecordFacts(Protocol):
    """What each source record's last upsert asserted (record_facts.py)."""

    async def remember(self, batch: Sequence[Remembered]) -> None:
        """Keep each record's memory, replacing an older (by event time) one of the record."""

    async def recall(self, keys: Sequence[RecordKey]) -> dict[RecordKey, Remembered]:
        """The memories of the records that have one."""


# The identity store's outbox: merge signals written with the decision, and unmerges an
# operator made, published by the normalization stage.
IdentityOutbox = OutboxPort
