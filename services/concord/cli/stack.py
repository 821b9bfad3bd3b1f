"""`concord stack up | status | down`: the local stack from the command line."""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

import click

from concord.cli.options import state_dir_option
from concord.stack.stack import (
    ALL_SERVICES,
    StackError,
    load_state,
    stack_status,
    start_stack,
    stop_stack,
)


@click.group(name="stack")
def stack() -> None:
    """Run the local stack: Tansu broker, PostgreSQL and the four workers."""


def _replicas(
    ctx: click.Context, param: click.Parameter, values: tuple[str, ...]
) -> dict[str, int]:
    """SERVICE=N pairs as a dict, or a usage error naming the bad one."""
    replicas: dict[str, int] = {}
    for value in values:
        service, sep, count = value.partition("=")
        if not sep or service not in ALL_SERVICES or not count.isdigit() or int(count) < 1:
            raise click.BadParameter(
                f"{value!r}: expected SERVICE=N with SERVICE one of {', '.join(ALL_SERVICES)} "
                "and N at least 1",
                ctx=ctx,
                param=param,
            )
        replicas[service] = int(count)
    return replicas


@stack.command()
@state_dir_option
@click.option(
    "--timeout", type=float, default=60.0, show_default=True,
    help="Seconds to wait for the workers to become healthy.",
)  # fmt: skip
@click.option(
    "--replicas", "replicas", metavar="SERVICE=N", multiple=True, callback=_replicas,
    help="Run N workers of SERVICE (one by default), sharing its partitions; repeatable, "
    "e.g. --replicas conflicts=2. The further workers are named SERVICE-2, SERVICE-3...",
)  # fmt: skip
def up(state_dir: Path, timeout: float, replicas: dict[str, int]) -> None:
    """Start broker, PostgreSQL and workers; return once all are ready."""
    try:
        asyncio.run(
            start_stack(
                state_dir,
                workers=ALL_SERVICES,
                progress=click.echo,
                startup_timeout=timeout,
                replicas=replicas,
            )
        )
    except (StackError, RuntimeError, TimeoutError) as error:
        raise click.ClickException(str(error)) from error


@stack.command()
@state_dir_option
def status(state_dir: Path) -> None:
    """Show each process of the stack; exit 1 unless all are up (and workers healthy)."""
    statuses = stack_status(state_dir)
    if not statuses:
        click.echo(f"no stack recorded in {state_dir}")
        sys.exit(1)
    for item in statuses:
        state = "alive" if item.alive else "DEAD"
        health = "" if item.healthy is None else ("  health ok" if item.healthy else "  UNHEALTHY")
        click.echo(f"{item.name:<16} pid {item.pid:<8} {state}{health}")
    info = load_state(state_dir)
    if info is not None and info.review_url is not None:
        click.echo(f"review service at {info.review_url} (API /api/v1, web page /ui)")
    sys.exit(0 if all(item.ok for item in statuses) else 1)


@stack.command()
@state_dir_option
def down(state_dir: Path) -> None:
    """Stop everything `up` started (workers first), escalating to SIGKILL after a grace."""
    if load_state(state_dir) is None:
        click.echo(f"no stack recorded in {state_dir}")
        return
    started = time.monotonic()
    try:
        results = stop_stack(state_dir)
    except RuntimeError as error:
        raise click.ClickException(str(error)) from error
    for result in results:
        click.echo(f"{result.name:<16} pid {result.pid:<8} {result.outcome}")
    click.echo(f"stack down in {time.monotonic() - started:.1f}s")
