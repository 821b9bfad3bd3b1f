"""The audit trail as an auditor reads it (permission audit.read), as use cases: its entries,
newest first, filtered and a page at a time; and the chain's verification, with the anchors
published on Kafka when the broker answers. No HTTP here.

The trail holds no PHI by construction (concord.review.audit refuses it), so reading it needs
no purpose of use; it is still audited: the auditor's own reads are in the trail they read
(action `audit.read`, object type `audit_log`, object id `query` or `verify`), appended in the
transaction of the read, so there is no read without its row."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

import asyncpg
from pydantic import BaseModel, ConfigDict, Field

from concord.review.access import Permission, Principal, require
from concord.review.audit import Anchor, AuditEntry, AuditRecord, ChainVerifier, Fault
from concord.review.audit_store import PostgresAuditTrail

log = logging.getLogger(__name__)

MAX_AUDIT_PAGE = 200
# Rows verify reads per query: one page in memory at a time, whatever the trail's length.
VERIFY_PAGE = 2000
# How long verify waits for the anchors before it checks the chain without them.
ANCHOR_TIMEOUT_SECONDS = 15.0

# The anchors of a trail, and how many of the topic's messages were no anchors.
AnchorReader = Callable[[str], Awaitable[tuple[list[Anchor], int]]]


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True)


class AuditRow(_Model):
    """One row of the trail as stored (never PHI: ids, codes and times)."""

    seq: int
    at: datetime
    actor: str
    role: str
    purpose: str | None
    action: str
    object_type: str
    object_id: str
    detail: dict[str, Any]
    prev_hash: str
    hash: str

    @classmethod
    def of(cls, entry: AuditEntry) -> AuditRow:
        # The stored row as it is (audit_store reads rows unvalidated, so that a row someone
        # edited is still shown as it now reads).
        return cls(
            seq=entry.seq,
            at=entry.at,
            actor=entry.actor,
            role=entry.role,
            purpose=entry.purpose,
            action=entry.action,
            object_type=entry.object_type,
            object_id=entry.object_id,
            detail=dict(entry.detail),
            prev_hash=entry.prev_hash,
            hash=entry.hash,
        )


class AuditPage(_Model):
    """Entries newest first; `next_before_seq`: pass it as `before_seq` for the next (older)
    page, null when this one is the last."""

    entries: tuple[AuditRow, ...]
    next_before_seq: int | None


class AuditFilter(_Model):
    object_type: str | None = None
    object_id: str | None = None
    actor: str | None = None
    action: str | None = None


class AuditVerdict(_Model):
    """The chain's verification: intact, or the first row where it breaks and what is wrong."""

    intact: bool
    rows: int = Field(description="rows read (to the break and a little after it)")
    head_seq: int | None = Field(description="the last row read")
    anchors_checked: bool = Field(
        description="false: the broker could not be read; a tail cut off then goes unnoticed"
    )
    anchors: int = Field(description="anchors of this trail read from concord.audit.anchors")
    unreadable_anchors: int
    latest_anchor_seq: int | None
    broken_seq: int | None = None
    fault: Fault | None = None
    explanation: str | None = None
    line: str = Field(description="what `concord audit verify` prints")


class AuditView:
    """The auditor's use cases over the audit_log table."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        trail: PostgresAuditTrail,
        *,
        anchors: AnchorReader | None = None,
        anchor_timeout: float = ANCHOR_TIMEOUT_SECONDS,
        page_size: int = VERIFY_PAGE,
    ) -> None:
        """`anchors` reads the anchors of a trail id (None: verify without them)."""
        self.pool = pool
        self.trail = trail
        self.anchors = anchors
        self.anchor_timeout = anchor_timeout
        self.page_size = page_size
        # One verification at a time per process: the next one waits for it.
        self._verifying = asyncio.Lock()

    async def page(
        self,
        principal: Principal,
        audit_filter: AuditFilter,
        *,
        before_seq: int | None,
        limit: int,
    ) -> AuditPage:
        require(principal, Permission.AUDIT_READ)
        limit = max(1, min(limit, MAX_AUDIT_PAGE))
        async with self.pool.acquire() as conn, conn.transaction():
            found = await self.trail.find(
                conn, **audit_filter.model_dump(), before_seq=before_seq, limit=limit + 1
            )
            rows = found[:limit]
            detail: dict[str, str | int | bool | None] = {
                key: value for key, value in audit_filter.model_dump().items() if value
            }
            if before_seq is not None:
                detail["before_seq"] = before_seq
            detail["rows"] = len(rows)
            await self.trail.append(conn, self._record(principal, "query", detail))
        return AuditPage(
            entries=tuple(AuditRow.of(entry) for entry in rows),
            next_before_seq=rows[-1].seq if len(found) > limit else None,
        )

    async def verify(self, principal: Principal) -> AuditVerdict:
        require(principal, Permission.AUDIT_READ)
        async with self._verifying:
            trail_id = await self.trail.trail_id(self.pool)
            # The anchors first: a row and an anchor added while the table is read are then
            # both seen, or neither.
            anchors, unreadable, checked = await self._anchors(trail_id)
            verifier = ChainVerifier(trail_id, anchors)
            async with self.pool.acquire() as conn:
                # One snapshot, a page at a time; the hashing runs off the event loop.
                async with conn.transaction(isolation="repeatable_read", readonly=True):
                    async for page in self.trail.pages(conn, page_size=self.page_size):
                        if await asyncio.to_thread(verifier.feed, page):
                            break
                verdict = verifier.finish()
                detail: dict[str, str | int | bool | None] = {
                    "intact": verdict.intact,
                    "rows": verdict.rows,
                    "anchors_checked": checked,
                }
                if verdict.broken is not None:
                    detail["broken_seq"] = verdict.broken.seq
                    detail["fault"] = verdict.broken.fault.value
                async with conn.transaction():
                    await self.trail.append(conn, self._record(principal, "verify", detail))
        broken = verdict.broken
        return AuditVerdict(
            intact=verdict.intact,
            rows=verdict.rows,
            head_seq=verdict.head_seq,
            anchors_checked=checked,
            anchors=len(anchors),
            unreadable_anchors=unreadable,
            latest_anchor_seq=None if verdict.latest_anchor is None else verdict.latest_anchor.seq,
            broken_seq=None if broken is None else broken.seq,
            fault=None if broken is None else broken.fault,
            explanation=None if broken is None else broken.explanation,
            line=verdict.line()
            + ("" if checked else " (anchors not checked: the broker could not be read)"),
        )

    async def _anchors(self, trail_id: str) -> tuple[list[Anchor], int, bool]:
        if self.anchors is None:
            return [], 0, False
        try:
            anchors, unreadable = await asyncio.wait_for(
                self.anchors(trail_id), timeout=self.anchor_timeout
            )
        except Exception as error:  # the broker unreachable: verify the chain without them
            # The type only: client messages can quote addresses and settings.
            log.warning(
                "audit verify without anchors: reading them failed (%s)", type(error).__name__
            )
            return [], 0, False
        return anchors, unreadable, True

    @staticmethod
    def _record(
        principal: Principal, object_id: str, detail: dict[str, str | int | bool | None]
    ) -> AuditRecord:
        return AuditRecord(
            actor=principal.key,
            role=principal.role.value,
            action="audit.read",
            object_type="audit_log",
            object_id=object_id,
            detail=detail,
        )
