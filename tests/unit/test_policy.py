"""The source-of-truth policy comes from a file; a bad file is a clear error."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from concord.conflicts.policy import DEFAULT_POLICY, load_policy


def test_no_file_means_the_built_in_policy() -> None:
    assert load_policy(None) is DEFAULT_POLICY


def test_a_policy_file_sets_ranking_and_severities(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(
        "version: site-2026-11\n"
        "source_rank: [hospital-ehr, lab-system]\n"
        "default_severity: LOW\n"
        "attributes:\n"
        "  Patient.birthDate: {severity: CRITICAL}\n"
    )
    policy = load_policy(path)
    assert policy.version == "site-2026-11"
    assert policy.source_rank == ("hospital-ehr", "lab-system")
    assert policy.severity("Patient.birthDate") == "CRITICAL"
    assert policy.severity("Patient.name") == "LOW"


@pytest.mark.parametrize(
    "text",
    [
        "source_rank: [a]\n",  # no version
        "version: x\nattributes:\n  Patient.gender: {severity: URGENT}\n",
        "version: x\nunknown_setting: 1\n",
    ],
)
def test_an_invalid_policy_file_is_refused(tmp_path: Path, text: str) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(text)
    with pytest.raises(ValidationError):
        load_policy(path)
