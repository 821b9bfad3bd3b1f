"""Schema skew (issue 15, item 6): a worker newer than its database used to start, report
healthy and fail on its first batch. Now it compares the database's migrations with its own
before Faust starts: it refuses a database that lacks some (one line naming the fix, exit 1)
unless CONCORD_MIGRATE_ON_START lets it apply them, and refuses one migrated by a newer
release. Each test gets a database of its own on the session's PostgreSQL server, so it can
lack migrations or have unknown ones."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import faust
import pytest

from concord import worker
from concord.config import ConflictsSettings
from concord.runtime import startup
from concord.runtime.connection_errors import database_address
from concord.runtime.db import SchemaSkew, apply_migrations, migration_files, schema_skew
from concord.runtime.startup import StartRefused, check_schema
from concord.stack.postgres import PostgresInfo, create_database, drop_database, with_database
from concord.stack.processes import free_port

pytestmark = pytest.mark.integration

SHIPPED = [name for name, _ in migration_files()]
FROM_A_NEWER_RELEASE = "9999_from_a_newer_release.sql"


@pytest.fixture
def fresh_dsn(postgres: PostgresInfo) -> Iterator[str]:
    """A new, empty database on the session's server: no migration applied."""
    name = f"concord_skew_{uuid.uuid4().hex[:12]}"
    dsn = asyncio.run(create_database(postgres.dsn, name))
    yield dsn
    asyncio.run(drop_database(postgres.dsn, name))


async def _execute(dsn: str, sql: str, *args: Any) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(sql, *args)
    finally:
        await conn.close()


def _migrated(dsn: str) -> str:
    asyncio.run(apply_migrations(dsn))
    return dsn


def _newer(dsn: str) -> str:
    """The database as a newer release leaves it: a migration this code does not ship."""
    _migrated(dsn)
    asyncio.run(
        _execute(dsn, "INSERT INTO schema_migrations (name) VALUES ($1)", FROM_A_NEWER_RELEASE)
    )
    return dsn


def _settings(dsn: str, **overrides: Any) -> ConflictsSettings:
    return ConflictsSettings(database_url=dsn, retry_initial_seconds=0.01, **overrides)


def _missing_line(dsn: str) -> str:
    count = len(SHIPPED)
    return (
        f"the database at {database_address(dsn)} lacks {count} migrations of this release "
        f"(the latest: {SHIPPED[-1]}): run `concord db migrate`, or set "
        "CONCORD_MIGRATE_ON_START=true for the worker to apply them"
    )


def _unknown_line(dsn: str) -> str:
    return (
        f"the database at {database_address(dsn)} has 1 migration this release does not know "
        f"({FROM_A_NEWER_RELEASE}), applied by a newer release: run that release or a later "
        "one (migrations are not undone)"
    )


# --- the comparison ------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_the_skew_names_what_the_database_lacks_and_what_it_does_not_ship(
    fresh_dsn: str,
) -> None:
    assert await schema_skew(fresh_dsn) == SchemaSkew(tuple(SHIPPED), ())
    await apply_migrations(fresh_dsn)
    assert await schema_skew(fresh_dsn) == SchemaSkew((), ())
    await _execute(fresh_dsn, "DELETE FROM schema_migrations WHERE name = $1", SHIPPED[-1])
    await _execute(
        fresh_dsn, "INSERT INTO schema_migrations (name) VALUES ($1)", FROM_A_NEWER_RELEASE
    )
    assert await schema_skew(fresh_dsn) == SchemaSkew((SHIPPED[-1],), (FROM_A_NEWER_RELEASE,))


# --- the check, in process ---------------------------------------------------------------------


@pytest.mark.asyncio
async def test_a_database_without_this_release_s_migrations_is_refused(fresh_dsn: str) -> None:
    said: list[str] = []
    with pytest.raises(StartRefused) as refused:
        await check_schema(_settings(fresh_dsn), said.append)
    assert str(refused.value) == _missing_line(fresh_dsn)
    assert said == []
    assert await schema_skew(fresh_dsn) == SchemaSkew(tuple(SHIPPED), ())  # nothing applied


@pytest.mark.asyncio
async def test_with_migrate_on_start_the_worker_applies_them_and_goes_on(fresh_dsn: str) -> None:
    said: list[str] = []
    await check_schema(_settings(fresh_dsn, migrate_on_start=True), said.append)
    assert said == [f"applied {len(SHIPPED)} migrations ({', '.join(SHIPPED)})"]
    assert await schema_skew(fresh_dsn) == SchemaSkew((), ())


@pytest.mark.asyncio
async def test_workers_migrating_on_start_together_apply_each_migration_once(
    fresh_dsn: str,
) -> None:
    """The advisory lock in apply_migrations: a second worker waits, then finds nothing left."""
    said: list[str] = []
    settings = _settings(fresh_dsn, migrate_on_start=True)
    await asyncio.gather(*(check_schema(settings, said.append) for _ in range(3)))
    applied = [line for line in said if "none left" not in line]
    assert applied == [f"applied {len(SHIPPED)} migrations ({', '.join(SHIPPED)})"]
    assert await schema_skew(fresh_dsn) == SchemaSkew((), ())


@pytest.mark.asyncio
async def test_a_database_a_newer_release_migrated_is_refused_even_with_migrate_on_start(
    fresh_dsn: str,
) -> None:
    await asyncio.to_thread(_newer, fresh_dsn)
    for migrate in (False, True):
        with pytest.raises(StartRefused) as refused:
            await check_schema(_settings(fresh_dsn, migrate_on_start=migrate), print)
        assert str(refused.value) == _unknown_line(fresh_dsn)


@pytest.mark.asyncio
async def test_a_database_the_server_does_not_have_is_refused_not_waited_for(
    postgres: PostgresInfo,
) -> None:
    missing = with_database(postgres.dsn, "concord_no_such_database")
    with pytest.raises(StartRefused) as refused:
        await check_schema(_settings(missing), print)
    assert str(refused.value) == (
        f"cannot use PostgreSQL at {database_address(missing)} (CONCORD_DATABASE_URL): "
        'database "concord_no_such_database" does not exist'
    )


@pytest.mark.asyncio
async def test_an_unreachable_database_is_waited_for_with_a_line_each_try(
    fresh_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Refused twice (PostgreSQL not up yet), then there: the worker waits, saying why."""
    real = schema_skew
    tries = 0

    async def refused_twice(dsn: str, *, connect_timeout: float) -> SchemaSkew:
        nonlocal tries
        tries += 1
        if tries <= 2:
            raise ConnectionRefusedError(111, "Connect call failed")
        return await real(dsn, connect_timeout=connect_timeout)

    await apply_migrations(fresh_dsn)
    monkeypatch.setattr(startup, "schema_skew", refused_twice)
    said: list[str] = []
    await check_schema(_settings(fresh_dsn), said.append)
    assert tries == 3
    pattern = (
        rf"waits for PostgreSQL at {re.escape(database_address(fresh_dsn))} "
        r"\(CONCORD_DATABASE_URL\): connection refused; trying again in \d+\.\d s"
    )
    assert len(said) == 2
    assert all(re.fullmatch(pattern, line) for line in said), said


def test_the_worker_goes_on_to_start_faust_once_the_schema_is_this_release_s(
    fresh_dsn: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    started: list[str] = []

    class NoFaust:
        def __init__(self, app: Any, **_: Any) -> None:
            started.append(app.conf.id)

        def execute_from_commandline(self) -> None:
            started.append("executed")

    for key in list(os.environ):
        if key.upper().startswith("CONCORD_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("CONCORD_DATABASE_URL", _migrated(fresh_dsn))
    monkeypatch.setenv("CONCORD_DATA_DIR", str(tmp_path))
    monkeypatch.setattr(faust, "Worker", NoFaust)
    worker.main(["conflicts"])
    assert started == ["concord-conflicts-control", "executed"]


# --- the worker, as a process --------------------------------------------------------------------


def _worker(service: str, **settings: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("CONCORD_")}
    env.update(settings)
    return subprocess.run(
        [sys.executable, "-m", "concord.worker", service],
        env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip


def test_a_worker_newer_than_its_database_exits_with_one_line(fresh_dsn: str) -> None:
    """The failing test first: before the check, this worker started, reported healthy and
    crash-looped on its first batch."""
    done = _worker(
        "conflicts",
        CONCORD_DATABASE_URL=fresh_dsn,
        CONCORD_BOOTSTRAP_SERVERS=f"127.0.0.1:{free_port()}",
    )
    assert done.stderr == f"the conflicts worker does not start: {_missing_line(fresh_dsn)}\n"
    assert done.returncode == 1
    assert done.stdout == ""


def test_a_worker_older_than_its_database_exits_with_one_line(fresh_dsn: str) -> None:
    done = _worker(
        "alerting",
        CONCORD_DATABASE_URL=_newer(fresh_dsn),
        CONCORD_BOOTSTRAP_SERVERS=f"127.0.0.1:{free_port()}",
    )
    assert done.stderr == f"the alerting worker does not start: {_unknown_line(fresh_dsn)}\n"
    assert done.returncode == 1


def test_a_worker_told_to_migrate_on_start_migrates_and_goes_on(
    fresh_dsn: str, tmp_path: Path
) -> None:
    """Past the check it starts Faust, which here finds no broker: what follows is the broker's
    failure, not the schema's."""
    done = _worker(
        "conflicts",
        CONCORD_DATABASE_URL=fresh_dsn,
        CONCORD_MIGRATE_ON_START="true",
        CONCORD_BOOTSTRAP_SERVERS=f"127.0.0.1:{free_port()}",
        CONCORD_WEB_PORT=str(free_port()),
        CONCORD_DATA_DIR=str(tmp_path),
    )
    first, *rest = done.stderr.splitlines()
    assert first == f"the conflicts worker applied {len(SHIPPED)} migrations ({', '.join(SHIPPED)})"
    assert "does not start" not in done.stderr
    assert any("[^Worker]: Starting..." in line for line in rest), done.stderr[-2000:]
    assert asyncio.run(schema_skew(fresh_dsn)) == SchemaSkew((), ())


def test_a_worker_started_before_its_database_waits_saying_why(tmp_path: Path) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("CONCORD_")}
    env.update(
        CONCORD_DATABASE_URL=f"postgresql://concord:s3cret-pw@127.0.0.1:{port}/concord",
        CONCORD_RETRY_INITIAL_SECONDS="0.05",
        CONCORD_DATA_DIR=str(tmp_path),
    )
    process = subprocess.Popen(
        [sys.executable, "-m", "concord.worker", "normalization"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert process.stderr is not None
        lines = [process.stderr.readline() for _ in range(2)]
        assert process.poll() is None  # still waiting, not exited
    finally:
        process.terminate()
        process.wait(timeout=30)
    pattern = (
        rf"the normalization worker waits for PostgreSQL at 127\.0\.0\.1:{port} "
        r"\(CONCORD_DATABASE_URL\): connection refused; trying again in \d+\.\d s\n"
    )
    assert all(re.fullmatch(pattern, line) for line in lines), lines
