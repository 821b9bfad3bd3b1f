"""The review service for tests (imported as `review_tools`, as builders and identity_tools are):
its app as the service composes it (concord.review.service.compose_app) over a FakeProducer,
with a local key that signs the tests' tokens; and the alerts the tests plant for it."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import cached_property
from pathlib import Path

import asyncpg
import httpx
from fastapi import FastAPI

from builders import FakeProducer, assertion_at
from concord.alerting.lifecycle import AlertRecord
from concord.alerting.store import AlertStore
from concord.clinical_text import concepts as c
from concord.clinical_text.extract import extract, method
from concord.clinical_text.rules import default_rules
from concord.config import ReviewSettings
from concord.events.models import Alert, ClinicalDocument, Provenance
from concord.narrative.reading import read_findings
from concord.narrative.review_tasks import PostgresTextReviews
from concord.review.access import Role
from concord.review.audit_view import AnchorReader
from concord.review.auth import LocalSigningKey, TokenVerifier
from concord.review.oidc import OidcSignIn
from concord.review.ratelimit import PrincipalRateLimit
from concord.review.service import compose_app
from concord.runtime.outbox import Outbox

NOW = datetime.now(UTC).replace(microsecond=0)
UNUSED_DSN = "postgresql://unused@127.0.0.1/unused"
BASE_URL = "http://review"


# --- the app ------------------------------------------------------------------------------------


def local_settings(
    key_dir: Path, *, dsn: str = UNUSED_DSN, rate_limit: int = 1000
) -> ReviewSettings:
    """The settings of a service whose tokens a local key signs (`key_dir`/key.pem, created by
    review_app), its broker unreachable. The app uses the pool it is given, not `dsn`."""
    return ReviewSettings(
        database_url=dsn,
        bootstrap_servers="127.0.0.1:9",
        local_key_path=key_dir / "key.pem",
        rate_limit_per_minute=rate_limit,
    )


@dataclass
class ReviewApp:
    """The app, the local key that signs tokens for it (None: the settings name none), the
    producer its decisions are published to, its settings, and the clock of its use cases."""

    app: FastAPI
    key: LocalSigningKey | None
    producer: FakeProducer
    settings: ReviewSettings
    clock: Callable[[], datetime]
    responses: list[httpx.Response] = field(default_factory=list)  # every browser()'s

    def token(self, role: Role | str, user: str = "pat") -> str:
        assert self.key is not None, "the settings name no local key"
        return self.key.issue(user, str(role), timedelta(minutes=10))  # type: ignore[arg-type]

    def as_role(self, role: Role | str, user: str = "pat") -> dict[str, str]:
        """Bearer headers of `user` in `role`."""
        return {"Authorization": f"Bearer {self.token(role, user)}"}

    @cached_property
    def client(self) -> httpx.AsyncClient:
        """A client on the app (`async with app.client` closes it)."""
        return httpx.AsyncClient(transport=httpx.ASGITransport(app=self.app), base_url=BASE_URL)

    def browser(self, base_url: str = BASE_URL) -> httpx.AsyncClient:
        """A new client that keeps cookies, and every response it gets in `responses`."""

        async def keep(response: httpx.Response) -> None:
            await response.aread()
            self.responses.append(response)

        return httpx.AsyncClient(
            transport=httpx.ASGITransport(app=self.app),
            base_url=base_url,
            event_hooks={"response": [keep]},
        )


def review_app(
    pool: asyncpg.Pool,
    settings: ReviewSettings,
    *,
    oidc: bool = False,
    anchors: AnchorReader | None = None,
    clock: Callable[[], datetime] | None = None,
) -> ReviewApp:
    """The app the service runs, from its settings as the service reads them: their local key
    (created if missing) and OIDC issuer verify tokens, their rate limit applies; with `oidc`,
    the web page signs in with their identity provider. `anchors`: the audit trail's anchor
    reader (None: verify without them). `clock`: a clock for every use case in place of the
    real one."""
    key = None
    if settings.local_key_path is not None:
        key, _ = LocalSigningKey.load_or_create(settings.local_key_path)
    producer = FakeProducer()
    app = compose_app(
        pool,
        producer,
        TokenVerifier.from_settings(settings),
        PrincipalRateLimit.from_settings(settings),
        anchors=anchors,
        oidc=OidcSignIn.from_settings(settings) if oidc else None,
        clock=clock or (lambda: datetime.now(UTC)),
    )
    return ReviewApp(app, key, producer, settings, clock or (lambda: datetime.now(UTC)))


# --- alerts -------------------------------------------------------------------------------------


def review_alert(
    token: str,
    n: int | None = None,
    *,
    prefix: str = "Zyx",
    severity: str = "HIGH",
    kind: str = "CONFLICT",
    source: str = "lab",
    opened_at: datetime | None = None,
    proposal: bool = True,
    token_in_ids: bool = False,
) -> Alert:
    """An open alert on patient E-{token}-{n} (E-{token} without `n`): the hospital says
    {prefix}{token}^Ana{n} (its record MRN-{token}-{n}; the proposal, unless not `proposal`),
    `source` says {prefix}{token}^Anna{n} (its record L-{n}). Opened at `opened_at`, by default
    n + 1 hours before NOW. `token_in_ids`: the alert's id and the source's record id carry the
    token too (L-{token}-{n}), so that a check for the token finds any of them."""
    tail = "" if n is None else f"-{n}"
    number = "" if n is None else str(n)
    opened = opened_at or NOW - timedelta(hours=(n or 0) + 1)
    name, other = f"{prefix}{token}^Ana{number}", f"{prefix}{token}^Anna{number}"
    return Alert(
        alert_id=f"{token}{uuid.uuid4().hex[:24]}" if token_in_ids else uuid.uuid4().hex,
        revision=1,
        kind=kind,
        status="OPEN",
        patient_id=f"E-{token}{tail}",
        attribute="Patient.name",
        attribute_class="DEMOGRAPHICS",
        severity=severity,
        assertions=(
            assertion_at(
                "hospital", name, opened, fact_id=f"h-{token}{tail}", record=f"MRN-{token}{tail}"
            ),
            assertion_at(
                source,
                other,
                opened,
                fact_id=f"l-{token}{tail}",
                record=f"L-{token}{tail}" if token_in_ids else f"L{tail}",
            ),
        ),
        proposed_value=name if proposal else None,
        proposed_reason="hospital ranks highest" if proposal else None,
        opened_at=opened,
        updated_at=opened,
    )


async def plant_alerts(pool: asyncpg.Pool, alerts: Sequence[Alert]) -> None:
    """The alerts in PostgreSQL, as the alerting stage saves a conflict's new alert."""
    store = AlertStore(pool, Outbox(pool, "alerting"))
    await store.save(
        [(AlertRecord(alert=a, conflict_revision=1), "opened") for a in alerts],
        [(a, "conflict opened (revision 1, 2 sources)") for a in alerts],
        [],
    )


# --- text review tasks (issue 18) -----------------------------------------------------------

NOTE = "Assessment: left breast carcinoma. Cannot rule out osseous metastatic disease."
AT = datetime(2026, 11, 20, 9, tzinfo=UTC)


async def plant_text_task(pool: asyncpg.Pool) -> tuple[str, str]:
    """A note's possible bone metastasis kept as a task, as the narrative worker keeps it."""
    patient = f"E-{uuid.uuid4().hex[:10]}"
    document = ClinicalDocument(
        document_id=f"doc-{patient}",
        patient_id=patient,
        subject="Patient/c1",
        record_id=f"rec-{patient}",
        provenance=Provenance(
            source_system="clinic-ehr",
            source_record_id="DocumentReference/n1",
            event_time=AT,
            received_time=AT,
            raw_topic="ehr.raw.fhir",
            raw_partition=0,
            raw_offset=3,
            payload_sha256="ab" * 32,
        ),
        part="content/0",
        kind="note-text",
        media_type="text/plain",
        authored_time=AT,
        text=NOTE,
    )
    reading = read_findings(
        document, extract(NOTE), method=method(default_rules()), min_confidence=0.7
    )
    await PostgresTextReviews(pool).add(reading.candidates)
    [task] = [t for t in reading.candidates if t.attribute == c.METASTATIC_SITE_PREFIX + "C79.5"]
    return task.task_id, patient
