"""What a reviewer can do with identity review tasks: list them (no PHI), read one (both
records' demographics side by side and the score breakdown: PHI, audited with its purpose),
and decide it: link (one patient: normalization's merge, its signal published, the facts
follow) or keep apart (two people: never linked again). Each decision and its audit row are one
transaction; `concord identity unmerge` can undo a link."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Literal

import asyncpg
from pydantic import BaseModel, ConfigDict

from concord.normalization.identity_reviews import ReviewEntry, ReviewTask
from concord.normalization.identity_store import list_reviews
from concord.normalization.ports import IdentityReviews
from concord.review import metrics as review_metrics
from concord.review.access import Permission, Principal, purpose_of_use, require
from concord.review.handlers import AuditPort, NotFound, audit_record


class IdentityDecided(BaseModel):
    """What a decision did. `changed` false: the task was decided so before (by `decided_by`)."""

    model_config = ConfigDict(frozen=True)

    task_id: str
    decision: Literal["LINKED", "KEPT_APART"]
    changed: bool
    decided_by: str
    decided_at: datetime
    survivor: str | None = None  # a link: the patient the other was merged into
    absorbed: str | None = None


class IdentityReview:
    def __init__(
        self,
        pool: asyncpg.Pool,
        store: IdentityReviews,
        audit: AuditPort,
        *,
        published: Callable[[], Awaitable[object]],
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        """`published` is called after a link's commit: it publishes the identity outbox."""
        self.pool = pool
        self.store = store
        self.audit = audit
        self.published = published
        self.clock = clock

    async def page(
        self, principal: Principal, *, include_decided: bool, limit: int
    ) -> list[ReviewEntry]:
        require(principal, Permission.IDENTITY_LIST)
        return await list_reviews(self.pool, limit=limit, include_decided=include_decided)

    async def detail(
        self, principal: Principal, task_id: str, *, purpose: str | None
    ) -> ReviewTask:
        require(principal, Permission.IDENTITY_READ)
        why = purpose_of_use(purpose)
        task = await self.store.review_task(task_id)
        if task is None:
            raise NotFound(f"no identity review task {task_id}")
        # The read is recorded before anything is returned: no trail, no data.
        async with self.pool.acquire() as conn, conn.transaction():
            await self.audit.append(
                conn,
                audit_record(
                    principal, "identity.read", "identity_review", task_id, purpose=why.code
                ),
            )
        return task

    async def link(self, principal: Principal, task_id: str) -> IdentityDecided:
        require(principal, Permission.IDENTITY_DECIDE)

        async def audited(conn: asyncpg.Connection) -> None:
            await self.audit.append(
                conn, audit_record(principal, "identity.link", "identity_review", task_id)
            )

        done = await self.store.link(task_id, by=principal.subject, at=self.clock(), also=audited)
        if done.changed:
            review_metrics.identity_decided("LINKED")
        if done.fact is not None:
            await self.published()
        return IdentityDecided(
            task_id=task_id,
            decision="LINKED",
            changed=done.changed,
            decided_by=done.decided_by,
            decided_at=done.decided_at,
            survivor=done.survivor,
            absorbed=done.absorbed,
        )

    async def keep_apart(self, principal: Principal, task_id: str) -> IdentityDecided:
        require(principal, Permission.IDENTITY_DECIDE)

        async def audited(conn: asyncpg.Connection) -> None:
            await self.audit.append(
                conn, audit_record(principal, "identity.keep_apart", "identity_review", task_id)
            )

        done = await self.store.keep_apart(
            task_id, by=principal.subject, at=self.clock(), also=audited
        )
        if done.changed:
            review_metrics.identity_decided("KEPT_APART")
        return IdentityDecided(
            task_id=task_id,
            decision="KEPT_APART",
            changed=done.changed,
            decided_by=done.decided_by,
            decided_at=done.decided_at,
        )
