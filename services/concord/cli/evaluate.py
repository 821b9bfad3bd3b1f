"""`concord evaluate`: a generated set through the running stack, scored per kind.

Publishes each source file of a folder written by `concord generate`, waits until the
workers have consumed it all and gone quiet, and the conflicts stage holds nothing back
(suppress_for) and has published everything, reads every event on concord.conflicts, and
prints precision and recall per kind of planted disagreement and stale record
(conflicts/evaluation.py says how each is counted).
"""

from __future__ import annotations

import asyncio
import http.client
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click
import orjson

from concord import topics
from concord.cli.options import (
    client_settings,
    database_dsn,
    kafka_client_options,
    state_dir_option,
)
from concord.cli.reachability import connections
from concord.conflicts.evaluation import ConflictScores, score
from concord.events import codec
from concord.runtime.db import pooled
from concord.runtime.reading import read_topic
from concord.stack.processes import metric_samples
from concord.stack.stack import load_state

ANSWER_KEY = "answer_key.json"
CONSUMED = "concord_events_consumed_total"
# Longer than the conflicts stage's timer tick (5 s): a stale record due on arrival, or a
# hold just ended, is raised by the next tick at the latest.
DEFAULT_QUIET_SECONDS = 8.0

Progress = Callable[[str], None]


def consumed_by_worker(ports: Mapping[str, int]) -> dict[str, float]:
    """Each worker's records consumed so far (its concord_events_consumed_total, summed)."""
    totals: dict[str, float] = {}
    for name, port in ports.items():
        try:
            samples = metric_samples(port, timeout=2)
        except (OSError, http.client.HTTPException):
            continue  # a worker restarting: the next poll sees it again
        totals[name] = sum(s.value for s in samples if s.name == CONSUMED)
    return totals


_WAITING = "SELECT (SELECT count(*) FROM held_records) + (SELECT count(*) FROM outbox)"


async def waiting_in_database(dsn: str) -> int:
    """Records the conflicts stage holds (suppress_for) or has not published yet (outbox)."""
    async with pooled(dsn, 1) as pool:
        return int(await pool.fetchval(_WAITING))


async def settle(
    ports: Mapping[str, int],
    before: Mapping[str, float],
    published: int,
    *,
    dsn: str,
    quiet_seconds: float,
    settle_within: float,
    progress: Progress,
) -> None:
    """Returns once ingestion has consumed what was published, nothing is held or waiting in
    an outbox, and no worker has consumed anything for quiet_seconds."""
    started = last_change = time.monotonic()
    last: tuple[dict[str, float], int] = ({}, -1)
    while True:
        now = time.monotonic()
        totals = await asyncio.to_thread(consumed_by_worker, ports)
        waiting = await waiting_in_database(dsn)
        if (totals, waiting) != last:
            last, last_change = (totals, waiting), now
            moved = {n: int(totals.get(n, 0) - before.get(n, 0)) for n in sorted(ports)}
            progress(
                "consumed since publishing: "
                + ", ".join(f"{n} {c}" for n, c in moved.items())
                + f"; held or unpublished: {waiting}"
            )
        ingested = totals.get("ingestion", 0) - before.get("ingestion", 0)
        if ingested >= published and not waiting and now - last_change >= quiet_seconds:
            return
        if now - started > settle_within:
            raise click.ClickException(
                f"the stack did not settle within {settle_within:.0f} s (ingestion consumed "
                f"{ingested:.0f} of {published} events; {waiting} records held or "
                "unpublished): is every worker up? (`concord stack status`)"
            )
        await asyncio.sleep(1.0)


async def run(
    folder: Path,
    kafka: str | dict[str, Any],
    ports: Mapping[str, int],
    *,
    dsn: str,
    quiet_seconds: float,
    settle_within: float,
    progress: Progress,
) -> ConflictScores:
    from concord.publisher import publish_files

    key = orjson.loads((folder / ANSWER_KEY).read_bytes())
    before = await asyncio.to_thread(consumed_by_worker, ports)
    started = datetime.now(UTC)
    published = 0
    for source in key["sources"]:
        path = folder / source["file"]
        published += await publish_files(kafka, source["name"], [path])
        progress(f"published {path.name} as {source['name']} ({published} events in all)")
    await settle(
        ports,
        before,
        published,
        dsn=dsn,
        quiet_seconds=quiet_seconds,
        settle_within=settle_within,
        progress=progress,
    )
    records = await read_topic(kafka, topics.CONFLICTS)
    finished = datetime.now(UTC)
    events = [codec.CONFLICT_EVENT.decode(record.value) for record in records]
    progress(f"read {len(events)} events from {topics.CONFLICTS}")
    return score(key, events, started=started, finished=finished)


@click.command("evaluate")
@click.argument(
    "folder", type=click.Path(exists=True, file_okay=False, path_type=Path), metavar="SET"
)
@click.option(
    "--quiet-seconds",
    type=click.FloatRange(min=1.0),
    default=DEFAULT_QUIET_SECONDS,
    show_default=True,
    help="How long every worker must have consumed nothing before the events are read.",
)
@click.option(
    "--timeout",
    type=click.FloatRange(min=1.0),
    default=1800.0,
    show_default=True,
    help="Give up when the stack has not settled after this many seconds.",
)
@state_dir_option
def evaluate(folder: Path, quiet_seconds: float, timeout: float, state_dir: Path) -> None:
    """Publish a set written by `concord generate` to the running local stack and print
    precision and recall per kind of planted disagreement and stale record. Exits 1 unless
    every kind scores 1.00.

    Give each set a stack of its own (`concord stack down`, remove the state folder, `up`):
    ingestion drops what it has seen, and two sets reuse record ids."""
    if not (folder / ANSWER_KEY).is_file():
        raise click.UsageError(f"{folder} holds no {ANSWER_KEY}: write one with concord generate")
    stack = load_state(state_dir)
    if stack is None:
        raise click.ClickException(
            f"no local stack in {state_dir}: start one with `concord stack up`"
        )
    ports = {name: w.port for name, w in stack.workers.items() if w.port is not None}
    settings = client_settings(state_dir)
    kafka, dsn = kafka_client_options(settings), database_dsn(settings)
    # Both checked before anything is published: a set half published cannot be scored.
    with connections(settings, state_dir, broker=True, database=True):
        scores = asyncio.run(
            run(
                folder,
                kafka,
                ports,
                dsn=dsn,
                quiet_seconds=quiet_seconds,
                settle_within=timeout,
                progress=lambda line: click.echo(f"evaluate: {line}", err=True),
            )
        )
    click.echo(scores.report())
    if not scores.perfect:
        raise SystemExit(1)
