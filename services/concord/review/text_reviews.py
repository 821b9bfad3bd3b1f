"""What a reviewer can do with text review tasks (issue 18): findings the narrative worker
read from a note or a report, but not surely enough to be facts ("cannot rule out metastatic
disease"). List them (no PHI: ids, the attribute, the confidence), read one (the value, the
words and where they are: PHI, audited with its purpose), and decide it: accept (the finding
becomes a fact, published through the review outbox, flagged ACCEPTED_BY_REVIEWER) or reject
(nothing is published). Each decision, its outbox row and its audit row are one transaction."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Literal

import asyncpg
import orjson
from pydantic import BaseModel, ConfigDict

from concord.events import codec
from concord.events.models import Provenance
from concord.narrative.reading import accepted_fact
from concord.review.access import Permission, Principal, purpose_of_use, require
from concord.review.handlers import AuditPort, NotFound, audit_record
from concord.runtime.batch import OutboundRecord
from concord.runtime.outbox import Outbox
from concord.topics import FACTS

TextStatus = Literal["OPEN", "ACCEPTED", "REJECTED"]


class TextDecisionConflict(Exception):
    """409: the task was decided the other way."""


class TextReviewEntry(BaseModel):
    """A task as lists show it: no value, no words."""

    model_config = ConfigDict(frozen=True)

    task_id: str
    patient_id: str
    attribute: str
    confidence: float
    assertion: str
    kind: str  # pathology-text | note-text
    source_system: str
    status: TextStatus
    created_at: datetime


class TextReviewTask(TextReviewEntry):
    """A task whole: the value read, the words that say it and where (PHI)."""

    value: str
    excerpt: str
    section: str | None
    document_id: str
    record_id: str
    provenance: Provenance
    decided_by: str | None = None
    decided_at: datetime | None = None


class TextDecided(BaseModel):
    """What a decision did. `changed` false: the task was decided so before."""

    model_config = ConfigDict(frozen=True)

    task_id: str
    decision: Literal["ACCEPTED", "REJECTED"]
    changed: bool
    decided_by: str
    decided_at: datetime
    fact_id: str | None = None  # an acceptance: the fact published


_COLUMNS = """task_id, patient_id, subject, attribute, value, confidence, assertion, document_id,
record_id, source_system, effective_time, evidence, status, created_at, decided_by, decided_at,
fact_id"""


def _entry_fields(row: asyncpg.Record, kind: str) -> dict[str, object]:
    return {
        "task_id": row["task_id"],
        "patient_id": row["patient_id"],
        "attribute": row["attribute"],
        "confidence": row["confidence"],
        "assertion": row["assertion"],
        "kind": kind,
        "source_system": row["source_system"],
        "status": row["status"],
        "created_at": row["created_at"],
    }


def _entry(row: asyncpg.Record) -> TextReviewEntry:
    text = orjson.loads(row["evidence"]).get("text") or {}
    return TextReviewEntry.model_validate(_entry_fields(row, text.get("kind", "")))


def _task(row: asyncpg.Record) -> TextReviewTask:
    provenance = Provenance.model_validate_json(row["evidence"])
    text = provenance.text
    return TextReviewTask.model_validate(
        {
            **_entry_fields(row, text.kind if text else ""),
            "value": row["value"],
            "excerpt": text.excerpt if text else "",
            "section": text.section if text else None,
            "document_id": row["document_id"],
            "record_id": row["record_id"],
            "provenance": provenance,
            "decided_by": row["decided_by"],
            "decided_at": row["decided_at"],
        }
    )


class TextReview:
    def __init__(
        self,
        pool: asyncpg.Pool,
        audit: AuditPort,
        outbox: Outbox,
        *,
        published: Callable[[], Awaitable[object]],
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        """`outbox`: the review service's (its decisions are published from it); `published`
        is called after an acceptance's commit: it publishes the outbox."""
        self.pool = pool
        self.audit = audit
        self.outbox = outbox
        self.published = published
        self.clock = clock

    async def page(
        self, principal: Principal, *, include_decided: bool, limit: int
    ) -> list[TextReviewEntry]:
        require(principal, Permission.TEXT_LIST)
        where = "" if include_decided else "WHERE status = 'OPEN'"
        rows = await self.pool.fetch(
            f"SELECT {_COLUMNS} FROM text_review_tasks {where} "  # noqa: S608 - fixed text
            "ORDER BY created_at, task_id LIMIT $1",
            limit,
        )
        return [_entry(row) for row in rows]

    async def detail(
        self, principal: Principal, task_id: str, *, purpose: str | None
    ) -> TextReviewTask:
        require(principal, Permission.TEXT_READ)
        why = purpose_of_use(purpose)
        async with self.pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(
                f"SELECT {_COLUMNS} FROM text_review_tasks WHERE task_id = $1",  # noqa: S608
                task_id,
            )
            if row is None:
                raise NotFound(f"no text review task {task_id}")
            # The read is recorded before anything is returned: no trail, no data.
            await self.audit.append(
                conn, audit_record(principal, "text.read", "text_review", task_id, purpose=why.code)
            )
        return _task(row)

    async def accept(self, principal: Principal, task_id: str) -> TextDecided:
        return await self._decide(principal, task_id, "ACCEPTED")

    async def reject(self, principal: Principal, task_id: str) -> TextDecided:
        return await self._decide(principal, task_id, "REJECTED")

    async def _decide(
        self, principal: Principal, task_id: str, decision: Literal["ACCEPTED", "REJECTED"]
    ) -> TextDecided:
        require(principal, Permission.TEXT_DECIDE)
        now = self.clock()
        async with self.pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(
                f"SELECT {_COLUMNS} FROM text_review_tasks WHERE task_id = $1 "  # noqa: S608
                "FOR UPDATE",
                task_id,
            )
            if row is None:
                raise NotFound(f"no text review task {task_id}")
            if row["status"] != "OPEN":
                if row["status"] != decision:
                    raise TextDecisionConflict(
                        f"text review task {task_id} was decided {row['status']} by "
                        f"{row['decided_by']}; it cannot be {decision} now"
                    )
                return TextDecided(
                    task_id=task_id,
                    decision=decision,
                    changed=False,
                    decided_by=row["decided_by"],
                    decided_at=row["decided_at"],
                    fact_id=row["fact_id"],
                )
            fact_id = await self._publish(conn, row) if decision == "ACCEPTED" else None
            await conn.execute(
                "UPDATE text_review_tasks SET status = $2, decided_by = $3, decided_at = $4, "
                "fact_id = $5 WHERE task_id = $1",
                task_id,
                decision,
                principal.subject,
                now,
                fact_id,
            )
            action = "text.accept" if decision == "ACCEPTED" else "text.reject"
            await self.audit.append(conn, audit_record(principal, action, "text_review", task_id))
        if fact_id is not None:
            await self.published()
        return TextDecided(
            task_id=task_id,
            decision=decision,
            changed=True,
            decided_by=principal.subject,
            decided_at=now,
            fact_id=fact_id,
        )

    async def _publish(self, conn: asyncpg.Connection, row: asyncpg.Record) -> str:
        """The accepted finding as a fact, in the review outbox (the caller's transaction)."""
        fact = accepted_fact(
            patient_id=row["patient_id"],
            subject=row["subject"],
            attribute=row["attribute"],
            value=row["value"],
            record_id=row["record_id"],
            provenance=Provenance.model_validate_json(row["evidence"]),
            effective_time=row["effective_time"],
        )
        record = OutboundRecord(
            FACTS, codec.CLINICAL_FACT.encode(fact), key=fact.patient_id.encode()
        )
        await self.outbox.write(conn, [record])
        return fact.fact_id
