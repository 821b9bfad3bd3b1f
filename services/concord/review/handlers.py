"""What a reviewer can do with alerts, as use cases: each checks the caller's permission, does
its work in one transaction with its audit row, and says what went wrong in a typed error the
API maps to a status. No HTTP here: the API and the web page both call these."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Protocol

import asyncpg

from concord.events.models import Alert
from concord.review import metrics as review_metrics
from concord.review.access import Permission, Principal, purpose_of_use, require
from concord.review.alert_store import AlertReviewStore
from concord.review.alerts import (
    MAX_PAGE,
    AlertDetail,
    AlertFilter,
    AlertPage,
    AssignRequest,
    CommentRequest,
    DismissRequest,
    NotDecidable,
    Position,
    ResolveRequest,
    decode_cursor,
    encode_cursor,
    overrules,
    resolution_for,
    summary_of,
    values_of,
)
from concord.review.audit import AuditEntry, AuditRecord, DetailValue
from concord.review.audit_store import PostgresAuditTrail


class NotFound(LookupError):
    """404: no such object (names its id only)."""


def audit_record(
    principal: Principal,
    action: str,
    object_type: str,
    object_id: str,
    *,
    purpose: str | None = None,
    detail: dict[str, DetailValue] | None = None,
) -> AuditRecord:
    """The audit row of something a caller did to an object."""
    return AuditRecord(
        actor=principal.key,
        role=principal.role.value,
        purpose=purpose,
        action=action,
        object_type=object_type,
        object_id=object_id,
        detail=detail or {},
    )


class AuditPort(Protocol):
    async def append(self, conn: asyncpg.Connection, record: AuditRecord) -> object:
        """Append a row to the audit trail, in the caller's transaction."""


class AlertReview:
    def __init__(
        self,
        pool: asyncpg.Pool,
        audit: AuditPort,
        *,
        published: Callable[[], Awaitable[object]],
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        """`published` is called after a decision's commit: it publishes the outbox."""
        self.pool = pool
        self.store = AlertReviewStore(pool)
        self.audit = audit
        self.published = published
        self.clock = clock

    async def page(
        self, principal: Principal, alert_filter: AlertFilter, *, cursor: str | None, limit: int
    ) -> AlertPage:
        require(principal, Permission.ALERTS_LIST)
        limit = max(1, min(limit, MAX_PAGE))
        after = decode_cursor(cursor, alert_filter) if cursor else None
        now = self.clock()
        found = await self.store.page(alert_filter, after=after, limit=limit + 1, now=now)
        rows = [summary_of(alert, review, now=now) for alert, review in found[:limit]]
        next_cursor = None
        if len(found) > limit:
            last = rows[-1]
            next_cursor = encode_cursor(
                Position(opened_at=last.opened_at, alert_id=last.alert_id), alert_filter
            )
        return AlertPage(alerts=tuple(rows), next_cursor=next_cursor)

    async def detail(
        self, principal: Principal, alert_id: str, *, purpose: str | None
    ) -> AlertDetail:
        require(principal, Permission.ALERTS_READ)
        why = purpose_of_use(purpose)
        async with self.pool.acquire() as conn, conn.transaction():
            found = await self.store.alert(conn, alert_id)
            if found is None:
                raise NotFound(f"no alert {alert_id}")
            alert, review = found
            comments, history, decisions = await self.store.trail(conn, alert_id)
            await self._audit(conn, principal, "alert.read", alert_id, purpose=why.code)
        return AlertDetail(
            summary=summary_of(alert, review, now=self.clock()),
            values=values_of(alert),
            proposed_value=alert.proposed_value,
            proposed_reason=alert.proposed_reason,
            stale_source=alert.stale_source,
            review=review,
            comments=tuple(comments),
            history=tuple(history),
            decisions=tuple(decisions),
        )

    async def acknowledge(self, principal: Principal, alert_id: str) -> bool:
        """True when this call acknowledged it, False when it was already."""
        require(principal, Permission.ALERTS_DECIDE)
        at = self.clock()
        async with self.pool.acquire() as conn, conn.transaction():
            alert = await self._open(conn, alert_id)
            done = await self.store.acknowledge(conn, alert.alert_id, by=principal.subject, at=at)
            if done:
                await self._audit(conn, principal, "alert.acknowledge", alert_id)
        if done:  # committed: observed once
            review_metrics.acknowledged(alert, at)
        return done

    async def assign(self, principal: Principal, alert_id: str, request: AssignRequest) -> None:
        require(principal, Permission.ALERTS_DECIDE)
        async with self.pool.acquire() as conn, conn.transaction():
            await self._open(conn, alert_id)
            await self.store.assign(
                conn, alert_id, request.assignee, by=principal.subject, at=self.clock()
            )
            await self._audit(
                conn, principal, "alert.assign", alert_id, detail={"assignee": request.assignee}
            )

    async def comment(self, principal: Principal, alert_id: str, request: CommentRequest) -> None:
        require(principal, Permission.ALERTS_DECIDE)
        async with self.pool.acquire() as conn, conn.transaction():
            if await self.store.alert(conn, alert_id) is None:
                raise NotFound(f"no alert {alert_id}")
            await self.store.comment(
                conn, alert_id, request.body, by=principal.subject, at=self.clock()
            )
            # The comment's text may hold PHI: the trail records that one was written.
            await self._audit(conn, principal, "alert.comment", alert_id)

    async def decide(
        self, principal: Principal, alert_id: str, request: ResolveRequest | DismissRequest
    ) -> str:
        """Resolve or dismiss; the resolution id, once the decision is committed with its
        outbox row (published right after, and by the timer if that fails)."""
        require(principal, Permission.ALERTS_DECIDE)
        at = self.clock()
        async with self.pool.acquire() as conn, conn.transaction():
            alert = await self._open(conn, alert_id)
            if await self.store.pending_decision(conn, alert_id):
                raise NotDecidable(
                    f"alert {alert_id} has a decision on its way: wait for it to take effect"
                )
            resolution = resolution_for(alert, request, by=principal.subject, at=at)
            against = overrules(alert, resolution)
            await self.store.decide(conn, alert, resolution, overrules=against)
            if request.comment is not None:
                await self.store.comment(
                    conn, alert_id, request.comment, by=principal.subject, at=at
                )
            action = "alert.dismiss" if resolution.decision == "DISMISSED" else "alert.resolve"
            detail: dict[str, DetailValue] = {
                "resolution_id": resolution.resolution_id,
                "decision": resolution.decision,
                "overrules_proposal": against,
            }
            if resolution.reason_code:
                detail["reason"] = resolution.reason_code
            await self._audit(conn, principal, action, alert_id, detail=detail)
        review_metrics.decided(alert, resolution, overrules=against)  # committed
        await self.published()
        return resolution.resolution_id

    async def _open(self, conn: asyncpg.Connection, alert_id: str) -> Alert:
        found = await self.store.alert(conn, alert_id, lock=True)
        if found is None:
            raise NotFound(f"no alert {alert_id}")
        alert, _ = found
        if alert.status in ("RESOLVED", "DISMISSED"):
            raise NotDecidable(f"alert {alert_id} is {alert.status.lower()} already")
        return alert

    async def _audit(
        self,
        conn: asyncpg.Connection,
        principal: Principal,
        action: str,
        alert_id: str,
        *,
        purpose: str | None = None,
        detail: dict[str, DetailValue] | None = None,
    ) -> None:
        await self.audit.append(
            conn,
            audit_record(principal, action, "alert", alert_id, purpose=purpose, detail=detail),
        )

    async def audit_history(
        self, principal: Principal, alert_id: str, *, limit: int = 100
    ) -> list[AuditEntry]:
        """The alert's audit trail, oldest first (its newest `limit` entries): who read or
        changed it, when, in which role and with which purpose; ids and codes, no PHI. For the
        detail view: call it after `detail`, whose read it then shows."""
        require(principal, Permission.ALERTS_READ)
        newest_first = await PostgresAuditTrail().find(
            self.pool, object_type="alert", object_id=alert_id, limit=limit
        )
        return newest_first[::-1]
