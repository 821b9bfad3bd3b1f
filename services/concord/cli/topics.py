"""`concord topics create`: every topic with its partition count, before any worker starts."""

from __future__ import annotations

import asyncio
from pathlib import Path

import click

from concord import topics
from concord.cli.options import client_settings, kafka_client_options, state_dir_option
from concord.cli.reachability import connections


@click.command("topics")
@click.argument("action", type=click.Choice(["create"]))
@state_dir_option
def topics_command(action: str, state_dir: Path) -> None:
    """Create every topic with its partition count (before any worker starts)."""
    from concord.stack.broker import ensure_topics

    settings = client_settings(state_dir)
    options = kafka_client_options(settings)
    with connections(settings, state_dir, broker=True):
        created = asyncio.run(
            ensure_topics(
                settings.bootstrap_servers,
                replication_factor=settings.kafka_replication_factor,
                client_options=options,
            )
        )
    click.echo(f"created {len(created)} topics; {len(topics.ALL_TOPICS)} expected exist")
