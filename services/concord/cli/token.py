"""`concord token issue --user NAME --role ROLE`: a bearer token for the local stack's review API.

Signed with the local stack's key (EC P-256, STATE_DIR/review-signing-key.pem, created 0600 on
first use, or CONCORD_LOCAL_KEY_PATH when that is set), for the audience and role claim the
review service reads (CONCORD_OIDC_AUDIENCE, CONCORD_OIDC_ROLE_CLAIM, from the environment or
the stack's stack.env). Only the token goes to stdout, so that `TOKEN=$(concord token issue
...)` works; one line on stderr says whose it is and when it expires. Hospitals do not use
this: their identity provider issues the tokens.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import click

from concord.cli.options import stack_env, state_dir_option
from concord.config import ReviewSettings, env_name, setting_source
from concord.review.access import Role

# As concord.review.auth has them; that module (PyJWT, cryptography) is loaded by the command
# that needs it, not by every `concord` command.
LOCAL_KEY_FILE = "review-signing-key.pem"

MAX_TTL = timedelta(days=7)
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_DURATION = re.compile(r"(\d+)([smhd])")


class Duration(click.ParamType):
    """A lifetime such as 90s, 30m, 8h, 1d or 1h30m."""

    name = "duration"

    def convert(
        self, value: object, param: click.Parameter | None, ctx: click.Context | None
    ) -> timedelta:
        if isinstance(value, timedelta):
            return value
        text = str(value).strip().lower()
        parts = _DURATION.findall(text)
        if not parts or "".join(n + u for n, u in parts) != text:
            self.fail(f"{value!r} is not a duration like 30m, 8h or 1d", param, ctx)
        ttl = timedelta(seconds=sum(int(n) * _UNITS[u] for n, u in parts))
        if ttl <= timedelta(0) or ttl > MAX_TTL:
            self.fail(f"{value!r}: a token lives between 1s and {MAX_TTL.days}d", param, ctx)
        return ttl


def _setting(field: str, state_dir: Path) -> str | None:
    """A review setting as the review service would read it: environment, then stack.env."""
    found = setting_source(env_name(ReviewSettings, field), stack_env(state_dir))
    return found[1] if found is not None and found[1].strip() else None


def key_path(state_dir: Path) -> Path:
    configured = _setting("local_key_path", state_dir)
    return Path(configured) if configured else state_dir / LOCAL_KEY_FILE


@click.group(name="token")
def token() -> None:
    """Bearer tokens for the local stack's review API."""


@token.command(name="issue")
@click.option("--user", required=True, help="Who the token is for (its `sub`).")
@click.option(
    "--role",
    required=True,
    type=click.Choice([str(role) for role in Role]),
    help="The Concord role the token carries.",
)
@click.option(
    "--ttl",
    type=Duration(),
    default="8h",
    show_default=True,
    help="How long the token is valid: 30m, 8h, 1d (at most 7d).",
)
@state_dir_option
def issue(user: str, role: str, ttl: timedelta, state_dir: Path) -> None:
    """Print a token signed with the local stack's key (created if there is none)."""
    if not user.strip() or any(ord(c) < 32 for c in user) or len(user) > 200:
        raise click.BadParameter(
            "a non-empty name, at most 200 characters, no control characters",
            param_hint="'--user'",
        )
    from concord.review.auth import (
        DEFAULT_AUDIENCE,
        DEFAULT_ROLE_CLAIM,
        LocalKeyError,
        LocalSigningKey,
    )

    path = key_path(state_dir)
    try:
        key, created = LocalSigningKey.load_or_create(path)
    except (LocalKeyError, OSError) as error:
        raise click.ClickException(str(error)) from None
    now = datetime.now(UTC).replace(microsecond=0)
    signed = key.issue(
        user,
        Role(role),
        ttl,
        audience=_setting("oidc_audience", state_dir) or DEFAULT_AUDIENCE,
        role_claim=_setting("oidc_role_claim", state_dir) or DEFAULT_ROLE_CLAIM,
        now=now,
    )
    click.echo(signed)
    made = f"; created the signing key {path}" if created else ""
    click.echo(
        f"token for {user} ({role}), expires {(now + ttl):%Y-%m-%d %H:%M:%S}Z{made}", err=True
    )
