"""The worker's Faust app: where it keeps its local files; and the composition root that builds
its stage."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from builders import FakeProducer
from concord import composition
from concord.composition import Resources
from concord.config import AlertingSettings, ConflictsSettings
from concord.conflicts.app import ConflictsStage
from concord.conflicts.policy import DEFAULT_POLICY
from concord.topics import (
    CONFLICTS,
    DOCUMENTS,
    FACTS,
    INGESTED,
    RAW_CLAIMS,
    RAW_FHIR,
    RAW_HL7V2,
    RESOLUTIONS,
)
from concord.worker import SERVICES, build_app


def test_faust_keeps_its_data_directory_under_the_configured_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Faust's default data directory is relative to the working directory, so `concord stack
    up` used to leave concord-*-control-data folders wherever it was run."""
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    settings = AlertingSettings(
        database_url="postgresql://unused@127.0.0.1:1/none", data_dir=tmp_path / "workers"
    )
    app = build_app("alerting", settings)
    assert Path(app.conf.datadir) == tmp_path / "workers" / "concord-alerting-control-data"
    assert (tmp_path / "workers").is_dir()  # Faust makes only its own folder
    assert list(elsewhere.iterdir()) == []


# What each service's stage consumes: the composition root wires the stage the service names.
INPUTS = {
    "ingestion": (RAW_FHIR, RAW_HL7V2, RAW_CLAIMS),
    "normalization": (INGESTED,),
    "narrative": (DOCUMENTS,),
    "conflicts": (FACTS, RESOLUTIONS),
    "alerting": (CONFLICTS,),
}
DSN = "postgresql://unused@127.0.0.1:1/none"


def _resources(**extra: Any) -> Resources:
    # The stores only keep the pool until a batch runs: nothing here connects.
    return Resources(pool=object(), producer=FakeProducer(), **extra)  # type: ignore[arg-type]


def test_the_composition_root_builds_each_service_stage_from_its_settings() -> None:
    assert SERVICES == tuple(INPUTS)
    for name, service in composition.SERVICES.items():
        stage = service.build(service.settings(database_url=DSN), _resources())
        assert stage.topics == INPUTS[name], name


def test_a_stage_is_not_built_from_another_service_s_settings() -> None:
    with pytest.raises(TypeError, match="expected ConflictsSettings, got AlertingSettings"):
        composition.SERVICES["conflicts"].build(AlertingSettings(database_url=DSN), _resources())


def test_the_conflicts_stage_starts_from_the_policy_the_worker_read() -> None:
    read = DEFAULT_POLICY.model_copy(update={"version": "read-by-the-watcher"})
    stage = composition.build_conflicts(
        ConflictsSettings(database_url=DSN),  # type: ignore[arg-type]
        _resources(policy=read),
    )
    assert isinstance(stage, ConflictsStage) and stage.policy is read
