"""`concord identity reviews | merges | unmerge`: the patient identity index for operators.

Lines name enterprise ids, sources, counts and times, never demographics or local ids (MRNs).
An unmerge changes the index and writes its signal to the identity outbox in one transaction,
then publishes the outbox itself; if the broker cannot be reached, the change stays committed
and the signal waits: the normalization worker publishes it when it gets partitions, and
running the same `unmerge` again publishes it too.

Database and Kafka I/O is in plain async functions, formatting in pure ones; the click
commands only glue them together.
"""

from __future__ import annotations

import asyncio
import getpass
from collections.abc import Coroutine
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import asyncpg
import click
import orjson
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from concord.cli.options import (
    client_settings,
    database_dsn,
    kafka_client_options,
    state_dir_option,
)
from concord.runtime.db import pooled
from concord.runtime.reading import client_options
from concord.topics import FACTS

if TYPE_CHECKING:
    # The identity store imports the normalization core (terminology, units): loaded by the
    # commands that need it, not by every `concord` command.
    from concord.normalization.identity_store import MergeEntry, PostgresIdentityStore, Unmerge

T = TypeVar("T")


@click.group(name="identity")
def identity() -> None:
    """The patient identity index: uncertain matches waiting for a reviewer, and merges."""


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
            done = await store.unmerge(absorbed, by=by, reason=reason, at=at)
        except UnmergeError:
            if not await pending_unmerge(pool, absorbed):
                raise
            done = None
        try:
            published = await _publish_outbox(store, kafka)
        except KafkaError as error:
            raise NotPublished(done, error) from error
        return UnmergeOutcome(done, published)


async def _fetch_merges(dsn: str, limit: int, include_undone: bool) -> list[MergeEntry]:
    from concord.normalization.identity_store import list_merges

    async with pooled(dsn, 2) as pool:
        return await list_merges(pool, limit=limit, include_undone=include_undone)


async def _fetch_reviews(dsn: str, limit: int) -> list[Any]:
    async with pooled(dsn, 2) as pool:
        return list(
            await pool.fetch(
                "SELECT task_id, source, provisional_enterprise_id, candidate_enterprise_id, "
                "score, breakdown, created_at FROM identity_review_tasks WHERE status = 'OPEN' "
                "ORDER BY created_at, task_id LIMIT $1",
                limit,
            )
        )


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
@click.option("--limit", type=int, default=100, show_default=True)
@state_dir_option
def identity_reviews(as_json: bool, limit: int, state_dir: Path) -> None:
    """Open identity review tasks, oldest first: the provisional id a record got, the known
    patient it may be, the score and its breakdown (fields and levels, never values)."""
    dsn = database_dsn(client_settings(state_dir))
    rows = _run_on_database(_fetch_reviews(dsn, limit))
    for row in rows:
        breakdown = orjson.loads(row["breakdown"])
        if as_json:
            task = {k: row[k] for k in ("task_id", "source", "provisional_enterprise_id",
                                         "candidate_enterprise_id", "score")}  # fmt: skip
            task["created_at"] = row["created_at"].isoformat()
            task["breakdown"] = breakdown
            click.echo(orjson.dumps(task).decode())
            continue
        fields = " ".join(f"{w['field']}={w['level']}({w['weight']:+.1f})" for w in breakdown)
        click.echo(
            f"{row['created_at']:%Y-%m-%d %H:%M} {row['task_id'][:12]} {row['source']}: "
            f"{row['provisional_enterprise_id']} may be {row['candidate_enterprise_id']} "
            f"(score {row['score']:.1f}: {fields})"
        )
    click.echo(f"{len(rows)} open identity review tasks", err=True)


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

    work = unmerge_and_publish(
        dsn, kafka, enterprise_id, by=by or _os_user(), reason=reason, at=datetime.now(UTC)
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
