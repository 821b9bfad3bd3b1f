"""`concord demo`: the command; the demo itself is concord.demo.run."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import click

from concord.config import DEFAULT_STATE_DIR


@click.command()
@click.option(
    "--state-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=DEFAULT_STATE_DIR / "demo",
    show_default=True,
    help="The demo's own stack folder (emptied at start).",
)
@click.option("--exit-after-check", is_flag=True, help="Stop after the checks (for scripts).")
def demo(state_dir: Path, exit_after_check: bool) -> None:
    """Run the pipeline on the local stack with the sample population; Ctrl-C stops it."""
    from concord.demo.run import run_demo
    from concord.stack.stack import StackError

    try:
        checks = asyncio.run(
            run_demo(state_dir, follow_until_interrupted=not exit_after_check, echo=click.echo)
        )
    except (KeyboardInterrupt, asyncio.CancelledError):
        return
    except (StackError, RuntimeError, TimeoutError) as error:  # the stack did not start
        raise click.ClickException(str(error)) from None
    if not all(check.ok for check in checks):
        sys.exit(1)
