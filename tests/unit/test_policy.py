"""The source-of-truth policy comes from a file: a bad file is an error naming its lines, and a
changed file is applied while the worker runs (an invalid one never replaces a valid one)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from prometheus_client import REGISTRY
from pydantic import ValidationError

from concord.config import ConflictsSettings
from concord.conflicts.policy import (
    DEFAULT_POLICY,
    ClassRule,
    PolicyError,
    SourcePolicy,
    Tolerance,
    load_policy,
    parse_policy,
)
from concord.conflicts.policy_watcher import PolicyWatcher, reload_into
from concord.events.models import Assertion, Provenance

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "services" / "concord" / "conflicts" / "default_policy.yaml"
DSN = "postgresql://unused@127.0.0.1:1/none"
T0 = datetime(2024, 3, 1, 8, 0, tzinfo=UTC)


def _errors(text: str) -> list[str]:
    with pytest.raises(PolicyError) as caught:
        parse_policy(text, "policy.yaml")
    return str(caught.value).splitlines()


def _reloads(outcome: str) -> float:
    return REGISTRY.get_sample_value("concord_policy_reloads_total", {"outcome": outcome}) or 0.0


def _version_shown(version: str) -> float | None:
    return REGISTRY.get_sample_value("concord_policy_info", {"version": version})


# --- loading ----------------------------------------------------------------------------------


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


def test_the_example_deploy_policy_loads() -> None:
    policy = load_policy(EXAMPLE)
    assert set(policy.compared_classes) == {
        "DEMOGRAPHICS",
        "ALLERGY",
        "MEDICATION",
        "CONDITION",
        "LABORATORY",
        "ONCOLOGY",
    }
    compare = {name: rule.compare for name, rule in policy.classes.items()}
    assert compare == {
        "DEMOGRAPHICS": "exact",
        "ALLERGY": "status",
        "MEDICATION": "status",
        "CONDITION": "status",
        "LABORATORY": "numeric",
        "ONCOLOGY": "code",
    }
    lab = policy.classes["LABORATORY"]
    assert lab.tolerance == Tolerance(relative=0.05)
    assert lab.specimen_window == timedelta(hours=1)
    assert lab.max_age == timedelta(days=365)
    assert policy.classes["MEDICATION"].reconfirm_within == timedelta(days=90)
    assert policy.severity("Patient.birthDate", "DEMOGRAPHICS") == "CRITICAL"
    assert policy.severity("Patient.gender", "DEMOGRAPHICS") == "HIGH"
    assert policy.severity("AllergyIntolerance/91936005", "ALLERGY") == "HIGH"
    glucose = policy.rule("Observation/2345-7", "LABORATORY")
    assert glucose is not None and glucose.tolerance is not None
    assert glucose.tolerance.agree(60, 66) and not glucose.tolerance.agree(60, 67)
    assert glucose.tolerance.agree(300, 324)  # 8% of the larger value


def test_durations_are_iso_8601_or_seconds() -> None:
    policy = parse_policy(
        "version: x\n"
        "classes:\n"
        "  MEDICATION: {compare: status, reconfirm_within: P90D, suppress_for: 3600}\n"
        "  LABORATORY: {compare: numeric, tolerance: {absolute: 0}, specimen_window: PT30M}\n"
    )
    assert policy.classes["MEDICATION"].reconfirm_within == timedelta(days=90)
    assert policy.classes["MEDICATION"].suppress_for == timedelta(hours=1)
    assert policy.classes["LABORATORY"].specimen_window == timedelta(minutes=30)


# --- errors that name the line ----------------------------------------------------------------

LAB_HEADER = "# site policy\nversion: x\nclasses:\n  LABORATORY:\n"  # LABORATORY on line 4


def test_an_invalid_enum_names_its_line_and_the_allowed_values() -> None:
    text = LAB_HEADER + "    severity: HIGH\n    tolerance: {relative: 0.05}\n    compare: fuzzy\n"
    assert _errors(text) == [
        "policy.yaml:7: classes.LABORATORY.compare: 'fuzzy' is not one of exact, code, numeric, "
        "status"
    ]


def test_an_unknown_key_in_a_class_names_the_key_and_its_line() -> None:
    text = LAB_HEADER + "    compare: status\n    reconfirm_days: 90\n"
    [error] = _errors(text)
    assert error.startswith("policy.yaml:6: classes.LABORATORY.reconfirm_days: unknown key")
    assert "reconfirm_within" in error  # what it could have been


def test_an_unknown_key_in_a_nested_mapping_lists_that_mappings_keys() -> None:
    text = LAB_HEADER + "    compare: numeric\n    tolerance:\n      percent: 5\n"
    assert _errors(text) == [
        "policy.yaml:7: classes.LABORATORY.tolerance.percent: unknown key; allowed here: "
        "absolute, relative"
    ]


def test_a_negative_tolerance_names_its_line() -> None:
    text = LAB_HEADER + "    compare: numeric\n    tolerance:\n      absolute: -0.5\n"
    assert _errors(text) == [
        "policy.yaml:7: classes.LABORATORY.tolerance.absolute: -0.5 is out of range: it must "
        "be at least 0"
    ]


def test_numeric_without_a_tolerance_points_at_the_class() -> None:
    text = LAB_HEADER + "    compare: numeric\n    severity: HIGH\n"
    [error] = _errors(text)
    assert error.startswith("policy.yaml:4: classes.LABORATORY: `compare: numeric` needs")


def test_a_yaml_syntax_error_names_its_line() -> None:
    text = LAB_HEADER + "    compare: numeric\n   severity: HIGH\n"  # dedented by one
    [error] = _errors(text)
    assert error.startswith("policy.yaml:6: invalid YAML: ")


def test_a_missing_version_points_at_the_mapping_that_lacks_it() -> None:
    text = "# no version here\n\nsource_rank: [a]\n"
    assert _errors(text) == ["policy.yaml:3: version: required, but missing"]


def test_an_empty_file_lacks_a_version() -> None:
    assert _errors("# nothing yet\n") == ["policy.yaml:1: version: required, but missing"]


def test_every_problem_is_listed_in_line_order() -> None:
    text = (
        "source_rank: hospital-ehr\n"  # 1: not a list; and the mapping lacks `version`
        "classes:\n"
        "  LAB: {compare: exact}\n"  # 3
        "  ALLERGY:\n"
        "    compare: status\n"
        "    severity: URGENT\n"  # 6
        "attributes:\n"
        "  Patient.birthDate: {severity: CRITICAL, colour: red}\n"  # 8
        "  Observation/*:\n"
        "    max_age: soon\n"  # 10
    )
    with pytest.raises(PolicyError) as caught:
        parse_policy(text, "policy.yaml")
    lines = [(p.line, p.location) for p in caught.value.problems]
    assert lines == [
        (1, "version"),
        (1, "source_rank"),
        (3, "classes.LAB"),
        (6, "classes.ALLERGY.severity"),
        (8, 'attributes."Patient.birthDate".colour'),
        (10, "attributes.Observation/*.max_age"),
    ]
    assert len(str(caught.value).splitlines()) == 6
    assert "'soon' is not a duration" in str(caught.value)


def test_a_duplicate_key_is_an_error_not_a_silent_override() -> None:
    text = "version: x\nclasses:\n  ALLERGY: {compare: status}\n  ALLERGY: {compare: exact}\n"
    assert _errors(text) == [
        "policy.yaml:4: classes.ALLERGY: duplicate key; the first is on line 3"
    ]


def test_a_cyclic_alias_is_an_error_not_a_hang() -> None:
    assert _errors("version: x\nattributes: &a\n  b: *a\n")[0].startswith(
        "policy.yaml:3: attributes.b.b: unknown key"
    )


def test_a_number_where_text_belongs_says_to_quote_it() -> None:
    assert _errors("version: 2026.1\n") == ["policy.yaml:1: version: 2026.1 is not text; quote it"]


def test_the_error_is_a_value_error_naming_the_file_not_a_pydantic_one(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text("version: x\nunknown_setting: 1\n")
    with pytest.raises(PolicyError) as caught:
        load_policy(path)
    assert isinstance(caught.value, ValueError)
    assert not isinstance(caught.value, ValidationError)
    assert str(caught.value).startswith(f"{path}:2: unknown_setting: unknown key")


def test_an_unreadable_file_is_a_policy_error(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match="cannot be read"):
        load_policy(tmp_path / "absent.yaml")


def test_messages_show_keys_and_short_values_only() -> None:
    text = f"version: x\nclasses:\n  ALLERGY: {{compare: {'x' * 500}}}\n"
    [error] = _errors(text)
    assert len(error) < 200


# --- overrides, severity, ranking -------------------------------------------------------------

RANKED = """
version: ranked-1
source_rank: [hospital-ehr, clinic-ehr, lab-system]
default_severity: LOW
classes:
  DEMOGRAPHICS: {compare: exact, severity: HIGH}
  CONDITION: {compare: status}
  LABORATORY:
    compare: numeric
    tolerance: {relative: 0.05}
    source_rank: [lab-system, hospital-ehr]
attributes:
  Observation/*: {severity: MEDIUM}
  Observation/2345*: {tolerance: {absolute: 6}}
  Observation/2345-7: {severity: HIGH}
  Patient.*: {severity: CRITICAL}
  Patient.name: {severity: MEDIUM}
"""


@pytest.fixture(scope="module")
def ranked() -> SourcePolicy:
    return parse_policy(RANKED)


def test_the_longest_matching_pattern_wins(ranked: SourcePolicy) -> None:
    assert ranked.severity("Observation/1234-5", "LABORATORY") == "MEDIUM"
    glucose = ranked.rule("Observation/2345-1", "LABORATORY")
    assert glucose is not None
    assert glucose.tolerance == Tolerance(absolute=6)  # Observation/2345* over Observation/*
    assert glucose.compare == "numeric"  # the rest is the class's
    assert ranked.severity("Observation/2345-1", "LABORATORY") == "LOW"


def test_an_exact_key_wins_over_patterns(ranked: SourcePolicy) -> None:
    assert ranked.severity("Observation/2345-7", "LABORATORY") == "HIGH"
    assert ranked.severity("Patient.name", "DEMOGRAPHICS") == "MEDIUM"
    assert ranked.severity("Patient.birthDate", "DEMOGRAPHICS") == "CRITICAL"


def test_severity_comes_from_the_class_else_the_default(ranked: SourcePolicy) -> None:
    assert ranked.severity("Condition/38341003", "CONDITION") == "LOW"  # class sets none
    assert ranked.severity("Address.city", "DEMOGRAPHICS") == "HIGH"


def test_a_class_the_policy_does_not_list_has_no_rule(ranked: SourcePolicy) -> None:
    assert ranked.rule("AllergyIntolerance/91936005", "ALLERGY") is None
    assert "ALLERGY" not in ranked.compared_classes


def _assertion(source: str, value: str, minutes: int) -> Assertion:
    return Assertion(
        source_system=source,
        value=value,
        status="ASSERTED",
        fact_id=f"{source}-{value}",
        provenance=Provenance(
            source_system=source,
            source_record_id="Observation/o",
            event_time=T0 + timedelta(minutes=minutes),
            received_time=T0 + timedelta(hours=1),
            raw_topic="ehr.raw.fhir",
            raw_partition=0,
            raw_offset=minutes,
            payload_sha256="00" * 32,
        ),
    )


def test_a_class_ranking_overrides_the_policys(ranked: SourcePolicy) -> None:
    said = [_assertion("hospital-ehr", "99", 5), _assertion("lab-system", "101", 0)]
    lab_rule = ranked.rule("Observation/1234-5", "LABORATORY")
    assert ranked.propose(said, lab_rule) == (
        "101",
        "lab-system ranks highest among the disagreeing sources",
    )
    assert ranked.propose(said, ranked.rule("Condition/1", "CONDITION"))[0] == "99"


def test_unranked_sources_yield_to_the_newest(ranked: SourcePolicy) -> None:
    said = [_assertion("ward-ehr", "99", 0), _assertion("payer", "101", 10)]
    assert ranked.propose(said) == ("101", "no ranked source; payer asserted most recently")


# --- reloading --------------------------------------------------------------------------------

VALID = "version: v1\nclasses:\n  DEMOGRAPHICS: {compare: exact}\n"
VALID_2 = "version: v2\nclasses:\n  DEMOGRAPHICS: {compare: exact, severity: HIGH}\n"
INVALID = "version: v3\nclasses:\n  DEMOGRAPHICS: {compare: fuzzy}\n"


class _Stage:
    def __init__(self, policy: SourcePolicy) -> None:
        self.policy = policy


def test_an_unchanged_file_does_nothing(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(VALID)
    watcher = PolicyWatcher(path)
    before = watcher.policy
    path.write_text(VALID)  # rewritten, same content: a new mtime is not a change
    assert watcher.poll() is None
    assert watcher.poll() is None
    assert watcher.policy is before


def test_a_changed_valid_file_is_applied(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(VALID)
    watcher = PolicyWatcher(path)
    stage = _Stage(watcher.policy)
    applied = _reloads("applied")
    assert _version_shown("v1") == 1
    path.write_text(VALID_2)
    with caplog.at_level("INFO", logger="concord.conflicts.policy_watcher"):
        assert asyncio.run(reload_into(stage, watcher)) == "applied"
    assert stage.policy.version == "v2"
    assert stage.policy.severity("Patient.name") == "HIGH"
    assert _reloads("applied") == applied + 1
    assert _version_shown("v2") == 1
    assert _version_shown("v1") is None  # one version at a time
    assert "v2 applied" in caplog.text


def test_an_invalid_file_is_rejected_once_and_the_policy_stays(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(VALID)
    watcher = PolicyWatcher(path)
    stage = _Stage(watcher.policy)
    rejected = _reloads("rejected")
    path.write_text(INVALID)
    with caplog.at_level("ERROR", logger="concord.conflicts.policy_watcher"):
        assert asyncio.run(reload_into(stage, watcher)) == "rejected"
        assert asyncio.run(reload_into(stage, watcher)) is None  # reported once, not per poll
    assert stage.policy.version == "v1"
    assert _reloads("rejected") == rejected + 1
    assert _version_shown("v1") == 1
    assert f"{path}:3: classes.DEMOGRAPHICS.compare: 'fuzzy' is not one of" in caplog.text
    path.write_text(VALID_2)  # fixed: applied
    assert asyncio.run(reload_into(stage, watcher)) == "applied"
    assert stage.policy.version == "v2"


def test_a_vanished_file_is_rejected_once_and_the_policy_stays() -> None:
    files: dict[Path, bytes] = {Path("/etc/concord/policy.yaml"): VALID.encode()}

    def read(path: Path) -> bytes:
        if path not in files:
            raise FileNotFoundError(2, "No such file or directory")
        return files[path]

    watcher = PolicyWatcher(Path("/etc/concord/policy.yaml"), read=read)
    rejected = _reloads("rejected")
    files.clear()
    assert watcher.poll() == "rejected"
    assert watcher.poll() is None
    assert watcher.policy.version == "v1"
    assert _reloads("rejected") == rejected + 1


def test_an_invalid_file_at_start_is_a_policy_error(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(INVALID)
    with pytest.raises(PolicyError, match=r":3: classes\.DEMOGRAPHICS\.compare"):
        PolicyWatcher(path)


def test_the_conflicts_worker_refuses_to_start_on_an_invalid_policy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from concord import worker

    path = tmp_path / "policy.yaml"
    path.write_text(INVALID)
    monkeypatch.setenv("CONCORD_DATABASE_URL", DSN)
    monkeypatch.setenv("CONCORD_POLICY_PATH", str(path))
    with pytest.raises(SystemExit) as exited:
        worker.main(["conflicts"])
    message = str(exited.value.code)
    assert message.startswith("the conflicts worker does not start: its policy file is invalid")
    assert f"{path}:3: classes.DEMOGRAPHICS.compare: 'fuzzy'" in message


def test_the_worker_watches_only_a_configured_policy_file(tmp_path: Path) -> None:
    from concord import worker

    assert worker.policy_watcher(ConflictsSettings(database_url=DSN)) is None  # type: ignore[arg-type]
    assert _version_shown(DEFAULT_POLICY.version) == 1
    path = tmp_path / "policy.yaml"
    path.write_text(VALID)
    settings = ConflictsSettings(database_url=DSN, policy_path=path)  # type: ignore[arg-type]
    watcher = worker.policy_watcher(settings)
    assert watcher is not None and watcher.policy.version == "v1"
    assert settings.policy_reload_seconds == 5


def test_an_override_of_null_clears_what_the_class_asks_for() -> None:
    medication = DEFAULT_POLICY.rule("Medication/6809", "MEDICATION")
    dose = DEFAULT_POLICY.rule("Medication/6809/dose", "MEDICATION")
    assert medication is not None and medication.reconfirm_within == timedelta(days=90)
    assert dose is not None and dose.reconfirm_within is None
    assert dose.compare == "numeric" and medication.compare == "status"


def test_a_copy_of_a_policy_does_not_answer_with_the_originals_cached_rules() -> None:
    """Rules are cached per policy; a model_copy shares the cache's dict, so the copy must
    notice it is not the policy that filled it."""
    original = DEFAULT_POLICY.model_copy(deep=True)
    asked = original.rule("Patient.gender", "DEMOGRAPHICS")
    assert asked is not None and asked.severity != "LOW"
    low = ClassRule(compare="exact", severity="LOW")
    copy = original.model_copy(update={"classes": {**original.classes, "DEMOGRAPHICS": low}})
    assert copy.rule("Patient.gender", "DEMOGRAPHICS") == low
    assert original.rule("Patient.gender", "DEMOGRAPHICS") == asked
