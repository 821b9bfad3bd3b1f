"""What the normalization stage needs from outside it, as Protocols: the adapters
(identity_store.py, record_facts.py, runtime/outbox.py) and the tests' fakes implement them."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

from concord.normalization.facts.withdrawals import RecordKey, Remembered
from concord.normalization.identity.resolution import IdentityRequest, Resolution
from concord.runtime.batch import OutboundRecord
from concord.runtime.ports import OutboxPort

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


class RecordFacts(Protocol):
    """What each source record's last upsert asserted (record_facts.py)."""

    async def remember(self, batch: Sequence[Remembered]) -> None:
        """Keep each record's memory, replacing an older (by event time) one of the record."""

    async def recall(self, keys: Sequence[RecordKey]) -> dict[RecordKey, Remembered]:
        """The memories of the records that have one."""


# The identity store's outbox: merge signals written with the decision, and unmerges an
# operator made, published by the normalization stage.
IdentityOutbox = OutboxPort
