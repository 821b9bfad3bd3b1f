"""Transactional outbox: events a database change implies are written in the same transaction,
published after commit, and deleted once the broker acknowledged them.

A crash between commit and publish leaves rows behind; the next owner publishes them before
processing anything else (drain()). Consumers dedupe on the events' deterministic ids and
revisions, so a crash between ack and delete costs a duplicate message, never a lost one.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import asyncpg

from concord import metrics
from concord.runtime.batch import Outbound, OutboundRecord, Producer
from concord.runtime.ports import OutboxPort


class Outbox(OutboxPort):
    def __init__(self, pool: asyncpg.Pool, stage: str) -> None:
        self.pool = pool
        self.stage = stage
        self._written: list[int] = []

    async def write(self, conn: asyncpg.Connection, records: Sequence[OutboundRecord]) -> None:
        """Inside the caller's transaction: store the records to publish."""
        if not records:
            return
        rows = await conn.fetch(
            """
            INSERT INTO outbox (stage, topic, key, value)
            SELECT $1, t, k, v FROM unnest($2::text[], $3::bytea[], $4::bytea[]) AS u(t, k, v)
            RETURNING seq
            """,
            self.stage,
            [r.topic for r in records],
            [r.key for r in records],
            [r.value for r in records],
        )
        self._written.extend(row["seq"] for row in rows)

    def publish_written(self, out: Outbound, records: Sequence[OutboundRecord]) -> None:
        """After commit: hand the records to the batch loop, which sends and awaits acks."""
        for record in records:
            out.add(record)
        metrics.OUTBOX_PENDING.labels(self.stage).set(len(self._written))

    async def acknowledge(self) -> None:
        """The batch's records are acknowledged: forget them."""
        if not self._written:
            return
        seqs, self._written = self._written, []
        await self.pool.execute("DELETE FROM outbox WHERE seq = ANY($1::bigint[])", seqs)
        metrics.OUTBOX_PENDING.labels(self.stage).set(0)

    async def drain(self, producer: Producer) -> int:
        """Publish what an earlier owner committed but did not get acknowledged."""
        async with self.pool.acquire() as conn, conn.transaction():
            rows = await conn.fetch(
                "SELECT seq, topic, key, value FROM outbox WHERE stage = $1 "
                "ORDER BY seq FOR UPDATE SKIP LOCKED",
                self.stage,
            )
            if not rows:
                return 0
            futures = [
                await producer.send(row["topic"], row["value"], key=row["key"]) for row in rows
            ]
            await asyncio.gather(*futures)
            await conn.execute(
                "DELETE FROM outbox WHERE seq = ANY($1::bigint[])", [row["seq"] for row in rows]
            )
        for row in rows:
            metrics.EVENTS_PRODUCED.labels(self.stage, row["topic"]).inc()
        return len(rows)
