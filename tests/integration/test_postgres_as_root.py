"""The embedded PostgreSQL started as root from a private directory (mode 0700: root's home,
what `mktemp -d` makes), as containers and CI run it: it must start there without loosening
any directory's permissions, and say clearly when it cannot."""

from __future__ import annotations

import asyncio
import os
import pwd
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest

from concord.stack import postgres
from concord.stack.postgres import SYSTEM_USER, start_postgres
from concord.stack.processes import stop_process

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="NOT RUN: only root runs the server as another"),
]


@pytest.fixture
def private_dir() -> Iterator[Path]:
    """A fresh directory only root may enter, as `mktemp -d` makes."""
    with tempfile.TemporaryDirectory(prefix="concord-private-") as name:
        path = Path(name)
        path.chmod(0o700)
        yield path


def _modes(path: Path) -> dict[Path, int]:
    return {p: stat.S_IMODE(p.stat().st_mode) for p in [path, *path.parents]}


async def _current_user(dsn: str) -> str:
    conn = await asyncpg.connect(dsn)
    try:
        return str(await conn.fetchval("SELECT current_user"))
    finally:
        await conn.close()


def _start_query_stop(state_dir: Path) -> list[str]:
    """Start the server in `state_dir`, connect as its superuser, stop it; its argv."""
    info = asyncio.run(start_postgres(state_dir))
    assert info.record is not None
    try:
        assert asyncio.run(_current_user(info.dsn)) == "postgres"
    finally:
        stop_process(info.record)
    return info.record.argv


def test_root_starts_postgres_inside_a_private_directory(private_dir: Path) -> None:
    state_dir = private_dir / "checkout" / ".concord"
    state_dir.mkdir(parents=True)
    before = _modes(state_dir)
    _start_query_stop(state_dir)
    assert _modes(state_dir) == before  # no parent was opened up
    assert stat.S_IMODE(private_dir.stat().st_mode) == 0o700


def test_without_user_namespaces_the_system_user_runs_a_copy_of_the_binaries(
    private_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A container whose seccomp profile refuses user namespaces: `concord_pg` runs the server
    from binaries copied under the state dir, which it can reach."""
    monkeypatch.setattr(postgres, "_namespace_prefix", lambda uid, gid: ())
    reachable = private_dir / "shared"
    reachable.mkdir(mode=0o755)
    private_dir.chmod(0o711)  # our own temporary directory: traversable, not listable
    state_dir = reachable / "state"
    argv = _start_query_stop(state_dir)
    assert argv[0].startswith(str(state_dir / "postgres-server"))
    pgdata = state_dir / "pgdata"
    assert pgdata.stat().st_uid == pwd.getpwnam(SYSTEM_USER).pw_uid


def test_without_user_namespaces_a_private_state_dir_is_a_clear_error(
    private_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(postgres, "_namespace_prefix", lambda uid, gid: ())
    state_dir = private_dir / "state"
    with pytest.raises(RuntimeError) as caught:
        asyncio.run(start_postgres(state_dir))
    message = str(caught.value)
    assert f"the system user {SYSTEM_USER}, which cannot reach {state_dir}" in message
    assert "CONCORD_DATABASE_URL" in message
    assert stat.S_IMODE(private_dir.stat().st_mode) == 0o700
