"""How the conflicts state narrows what every row would repeat (migration 0021): names as
integer ids of state_names, fact ids as 16-byte keys.

A name (a source system, an attribute, an attribute class, a raw topic, an event-time basis, a
fact status) gets its id once, in its own committed statement, before any row refers to it: a
transaction that rolled back would otherwise leave rows, in this worker's cache, naming an id
that never existed. Ids are never deleted or reused, so each worker caches both directions for
its life, and asks PostgreSQL only for a name or id it has not met."""

from __future__ import annotations

import hashlib
import re
import uuid
from collections.abc import Iterable, Mapping

import asyncpg

_HEX32 = re.compile(r"[0-9a-f]{32}")

_ADD_NAMES = """
INSERT INTO state_names (name) SELECT unnest($1::text[]) ORDER BY 1
ON CONFLICT (name) DO NOTHING
"""
_IDS_OF = "SELECT id, name FROM state_names WHERE name = ANY($1::text[])"
_NAMES_OF = "SELECT id, name FROM state_names WHERE id = ANY($1::int[])"


def fact_key(fact_id: str) -> tuple[str, str | None]:
    """A fact id's key (a uuid, as 32 hex digits) and what fact_name keeps: nothing for an id
    of 32 lowercase hex digits, which is its own key; any other id whole, keyed by the first
    16 bytes of its SHA-256 (the migration's pg_temp.fact_key computes the same)."""
    if len(fact_id) == 32 and _HEX32.fullmatch(fact_id):
        return fact_id, None
    digest = hashlib.sha256(b"concord fact id\x1f" + fact_id.encode()).hexdigest()
    return digest[:32], fact_id


def fact_id_of(key: uuid.UUID, name: str | None) -> str:
    """The fact id of a stored key and fact_name."""
    return key.hex if name is None else name


class StateNames:
    """This worker's cache of state_names, filled on demand."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool
        self._ids: dict[str, int] = {}
        self._names: dict[int, str] = {}

    async def ids(self, names: Iterable[str | None]) -> Mapping[str, int]:
        """Every name given has an id in the mapping returned (added to state_names, and
        committed, if it had none)."""
        missing = sorted({n for n in names if n is not None and n not in self._ids})
        if missing:
            async with self.pool.acquire() as conn:
                await conn.execute(_ADD_NAMES, missing)
                self._learn(await conn.fetch(_IDS_OF, missing))
        return self._ids

    async def names(self, conn: asyncpg.Connection, ids: Iterable[int | None]) -> Mapping[int, str]:
        """Every id given (read from a row) has its name in the mapping returned."""
        missing = sorted({i for i in ids if i is not None and i not in self._names})
        if missing:
            self._learn(await conn.fetch(_NAMES_OF, missing))
        return self._names

    def _learn(self, rows: Iterable[asyncpg.Record]) -> None:
        for row in rows:
            self._ids[row["name"]] = row["id"]
            self._names[row["id"]] = row["name"]
