"""`concord db migrate`: the database migrations not yet applied."""

from __future__ import annotations

import asyncio
from pathlib import Path

import click

from concord.cli.options import client_settings, database_dsn, state_dir_option
from concord.cli.reachability import connections


@click.command("db")
@click.argument("action", type=click.Choice(["migrate"]))
@state_dir_option
def db_command(action: str, state_dir: Path) -> None:
    """Apply the database migrations not yet applied."""
    from concord.runtime.db import apply_migrations

    settings = client_settings(state_dir)
    dsn = database_dsn(settings)
    with connections(settings, state_dir, database=True):
        applied = asyncio.run(apply_migrations(dsn))
    click.echo(f"applied {len(applied)} migrations: {', '.join(applied) or 'none pending'}")
