"""Alerts in PostgreSQL: the current state, an append-only history, and the outbox."""

from __future__ import annotations

from collections.abc import Sequence

import asyncpg
import orjson
from pydantic import TypeAdapter

from concord.alerting.lifecycle import AlertRecord
from concord.alerting.ports import AlertStorePort
from concord.events.models import Alert, Assertion
from concord.runtime.batch import OutboundRecord
from concord.runtime.db import unnest_columns
from concord.runtime.outbox import Outbox

# One statement: each alert's latest state, then every revision's history row (the history's
# foreign key on alerts is checked at the end of the statement, after the upsert).
_SAVE = """
WITH upserted AS (
INSERT INTO alerts (alert_id, revision, conflict_revision, kind, status, patient_id, attribute,
                    attribute_class, severity, assertions, proposed_value, proposed_reason,
                    opened_at, updated_at, resolved_at, stale_source)
SELECT * FROM unnest($1::text[], $2::int[], $3::int[], $4::text[], $5::text[], $6::text[],
                     $7::text[], $8::text[], $9::text[], $10::jsonb[], $11::text[], $12::text[],
                     $13::timestamptz[], $14::timestamptz[], $15::timestamptz[], $16::text[])
ON CONFLICT (alert_id) DO UPDATE SET
    revision = excluded.revision, conflict_revision = excluded.conflict_revision,
    kind = excluded.kind,
    -- A reviewer's acknowledgement (the review service sets it) outlives updates of the
    -- conflict, also one this batch computed from the row as it was before.
    status = CASE WHEN alerts.status = 'ACKNOWLEDGED' AND excluded.status = 'OPEN'
                  THEN 'ACKNOWLEDGED' ELSE excluded.status END,
    severity = excluded.severity,
    assertions = excluded.assertions, proposed_value = excluded.proposed_value,
    proposed_reason = excluded.proposed_reason, updated_at = excluded.updated_at,
    resolved_at = excluded.resolved_at, stale_source = excluded.stale_source
WHERE alerts.conflict_revision < excluded.conflict_revision
)
INSERT INTO alert_history (alert_id, revision, status, changed_at, reason)
SELECT * FROM unnest($17::text[], $18::int[], $19::text[], $20::timestamptz[], $21::text[])
ON CONFLICT DO NOTHING
"""
_ASSERTIONS: TypeAdapter[tuple[Assertion, ...]] = TypeAdapter(tuple[Assertion, ...])


def assertions_json(assertions: Sequence[Assertion]) -> str:
    """The assertions as a JSON array, each as Assertion.model_dump(mode="json") has it, written
    by pydantic in one call."""
    return _ASSERTIONS.dump_json(tuple(assertions)).decode()


def alert_from_row(row: asyncpg.Record) -> AlertRecord:
    alert = Alert(
        alert_id=row["alert_id"],
        revision=row["revision"],
        kind=row["kind"],
        status=row["status"],
        patient_id=row["patient_id"],
        attribute=row["attribute"],
        attribute_class=row["attribute_class"],
        severity=row["severity"],
        assertions=tuple(Assertion.model_validate(a) for a in orjson.loads(row["assertions"])),
        proposed_value=row["proposed_value"],
        proposed_reason=row["proposed_reason"],
        opened_at=row["opened_at"],
        updated_at=row["updated_at"],
        resolved_at=row["resolved_at"],
        stale_source=row["stale_source"],
    )
    return AlertRecord(alert=alert, conflict_revision=row["conflict_revision"])


async def list_alerts(
    pool: asyncpg.Pool, *, status: str | None = None, limit: int = 1000
) -> list[AlertRecord]:
    """Stored alerts, oldest first (the read side: `concord alerts list`, tests)."""
    rows = await pool.fetch(
        "SELECT * FROM alerts WHERE ($1::text IS NULL OR status = $1) "
        "ORDER BY opened_at, alert_id LIMIT $2",
        status,
        limit,
    )
    return [alert_from_row(row) for row in rows]


class AlertStore(AlertStorePort):
    def __init__(self, pool: asyncpg.Pool, outbox: Outbox) -> None:
        self.pool = pool
        self.outbox = outbox

    async def load(self, alert_ids: Sequence[str]) -> dict[str, AlertRecord]:
        rows = await self.pool.fetch(
            "SELECT * FROM alerts WHERE alert_id = ANY($1::text[])", list(alert_ids)
        )
        return {row["alert_id"]: alert_from_row(row) for row in rows}

    async def save(
        self,
        changes: Sequence[tuple[AlertRecord, str]],
        history: Sequence[tuple[Alert, str]],
        events: Sequence[OutboundRecord],
    ) -> None:
        alerts = [_alert_columns(record) for record, _ in changes]
        past = [(a.alert_id, a.revision, a.status, a.updated_at, reason) for a, reason in history]
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute(_SAVE, *unnest_columns(alerts, 16), *unnest_columns(past, 5))
            await self.outbox.write(conn, events)

    async def open_counts(self) -> dict[str, int]:
        rows = await self.pool.fetch(
            "SELECT severity, count(*) AS n FROM alerts WHERE status IN ('OPEN', 'ACKNOWLEDGED') "
            "GROUP BY severity"
        )
        return {row["severity"]: row["n"] for row in rows}


def _alert_columns(record: AlertRecord) -> tuple[object, ...]:
    """One alerts row, in the table's column order."""
    a = record.alert
    return (
        a.alert_id,
        a.revision,
        record.conflict_revision,
        a.kind,
        a.status,
        a.patient_id,
        a.attribute,
        a.attribute_class,
        a.severity,
        assertions_json(a.assertions),
        a.proposed_value,
        a.proposed_reason,
        a.opened_at,
        a.updated_at,
        a.resolved_at,
        a.stale_source,
    )
