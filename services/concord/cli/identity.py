"""`concord identity reviews | link | keep-apart | merges | unmerge`: the patient identity
index for operators.

Lines name enterprise ids, sources, counts and times, never demographics or local ids (MRNs).
An unmerge, or a review task's link, changes the index and writes its signal to the identity
outbox in one transaction, then publishes the outbox itself; if the broker cannot be reached,
the change stays committed and the signal waits: the normalization worker publishes it when it
gets partitions, and running the same command again publishes it too. Keeping a task's two
patients apart moves no facts: nothing to publish.

Database and Kafka I/O is in plain async functions, formatting in pure ones; the click
commands only glue them together.
"""

from __future__ import annotations

import asyncio
import getpass
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import asyncpg
import click
import orjson
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from concord.cli.audit import audited, cli_record
from concord.cli.options import (
    client_settings,
    database_dsn,
    kafka_client_options,
    state_dir_option,
)
from concord.review.audit import AuditRecord
from concord.runtime.db import pooled
from concord.runtime.reading import client_options
from concord.topics import FACTS

if TYPE_CHECKING:
    # The identity store imports the normalization core (terminology, units): loaded by the
    # commands that need it, not by every `concord` command.
    from concord.normalization.identity_reviews import (
        KeepApartDecision,
        LinkDecision,
        ReviewEntry,
    )
    from concord.normalization.identity_store import MergeEntry, PostgresIdentityStore, Unmerge

T = TypeVar("T")


@click.group(name="identity")
def identity() -> None:
    """The patient identity index: uncertain matches waiting for a reviewer (and their
    decisions), and merges."""


# --- formatting -------------------------------------------------------------------------------


def _minute(at: datetime) -> str:
    return f"{at.astimezone(UTC):%Y-%m-%d %H:%M}"


def _count(n: int, one: str, many: str) -> str:
    return f"{n} {one if n == 1 else many}"


def merge_json(merge: MergeEntry) -> dict[str, Any]:
    return {
        "absorbed_enterprise_id": merge.absorbed,
        "survivor_enterprise_id": merge.survivor,
        "source": merge.source,
        "merged_at": merge.merged_at.astimezone(UTC).isoformat(),
        "unmerged_at": merge.unmerged_at.astimezone(UTC).isoformat() if merge.unmerged_at else None,
        "unmerged_by": merge.unmerged_by,
        "links_moved": merge.links_moved,
        "views_moved": merge.views_moved,
    }


def merge_line(merge: MergeEntry) -> str:
    """One line for people. The unmerge reason is left out: free text may name the patient."""
    if merge.unmerged_at is not None:
        state = f"unmerged {_minute(merge.unmerged_at)} by {merge.unmerged_by or '-'}"
    else:
        state = (
            f"moved {_count(merge.links_moved, 'local id', 'local ids')}, "
            f"{_count(merge.views_moved, 'view', 'views')}"
        )
    return (
        f"{_minute(merge.merged_at)} {merge.absorbed} merged into {merge.survivor} "
        f"(source {merge.source}; {state})"
    )


def _restored(done: Unmerge) -> str:
    return (
        f"{_count(done.links_restored, 'local id', 'local ids')} and "
        f"{_count(done.views_restored, 'view', 'views')} restored from {done.survivor}"
    )


def unmerge_line(done: Unmerge, published: int) -> str:
    return f"{done.absorbed} is a patient again: {_restored(done)}; {_published(published)}"


def review_json(task: ReviewEntry) -> dict[str, Any]:
    return {
        "task_id": task.task_id,
        "source": task.source,
        "provisional_enterprise_id": task.provisional_enterprise_id,
        "candidate_enterprise_id": task.candidate_enterprise_id,
        "score": task.score,
        "created_at": task.created_at.isoformat(),
        "breakdown": [w.model_dump(mode="json") for w in task.breakdown],
        "status": task.status,
        "decision": task.decision.value if task.decision else None,
        "decided_by": task.decided_by,
        "decided_at": task.decided_at.astimezone(UTC).isoformat() if task.decided_at else None,
    }


def review_line(task: ReviewEntry) -> str:
    """One line for people: fields and levels of the breakdown, never values."""
    fields = " ".join(f"{w.field}={w.level}({w.weight:+.1f})" for w in task.breakdown)
    line = (
        f"{task.created_at:%Y-%m-%d %H:%M} {task.task_id} {task.source}: "
        f"{task.provisional_enterprise_id} may be {task.candidate_enterprise_id} "
        f"(score {task.score:.1f}: {fields})"
    )
    if task.decision is not None:
        line += f"; {_decided(task.decision.value, task.decided_by, task.decided_at)}"
    return line


def _decided(decision: str, by: str | None, at: datetime | None) -> str:
    said = "linked" if decision == "LINKED" else "kept apart"
    return f"{said} {_minute(at) if at else '-'} by {by or '-'}"


def link_line(decision: LinkDecision, published: int) -> str:
    if not decision.changed:
        return (
            f"task {decision.task_id} was already "
            f"{_decided('LINKED', decision.decided_by, decision.decided_at)}: nothing changed"
            + (f"; its signal, waiting in the outbox, was published to {FACTS}"
               if published else "")
        )  # fmt: skip
    if decision.fact is None:
        return (
            f"task {decision.task_id} linked: {decision.survivor} holds both records already "
            "(merged since the task was opened); nothing to merge"
        )
    return (
        f"task {decision.task_id} linked: {decision.absorbed} merged into {decision.survivor}; "
        f"{_published(published)}"
    )


def keep_apart_line(decision: KeepApartDecision) -> str:
    if not decision.changed:
        return (
            f"task {decision.task_id} was already "
            f"{_decided('KEPT_APART', decision.decided_by, decision.decided_at)}: "
            "nothing changed"
        )
    return (
        f"task {decision.task_id} kept apart: {decision.record} and {decision.candidate} are "
        f"two patients ({_count(decision.pairs, 'never-link pair', 'never-link pairs')} of "
        "source records); matching will not link them nor ask again"
    )


def _published(published: int) -> str:
    if published:
        return f"signal published to {FACTS}"
    # Another drain (a normalization worker getting partitions) held the row: it sends it.
    return f"signal being published to {FACTS} by a normalization worker"


# --- database and Kafka -----------------------------------------------------------------------


class NotPublished(Exception):
    """The unmerge is committed, its signal is not on the topic yet."""

    def __init__(self, done: Unmerge | None, cause: KafkaError) -> None:
        self.done = done
        self.cause = cause
        super().__init__(str(cause))


class LinkNotPublished(Exception):
    """The link is committed, its signal is not on the topic yet."""

    def __init__(self, decision: LinkDecision, cause: KafkaError) -> None:
        self.decision = decision
        self.cause = cause
        super().__init__(str(cause))


@dataclass(frozen=True)
class UnmergeOutcome:
    # None: the id was unmerged before, and only its waiting signal was published now.
    done: Unmerge | None
    published: int


async def _publish_outbox(store: PostgresIdentityStore, kafka: dict[str, Any]) -> int:
    # Idempotence off, as for replays: the local broker cannot hand out producer ids, and the
    # signal's id is deterministic, so a duplicate is one unmerge to the conflicts stage.
    producer = AIOKafkaProducer(**client_options(kafka), acks="all", enable_idempotence=False)
    try:
        await producer.start()
        return await store.outbox.drain(producer)
    finally:
        await producer.stop()  # also after a failed start, which leaves its client open


async def unmerge_and_publish(
    dsn: str, kafka: dict[str, Any], absorbed: str, *, by: str, reason: str, at: datetime
) -> UnmergeOutcome:
    """Unmerge (committed first), then publish the identity outbox. Re-running it for an id
    already unmerged whose signal still waits publishes the signal; otherwise NotMerged."""
    from concord.normalization.identity_store import (
        PostgresIdentityStore,
        UnmergeError,
        pending_unmerge,
    )

    async with pooled(dsn, 2) as pool:
        store = PostgresIdentityStore(pool)
        done: Unmerge | None
        try:
            # The unmerge and its audit row commit together (the reason, free text, stays
            # with the merge, out of the trail).
            done = await audited(
                pool,
                lambda one: PostgresIdentityStore(one).unmerge(
                    absorbed, by=by, reason=reason, at=at
                ),
                lambda unmerged: _unmerge_record(unmerged, by),
            )
        except UnmergeError:
            if not await pending_unmerge(pool, absorbed):
                raise
            done = None
        try:
            published = await _publish_outbox(store, kafka)
        except KafkaError as error:
            raise NotPublished(done, error) from error
        return UnmergeOutcome(done, published)


def _unmerge_record(done: Unmerge, by: str) -> AuditRecord:
    return cli_record(
        by=by,
        action="cli.identity.unmerge",
        object_type="patient",
        object_id=done.absorbed,
        survivor=done.survivor,
        links_restored=done.links_restored,
        views_restored=done.views_restored,
    )


def _audit_row(record: AuditRecord) -> Callable[[Any], Awaitable[object]]:
    """What a decision adds to its transaction: its audit row."""
    from concord.review.audit_store import PostgresAuditTrail

    async def append(conn: Any) -> object:
        return await PostgresAuditTrail().append(conn, record)

    return append


async def link_and_publish(
    dsn: str, kafka: dict[str, Any], task_id: str, *, by: str, at: datetime
) -> tuple[LinkDecision, int]:
    """Link the task's two patients (committed first, with its audit row), then publish the
    identity outbox: the link's signal, or, for a task linked before, its signal if it still
    waits there."""
    from concord.normalization.identity_store import PostgresIdentityStore, pending_link

    record = cli_record(
        by=by, action="cli.identity.link", object_type="identity_review", object_id=task_id
    )
    async with pooled(dsn, 2) as pool:
        store = PostgresIdentityStore(pool)
        decision = await store.link(task_id, by=by, at=at, also=_audit_row(record))
        if decision.fact is None and not await pending_link(pool, task_id):
            return decision, 0  # nothing of this task's to publish
        try:
            published = await _publish_outbox(store, kafka)
        except KafkaError as error:
            raise LinkNotPublished(decision, error) from error
        return decision, published


async def keep_apart(dsn: str, task_id: str, *, by: str, at: datetime) -> KeepApartDecision:
    """Keep the task's two patients apart, with its audit row, in one transaction."""
    from concord.normalization.identity_store import PostgresIdentityStore

    record = cli_record(
        by=by, action="cli.identity.keep_apart", object_type="identity_review", object_id=task_id
    )
    async with pooled(dsn, 2) as pool:
        store = PostgresIdentityStore(pool)
        return await store.keep_apart(task_id, by=by, at=at, also=_audit_row(record))


async def _fetch_merges(dsn: str, limit: int, include_undone: bool) -> list[MergeEntry]:
    from concord.normalization.identity_store import list_merges

    async with pooled(dsn, 2) as pool:
        return await list_merges(pool, limit=limit, include_undone=include_undone)


async def _fetch_reviews(dsn: str, limit: int, include_decided: bool) -> list[ReviewEntry]:
    from concord.normalization.identity_store import list_reviews

    async with pooled(dsn, 2) as pool:
        return await list_reviews(pool, limit=limit, include_decided=include_decided)


# --- commands ---------------------------------------------------------------------------------


def _run_on_database(work: Coroutine[Any, Any, T]) -> T:
    """asyncio.run, with what goes wrong with the database said plainly."""
    try:
        result = asyncio.run(work)
    except OSError as error:  # refused, unreachable: the DSN holds a password, so not quoted
        raise click.ClickException(
            f"cannot reach the database ({type(error).__name__}): is the stack up "
            "(`concord stack status`)?"
        ) from None
    except (asyncpg.UndefinedTableError, asyncpg.UndefinedColumnError):
        raise click.ClickException(
            "the database lacks the identity tables: run `concord db migrate`"
        ) from None
    return result


def _os_user() -> str:
    try:
        return getpass.getuser()
    except (OSError, KeyError):  # no login name in the environment or the password database
        return "unknown"


@identity.command("reviews")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@click.option("--limit", type=click.IntRange(min=1), default=100, show_default=True)
@click.option("--all", "everything", is_flag=True, help="Decided tasks too (linked, kept apart).")
@state_dir_option
def identity_reviews(as_json: bool, limit: int, everything: bool, state_dir: Path) -> None:
    """Open identity review tasks, oldest first: the task id (for `link` and `keep-apart`),
    the provisional id a record got, the known patient it may be, the score and its breakdown
    (fields and levels, never values); with --all the decided ones too, with the decision."""
    dsn = database_dsn(client_settings(state_dir))
    tasks = _run_on_database(_fetch_reviews(dsn, limit, everything))
    for task in tasks:
        click.echo(orjson.dumps(review_json(task)).decode() if as_json else review_line(task))
    kind = "identity review tasks" if everything else "open identity review tasks"
    click.echo(f"{len(tasks)} {kind}", err=True)


@identity.command("link")
@click.argument("task_id")
@click.option("--by", default=None, help="Who decides, for the record. Default: the OS user.")
@state_dir_option
def identity_link(task_id: str, by: str | None, state_dir: Path) -> None:
    """Decide review task TASK_ID: the record and the candidate are one patient. The record's
    provisional id is merged into the candidate (`identity merges` lists it, `identity
    unmerge` undoes it), and a Patient.mergedFrom signal on concord.facts makes the conflicts
    stage move its facts to the candidate."""
    settings = client_settings(state_dir)
    dsn = database_dsn(settings)
    kafka = kafka_client_options(settings)
    from concord.normalization.identity_reviews import ReviewError

    work = link_and_publish(dsn, kafka, task_id, by=by or _os_user(), at=datetime.now(UTC))
    try:
        decision, published = _run_on_database(work)
    except ReviewError as error:
        raise click.ClickException(str(error)) from None
    except LinkNotPublished as error:
        done = error.decision
        said = (
            f"task {task_id} linked: {done.absorbed} merged into {done.survivor} (committed)"
            if done.changed
            else f"task {task_id} was already linked"
        )
        raise click.ClickException(
            f"{said}, but its signal could not be published to {FACTS} ({error}): it waits in "
            "the identity outbox. Running this command again, or starting the normalization "
            "worker, publishes it."
        ) from None
    click.echo(link_line(decision, published))


@identity.command("keep-apart")
@click.argument("task_id")
@click.option("--by", default=None, help="Who decides, for the record. Default: the OS user.")
@state_dir_option
def identity_keep_apart(task_id: str, by: str | None, state_dir: Path) -> None:
    """Decide review task TASK_ID: the record and the candidate are two people. The pair is
    recorded as never to be linked: matching will neither link them nor open another task
    for them. No facts move."""
    dsn = database_dsn(client_settings(state_dir))
    from concord.normalization.identity_reviews import ReviewError

    try:
        decision = _run_on_database(
            keep_apart(dsn, task_id, by=by or _os_user(), at=datetime.now(UTC))
        )
    except ReviewError as error:
        raise click.ClickException(str(error)) from None
    click.echo(keep_apart_line(decision))


@identity.command("merges")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@click.option("--limit", type=click.IntRange(min=1), default=100, show_default=True)
@click.option("--all", "everything", is_flag=True, help="Merges undone (unmerged) too.")
@state_dir_option
def identity_merges(as_json: bool, limit: int, everything: bool, state_dir: Path) -> None:
    """Patient merges, newest first: the absorbed enterprise id, the survivor, the source that
    said so, and what the merge moved (or, with --all, who undid it and when)."""
    dsn = database_dsn(client_settings(state_dir))
    merges = _run_on_database(_fetch_merges(dsn, limit, everything))
    for merge in merges:
        click.echo(orjson.dumps(merge_json(merge)).decode() if as_json else merge_line(merge))
    click.echo(f"{len(merges)} {'merges' if everything else 'active merges'}", err=True)


@identity.command("unmerge")
@click.argument("enterprise_id")
@click.option(
    "--reason",
    required=True,
    help="Why the merge was wrong (kept with the merge; not printed by `merges`).",
)
@click.option("--by", default=None, help="Who undoes it, for the record. Default: the OS user.")
@state_dir_option
def identity_unmerge(enterprise_id: str, reason: str, by: str | None, state_dir: Path) -> None:
    """Undo the merge of ENTERPRISE_ID into another patient, made in error: the local ids and
    source views it moved go back to ENTERPRISE_ID, and a Patient.unmergedFrom signal on
    concord.facts tells the conflicts stage to move the facts back."""
    if not reason.strip():
        raise click.UsageError("--reason must say why the merge was wrong")
    settings = client_settings(state_dir)
    dsn = database_dsn(settings)
    kafka = kafka_client_options(settings)
    from concord.normalization.identity_store import UnmergeError

    by = by or _os_user()
    # The audit trail must be able to hold the decision before it is made.
    cli_record(by=by, action="cli.identity.unmerge", object_type="patient", object_id=enterprise_id)
    work = unmerge_and_publish(
        dsn, kafka, enterprise_id, by=by, reason=reason, at=datetime.now(UTC)
    )
    try:
        outcome = _run_on_database(work)
    except UnmergeError as error:
        raise click.ClickException(str(error)) from None
    except NotPublished as error:
        done = (
            f"{enterprise_id} is a patient again ({_restored(error.done)}; committed)"
            if error.done is not None
            else f"{enterprise_id} was already unmerged"
        )
        raise click.ClickException(
            f"{done}, but its signal could not be published to {FACTS} ({error}): it waits "
            "in the identity outbox. Running this command again, or starting the "
            "normalization worker, publishes it."
        ) from None
    if outcome.done is None:
        click.echo(
            f"{enterprise_id} was already unmerged; its signal, waiting in the outbox, "
            f"{'was published' if outcome.published else 'is being published'} to {FACTS}"
        )
        return
    click.echo(unmerge_line(outcome.done, outcome.published))
