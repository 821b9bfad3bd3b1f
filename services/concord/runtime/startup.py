"""What a worker checks before it consumes anything: that PostgreSQL answers and that its schema
is the one this release's code was written for. Without the check, a worker newer than its
database reported healthy and failed on its first batch, restarting onto the same batch for
ever (issue 15, item 6).

worker.main() runs it before Faust starts, so a refusal is one line on stderr and an exit
code, not a crashed task inside a running app."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Protocol

from pydantic import SecretStr

from concord.config import DatabaseWorkerSettings, env_name
from concord.runtime.connection_errors import DATABASE_SETTING, database_address, database_reason
from concord.runtime.db import SchemaSkew, apply_migrations, schema_skew
from concord.runtime.faults import Backoff, is_transient

MIGRATE_SETTING = env_name(DatabaseWorkerSettings, "migrate_on_start")
# One connection attempt: a closed port is refused at once, a host that drops packets is not.
CONNECT_TIMEOUT_SECONDS = 10.0


class SchemaCheckSettings(Protocol):
    """What the check reads: a worker's settings have it, and the review service makes one."""

    @property
    def database_url(self) -> SecretStr: ...
    @property
    def retry_initial_seconds(self) -> float: ...
    @property
    def retry_max_seconds(self) -> float: ...
    @property
    def migrate_on_start(self) -> bool: ...


class StartRefused(Exception):
    """The worker must not start; the message says why and what to do, in one line."""


async def check_schema(settings: SchemaCheckSettings, say: Callable[[str], None]) -> None:
    """Return once the database has exactly this release's migrations (applying the missing
    ones first when `migrate_on_start`); raise StartRefused otherwise. Waits, with backoff,
    while PostgreSQL cannot be reached, telling `say` each time why."""
    dsn = settings.database_url.get_secret_value()
    skew = await _wait_for_database(dsn, settings, say)
    if skew.unknown:
        raise StartRefused(unknown_line(skew, database_address(dsn)))
    if not skew.missing:
        return
    if not settings.migrate_on_start:
        raise StartRefused(missing_line(skew, database_address(dsn)))
    # Another worker starting now may apply some first: the lock makes it one at a time, and
    # each applies only what is still missing.
    applied = await apply_migrations(dsn)
    say(f"applied {len(applied)} migrations ({', '.join(applied) or 'none left to apply'})")


async def _wait_for_database(
    dsn: str, settings: SchemaCheckSettings, say: Callable[[str], None]
) -> SchemaSkew:
    # A worker started before its database (a host booting, a compose project without
    # depends_on) waits rather than exits: a restart loop would only wait less visibly.
    backoff = Backoff(settings.retry_initial_seconds, settings.retry_max_seconds)
    address = database_address(dsn)
    while True:
        try:
            return await schema_skew(dsn, connect_timeout=CONNECT_TIMEOUT_SECONDS)
        except Exception as error:  # classified below; anything unforeseen refuses
            reason = database_reason(error, dsn, CONNECT_TIMEOUT_SECONDS)
            if not worth_waiting(error):
                raise StartRefused(
                    f"cannot use PostgreSQL at {address} ({DATABASE_SETTING}): {reason}"
                ) from None
            delay = backoff.next_delay()
            say(
                f"waits for PostgreSQL at {address} ({DATABASE_SETTING}): {reason}; "
                f"trying again in {delay:.1f} s"
            )
            await asyncio.sleep(delay)


def worth_waiting(error: BaseException) -> bool:
    """Whether PostgreSQL may accept the same connection later: refused, unreachable, starting
    up, out of connections. A bad DSN, a wrong password or a missing database will not mend
    by waiting."""
    if isinstance(error, ValueError):  # asyncpg's ClientConfigurationError (a bad DSN) is one
        return False
    return is_transient(error)


def missing_line(skew: SchemaSkew, address: str) -> str:
    count = len(skew.missing)
    return (
        f"the database at {address} lacks {count} migration{'s' if count > 1 else ''} of this "
        f"release (the latest: {skew.missing[-1]}): run `concord db migrate`, or set "
        f"{MIGRATE_SETTING}=true for the worker to apply them"
    )


def unknown_line(skew: SchemaSkew, address: str) -> str:
    count = len(skew.unknown)
    return (
        f"the database at {address} has {count} migration{'s' if count > 1 else ''} this "
        f"release does not know ({', '.join(skew.unknown)}), applied by a newer release: run "
        "that release or a later one (migrations are not undone)"
    )
