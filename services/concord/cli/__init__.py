"""`concord`: publish EHR files, read alerts and dead letters, run the local stack and the demo.

One module per command or command group; this one only gathers them under `concord`."""

from __future__ import annotations

import click

from concord.cli import (
    alerts,
    audit,
    db,
    deadletters,
    demo,
    evaluate,
    identity,
    mllp,
    publish,
    stack,
    token,
    topics,
    warnings,
)
from concord.generate.command import generate


@click.group()
@click.version_option(package_name="concord")
def main() -> None:
    """Concord: tells clinical data teams when two EHR sources disagree about a patient."""


for _command in (
    publish.publish,
    mllp.mllp,
    alerts.alerts,
    topics.topics_command,
    db.db_command,
    demo.demo,
    stack.stack,
    deadletters.deadletter,
    warnings.warnings_group,
    generate,
    evaluate.evaluate,
    evaluate.evaluate_text,
    identity.identity,
    audit.audit,
    token.token,
):
    main.add_command(_command)
