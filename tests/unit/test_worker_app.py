"""The worker's Faust app: where it keeps its local files."""

from __future__ import annotations

from pathlib import Path

import pytest

from concord.config import AlertingSettings
from concord.worker import build_app


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
