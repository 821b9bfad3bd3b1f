"""The review service's PostgreSQL adapter for alerts: the list (filters, keyset pages), the
detail, and the review state it owns (acknowledgements, assignments, comments, decisions).

The alerts themselves are the alerting stage's. A decision is written with its outbox row (stage
`review`) in one transaction and published from the outbox, so what the database says was
decided and what concord.resolutions carries always agree.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import asyncpg

from concord.alerting.store import alert_from_row
from concord.events import codec
from concord.events.models import Alert, ConflictResolution
from concord.review.alerts import (
    AlertFilter,
    Comment,
    DecisionRecord,
    HistoryEntry,
    Position,
    ReviewState,
)
from concord.runtime.batch import OutboundRecord
from concord.runtime.outbox import Outbox
from concord.topics import RESOLUTIONS

REVIEW_STAGE = "review"  # the outbox's stage name for the review service's events


# One static statement; a filter left out is a NULL argument.
_PAGE = """
SELECT a.*, r.acknowledged_by, r.acknowledged_at, r.assignee, r.assigned_by, r.assigned_at
FROM alerts a LEFT JOIN alert_reviews r USING (alert_id)
WHERE ($1::text[] IS NULL OR a.status = ANY($1))
  AND ($2::text[] IS NULL OR a.kind = ANY($2))
  AND ($3::text[] IS NULL OR a.attribute_class = ANY($3))
  AND ($4::text[] IS NULL OR a.severity = ANY($4))
  AND ($5::text[] IS NULL OR EXISTS (
        SELECT 1 FROM jsonb_array_elements(a.assertions) e
        WHERE e->>'source_system' = ANY($5)))
  AND ($6::text IS NULL OR r.assignee = $6)
  AND ($7::timestamptz IS NULL OR a.opened_at <= $7)
  AND ($8::timestamptz IS NULL OR a.opened_at >= $8)
  AND ($9::timestamptz IS NULL OR (a.opened_at, a.alert_id) > ($9, $10::text))
ORDER BY a.opened_at, a.alert_id
LIMIT $11
"""


def _page_arguments(
    alert_filter: AlertFilter, after: Position | None, limit: int, now: datetime
) -> list[Any]:
    f = alert_filter
    return [
        list(f.status) or None,
        list(f.kind) or None,
        list(f.attribute_class) or None,
        list(f.severity) or None,
        list(f.source) or None,
        f.assignee,
        None if f.min_age is None else now - f.min_age,
        None if f.max_age is None else now - f.max_age,
        None if after is None else after.opened_at,
        None if after is None else after.alert_id,
        limit,
    ]


def _review(row: asyncpg.Record) -> ReviewState:
    return ReviewState(
        acknowledged_by=row["acknowledged_by"],
        acknowledged_at=row["acknowledged_at"],
        assignee=row["assignee"],
        assigned_by=row["assigned_by"],
        assigned_at=row["assigned_at"],
    )


_SELECT = """
SELECT a.*, r.acknowledged_by, r.acknowledged_at, r.assignee, r.assigned_by, r.assigned_at
FROM alerts a LEFT JOIN alert_reviews r USING (alert_id)
"""


class AlertReviewStore:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool
        self.outbox = Outbox(pool, REVIEW_STAGE)

    async def page(
        self, alert_filter: AlertFilter, *, after: Position | None, limit: int, now: datetime
    ) -> list[tuple[Alert, ReviewState]]:
        """Up to `limit` alerts after `after`, oldest first."""
        rows = await self.pool.fetch(_PAGE, *_page_arguments(alert_filter, after, limit, now))
        return [(alert_from_row(row).alert, _review(row)) for row in rows]

    async def alert(
        self, conn: asyncpg.Connection, alert_id: str, *, lock: bool = False
    ) -> tuple[Alert, ReviewState] | None:
        row = await conn.fetchrow(
            f"{_SELECT} WHERE a.alert_id = $1{' FOR UPDATE OF a' if lock else ''}", alert_id
        )
        return None if row is None else (alert_from_row(row).alert, _review(row))

    async def trail(
        self, conn: asyncpg.Connection, alert_id: str
    ) -> tuple[list[Comment], list[HistoryEntry], list[DecisionRecord]]:
        comments = await conn.fetch(
            "SELECT author, written_at, body FROM alert_comments WHERE alert_id = $1 "
            "ORDER BY comment_id",
            alert_id,
        )
        history = await conn.fetch(
            "SELECT revision, status, changed_at, reason FROM alert_history WHERE alert_id = $1 "
            "ORDER BY revision",
            alert_id,
        )
        decisions = await conn.fetch(
            "SELECT resolution_id, decision, chosen_value, reason_code, overrules, decided_by, "
            "decided_at FROM alert_decisions WHERE alert_id = $1 ORDER BY decided_at",
            alert_id,
        )
        return (
            [Comment(**dict(r)) for r in comments],
            [HistoryEntry(**dict(r)) for r in history],
            [DecisionRecord(**dict(r)) for r in decisions],
        )

    @staticmethod
    async def acknowledge(
        conn: asyncpg.Connection, alert_id: str, *, by: str, at: datetime
    ) -> bool:
        """Acknowledge an open alert; False when it was acknowledged already."""
        done = await conn.fetchval(
            """
            INSERT INTO alert_reviews (alert_id, acknowledged_by, acknowledged_at)
            VALUES ($1, $2, $3)
            ON CONFLICT (alert_id) DO UPDATE
                SET acknowledged_by = excluded.acknowledged_by,
                    acknowledged_at = excluded.acknowledged_at
                WHERE alert_reviews.acknowledged_at IS NULL
            RETURNING true
            """,
            alert_id,
            by,
            at,
        )
        await conn.execute(
            "UPDATE alerts SET status = 'ACKNOWLEDGED' WHERE alert_id = $1 AND status = 'OPEN'",
            alert_id,
        )
        return bool(done)

    @staticmethod
    async def assign(
        conn: asyncpg.Connection, alert_id: str, assignee: str, *, by: str, at: datetime
    ) -> None:
        await conn.execute(
            """
            INSERT INTO alert_reviews (alert_id, assignee, assigned_by, assigned_at)
            VALUES ($1, $2, $3, $4)
            ON CONFLICT (alert_id) DO UPDATE SET assignee = excluded.assignee,
                assigned_by = excluded.assigned_by, assigned_at = excluded.assigned_at
            """,
            alert_id,
            assignee,
            by,
            at,
        )

    @staticmethod
    async def comment(
        conn: asyncpg.Connection, alert_id: str, body: str, *, by: str, at: datetime
    ) -> None:
        await conn.execute(
            "INSERT INTO alert_comments (alert_id, author, written_at, body) "
            "VALUES ($1, $2, $3, $4)",
            alert_id,
            by,
            at,
            body,
        )

    async def decide(
        self,
        conn: asyncpg.Connection,
        alert: Alert,
        resolution: ConflictResolution,
        *,
        overrules: bool,
    ) -> None:
        """Record the decision and its outbox row, in the caller's transaction."""
        await conn.execute(
            """
            INSERT INTO alert_decisions (resolution_id, alert_id, decision, chosen_value,
                reason_code, proposed_value, overrules, decided_by, decided_at)
            VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
            """,
            resolution.resolution_id,
            alert.alert_id,
            resolution.decision,
            resolution.chosen_value,
            resolution.reason_code,
            alert.proposed_value,
            overrules,
            resolution.resolved_by,
            resolution.resolved_at,
        )
        record = OutboundRecord(
            RESOLUTIONS,
            codec.CONFLICT_RESOLUTION.encode(resolution),
            key=resolution.patient_id.encode(),
        )
        await self.outbox.write(conn, [record])

    async def pending_decision(self, conn: asyncpg.Connection, alert_id: str) -> bool:
        """Whether a decision on the alert was sent and its effect has not arrived yet (the
        alert still open): a second one would race it."""
        return bool(
            await conn.fetchval(
                "SELECT EXISTS (SELECT 1 FROM alert_decisions d JOIN alerts a USING (alert_id) "
                "WHERE d.alert_id = $1 AND a.status IN ('OPEN', 'ACKNOWLEDGED') "
                "AND d.decided_at >= a.updated_at)",
                alert_id,
            )
        )
