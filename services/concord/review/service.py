"""The review service's process (`python -m concord.review`): settings, PostgreSQL, the Kafka
producer for decisions, the API on uvicorn (and /metrics), and three timers: the outbox's
left-behind rows, the audit trail's anchor and the gauges' refresh.

Before it serves, it checks that the database's migrations are this release's (as the workers
do), so an old database is refused in one line rather than failing on its first request."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import asyncpg
import uvicorn
from aiokafka import AIOKafkaProducer
from fastapi import FastAPI
from pydantic import SecretStr

from concord.config import ReviewSettings, SettingsProblem, load_settings
from concord.normalization.identity_store import PostgresIdentityStore
from concord.review.api import Authenticator, RateLimit, create_app
from concord.review.audit_store import PostgresAuditTrail, publish_anchor, read_anchors
from concord.review.audit_view import AnchorReader, AuditView
from concord.review.auth import LocalKeyError, TokenVerifier, VerifierConfigError
from concord.review.handlers import AlertReview
from concord.review.identity import IdentityReview
from concord.review.metrics import add_metrics_route
from concord.review.oidc import OidcSignIn
from concord.review.ops import REFRESH_SECONDS, MetricsRefresher
from concord.review.ratelimit import PrincipalRateLimit
from concord.runtime.batch import Producer
from concord.runtime.db import create_pool
from concord.runtime.ports import LEFT_BEHIND_SECONDS
from concord.runtime.startup import StartRefused, check_schema

log = logging.getLogger("concord.review")
COMMAND_TIMEOUT_SECONDS = 30.0
OUTBOX_SWEEP_SECONDS = 30.0


@dataclass(frozen=True)
class _SchemaCheck:
    """The review service never migrates: the workers (or `concord db migrate`) do."""

    database_url: SecretStr
    retry_initial_seconds: float = 1.0
    retry_max_seconds: float = 30.0
    migrate_on_start: bool = False


async def _every(seconds: float, work: Callable[[], Awaitable[object]], what: str) -> None:
    """`work` at once, then every `seconds`."""
    while True:
        try:
            await work()
        except Exception as error:  # a timer's failure waits for its next turn
            # The type only: asyncpg's and aiokafka's messages can quote values.
            log.warning(
                "%s failed (%s); trying again in %.0f s", what, type(error).__name__, seconds
            )
        await asyncio.sleep(seconds)


def compose_app(
    pool: asyncpg.Pool,
    producer: Producer,
    verifier: Authenticator,
    rate_limit: RateLimit,
    *,
    anchors: AnchorReader | None = None,
    oidc: OidcSignIn | None = None,
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> FastAPI:
    """The API and the web page over a pool and a producer, each part wired once: the
    service's and the tests' app alike. Decisions are published from their outboxes right
    after their commit. `clock`: every use case's (tests fix it)."""
    trail = PostgresAuditTrail()
    review = AlertReview(
        pool, trail, published=lambda: review.store.outbox.drain(producer), clock=clock
    )
    identity_store = PostgresIdentityStore(pool)
    identities = IdentityReview(
        pool,
        identity_store,
        trail,
        published=lambda: identity_store.outbox.drain(producer),
        clock=clock,
    )
    app = create_app(
        review, identities, verifier, rate_limit, AuditView(pool, trail, anchors=anchors)
    )
    app.state.oidc = oidc  # the web page's "Sign in with" the identity provider
    return app


@contextlib.asynccontextmanager
async def running(
    settings: ReviewSettings, verifier: TokenVerifier, oidc: OidcSignIn | None = None
) -> AsyncIterator[uvicorn.Server]:
    """The service's parts, started; the server not yet serving. `oidc`: the web page's
    sign-in with the identity provider (None: the page takes a pasted token)."""
    pool = await create_pool(
        settings.database_url.get_secret_value(),
        settings.database_pool_size,
        command_timeout=COMMAND_TIMEOUT_SECONDS,
        application_name="concord-review",
    )
    producer = AIOKafkaProducer(
        **settings.kafka_options(), acks="all", linger_ms=0, enable_idempotence=False
    )
    timers: list[asyncio.Task[None]] = []
    try:
        await producer.start()
        app = compose_app(
            pool,
            producer,
            verifier,
            PrincipalRateLimit.from_settings(settings),
            anchors=lambda trail_id: read_anchors(settings.kafka_options(), trail_id),
            oidc=oidc,
        )
        add_metrics_route(app)  # GET /metrics, for Prometheus
        outbox = app.state.alert_review.store.outbox
        refresher = MetricsRefresher(pool)
        timers = [
            # The gauges from PostgreSQL; a failure is counted and logged by the refresher.
            asyncio.create_task(
                _every(REFRESH_SECONDS, refresher.refresh, "refreshing the gauges")
            ),
            asyncio.create_task(
                _every(
                    OUTBOX_SWEEP_SECONDS,
                    lambda: outbox.drain(producer, older_than=LEFT_BEHIND_SECONDS),
                    "publishing decisions left in the outbox",
                )
            ),
            asyncio.create_task(
                _every(
                    settings.audit_anchor_seconds,
                    lambda: publish_anchor(pool, producer),
                    "publishing the audit trail's anchor",
                )
            ),
        ]
        config = uvicorn.Config(
            app,
            host=settings.review_host,
            port=settings.review_port,
            log_level=settings.log_level.lower(),
            server_header=False,
        )
        yield uvicorn.Server(config)
    finally:
        for timer in timers:
            timer.cancel()
        await producer.stop()
        await pool.close()


async def serve(
    settings: ReviewSettings, verifier: TokenVerifier, oidc: OidcSignIn | None = None
) -> None:
    def say(line: str) -> None:
        print(f"the review service {line}", file=sys.stderr, flush=True)

    await check_schema(_SchemaCheck(settings.database_url), say)
    async with running(settings, verifier, oidc) as server:
        await server.serve()


def main() -> None:
    try:
        settings = load_settings(ReviewSettings)
    except SettingsProblem as problem:
        for line in problem.lines:
            print(f"the review service does not start: {line}", file=sys.stderr)
        sys.exit(2)
    try:
        # Before anything connects: a service that can verify no token must not start.
        verifier = TokenVerifier.from_settings(settings)
        oidc = OidcSignIn.from_settings(settings)
    except (VerifierConfigError, LocalKeyError) as problem:
        print(f"the review service does not start: {problem}", file=sys.stderr)
        sys.exit(2)
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        asyncio.run(serve(settings, verifier, oidc))
    except StartRefused as refused:
        sys.exit(f"the review service does not start: {refused}")
    except KeyboardInterrupt:
        pass
