"""Ingestion's de-duplication window in PostgreSQL (issue 15, items 7 and 8): versions remembered
with the record ids (contents) they were emitted under, rows from before contents were kept,
and a prune that forgets everything older than the window in short chunks."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from builders import raw
from concord.config import IngestionSettings
from concord.events import codec
from concord.ingestion.app import PRUNE_CHUNK_ROWS, IngestionStage
from concord.ingestion.dedupe import PostgresSeenVersions
from concord.ingestion.ports import ANY_CONTENT
from concord.runtime.batch import Outbound, run_batch
from concord.topics import INGESTED, RAW_HL7V2

WINDOW = timedelta(days=30)


@pytest.mark.asyncio
async def test_a_version_is_remembered_with_each_content_it_was_emitted_under(
    pool: asyncpg.Pool,
) -> None:
    seen = PostgresSeenVersions(pool)
    key, other = f"key-{uuid.uuid4().hex}", f"key-{uuid.uuid4().hex}"
    assert await seen.emitted([key, other]) == {}
    await seen.remember([(key, "id-1", "ehr-a"), (key, "id-2", "ehr-a")])
    await seen.remember([(key, "id-1", "ehr-a")])  # remembering twice is harmless
    assert await seen.emitted([key, other]) == {key: {"id-1", "id-2"}}
    assert await seen.emitted([]) == {}


@pytest.mark.asyncio
async def test_a_row_written_by_the_previous_release_stands_for_any_content(
    pool: asyncpg.Pool,
) -> None:
    """Migration 0014 leaves the previous release's rows, and its workers' inserts during a
    rolling upgrade, without a record id: the version is a repeat whatever its content."""
    key = f"key-{uuid.uuid4().hex}"
    await pool.execute(
        "INSERT INTO ingested_versions (record_id, source_system) VALUES ($1, 'ehr-a') "
        "ON CONFLICT DO NOTHING",
        key,
    )
    assert await PostgresSeenVersions(pool).emitted([key]) == {key: {ANY_CONTENT}}


def _adt(mrn: str, family: str, control: str) -> bytes:
    return (
        f"MSH|^~\\&|LAB|GH|CONCORD|GH|20240301090000-0500||ADT^A08^ADT_A01|{control}|P|2.5\r"
        f"EVN|A08|20240301090000-0500\rPID|1||{mrn}^^^GH^MR||{family}^Jo||19700101|F\r"
    ).encode()


@pytest.mark.asyncio
async def test_a_reused_control_id_is_ingested_by_a_stage_on_postgres(pool: asyncpg.Pool) -> None:
    """The stage against the real window, across a restart: the second content under a control
    id is emitted once, and each content sent again is dropped."""
    source = f"lab-{uuid.uuid4().hex[:8]}".encode()
    control = f"C-{uuid.uuid4().hex[:8]}"
    first, reused = _adt("M-1", "Doe", control), _adt("M-2", "Roe", control)

    def stage() -> IngestionStage:
        settings = IngestionSettings(database_url="postgresql://unused@127.0.0.1:1/none")
        return IngestionStage(settings, PostgresSeenVersions(pool))

    async def ingested(batch: list[bytes]) -> list[str]:
        headers = (("source", source),)
        events = [raw(v, topic=RAW_HL7V2, offset=n, headers=headers) for n, v in enumerate(batch)]
        out = await run_batch(stage(), events)
        records = [
            codec.INGESTED_RECORD.decode(r.value) for r in out.pending if r.topic == INGESTED
        ]
        return [record.record_id for record in records]

    [one] = await ingested([first])
    [two] = await ingested([reused, first])
    assert two != one
    assert await ingested([first, reused]) == []
    rows = await pool.fetchval(
        "SELECT count(*) FROM ingested_versions WHERE source_system = $1", source.decode()
    )
    assert rows == 2  # one version key, two contents


@pytest.mark.asyncio
async def test_a_prune_forgets_what_is_older_than_the_window_in_chunks(pool: asyncpg.Pool) -> None:
    seen = PostgresSeenVersions(pool)
    tag = uuid.uuid4().hex
    old = PRUNE_CHUNK_ROWS * 2 + 10
    await pool.execute(
        "INSERT INTO ingested_versions (record_id, emitted_id, source_system, first_seen) "
        "SELECT $1 || i, 'id', 'ehr-prune', now() - interval '40 days' "
        "FROM generate_series(1, $2) i",
        f"old-{tag}-",
        old,
    )
    await seen.remember([(f"new-{tag}", "id", "ehr-prune")])
    before = datetime.now(UTC) - WINDOW
    assert await seen.prune(before, 1000) == 1000  # one statement deletes at most its limit

    # The stage's tick goes on, chunk after chunk, until nothing older than the window is left.
    settings = IngestionSettings(database_url="postgresql://unused@127.0.0.1:1/none")
    stage = IngestionStage(settings, seen)
    await stage.on_tick(set(), Outbound(stage.stage))
    left = await pool.fetchval(
        "SELECT count(*) FROM ingested_versions WHERE first_seen < now() - interval '30 days'"
    )
    assert left == 0
    assert await seen.emitted([f"new-{tag}"]) == {f"new-{tag}": {"id"}}
