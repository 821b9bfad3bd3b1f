"""Transactional outbox: events a database change implies are written in the same transaction,
published after commit, and deleted once the broker acknowledged them.

A crash between commit and publish leaves rows behind; the next owner publishes them before
processing anything else (drain()), and every worker publishes, on its timer, rows left
behind longer than runtime.ports.LEFT_BEHIND_SECONDS (a pass that failed after its commit).
Consumers dedupe on the events' deterministic ids and revisions, so a crash between ack and
delete costs a duplicate message, never a lost one.

A row the producer would refuse as too large (over runtime.batch.MAX_RECORD_BYTES) is never
sent, by a batch or a drain: a dead letter (OUTPUT_TOO_LARGE) naming the outbox row takes its
place and the row is deleted with the others once acknowledged, so it cannot wedge a drain
(the producer's refusal is not transient) nor, raised after the store's commit, lose the rows
handed over before it. The row is written anyway: it is the store's commit, and its record is
a derived event, not the input, which the stage has already applied.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

import asyncpg

from concord import metrics
from concord.deadletters import Rejection
from concord.events.raw import RawEvent
from concord.runtime.batch import (
    MAX_RECORD_BYTES,
    Outbound,
    OutboundRecord,
    OutputTooLarge,
    Producer,
    publish_dead_letter,
)
from concord.runtime.ports import OutboxPort

_Identity = tuple[str, bytes | None, bytes]


def _identity(record: OutboundRecord) -> _Identity:
    return (record.topic, record.key, record.value)


def _hand_over(out: Outbound, record: OutboundRecord, *, stage: str, seq: int | None) -> None:
    """The row's record into the batch; one too large to produce becomes a dead letter naming
    the row (it was never on a topic: no partition or offset), in its place."""
    try:
        out.add(record)
    except OutputTooLarge as exc:
        row = f"outbox row {seq}" if seq is not None else "an outbox row"
        unsent = RawEvent(
            topic=record.topic,
            partition=-1,
            offset=-1,
            key=record.key,
            value=record.value,
            headers=tuple(record.headers),
            received_time=datetime.now(UTC),
        )
        rejection = Rejection(
            "OUTPUT_TOO_LARGE",
            f"{row} of the {stage} outbox, a record for {exc.topic} of {exc.size} bytes, is "
            f"over the producer's limit of {MAX_RECORD_BYTES} bytes: not sent",
        )
        publish_dead_letter(out, raw=unsent, rejection=rejection)


class Outbox(OutboxPort):
    def __init__(self, pool: asyncpg.Pool, stage: str) -> None:
        self.pool = pool
        self.stage = stage
        # Rows this worker wrote whose records were not yet handed to a batch, and rows whose
        # records were: only the latter are deleted on acknowledge. A pass that fails after
        # its commit leaves its rows staged, and so in the table, for a drain to publish.
        self._staged: dict[_Identity, int] = {}
        self._written: list[int] = []

    async def write(self, conn: asyncpg.Connection, records: Sequence[OutboundRecord]) -> None:
        """Inside the caller's transaction: store the records to publish."""
        if not records:
            return
        rows = await conn.fetch(
            """
            INSERT INTO outbox (stage, topic, key, value)
            SELECT $1, t, k, v
            FROM unnest($2::text[], $3::bytea[], $4::bytea[]) WITH ORDINALITY AS u(t, k, v, n)
            ORDER BY n
            RETURNING seq
            """,
            self.stage,
            [r.topic for r in records],
            [r.key for r in records],
            [r.value for r in records],
        )
        for record, row in zip(records, rows, strict=True):
            self._staged[_identity(record)] = row["seq"]

    def publish_written(self, out: Outbound, records: Sequence[OutboundRecord]) -> None:
        """After commit: hand the records to the batch loop, which sends and awaits acks."""
        handed: list[int] = []
        for record in records:
            seq = self._staged.pop(_identity(record), None)
            _hand_over(out, record, stage=self.stage, seq=seq)
            if seq is not None:
                handed.append(seq)
        if handed:
            # Deleted on acknowledge only once sent: a pass that fails after handing them over
            # leaves them in the table, for a drain.
            out.when_sent.append(lambda: self._written.extend(handed))

    async def acknowledge(self) -> None:
        """The batch's records are acknowledged: forget them."""
        self._staged.clear()  # never handed over: they stay in the table for a drain
        if not self._written:
            return
        seqs, self._written = self._written, []
        await self.pool.execute("DELETE FROM outbox WHERE seq = ANY($1::bigint[])", seqs)

    async def drain(self, producer: Producer, *, older_than: float = 0.0) -> int:
        """Publish what was committed but not acknowledged: on a new owner everything
        (`older_than` 0), else what was left behind longer than `older_than` seconds. Then
        set concord_outbox_pending to the rows still in the table."""
        async with self.pool.acquire() as conn, conn.transaction():
            rows = await conn.fetch(
                "SELECT seq, topic, key, value FROM outbox WHERE stage = $1 "
                "AND created_at <= now() - make_interval(secs => $2) "
                "ORDER BY seq FOR UPDATE SKIP LOCKED",
                self.stage,
                older_than,
            )
            if rows:
                out = Outbound(self.stage)
                for row in rows:
                    record = OutboundRecord(row["topic"], row["value"], key=row["key"])
                    _hand_over(out, record, stage=self.stage, seq=row["seq"])
                await out.flush(producer)
                await conn.execute(
                    "DELETE FROM outbox WHERE seq = ANY($1::bigint[])",
                    [row["seq"] for row in rows],
                )
            pending = await conn.fetchval(
                "SELECT count(*) FROM outbox WHERE stage = $1", self.stage
            )
        metrics.OUTBOX_PENDING.labels(self.stage).set(pending)
        return len(rows)
