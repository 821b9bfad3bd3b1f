"""The documents people read agree with the code they describe.

deploy/README.md's settings reference is generated from the settings classes of concord.config
(their Field descriptions and defaults); after changing a setting, rewrite it with

    .venv/bin/python tests/unit/test_docs.py
"""

from __future__ import annotations

import inspect
import json
import re
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings

from concord import config
from concord.deadletters import REASON_CODES

ROOT = Path(__file__).resolve().parents[2]
DEPLOY_README = ROOT / "deploy" / "README.md"
COMPOSE_FILE = ROOT / "docker-compose.yml"

PREFIX = "CONCORD_"
# Who reads which settings class: each worker service, and the `concord` command-line tools
# (which the compose file's init-topics and migrate jobs run).
WORKERS: dict[str, type[BaseSettings]] = {
    "ingestion": config.IngestionSettings,
    "normalization": config.NormalizationSettings,
    "narrative": config.NarrativeSettings,
    "conflicts": config.ConflictsSettings,
    "alerting": config.AlertingSettings,
}
CLI = "CLI"
READERS: dict[str, type[BaseSettings]] = {
    **WORKERS,
    "review": config.ReviewSettings,
    CLI: config.ClientSettings,
}
# CONCORD_* variables that are no settings field, and where each is read: a quoted name in
# that Python file (an os.environ lookup), or a ${NAME} in the compose file.
NOT_SETTINGS = {
    "CONCORD_SCHEMA_DIR": "services/concord/events/codec.py",  # where the codec finds schemas/
    "CONCORD_IMAGE": "docker-compose.yml",  # the Concord image compose runs
}

SETTINGS_BEGIN = (
    "<!-- settings-reference: generated from concord.config by tests/unit/test_docs.py -->"
)
SETTINGS_END = "<!-- /settings-reference -->"
COMPOSE_SETTINGS_BEGIN = "<!-- compose-settings -->"
COMPOSE_SETTINGS_END = "<!-- /compose-settings -->"
COMPOSE_VARIABLES_BEGIN = "<!-- compose-variables -->"
COMPOSE_VARIABLES_END = "<!-- /compose-variables -->"

_DOCUMENTED = re.compile(rf"{PREFIX}[A-Z0-9_]*\*|{PREFIX}[A-Z0-9_]*[A-Z0-9]")
_INTERPOLATED = re.compile(r"(?<!\$)\$\{([A-Za-z_][A-Za-z0-9_]*)")


def documents() -> list[Path]:
    """Every document a reader may take a variable name from."""
    markdown = [ROOT / "README.md"]
    for folder in ("docs", "deploy", "benchmarks"):
        markdown += sorted((ROOT / folder).rglob("*.md"))
    return [*markdown, COMPOSE_FILE, ROOT / "Dockerfile"]


def settings_classes() -> list[type[BaseSettings]]:
    """The settings classes of concord.config, in the order they are defined."""
    return [
        value
        for value in vars(config).values()
        if isinstance(value, type)
        and issubclass(value, BaseSettings)
        and value.__module__ == config.__name__
    ]


def env_name(field: str) -> str:
    return f"{PREFIX}{field.upper()}"


def settings_env_names() -> set[str]:
    return {env_name(field) for cls in settings_classes() for field in cls.model_fields}


def _section(text: str, begin: str, end: str) -> str:
    assert text.count(begin) == 1 and text.count(end) == 1, f"{begin} ... {end} not found once"
    return text.split(begin, 1)[1].split(end, 1)[0]


def _table_rows(text: str) -> list[list[str]]:
    """The cells of each body row of the Markdown tables in `text` (headers left out)."""
    rows: list[list[str]] = []
    for line in text.splitlines():
        if re.fullmatch(r"\|(\s*:?-+:?\s*\|)+", line.strip()):
            rows.pop()  # the row above the delimiter row is a header
        elif line.startswith("|"):
            rows.append([cell.strip() for cell in re.split(r"(?<!\\)\|", line.strip()[1:-1])])
    return rows


# --- the settings reference ------------------------------------------------------------------


def _default(info: FieldInfo) -> str:
    if info.is_required():
        return "required"
    value = info.get_default(call_default_factory=True)
    if value is None:
        return "—"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, str | Path):
        return f"`{value}`"
    return f"`{json.dumps(value)}`"


def _signature(info: FieldInfo) -> tuple[str, str]:
    return _default(info), (info.description or "").replace("|", "\\|")


def _readers(names: list[str]) -> str:
    workers = [name for name in names if name in WORKERS]
    parts = ["all workers"] if set(workers) == set(WORKERS) else [f"`{w}`" for w in workers]
    others = [f"`{name}`" if name != CLI else CLI for name in names if name not in WORKERS]
    return ", ".join(parts + others)


def settings_reference() -> str:
    """deploy/README.md's settings table: a row per variable and per distinct (default,
    description) among the classes that read it."""
    fields = list(
        dict.fromkeys(
            field
            for cls in settings_classes()
            for field in inspect.get_annotations(cls)
            if field in cls.model_fields
        )
    )
    lines = ["| variable | read by | default | meaning |", "|---|---|---|---|"]
    for field in fields:
        groups: dict[tuple[str, str], list[str]] = {}
        for reader, cls in READERS.items():
            if field in cls.model_fields:
                groups.setdefault(_signature(cls.model_fields[field]), []).append(reader)
        for (default, description), readers in groups.items():
            lines.append(
                f"| `{env_name(field)}` | {_readers(readers)} | {default} | {description} |"
            )
    return "\n".join(lines)


def write_settings_reference() -> None:
    text = DEPLOY_README.read_text(encoding="utf-8")
    old = _section(text, SETTINGS_BEGIN, SETTINGS_END)
    new = f"\n{settings_reference()}\n"
    DEPLOY_README.write_text(text.replace(SETTINGS_BEGIN + old, SETTINGS_BEGIN + new, 1))


def test_settings_are_plain_concord_variables() -> None:
    assert settings_classes(), "no settings classes found in concord.config"
    for cls in settings_classes():
        assert cls.model_config.get("env_prefix") == PREFIX, cls.__name__
        for field, info in cls.model_fields.items():
            # An alias would change the variable's name away from CONCORD_<FIELD>.
            assert info.alias is None and info.validation_alias is None, (cls.__name__, field)
            assert info.description, f"{cls.__name__}.{field} has no description to document"


def test_every_setting_has_a_reader() -> None:
    read = {field for cls in READERS.values() for field in cls.model_fields}
    for cls in settings_classes():
        missing = set(cls.model_fields) - read
        assert not missing, f"{cls.__name__}: {sorted(missing)} read by no service nor the CLI"


def test_the_readers_are_the_worker_services(monkeypatch: pytest.MonkeyPatch) -> None:
    from concord import composition, worker

    assert set(WORKERS) == set(worker.SERVICES)
    monkeypatch.setenv("CONCORD_DATABASE_URL", "postgresql://concord@localhost/concord")
    for name, cls in WORKERS.items():
        assert type(composition.settings_for(name)) is cls, name


def test_the_settings_reference_is_generated_from_the_settings() -> None:
    documented = _section(DEPLOY_README.read_text(encoding="utf-8"), SETTINGS_BEGIN, SETTINGS_END)
    assert documented.strip() == settings_reference(), (
        "deploy/README.md's settings reference is out of date: "
        "run `.venv/bin/python tests/unit/test_docs.py` to rewrite it"
    )


def test_every_setting_is_documented_in_the_deployment_guide() -> None:
    reference = _section(DEPLOY_README.read_text(encoding="utf-8"), SETTINGS_BEGIN, SETTINGS_END)
    documented = {row[0].strip("`") for row in _table_rows(reference)}
    assert settings_env_names() <= documented


def test_every_documented_concord_variable_exists() -> None:
    known = settings_env_names() | set(NOT_SETTINGS)
    unknown = []
    for path in documents():
        for token in sorted(set(_DOCUMENTED.findall(path.read_text(encoding="utf-8")))):
            if token.endswith("*"):  # a family: CONCORD_MLLP_*
                ok = any(name.startswith(token[:-1]) for name in known)
            else:
                ok = token in known
            if not ok:
                unknown.append(f"{path.relative_to(ROOT)}: {token}")
    assert not unknown, "documented, but no setting nor known variable: " + ", ".join(unknown)


def test_the_variables_that_are_not_settings_are_read_where_listed() -> None:
    for name, where in NOT_SETTINGS.items():
        assert name not in settings_env_names(), f"{name} is a setting now: drop it from the list"
        text = (ROOT / where).read_text(encoding="utf-8")
        if where.endswith(".py"):
            assert re.search(rf"[\"']{name}[\"']", text), f"{where} does not read {name}"
        else:
            assert name in _INTERPOLATED.findall(text), f"{where} does not use ${{{name}}}"
    code = "\n".join(p.read_text(encoding="utf-8") for p in (ROOT / "services").rglob("*.py"))
    for name in set(re.findall(rf"[\"']({PREFIX}[A-Z0-9_]+)[\"']", code)):
        assert name in settings_env_names() | set(NOT_SETTINGS), f"services/ reads {name}"


# --- deploy/README.md against docker-compose.yml ----------------------------------------------


def _compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))
    return loaded


def test_the_compose_settings_table_names_what_each_service_gets() -> None:
    """Which service gets which CONCORD_* variable, as the guide says and as compose does."""
    section = _section(
        DEPLOY_README.read_text(encoding="utf-8"), COMPOSE_SETTINGS_BEGIN, COMPOSE_SETTINGS_END
    )
    documented = set()
    for row in _table_rows(section):
        services = re.findall(r"`([a-z-]+)`", row[1])
        if "all workers" in row[1]:
            services += list(WORKERS)
        names = re.findall(rf"`({PREFIX}[A-Z0-9_]+)`", row[0])
        assert names and services, row
        documented |= {(service, name) for service in services for name in names}
    compose = {
        (service, name)
        for service, spec in _compose()["services"].items()
        for name in (spec.get("environment") or {})
        if name.startswith(PREFIX)
    }
    assert documented == compose, (
        f"documented only: {sorted(documented - compose)}; in compose only: "
        f"{sorted(compose - documented)}"
    )


def test_the_compose_variables_table_names_what_compose_reads() -> None:
    section = _section(
        DEPLOY_README.read_text(encoding="utf-8"), COMPOSE_VARIABLES_BEGIN, COMPOSE_VARIABLES_END
    )
    documented = {name for row in _table_rows(section) for name in re.findall(r"`(\w+)`", row[0])}
    used = set(_INTERPOLATED.findall(COMPOSE_FILE.read_text(encoding="utf-8")))
    assert documented == used, (
        f"documented only: {sorted(documented - used)}; "
        f"in compose only: {sorted(used - documented)}"
    )


# --- other documents -------------------------------------------------------------------------


def test_the_dead_letter_catalogue_lists_exactly_the_reason_codes() -> None:
    text = (ROOT / "docs" / "deadletters.md").read_text()
    documented = set(re.findall(r"^\| `([A-Z0-9_]+)` \|", text, flags=re.MULTILINE))
    assert documented == set(REASON_CODES)


def test_the_readme_names_the_two_commands_and_ci_runs_the_test_one() -> None:
    readme = (ROOT / "README.md").read_text()
    assert "make demo" in readme and "make test" in readme
    assert "make test" in (ROOT / ".ci" / "run").read_text()


if __name__ == "__main__":
    write_settings_reference()
    sys.exit(0)
