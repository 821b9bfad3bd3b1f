"""What the conflicts stage needs from outside it, as Protocols: the state of record
(store.py's PostgreSQL adapter) and the outbox (runtime.ports.OutboxPort). The tests' fakes
implement them too."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Protocol

from concord.conflicts.rules import AttributeState, HistoricFact
from concord.events.models import AttributeClass, ClinicalFact
from concord.runtime.batch import OutboundRecord

Key = tuple[str, str]  # (patient_id, attribute)
# When to look at an attribute again for staleness (None: never), with its class and partition.
Timer = tuple[Key, AttributeClass, int, datetime | None]


class ConflictStorePort(Protocol):
    """The state of record: each source's assertions per patient attribute, the conflicts they
    are in, the fact history an unmerge rebuilds from, and the staleness timers."""

    async def claim(self, partitions: set[int]) -> None:
        """This worker was assigned the partitions: fence off the writes of earlier owners."""

    async def release(self, partitions: set[int]) -> None:
        """This worker no longer owns the partitions."""

    async def move_subjects(self, merges: Sequence[tuple[str, str]]) -> None:
        """(absorbed, survivor) pairs: the absorbed patients' subjects now belong to the
        survivors, and each move is kept until an unmerge undoes it."""

    async def restore_subjects(self, absorbed: str) -> set[str]:
        """Undo the move of the absorbed patient's subjects; return who held them."""

    async def history_of(self, patient_ids: Sequence[str]) -> list[HistoricFact]:
        """What the subjects these patients own asserted, and what was recorded of the
        patients under subjects they no longer own, each with the subject's owner now."""

    async def attributes_of(self, patient_ids: Sequence[str]) -> dict[Key, AttributeClass]:
        """Every attribute any source asserted of these patients, with its class."""

    async def load(
        self, keys: Sequence[Key], classes: Mapping[Key, AttributeClass]
    ) -> dict[Key, AttributeState]:
        """The stored state of each key; a fresh, empty state for keys never seen."""

    async def due(self, partitions: Sequence[int], now: datetime, limit: int) -> list[Timer]:
        """The attributes of these partitions due for a staleness look by `now`."""

    async def save(
        self,
        assertions: Iterable[tuple[AttributeState, str, int]],
        conflicts: Iterable[tuple[AttributeState, int]],
        events: Sequence[OutboundRecord],
        *,
        facts: Sequence[ClinicalFact] = (),
        rebuilt: Iterable[tuple[AttributeState, str, int]] = (),
        stale: Iterable[tuple[AttributeState, str, int]] = (),
        held: Iterable[tuple[AttributeState, int]] = (),
        timers: Sequence[Timer] = (),
    ) -> None:
        """One transaction: changed assertions (state, source, partition), changed conflict
        states (state, partition), the outbox rows of the events they caused, the facts
        consumed (history, and who their subjects belong to), and the assertions an unmerge
        rebuilt (written whatever their age), the stale records changed (state, source,
        partition), the holds of the states whose holds changed (state, partition), and the
        timers set or cleared."""
