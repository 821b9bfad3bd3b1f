"""The identity index: known patients, found by blocking key.

`IdentityIndex` is the port the matcher needs; `InMemoryIdentityIndex` implements it for
tests and benchmarks. A durable, partitioned implementation (PostgreSQL) implements the same
two methods.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from typing import Protocol

from pydantic import BaseModel, ConfigDict, Field

from concord.normalization.identity.blocking import blocking_keys
from concord.normalization.identity.demographics import Demographics


class KnownPerson(BaseModel):
    """One enterprise patient and each source's view of them."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    enterprise_id: str
    demographics: tuple[Demographics, ...] = Field(min_length=1)

    def blocking_keys(self) -> frozenset[str]:
        return frozenset().union(*(blocking_keys(view) for view in self.demographics))


class IdentityIndex(Protocol):
    def candidates(self, keys: Collection[str]) -> list[KnownPerson]:
        """The known patients that have at least one of `keys`, each once, in enterprise id
        order. An index may leave out a block too common to tell patients apart (see
        InMemoryIdentityIndex.max_block_size) and should say so in its documentation."""
        ...

    def add(self, person: KnownPerson) -> None:
        """Insert the person, or replace the person with the same enterprise id (a new
        source's view added, a view updated), re-indexing its keys."""
        ...


class InMemoryIdentityIndex:
    """A dict of blocking key → enterprise ids.

    A block larger than `max_block_size` is skipped when looking up candidates: a key that
    thousands of patients share (a very common name in a large postal code) costs thousands
    of comparisons and tells them apart no better than the other keys do.
    """

    def __init__(self, persons: Iterable[KnownPerson] = (), *, max_block_size: int = 1000) -> None:
        self.max_block_size = max_block_size
        self._persons: dict[str, KnownPerson] = {}
        self._keys: dict[str, frozenset[str]] = {}
        self._blocks: dict[str, set[str]] = {}
        for person in persons:
            self.add(person)

    def __len__(self) -> int:
        return len(self._persons)

    def get(self, enterprise_id: str) -> KnownPerson | None:
        return self._persons.get(enterprise_id)

    def add(self, person: KnownPerson) -> None:
        eid = person.enterprise_id
        for key in self._keys.get(eid, frozenset()):
            block = self._blocks[key]
            block.discard(eid)
            if not block:
                del self._blocks[key]
        keys = person.blocking_keys()
        for key in keys:
            self._blocks.setdefault(key, set()).add(eid)
        self._persons[eid] = person
        self._keys[eid] = keys

    def remove(self, enterprise_id: str) -> None:
        """Forget a patient (merged into another, whose views it now counts among)."""
        for key in self._keys.pop(enterprise_id, frozenset()):
            block = self._blocks[key]
            block.discard(enterprise_id)
            if not block:
                del self._blocks[key]
        self._persons.pop(enterprise_id, None)

    def candidates(self, keys: Collection[str]) -> list[KnownPerson]:
        found: set[str] = set()
        for key in keys:
            block = self._blocks.get(key)
            if block is not None and len(block) <= self.max_block_size:
                found.update(block)
        return [self._persons[eid] for eid in sorted(found)]
