"""`concord alerts list | resolve | follow`: the alerts stored, a reviewer's decision, and the
alerts as they fire."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import asyncpg
import click
import orjson

from concord import topics
from concord.cli.audit import cli_record, record_decision
from concord.cli.options import (
    client_settings,
    database_dsn,
    kafka_client_options,
    state_dir_option,
)
from concord.cli.reachability import connections
from concord.events.models import Alert

if TYPE_CHECKING:
    from concord.review.admin import SubscriptionFilter
from concord.runtime.reading import follow_alerts


@click.group()
def alerts() -> None:
    """Alerts: what is stored (list), what fires (follow), and a reviewer's decision
    (resolve)."""


@alerts.command("list")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@click.option("--status", type=click.Choice(["OPEN", "ACKNOWLEDGED", "RESOLVED", "DISMISSED"]))
@click.option("--limit", type=int, default=1000, show_default=True)
@state_dir_option
def list_alerts(as_json: bool, status: str | None, limit: int, state_dir: Path) -> None:
    """Print the alerts stored in PostgreSQL, oldest first."""
    settings = client_settings(state_dir)
    dsn = database_dsn(settings)
    with connections(settings, state_dir, database=True):
        records = asyncio.run(_fetch_alerts(dsn, status, limit))
    for alert in records:
        _print_alert(alert, as_json)


async def _fetch_alerts(dsn: str, status: str | None, limit: int) -> list[Alert]:
    from concord.alerting.store import list_alerts
    from concord.runtime.db import pooled

    async with pooled(dsn, 1) as pool:
        return [r.alert for r in await list_alerts(pool, status=status, limit=limit)]


def _print_alert(alert: Alert, as_json: bool) -> None:
    from concord.alerting.render import alert_json, alert_line

    if as_json:
        click.echo(orjson.dumps(alert_json(alert)).decode())
    else:
        click.echo(alert_line(alert))


@alerts.command("resolve")
@click.argument("alert_id")
@click.option(
    "--decision",
    type=click.Choice(["accept", "choose", "dismiss"]),
    required=True,
    help="accept the policy's proposal, choose another value (--value), or dismiss: not a "
    "real disagreement.",
)
@click.option("--value", "chosen_value", help="The value that should stand (with choose).")
@click.option("--by", required=True, help="Who decides (a user id), for the record.")
@state_dir_option
def resolve_alert(
    alert_id: str, decision: str, chosen_value: str | None, by: str, state_dir: Path
) -> None:
    """Decide an open conflict alert: the decision goes to concord.resolutions, the conflicts
    stage resolves the conflict (it stays resolved until a source says something new) and
    the alert follows."""
    from concord.conflicts.resolutions import NotResolvable, decide

    if (decision == "choose") != (chosen_value is not None):
        raise click.UsageError("--value goes with --decision choose, and only with it")
    settings = client_settings(state_dir)
    dsn = database_dsn(settings)
    kafka = kafka_client_options(settings)
    decisions = {"accept": "ACCEPTED_PROPOSAL", "choose": "CHOSE_VALUE", "dismiss": "DISMISSED"}
    # The audit row: the decision's code, never the value chosen. Checked before deciding.
    audit_row = cli_record(
        by=by,
        action="cli.alert.resolve",
        object_type="alert",
        object_id=alert_id,
        decision=decisions[decision],
    )
    try:
        with connections(settings, state_dir, broker=True, database=True):
            work = decide(
                dsn,
                kafka,
                alert_id,
                decisions[decision],  # type: ignore[arg-type]
                chosen_value=chosen_value,
                by=by,
                at=datetime.now(UTC),
            )
            resolution = asyncio.run(work)
            # The decision is only published (the conflicts stage applies it): its audit row
            # is appended once the broker acknowledged it, in a transaction of its own.
            detail = {**audit_row.detail, "resolution_id": resolution.resolution_id}
            audited = audit_row.model_copy(update={"detail": detail})
            try:
                asyncio.run(record_decision(dsn, audited))
            except (asyncpg.PostgresError, LookupError) as error:
                raise click.ClickException(
                    f"decision {resolution.resolution_id} on alert {alert_id} published to "
                    f"{topics.RESOLUTIONS}, but its audit row could not be written "
                    f"({type(error).__name__}; `concord db migrate`?)"
                ) from None
    except NotResolvable as error:
        raise click.ClickException(str(error)) from None
    click.echo(
        f"decision {resolution.resolution_id} on alert {alert_id} published to {topics.RESOLUTIONS}"
    )


@alerts.command("follow")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@click.option("--from-beginning", is_flag=True, help="Replay the topic from its start.")
@click.option(
    "--subscription",
    help="Only the alerts of this subscription (kinds, classes, severities, sources), as an "
    "administrator set it up in the review service.",
)
@state_dir_option
def follow(as_json: bool, from_beginning: bool, subscription: str | None, state_dir: Path) -> None:
    """Print alerts from concord.alerts as they are published, until Ctrl-C."""
    settings = client_settings(state_dir)
    kafka = kafka_client_options(settings)
    wanted = None
    if subscription is not None:
        with connections(settings, state_dir, database=True):
            wanted = asyncio.run(_subscription(database_dsn(settings), subscription))
        if wanted is None:
            raise click.ClickException(
                f"no subscription {subscription}: an administrator creates it "
                "(review API, PUT /api/v1/admin/subscriptions/NAME)"
            )

    def show(alert: Alert) -> None:
        from concord.review.admin import follows

        if wanted is None or follows(wanted, alert):
            _print_alert(alert, as_json)

    try:
        with connections(settings, state_dir, broker=True):
            asyncio.run(follow_alerts(kafka, show, from_beginning=from_beginning))
    except KeyboardInterrupt:
        pass


async def _subscription(dsn: str, name: str) -> SubscriptionFilter | None:
    from concord.review.admin import load_subscription
    from concord.runtime.db import pooled

    async with pooled(dsn, 1) as pool:
        return await load_subscription(pool, name)
