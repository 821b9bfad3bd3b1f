"""What every `concord` command shares: where the local stack is, and the client settings its
stack.env gives, with one line, not a traceback, when a setting is bad."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from concord.config import (
    DEFAULT_STATE_DIR,
    ENV_FILE,
    EXAMPLE_DSN,
    ClientSettings,
    SettingsProblem,
    env_name,
    load_settings,
)

BROKER_SETTING = env_name(ClientSettings, "bootstrap_servers")
DATABASE_SETTING = env_name(ClientSettings, "database_url")

state_dir_option = click.option(
    "--state-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=DEFAULT_STATE_DIR,
    show_default=True,
    help="The local stack's folder; its stack.env says where the broker and database are.",
)


class ConfigurationError(click.ClickException):
    """A bad or missing CONCORD_* setting: one line per variable; exits 2, like a usage error."""

    exit_code = 2


def stack_env(state_dir: Path) -> Path | None:
    """The state folder's stack.env, if `concord stack up` wrote one."""
    path = state_dir / ENV_FILE
    return path if path.is_file() else None


def client_settings(state_dir: Path) -> ClientSettings:
    """CONCORD_* variables win; the stack's stack.env fills in the rest."""
    try:
        return load_settings(ClientSettings, env_file=stack_env(state_dir))
    except SettingsProblem as problem:
        raise ConfigurationError(str(problem)) from None


def database_dsn(settings: ClientSettings) -> str:
    """The stack's PostgreSQL DSN, or a clear error where there is none."""
    if settings.database_url is None:
        raise ConfigurationError(
            f"{DATABASE_SETTING}: not set (e.g. {DATABASE_SETTING}={EXAMPLE_DSN}); "
            f"`concord stack up` writes it to the state folder's {ENV_FILE}"
        )
    return settings.database_url.get_secret_value()


def kafka_client_options(settings: ClientSettings) -> dict[str, Any]:
    """aiokafka options, or a clear error where they cannot be used."""
    try:
        return settings.kafka_options()
    except ValueError as error:
        raise ConfigurationError(str(error)) from None
