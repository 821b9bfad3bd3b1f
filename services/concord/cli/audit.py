"""`concord audit verify | list | anchor`: the audit trail for auditors and operators
(docs/audit.md), and `record_decision`, with which the command line's own decisions are
audited.

Lines name sequence numbers, times, actors, roles, actions, object ids and codes: what the
trail holds, which is never PHI.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from datetime import UTC
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import asyncpg
import click
import orjson
from pydantic import ValidationError

from concord.cli.options import (
    client_settings,
    database_dsn,
    kafka_client_options,
    state_dir_option,
)
from concord.cli.reachability import connections
from concord.review.audit import CLI_ROLE, AuditEntry, AuditRecord, ChainVerifier, Verdict
from concord.runtime.reading import client_options
from concord.topics import AUDIT_ANCHORS

if TYPE_CHECKING:
    from concord.review.audit import Anchor

T = TypeVar("T")


@click.group(name="audit")
def audit() -> None:
    """The audit trail: who read or changed what, chained so that tampering shows."""


# --- database and Kafka -----------------------------------------------------------------------


async def verify_trail(dsn: str, kafka: dict[str, Any] | None) -> tuple[Verdict, int]:
    """Read the anchors (unless `kafka` is None), then the trail a page at a time, until the
    verdict is settled; return it and how many anchor messages could not be read. The anchors
    are read first: a row and an anchor added while the table is read are then both seen, or
    neither."""
    from concord.review.audit_store import PostgresAuditTrail, read_anchors

    trail = PostgresAuditTrail()
    conn = await asyncpg.connect(dsn)
    try:
        trail_id = await trail.trail_id(conn)
        anchors: list[Anchor] = []
        unreadable = 0
        if kafka is not None:
            anchors, unreadable = await read_anchors(kafka, trail_id)
        verifier = ChainVerifier(trail_id, anchors)
        # One transaction: the pages are one snapshot's.
        async with conn.transaction(isolation="repeatable_read", readonly=True):
            async for page in trail.pages(conn):
                if verifier.feed(page):
                    break
        return verifier.finish(), unreadable
    finally:
        await conn.close()


async def _find(dsn: str, **where: Any) -> list[AuditEntry]:
    from concord.review.audit_store import PostgresAuditTrail

    conn = await asyncpg.connect(dsn)
    try:
        return await PostgresAuditTrail().find(conn, **where)
    finally:
        await conn.close()


async def _anchor(dsn: str, kafka: dict[str, Any]) -> Anchor | None:
    from aiokafka import AIOKafkaProducer

    from concord.review.audit_store import PostgresAuditTrail

    conn = await asyncpg.connect(dsn)
    # Idempotence off: the local broker cannot hand out producer ids; an anchor sent twice is
    # the same fact twice.
    producer = AIOKafkaProducer(**client_options(kafka), acks="all", enable_idempotence=False)
    try:
        await producer.start()
        return await PostgresAuditTrail().publish_anchor(conn, producer)
    finally:
        await producer.stop()
        await conn.close()


async def record_decision(dsn: str, record: AuditRecord) -> AuditEntry:
    """Append one row for a decision made outside a transaction of ours (a publication to
    Kafka, already acknowledged): in a transaction of its own."""
    from concord.review.audit_store import PostgresAuditTrail

    conn = await asyncpg.connect(dsn)
    try:
        async with conn.transaction():
            return await PostgresAuditTrail().append(conn, record)
    finally:
        await conn.close()


class OneConnection:
    """A pool of one connection, already in a transaction of ours, for a store that takes a
    pool: what it runs in its own `async with pool.acquire() as conn, conn.transaction()` runs
    in a savepoint of ours, so it commits with our audit row, or neither does."""

    def __init__(self, conn: asyncpg.Connection) -> None:
        self._conn = conn

    @asynccontextmanager
    async def _borrowed(self) -> AsyncIterator[asyncpg.Connection]:
        yield self._conn

    def acquire(self) -> AbstractAsyncContextManager[asyncpg.Connection]:
        return self._borrowed()

    async def execute(self, query: str, *args: Any) -> Any:
        return await self._conn.execute(query, *args)

    async def fetch(self, query: str, *args: Any) -> Any:
        return await self._conn.fetch(query, *args)

    async def fetchrow(self, query: str, *args: Any) -> Any:
        return await self._conn.fetchrow(query, *args)

    async def fetchval(self, query: str, *args: Any) -> Any:
        return await self._conn.fetchval(query, *args)


async def audited(
    pool: asyncpg.Pool,
    change: Callable[[OneConnection], Awaitable[T]],
    record_of: Callable[[T], AuditRecord],
) -> T:
    """Make a change through a store (`change` gets the pool to build it on) and append its
    audit row, `record_of(result)`, in one transaction: both commit, or neither. A change that
    raises appends nothing."""
    from concord.review.audit_store import PostgresAuditTrail

    async with pool.acquire() as conn, conn.transaction():
        result = await change(OneConnection(conn))
        await PostgresAuditTrail().append(conn, record_of(result))
    return result


def cli_record(
    *, by: str, action: str, object_type: str, object_id: str, **detail: str | int | None
) -> AuditRecord:
    """The row for a decision of the command line: actor = --by (or the OS user), role cli.
    Raises click.UsageError for an actor the trail cannot hold (so before deciding anything)."""
    try:
        return AuditRecord(
            actor=by,
            role=CLI_ROLE,
            action=action,
            object_type=object_type,
            object_id=object_id,
            detail=dict(detail),
        )
    except ValidationError as error:
        fields = ", ".join(sorted({str(e["loc"][0]) for e in error.errors() if e["loc"]}))
        raise click.UsageError(
            f"the audit trail cannot record this decision ({fields}: 1 to 256 characters, no "
            "control characters)"
        ) from None


def _missing_tables(work: Coroutine[Any, Any, T]) -> T:
    """asyncio.run, with a database lacking the audit tables said plainly."""
    try:
        return asyncio.run(work)
    except (asyncpg.UndefinedTableError, LookupError):
        raise click.ClickException(
            "the database lacks the audit trail: run `concord db migrate`"
        ) from None


# --- formatting -------------------------------------------------------------------------------


def entry_json(entry: AuditEntry) -> dict[str, Any]:
    return {
        "seq": entry.seq,
        "at": entry.at.astimezone(UTC).isoformat(),
        "actor": entry.actor,
        "role": entry.role,
        "purpose": entry.purpose,
        "action": entry.action,
        "object_type": entry.object_type,
        "object_id": entry.object_id,
        "detail": entry.detail,
        "hash": entry.hash,
    }


def entry_line(entry: AuditEntry) -> str:
    detail = " ".join(f"{key}={value}" for key, value in sorted(entry.detail.items()))
    purpose = f" purpose={entry.purpose}" if entry.purpose else ""
    return (
        f"{entry.seq} {entry.at.astimezone(UTC):%Y-%m-%d %H:%M:%S}Z {entry.actor} "
        f"({entry.role}) {entry.action} {entry.object_type}:{entry.object_id}{purpose}"
        + (f" {detail}" if detail else "")
    )


# --- commands ---------------------------------------------------------------------------------


@audit.command("verify")
@click.option(
    "--without-anchors",
    is_flag=True,
    help="Check the chain only, without the broker: rows cut off the end then go unnoticed.",
)
@state_dir_option
def verify_command(without_anchors: bool, state_dir: Path) -> None:
    """Check the whole trail: every row's hash, every link, no gap, and the anchors published
    of its head. Prints `audit trail intact: ...` (exit 0) or the first row where it breaks
    and what is wrong there (exit 1)."""
    settings = client_settings(state_dir)
    dsn = database_dsn(settings)
    kafka = None if without_anchors else kafka_client_options(settings)
    with connections(settings, state_dir, broker=kafka is not None, database=True):
        verdict, unreadable = _missing_tables(verify_trail(dsn, kafka))
    if unreadable:
        click.echo(f"{unreadable} messages on {AUDIT_ANCHORS} are no anchors: ignored", err=True)
    click.echo(verdict.line())
    if not verdict.intact:
        raise SystemExit(1)


@audit.command("list")
@click.option("--object", "target", metavar="TYPE:ID", help="Rows about one object (alert:A1).")
@click.option("--actor", help="Rows of one actor.")
@click.option("--action", help="Rows of one action (alert.read, cli.identity.unmerge, ...).")
@click.option("--limit", type=click.IntRange(min=1), default=100, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@state_dir_option
def list_command(
    target: str | None,
    actor: str | None,
    action: str | None,
    limit: int,
    as_json: bool,
    state_dir: Path,
) -> None:
    """Rows of the audit trail, newest first."""
    object_type = object_id = None
    if target is not None:
        object_type, colon, object_id = target.partition(":")
        if not colon or not object_type or not object_id:
            raise click.UsageError("--object takes TYPE:ID, e.g. alert:A1")
    settings = client_settings(state_dir)
    dsn = database_dsn(settings)
    with connections(settings, state_dir, database=True):
        entries = _missing_tables(
            _find(
                dsn,
                object_type=object_type,
                object_id=object_id,
                actor=actor,
                action=action,
                limit=limit,
            )
        )
    for entry in entries:
        click.echo(orjson.dumps(entry_json(entry)).decode() if as_json else entry_line(entry))
    click.echo(f"{len(entries)} audit rows", err=True)


@audit.command("anchor")
@state_dir_option
def anchor_command(state_dir: Path) -> None:
    """Publish the trail's head to concord.audit.anchors now (the review service does it on
    a timer)."""
    settings = client_settings(state_dir)
    dsn = database_dsn(settings)
    kafka = kafka_client_options(settings)
    with connections(settings, state_dir, broker=True, database=True):
        anchor = _missing_tables(_anchor(dsn, kafka))
    if anchor is None:
        click.echo("the audit trail is empty: nothing to anchor")
        return
    click.echo(f"audit anchor seq={anchor.seq} hash={anchor.hash} published to {AUDIT_ANCHORS}")
