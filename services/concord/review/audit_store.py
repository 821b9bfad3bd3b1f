"""The audit trail in PostgreSQL (migration 0015, table audit_log) and its anchors on Kafka
(topic concord.audit.anchors): the adapter around the pure core, concord.review.audit.

For the review service:

* `await trail.append(conn, record)` inside the transaction of the change it records (or of
  the PHI read), as its last statement: the change and its row commit together or not at all.
  Appends are serialized by a transaction-level advisory lock, held until the caller commits,
  so the chain stays linear under concurrent requests; taking it last keeps that wait short
  and the lock order the same everywhere (no deadlock with the service's own locks). The
  transaction must be READ COMMITTED (PostgreSQL's default): under a snapshot taken before
  the lock the head read would be stale, and the primary key would refuse the row.
* `await publish_anchor(pool, producer)` on a timer (every few minutes): publishes the head
  (seq, hash) to concord.audit.anchors and logs `audit anchor seq=N hash=H`, so that a trail
  cut short, or rewritten with recomputed hashes, no longer matches what was published.

`concord audit verify` reads the trail (`pages`) and the anchors (`read_anchors`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime
from typing import Any

import asyncpg
from aiokafka.structs import ConsumerRecord

from concord.review.audit import Anchor, AuditEntry, AuditRecord, chain, genesis_hash
from concord.runtime.batch import Producer
from concord.runtime.reading import read_topic
from concord.topics import AUDIT_ANCHORS

log = logging.getLogger(__name__)

# Serializes appends (any fixed key works; it differs from the other advisory locks' keys).
AUDIT_LOCK = 0x61756474  # "audt"
PAGE_SIZE = 5000

# A connection or a pool: both fetch.
Database = Any

_SELECT = (
    "SELECT seq, at, actor, role, purpose, action, object_type, object_id, detail, prev_hash, "
    "hash FROM audit_log "
)
_INSERT = """
INSERT INTO audit_log
    (seq, at, actor, role, purpose, action, object_type, object_id, detail, prev_hash, hash)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9::jsonb, $10, $11)
"""
_HEAD = _SELECT + "ORDER BY seq DESC LIMIT 1"
_AFTER = _SELECT + "WHERE seq > $1 ORDER BY seq LIMIT $2"
_FIND = _SELECT + (
    "WHERE ($1::text IS NULL OR object_type = $1) AND ($2::text IS NULL OR object_id = $2) "
    "AND ($3::text IS NULL OR actor = $3) AND ($4::text IS NULL OR action = $4) "
    "AND ($6::bigint IS NULL OR seq < $6) ORDER BY seq DESC LIMIT $5"
)


class NotInTransaction(RuntimeError):
    """append() was called outside a transaction: the lock would not hold until commit."""


def _entry(row: asyncpg.Record) -> AuditEntry:
    """A stored row as it is, unvalidated: a row an attacker changed must still be read, so
    that verify can name it."""
    fields = dict(row.items())
    fields["detail"] = json.loads(fields["detail"])
    return AuditEntry.model_construct(**fields)


class PostgresAuditTrail:
    """The audit_log table. Holds nothing but the trail's id once read; share one instance."""

    def __init__(self) -> None:
        self._trail_id: str | None = None

    async def trail_id(self, db: Database) -> str:
        """The trail's id (table audit_trail, made by the migration)."""
        if self._trail_id is None:
            value = await db.fetchval("SELECT trail_id FROM audit_trail")
            if value is None:
                raise LookupError("audit_trail holds no trail id: run `concord db migrate`")
            self._trail_id = str(value)
        return self._trail_id

    async def append(
        self, conn: asyncpg.Connection, record: AuditRecord, *, at: datetime | None = None
    ) -> AuditEntry:
        """Append `record` in the caller's transaction on `conn` (which must be in one) and
        return the entry it became. `at` defaults to now, taken once the lock is held, so the
        trail's times follow its order."""
        if not conn.is_in_transaction():
            raise NotInTransaction("append the audit row inside the change's transaction")
        trail_id = await self.trail_id(conn)
        await conn.execute("SELECT pg_advisory_xact_lock($1)", AUDIT_LOCK)
        head = await conn.fetchrow("SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1")
        seq, prev_hash = (1, genesis_hash(trail_id)) if head is None else (head[0] + 1, head[1])
        entry = chain(record, seq=seq, at=at or datetime.now(UTC), prev_hash=prev_hash)
        await conn.execute(
            _INSERT,
            entry.seq,
            entry.at,
            entry.actor,
            entry.role,
            entry.purpose,
            entry.action,
            entry.object_type,
            entry.object_id,
            json.dumps(entry.detail),
            entry.prev_hash,
            entry.hash,
        )
        return entry

    async def head(self, db: Database) -> AuditEntry | None:
        """The last entry, or None for an empty trail."""
        row = await db.fetchrow(_HEAD)
        return None if row is None else _entry(row)

    async def entries(
        self, db: Database, *, after_seq: int = 0, limit: int = PAGE_SIZE
    ) -> list[AuditEntry]:
        """Entries after `after_seq`, in seq order, at most `limit` of them."""
        rows = await db.fetch(
            _AFTER,
            after_seq,
            limit,
        )
        return [_entry(row) for row in rows]

    async def pages(
        self, db: Database, *, page_size: int = PAGE_SIZE
    ) -> AsyncIterator[list[AuditEntry]]:
        """The whole trail in seq order, a page at a time (memory holds one page)."""
        after = 0
        while True:
            page = await self.entries(db, after_seq=after, limit=page_size)
            if not page:
                return
            yield page
            after = page[-1].seq

    async def find(
        self,
        db: Database,
        *,
        object_type: str | None = None,
        object_id: str | None = None,
        actor: str | None = None,
        action: str | None = None,
        before_seq: int | None = None,
        limit: int = 100,
    ) -> list[AuditEntry]:
        """Entries about an object, by an actor and/or of an action, newest first (those
        before `before_seq`, if given: the next page)."""
        rows = await db.fetch(
            _FIND,
            object_type,
            object_id,
            actor,
            action,
            limit,
            before_seq,
        )
        return [_entry(row) for row in rows]

    async def publish_anchor(self, pool: Database, producer: Producer) -> Anchor | None:
        """Publish the trail's head to concord.audit.anchors (key: the trail id) and wait for
        the broker's acknowledgement; log `audit anchor seq=N hash=H`. None, and nothing
        published, while the trail is empty."""
        trail_id = await self.trail_id(pool)
        head = await self.head(pool)
        if head is None:
            return None
        anchor = Anchor(trail_id=trail_id, seq=head.seq, hash=head.hash, at=datetime.now(UTC))
        acknowledged = await producer.send(AUDIT_ANCHORS, anchor.encode(), key=trail_id.encode())
        await acknowledged
        log.info("audit anchor seq=%d hash=%s", anchor.seq, anchor.hash)
        return anchor


async def publish_anchor(pool: Database, producer: Producer) -> Anchor | None:
    """`PostgresAuditTrail().publish_anchor(pool, producer)`: for a timer."""
    return await PostgresAuditTrail().publish_anchor(pool, producer)


async def read_anchors(kafka: str | dict[str, Any], trail_id: str) -> tuple[list[Anchor], int]:
    """The anchors published of the trail `trail_id`, and how many of its messages could not
    be read as anchors (ignored: a forged anchor can make verify fail, never pass)."""
    key = trail_id.encode()
    records: Sequence[ConsumerRecord] = await read_topic(
        kafka, AUDIT_ANCHORS, keep=lambda record: record.key == key
    )
    anchors: list[Anchor] = []
    unreadable = 0
    for record in records:
        try:
            anchor = Anchor.decode(record.value)
        except ValueError:
            unreadable += 1
            continue
        if anchor.trail_id == trail_id:
            anchors.append(anchor)
        else:
            unreadable += 1
    return anchors, unreadable
