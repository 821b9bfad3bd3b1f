"""What every `concord` command group shares: where the local stack is, and the client settings
its stack.env gives."""

from __future__ import annotations

from pathlib import Path

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
