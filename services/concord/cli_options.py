"""What every `concord` command group shares: where the local stack is, and the client settings
its stack.env gives."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from concord.config import DEFAULT_STATE_DIR, ClientSettings

state_dir_option = click.option(
    "--state-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=DEFAULT_STATE_DIR,
    show_default=True,
    help="The local stack's folder; its stack.env says where the broker and database are.",
)


def client_settings(state_dir: Path) -> ClientSettings:
    """CONCORD_* variables win; the stack's stack.env fills in the rest."""
    env_file = state_dir / "stack.env"
    return ClientSettings(_env_file=env_file if env_file.is_file() else None)


def database_dsn(settings: ClientSettings) -> str:
    """The stack's PostgreSQL DSN, or a clear error where there is none."""
    if settings.database_url is None:
        raise click.ClickException(
            "no database: set CONCORD_DATABASE_URL or run `concord stack up` first"
        )
    return settings.database_url.get_secret_value()


def kafka_client_options(settings: ClientSettings) -> dict[str, Any]:
    """aiokafka options, or a clear error where they cannot be used (SASL asked for without
    its settings)."""
    try:
        return settings.kafka_options()
    except ValueError as error:
        raise click.ClickException(str(error)) from None
