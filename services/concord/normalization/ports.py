"""What the normalization stage needs from outside it, as Protocols: the adapters
(identity_store.py, record_facts.py, runtime/outbox.py) and the tests' fakes implement them."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from concord.normalization.facts.withdrawals import RecordKey, Remembered
from concord.normalization.identity.resolution import IdentityRequest, Resolution
from concord.runtime.batch import Producer


class IdentityStore(Protocol):
    """The identity index (identity_store.py)."""

    async def resolve_batch(self, requests: Sequence[IdentityRequest]) -> list[Resolution]:
        """Each request's resolution, in order, decided and recorded durably."""


class RecordFacts(Protocol):
    """What each source record's last upsert asserted (record_facts.py)."""

    async def remember(self, batch: Sequence[Remembered]) -> None:
        """Keep each record's memory, replacing an older (by event time) one of the record."""

    async def recall(self, keys: Sequence[RecordKey]) -> dict[RecordKey, Remembered]:
        """The memories of the records that have one."""


class IdentityOutbox(Protocol):
    """The identity signals an operator's unmerge left unpublished (all the stage does with the
    identity store's outbox)."""

    async def drain(self, producer: Producer) -> int:
        """Publish what was committed but not acknowledged; how many."""
