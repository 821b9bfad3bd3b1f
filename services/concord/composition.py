"""The composition root: each worker service's settings class and the one function that wires
its stage to PostgreSQL and the worker's producer. `python -m concord.worker SERVICE` and the
benchmarks build stages only here, so a stage runs the same wherever it is measured."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from concord.config import (
    AlertingSettings,
    ConflictsSettings,
    DatabaseWorkerSettings,
    IngestionSettings,
    NarrativeSettings,
    NormalizationSettings,
    load_settings,
)
from concord.runtime.batch import Producer, StageHandler

if TYPE_CHECKING:
    import asyncpg

    from concord.conflicts.policy import SourcePolicy

S = TypeVar("S", bound=DatabaseWorkerSettings)


@dataclass(frozen=True)
class Resources:
    """What a stage is built from besides its settings."""

    pool: asyncpg.Pool
    producer: Producer
    # The conflicts policy as the worker's PolicyWatcher read it, so the stage starts from the
    # version the watcher compares reloads against; None: the stage reads policy_path itself.
    policy: SourcePolicy | None = None


# Each builder imports its stage when called: a worker loads only its own stage's modules
# (normalization's terminology and units alone take over a second).


def build_ingestion(settings: IngestionSettings, resources: Resources) -> StageHandler:
    from concord.ingestion.app import IngestionStage
    from concord.ingestion.dedupe import PostgresSeenVersions

    return IngestionStage(settings, PostgresSeenVersions(resources.pool))


def build_normalization(settings: NormalizationSettings, resources: Resources) -> StageHandler:
    from concord.normalization.app import NormalizationStage
    from concord.normalization.identity.scoring import Thresholds
    from concord.normalization.identity_store import PostgresIdentityStore
    from concord.normalization.record_facts import PostgresRecordFacts
    from concord.normalization.terminology import Terminology
    from concord.normalization.units import warm

    # Before the batch loop joins its group: see warm().
    warm()
    thresholds = Thresholds(
        link_threshold=settings.identity_link_threshold,
        review_threshold=settings.identity_review_threshold,
    )
    identities = PostgresIdentityStore(resources.pool, thresholds=thresholds)
    return NormalizationStage(
        settings,
        identities,
        Terminology.load(),
        record_facts=PostgresRecordFacts(resources.pool),
        identity_outbox=identities.outbox,
        producer=resources.producer,
    )


def build_conflicts(settings: ConflictsSettings, resources: Resources) -> StageHandler:
    from concord.conflicts.app import ConflictsStage
    from concord.conflicts.policy import load_policy
    from concord.conflicts.store import ConflictStore
    from concord.runtime.leases import PartitionLeases
    from concord.runtime.outbox import Outbox

    outbox = Outbox(resources.pool, "conflicts")
    policy = resources.policy
    return ConflictsStage(
        ConflictStore(resources.pool, outbox, PartitionLeases(resources.pool, "conflicts")),
        outbox,
        resources.producer,
        policy if policy is not None else load_policy(settings.policy_path),
        cache_max_keys=settings.cache_max_keys,
    )


def build_alerting(settings: AlertingSettings, resources: Resources) -> StageHandler:
    from concord.alerting.app import AlertingStage
    from concord.alerting.store import AlertStore
    from concord.runtime.outbox import Outbox

    outbox = Outbox(resources.pool, "alerting")
    return AlertingStage(AlertStore(resources.pool, outbox), outbox, resources.producer)


def build_narrative(settings: NarrativeSettings, resources: Resources) -> StageHandler:
    from concord.conflicts.policy import load_policy
    from concord.narrative.app import NarrativeStage
    from concord.narrative.review_tasks import PostgresTextReviews
    from concord.normalization.record_facts import PostgresRecordFacts

    policy = load_policy(settings.policy_path)
    return NarrativeStage(
        PostgresRecordFacts(resources.pool),
        PostgresTextReviews(resources.pool),
        min_confidence=policy.text.min_confidence,
    )


@dataclass(frozen=True)
class Service(Generic[S]):
    """A worker service: the settings it reads and how its stage is built from them (mypy
    checks that the two agree)."""

    settings: type[S]
    builder: Callable[[S, Resources], StageHandler]

    def build(self, settings: DatabaseWorkerSettings, resources: Resources) -> StageHandler:
        if not isinstance(settings, self.settings):
            raise TypeError(f"expected {self.settings.__name__}, got {type(settings).__name__}")
        return self.builder(settings, resources)


SERVICES: dict[str, Service[Any]] = {
    "ingestion": Service(IngestionSettings, build_ingestion),
    "normalization": Service(NormalizationSettings, build_normalization),
    "narrative": Service(NarrativeSettings, build_narrative),
    "conflicts": Service(ConflictsSettings, build_conflicts),
    "alerting": Service(AlertingSettings, build_alerting),
}


def settings_for(service: str) -> DatabaseWorkerSettings:
    """The service's settings from its CONCORD_* variables; SettingsProblem names the bad ones."""
    settings: DatabaseWorkerSettings = load_settings(SERVICES[service].settings)
    return settings


async def build_stage(
    service: str,
    settings: DatabaseWorkerSettings,
    producer: Producer,
    *,
    policy: SourcePolicy | None = None,
) -> tuple[StageHandler, Callable[[], Awaitable[None]]]:
    """The service's stage handler and what closes its resources. Connects to PostgreSQL.

    `policy`: the conflicts stage's, when already loaded (by its PolicyWatcher); else read
    from settings.policy_path."""
    from concord.runtime.db import create_pool

    pool = await create_pool(
        settings.database_url.get_secret_value(),
        settings.database_pool_size,
        command_timeout=settings.database_command_timeout_seconds,
        application_name=f"concord-{service}",
    )
    try:
        stage = SERVICES[service].build(settings, Resources(pool, producer, policy))
    except BaseException:
        await pool.close()
        raise
    return stage, pool.close
