"""The deployment files agree with the code.

docker-compose.yml, the Dockerfile, Prometheus' config and rules and the Grafana dashboard are
parsed (nothing is started: no container engine runs here) and checked against concord.worker,
concord.config, concord.topics, concord.metrics and concord.cli. promtool (Debian's
`prometheus` package) validates the rules and the config and runs unit tests of the alerts.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shlex
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from click.testing import CliRunner
from pydantic_settings import BaseSettings

from concord import config, topics

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
PROMETHEUS_CONFIG = ROOT / "deploy" / "prometheus" / "prometheus.yml"
RULES_FILE = ROOT / "deploy" / "prometheus" / "rules" / "concord.rules.yml"
GRAFANA = ROOT / "deploy" / "grafana"
DASHBOARD_FILE = GRAFANA / "dashboards" / "concord.json"
DATASOURCE_FILE = GRAFANA / "provisioning" / "datasources" / "prometheus.yml"
DASHBOARD_PROVIDER_FILE = GRAFANA / "provisioning" / "dashboards" / "concord.yml"

WORKER_MODULE = ["python", "-m", "concord.worker"]
# Used only while concord.worker (which defines SERVICES) cannot be imported.
FALLBACK_SERVICES = ("ingestion", "normalization", "narrative", "conflicts", "alerting")
SETTINGS: dict[str, type[BaseSettings]] = {
    "ingestion": config.IngestionSettings,
    "normalization": config.NormalizationSettings,
    "narrative": config.NarrativeSettings,
    "conflicts": config.ConflictsSettings,
    "alerting": config.AlertingSettings,
}
# The names the workers export (concord.metrics); counters carry their _total suffix.
WORKER_METRICS = frozenset(
    {
        "concord_events_consumed_total",
        "concord_events_produced_total",
        "concord_events_deadlettered_total",
        "concord_batch_seconds",
        "concord_event_seconds",
        "concord_batch_size",
        "concord_alert_latency_seconds",
        "concord_alerts_open",
        "concord_outbox_pending",
        "concord_consumer_lag",
        "concord_records_not_normalized_total",
        "concord_records_withdrawn_total",
        "concord_documents_published_total",
        "concord_text_facts_total",
        "concord_text_review_tasks_total",
        "concord_text_read_seconds",
        "concord_ingestion_duplicates_total",
        "concord_ingestion_reused_versions_total",
        "concord_record_warnings_total",
        "concord_records_not_compared_total",
        "concord_identity_decisions_total",
        "concord_facts_flagged_total",
        "concord_mllp_messages_total",
        "concord_mllp_connections",
        "concord_mllp_connections_refused_total",
        "concord_mllp_oversize_frames_total",
        "concord_mllp_discarded_bytes_total",
        "concord_mllp_ack_seconds",
        "concord_policy_reloads_total",
        "concord_policy_info",
        "concord_resolutions_total",
        "concord_transient_failures_total",
        "concord_stage_ready",
        "concord_batch_phase_seconds",
        "concord_gc_pause_seconds",
    }
)
# The names the review service exports (concord.review.metrics).
REVIEW_METRICS = frozenset(
    {
        "concord_review_alerts_open",
        "concord_review_identity_tasks",
        "concord_review_refresh_failures_total",
        "concord_review_refresh_timestamp_seconds",
        "concord_review_acknowledge_seconds",
        "concord_review_resolve_seconds",
        "concord_review_decisions_total",
        "concord_review_corrections_total",
        "concord_review_dismissals_total",
        "concord_review_identity_decisions_total",
    }
)
EXPORTED_METRICS = WORKER_METRICS | REVIEW_METRICS
# Labels that may appear in rules and dashboards: the metrics' own bounded labels, Prometheus'
# job/instance, the histogram bucket bound and the quantile label of the recording rules.
ALLOWED_LABELS = frozenset(
    {
        "stage",
        "topic",
        "partition",
        "reason_code",
        "severity",
        "since",
        "format",
        "operation",
        "outcome",
        "attribute_class",
        "flag",
        "phase",
        "generation",
    }
    # the review service's: alert kind and status, age bucket, decision kind, dismissal
    # reason code, identity task state, gauge family (concord.review.metrics)
    | {"kind", "status", "age_bucket", "decision", "reason", "state", "family"}
    | {"job", "instance", "le", "quantile"}
)
PHI_LIKE_LABEL = re.compile(r"patient|name|mrn|birth|dob|ssn|phone|address|email", re.IGNORECASE)
# Variables a worker may get besides its settings: libpq-style TLS variables that asyncpg reads
# (PGSSLROOTCERT, ...), the Python runtime's and the time zone.
OTHER_WORKER_ENV = re.compile(r"PG[A-Z]+|PYTHON[A-Z]+|TZ")
# Values for the variables the compose file requires (secrets are never committed; the issuer
# is the site's own).
# The variables compose requires (secrets), and those the tests set besides: the identity
# provider the review service trusts (it refuses to start without one; the workers run).
REQUIRED_ENV = {
    "POSTGRES_PASSWORD": "test-password",
    "GRAFANA_ADMIN_PASSWORD": "test-admin",
}
TEST_ENV = {**REQUIRED_ENV, "OIDC_ISSUER": "https://login.hospital.example/realms/clinical"}
PROMTOOL_HINT = (
    "promtool is not installed: it comes from Debian's `prometheus` package "
    "(apt-get update && apt-get install -y --no-install-recommends prometheus)"
)


# --- helpers: compose ----------------------------------------------------------------------

_INTERPOLATION = re.compile(
    r"\$\$|\$\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?+])(?P<arg>[^}]*))?\}"
    r"|\$(?P<bare>[A-Za-z_][A-Za-z0-9_]*)"
)


class MissingVariable(Exception):
    pass


def interpolate(value: str, env: dict[str, str]) -> str:
    """Compose's variable interpolation: $$, ${V}, ${V:-d}, ${V-d}, ${V:?e}, ${V?e}, ${V:+a}."""

    def substitute(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group("braced") or match.group("bare")
        op, arg = match.group("op"), match.group("arg") or ""
        is_set = name in env
        usable = is_set and (env[name] != "" or not (op or "").startswith(":"))
        if op in (":?", "?") and not usable:
            raise MissingVariable(f"{name}: {arg}")
        if op in (":-", "-"):
            return env[name] if usable else arg
        if op in (":+", "+"):
            return arg if usable else ""
        return env.get(name, "")

    return _INTERPOLATION.sub(substitute, value)


def interpolate_tree(node: Any, env: dict[str, str]) -> Any:
    if isinstance(node, str):
        return interpolate(node, env)
    if isinstance(node, dict):
        return {key: interpolate_tree(value, env) for key, value in node.items()}
    if isinstance(node, list):
        return [interpolate_tree(value, env) for value in node]
    return node


def load_compose(env: dict[str, str] | None = None) -> dict[str, Any]:
    raw = yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))
    return interpolate_tree(raw, TEST_ENV if env is None else env)


def environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {str(key): "" if value is None else str(value) for key, value in env.items()}


def as_argv(value: str | list[str] | None) -> list[str]:
    if value is None:
        return []
    return shlex.split(value) if isinstance(value, str) else [str(item) for item in value]


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    joined = re.sub(r"\\\n", " ", DOCKERFILE.read_text(encoding="utf-8"))
    pairs = []
    for line in joined.splitlines():
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            instruction, _, args = stripped.partition(" ")
            pairs.append((instruction.upper(), args.strip()))
    return pairs


def final_stage() -> list[tuple[str, str]]:
    instructions = dockerfile_instructions()
    last_from = max(i for i, (name, _) in enumerate(instructions) if name == "FROM")
    return instructions[last_from:]


def image_entrypoint() -> list[str]:
    entrypoints = [args for name, args in final_stage() if name == "ENTRYPOINT"]
    assert entrypoints, "the Dockerfile's final stage has no ENTRYPOINT"
    return json.loads(entrypoints[-1])


def argv_of(service: dict[str, Any]) -> list[str]:
    """What the container runs: its entrypoint (or our image's) followed by its command.

    Services without `build` run a third-party image whose entrypoint is not known here."""
    entrypoint = service.get("entrypoint")
    if entrypoint is not None:
        base = as_argv(entrypoint)
    else:
        base = image_entrypoint() if "build" in service else []
    return base + as_argv(service.get("command"))


def code_services() -> tuple[str, ...]:
    try:
        from concord import worker
    except ModuleNotFoundError as exc:
        if exc.name != "concord.worker":
            raise
        return FALLBACK_SERVICES
    return tuple(worker.SERVICES)


def worker_services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The compose services that run `python -m concord.worker ...`, by service name."""
    return {
        name: service
        for name, service in compose["services"].items()
        if argv_of(service)[: len(WORKER_MODULE)] == WORKER_MODULE
    }


def web_port(service: dict[str, Any], settings_cls: type[BaseSettings]) -> int:
    default = settings_cls.model_fields["web_port"].default
    return int(environment(service).get("CONCORD_WEB_PORT", default))


def env_name(field: str) -> str:
    return f"CONCORD_{field.upper()}"


def depends_on(service: dict[str, Any]) -> dict[str, str]:
    deps = service.get("depends_on") or {}
    if isinstance(deps, list):
        return dict.fromkeys(deps, "service_started")
    return {name: (spec or {}).get("condition", "service_started") for name, spec in deps.items()}


def mount_target(service: dict[str, Any], source: str) -> str:
    for volume in service.get("volumes", []):
        parts = (
            volume.split(":") if isinstance(volume, str) else [volume["source"], volume["target"]]
        )
        if parts[0].rstrip("/") == source.rstrip("/"):
            return parts[1]
    raise AssertionError(f"{source} is not mounted")


# --- helpers: PromQL -------------------------------------------------------------------------

_STRING = re.compile(r'"(?:\\.|[^"\\])*"|\'(?:\\.|[^\'\\])*\'|`[^`]*`')
_IDENTIFIER = re.compile(r"(?<![A-Za-z0-9_:.$])[A-Za-z_:][A-Za-z0-9_:]*")
_MATCHER_LABEL = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)\s*(?:=~|!~|!=|=)")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
_LABEL_VALUE = re.compile(r'\b([A-Za-z_][A-Za-z0-9_]*)\s*(=~|!~|!=|=)\s*"((?:\\.|[^"\\])*)"')
_HISTOGRAM_SUFFIX = re.compile(r"_(?:bucket|sum|count)$")


def strip_strings(expr: str) -> str:
    return _STRING.sub('""', expr)


def metric_names(expr: str) -> set[str]:
    """concord_* series names in an expression (histogram suffixes stripped)."""
    names = set()
    for token in _IDENTIFIER.findall(strip_strings(expr)):
        if token.startswith("concord_") and ":" not in token:
            names.add(token if token in EXPORTED_METRICS else _HISTOGRAM_SUFFIX.sub("", token))
    return names


def recording_names_used(expr: str) -> set[str]:
    return {token for token in _IDENTIFIER.findall(strip_strings(expr)) if ":" in token}


def label_names(expr: str) -> set[str]:
    bare = strip_strings(expr)
    names: set[str] = set()
    for selector in re.findall(r"\{([^{}]*)\}", bare):
        names.update(_MATCHER_LABEL.findall(selector))
    for grouping in _GROUPING.findall(bare):
        names.update(part.strip() for part in grouping.split(",") if part.strip())
    return names


def label_values(expr: str) -> Iterator[tuple[str, str, str]]:
    """(label, operator, value) of every matcher with a string value, escapes undone."""
    for label, op, value in _LABEL_VALUE.findall(expr):
        yield label, op, re.sub(r"\\(.)", r"\1", value)


def load_rules() -> dict[str, Any]:
    return yaml.safe_load(RULES_FILE.read_text(encoding="utf-8"))


def all_rules() -> list[dict[str, Any]]:
    return [rule for group in load_rules()["groups"] for rule in group["rules"]]


def recording_rules() -> dict[str, list[str]]:
    records: dict[str, list[str]] = {}
    for rule in all_rules():
        if "record" in rule:
            records.setdefault(rule["record"], []).append(rule["expr"])
    return records


def load_dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD_FILE.read_text(encoding="utf-8"))


def dashboard_panels() -> list[dict[str, Any]]:
    panels = []
    for panel in load_dashboard()["panels"]:
        panels.append(panel)
        panels.extend(panel.get("panels", []))  # collapsed rows
    return panels


def dashboard_exprs() -> list[str]:
    return [
        target["expr"]
        for panel in dashboard_panels()
        for target in panel.get("targets", [])
        if target.get("expr")
    ]


def rule_exprs() -> list[str]:
    return [rule["expr"] for rule in all_rules()]


def underlying_metrics(expr: str, seen: frozenset[str] = frozenset()) -> set[str]:
    """The exported metrics an expression reads, through recording rules."""
    names = metric_names(expr)
    records = recording_rules()
    for record in recording_names_used(expr) - seen:
        for record_expr in records.get(record, []):
            names |= underlying_metrics(record_expr, seen | {record})
    return names


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return load_compose()


@pytest.fixture(scope="module")
def services() -> tuple[str, ...]:
    return code_services()


@pytest.fixture(scope="module")
def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail(PROMTOOL_HINT)
    return path


# --- compose: the workers ---------------------------------------------------------------------


def test_settings_map_covers_the_code_services(services: tuple[str, ...]) -> None:
    assert set(services) == set(SETTINGS)


def test_one_compose_worker_per_code_service(
    compose: dict[str, Any], services: tuple[str, ...]
) -> None:
    workers = worker_services(compose)
    assert set(workers) == set(services)
    for name, service in workers.items():
        assert argv_of(service) == [*WORKER_MODULE, name], f"{name} runs {argv_of(service)}"


def test_workers_differ_only_in_command_and_environment(compose: dict[str, Any]) -> None:
    allowed_to_differ = {"command", "environment", "depends_on", "ports", "volumes"}
    shapes = {
        name: {key: value for key, value in service.items() if key not in allowed_to_differ}
        for name, service in worker_services(compose).items()
    }
    first = next(iter(shapes.values()))
    assert first.get("build"), "the workers are built from the repository's Dockerfile"
    assert Path(first["build"].get("context", ".")) == Path()
    assert first["build"].get("dockerfile", "Dockerfile") == "Dockerfile"
    for name, shape in shapes.items():
        assert shape == first, f"{name} differs from the other workers beyond command and env"


@pytest.mark.parametrize("name", sorted(SETTINGS))
def test_worker_env_vars_are_settings_fields(compose: dict[str, Any], name: str) -> None:
    service = compose["services"][name]
    fields = set(SETTINGS[name].model_fields)
    for key in environment(service):
        if OTHER_WORKER_ENV.fullmatch(key):
            continue
        assert key.startswith("CONCORD_"), f"{name}: {key} is neither a Concord setting nor known"
        field = key.removeprefix("CONCORD_").lower()
        assert field in fields, f"{name}: {key} is no field of {SETTINGS[name].__name__}"


@pytest.mark.parametrize("name", sorted(SETTINGS))
def test_worker_required_settings_are_provided(compose: dict[str, Any], name: str) -> None:
    env = environment(compose["services"][name])
    required = [f for f, info in SETTINGS[name].model_fields.items() if info.is_required()]
    for field in required:
        assert env.get(env_name(field)), f"{name}: required {env_name(field)} is not set"


@pytest.mark.parametrize("name", sorted(SETTINGS))
def test_worker_settings_load_from_the_compose_environment(
    compose: dict[str, Any], name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for key in list(os.environ):
        if key.startswith("CONCORD_"):
            monkeypatch.delenv(key)
    env = environment(compose["services"][name])
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    settings: Any = SETTINGS[name](_env_file=None)  # type: ignore[call-arg]
    assert settings.web_host == "0.0.0.0"  # noqa: S104 - reachable by Prometheus and healthcheck
    assert settings.bootstrap_servers == "kafka:19092"


def published(service: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(host interface, host port, container port) of each `ports:` entry; "" for no
    interface, which Docker reads as every interface."""
    mappings = []
    for entry in service.get("ports", []):
        if isinstance(entry, dict):
            mappings.append(
                (str(entry.get("host_ip", "")), str(entry["published"]), str(entry["target"]))
            )
            continue
        parts = str(entry).rsplit(":", 2)
        interface, host, target = ["", *parts] if len(parts) == 2 else parts
        mappings.append((interface, host, target))
    return mappings


def test_every_published_port_binds_loopback_by_default(compose: dict[str, Any]) -> None:
    """Nothing is reachable from another machine until a variable names an interface: MLLP
    included, whose port accepts PHI and writes records as the source it is configured for."""
    for name, service in compose["services"].items():
        for interface, host, target in published(service):
            assert interface == "127.0.0.1", f"{name} publishes {host}->{target} on {interface!r}"


def test_mllp_is_published_where_its_variables_say() -> None:
    env = {**TEST_ENV, "MLLP_BIND": "10.0.0.5", "MLLP_PORT": "12575"}
    ingestion = load_compose(env)["services"]["ingestion"]
    assert published(ingestion) == [("10.0.0.5", "12575", "2575")]


def test_mllp_is_off_in_compose_until_configured(compose: dict[str, Any]) -> None:
    """The listener needs a source to record messages under and TLS (its container address is
    not loopback): neither can be shipped, so compose leaves it off."""
    assert environment(compose["services"]["ingestion"])["CONCORD_MLLP_ENABLED"] == "false"


def test_mllp_enabled_in_compose_without_tls_does_not_start(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for key in list(os.environ):
        if key.startswith("CONCORD_"):
            monkeypatch.delenv(key)
    compose = load_compose({**TEST_ENV, "MLLP_ENABLED": "true"})
    for key, value in environment(compose["services"]["ingestion"]).items():
        monkeypatch.setenv(key, value)
    with pytest.raises(config.SettingsProblem) as caught:
        config.load_settings(config.IngestionSettings)
    [line] = caught.value.lines
    for variable in (
        "CONCORD_MLLP_HOST",
        "CONCORD_MLLP_TLS_CERTFILE",
        "CONCORD_MLLP_INSECURE_PLAINTEXT",
    ):
        assert variable in line


def test_worker_mounts_are_read_only(compose: dict[str, Any]) -> None:
    for name, service in worker_services(compose).items():
        for volume in service.get("volumes", []):
            assert isinstance(volume, str) and volume.endswith(":ro"), (name, volume)


def test_conflicts_runs_the_built_in_policy_it_mounts(compose: dict[str, Any]) -> None:
    conflicts = compose["services"]["conflicts"]
    target = mount_target(conflicts, "./services/concord/conflicts/default_policy.yaml")
    assert environment(conflicts)["CONCORD_POLICY_PATH"] == target


def test_database_workers_wait_for_migrations(compose: dict[str, Any]) -> None:
    for name, service in worker_services(compose).items():
        deps = depends_on(service)
        assert deps.get("kafka") == "service_healthy", name
        assert deps.get("init-topics") == "service_completed_successfully", name
        if "database_url" in SETTINGS[name].model_fields:
            assert deps.get("postgres") == "service_healthy", name
            assert deps.get("migrate") == "service_completed_successfully", name


def test_worker_healthchecks_hit_health_on_the_web_port(compose: dict[str, Any]) -> None:
    for name, service in worker_services(compose).items():
        check = " ".join(as_argv(service["healthcheck"]["test"]))
        port = web_port(service, SETTINGS[name])
        assert re.search(rf"(127\.0\.0\.1|localhost):{port}/health\b", check), (name, check)


# --- compose: the review service -------------------------------------------------------------

REVIEW_MODULE = ["python", "-m", "concord.review"]
REVIEW_PORT = 8480


def review_service(compose: dict[str, Any]) -> dict[str, Any]:
    service: dict[str, Any] = compose["services"]["review"]
    return service


def test_review_runs_the_review_module_from_the_workers_image(compose: dict[str, Any]) -> None:
    review = review_service(compose)
    assert argv_of(review) == REVIEW_MODULE
    assert "review" not in worker_services(compose), "the review service is no stream worker"
    worker = next(iter(worker_services(compose).values()))
    for key in ("build", "image"):
        assert review[key] == worker[key], key


def test_review_is_hardened_like_the_workers(compose: dict[str, Any]) -> None:
    review = review_service(compose)
    worker = next(iter(worker_services(compose).values()))
    for key in ("security_opt", "cap_drop", "init", "restart", "stop_grace_period", "logging"):
        assert review.get(key) == worker.get(key), key
    assert "no-new-privileges:true" in review["security_opt"]
    assert review["cap_drop"] == ["ALL"]
    assert "user" not in review and "privileged" not in review  # the image's unprivileged user
    for volume in review.get("volumes", []):
        assert isinstance(volume, str) and volume.endswith(":ro"), volume


def test_review_env_vars_are_its_settings_and_never_the_local_key(compose: dict[str, Any]) -> None:
    env = environment(review_service(compose))
    fields = set(config.ReviewSettings.model_fields)
    for key in env:
        if OTHER_WORKER_ENV.fullmatch(key):
            continue
        assert key.startswith("CONCORD_"), key
        assert key.removeprefix("CONCORD_").lower() in fields, f"{key}: no ReviewSettings field"
    required = [f for f, info in config.ReviewSettings.model_fields.items() if info.is_required()]
    for field in required:
        assert env.get(env_name(field)), f"required {env_name(field)} is not set"
    # The local stack's signing key would accept tokens nobody's identity provider issued.
    assert "CONCORD_LOCAL_KEY_PATH" not in env
    assert env["CONCORD_OIDC_ISSUER"] == TEST_ENV["OIDC_ISSUER"]
    assert (
        env["CONCORD_DATABASE_URL"]
        == environment(compose["services"]["alerting"])["CONCORD_DATABASE_URL"]
    )


def test_review_settings_load_from_the_compose_environment(
    compose: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    from concord.review.auth import TokenVerifier

    for key in list(os.environ):
        if key.startswith("CONCORD_"):
            monkeypatch.delenv(key)
    for key, value in environment(review_service(compose)).items():
        monkeypatch.setenv(key, value)
    settings = config.load_settings(config.ReviewSettings)
    assert settings.review_host == "0.0.0.0"  # noqa: S104 - reachable by the proxy and Prometheus
    assert settings.review_port == REVIEW_PORT
    assert settings.bootstrap_servers == "kafka:19092"
    assert settings.local_key_path is None
    verifier = TokenVerifier.from_settings(settings)  # a configuration it would start with
    assert verifier.accepted_issuers == [TEST_ENV["OIDC_ISSUER"]]


def test_review_needs_the_identity_providers_issuer_and_the_workers_do_not(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from concord.review.auth import TokenVerifier, VerifierConfigError

    env = {key: value for key, value in TEST_ENV.items() if key != "OIDC_ISSUER"}
    without = load_compose(env)  # the workers start without one
    for key in list(os.environ):
        if key.startswith("CONCORD_"):
            monkeypatch.delenv(key)
    for key, value in environment(without["services"]["review"]).items():
        monkeypatch.setenv(key, value)
    settings = config.load_settings(config.ReviewSettings)
    assert settings.oidc_issuer is None
    with pytest.raises(VerifierConfigError, match="CONCORD_OIDC_ISSUER"):
        TokenVerifier.from_settings(settings)
    audience = {**TEST_ENV, "OIDC_AUDIENCE": "api://concord", "OIDC_ROLE_CLAIM": "roles"}
    env_of = environment(load_compose(audience)["services"]["review"])
    assert (env_of["CONCORD_OIDC_AUDIENCE"], env_of["CONCORD_OIDC_ROLE_CLAIM"]) == (
        "api://concord", "roles",
    )  # fmt: skip


def test_review_waits_for_the_database_and_the_topics(compose: dict[str, Any]) -> None:
    deps = depends_on(review_service(compose))
    assert deps.get("postgres") == "service_healthy"
    assert deps.get("migrate") == "service_completed_successfully"  # it never migrates
    assert deps.get("kafka") == "service_healthy"
    assert deps.get("init-topics") == "service_completed_successfully"


def test_review_healthcheck_hits_health_on_its_port(compose: dict[str, Any]) -> None:
    check = " ".join(as_argv(review_service(compose)["healthcheck"]["test"]))
    assert re.search(rf"(127\.0\.0\.1|localhost):{REVIEW_PORT}/health\b", check), check


def test_review_is_published_on_loopback_unless_its_variables_say() -> None:
    assert published(review_service(load_compose())) == [("127.0.0.1", "8480", str(REVIEW_PORT))]
    env = {**TEST_ENV, "REVIEW_BIND": "10.0.0.7", "REVIEW_PORT": "18480"}
    assert published(load_compose(env)["services"]["review"]) == [
        ("10.0.0.7", "18480", str(REVIEW_PORT))
    ]


# --- compose: init jobs, Kafka, PostgreSQL, secrets ------------------------------------------


def test_init_services_run_the_cli_once(compose: dict[str, Any]) -> None:
    init_topics, migrate = compose["services"]["init-topics"], compose["services"]["migrate"]
    assert argv_of(init_topics) == ["concord", "topics", "create"]
    assert argv_of(migrate) == ["concord", "db", "migrate"]
    client_fields = set(config.ClientSettings.model_fields)
    for service in (init_topics, migrate):
        assert str(service.get("restart", "no")) == "no"
        for key in environment(service):
            assert key.removeprefix("CONCORD_").lower() in client_fields, key
    workers = worker_services(compose)
    assert environment(init_topics)["CONCORD_BOOTSTRAP_SERVERS"] == "kafka:19092"
    for name in ("conflicts", "alerting"):
        worker_dsn = environment(workers[name])["CONCORD_DATABASE_URL"]
        assert environment(migrate)["CONCORD_DATABASE_URL"] == worker_dsn


def cli_accepts(words: list[str]) -> bool:
    """Whether `concord WORDS...` names a command: subcommands, then Choice arguments."""
    import click

    from concord.cli import main

    command: click.Command = main
    for word in words:
        if isinstance(command, click.Group) and word in command.commands:
            command = command.commands[word]
            continue
        choices = [
            param.type.choices
            for param in command.params
            if isinstance(param, click.Argument) and isinstance(param.type, click.Choice)
        ]
        if not any(word in options for options in choices):
            return False
    return True


def test_cli_has_the_init_commands(compose: dict[str, Any]) -> None:
    from concord.cli import main

    for name in ("init-topics", "migrate"):
        argv = argv_of(compose["services"][name])
        assert argv[0] == "concord" and cli_accepts(argv[1:]), argv
        result = CliRunner().invoke(main, [*argv[1:], "--help"])
        assert result.exit_code == 0, result.output
    assert not cli_accepts(["topics", "no-such-action"])


def test_kafka_is_kraft_with_auto_create_disabled(compose: dict[str, Any]) -> None:
    kafka = compose["services"]["kafka"]
    env = environment(kafka)
    assert kafka["image"].startswith("apache/kafka:")
    assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    assert "KAFKA_ZOOKEEPER_CONNECT" not in env
    assert env["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"
    assert env["KAFKA_CONTROLLER_QUORUM_VOTERS"].startswith(f"{env['KAFKA_NODE_ID']}@")
    cluster_id = env["CLUSTER_ID"]
    assert len(base64.urlsafe_b64decode(cluster_id + "==")) == 16, "CLUSTER_ID: a base64 UUID"
    assert kafka["healthcheck"]["test"]


def test_workers_bootstrap_from_an_advertised_listener(compose: dict[str, Any]) -> None:
    env = environment(compose["services"]["kafka"])
    advertised = dict(
        reversed(item.split("://", 1)) for item in env["KAFKA_ADVERTISED_LISTENERS"].split(",")
    )
    listeners = {
        name: address.rsplit(":", 1)[1]
        for name, address in (item.split("://", 1) for item in env["KAFKA_LISTENERS"].split(","))
    }
    protocols = dict(
        item.split(":") for item in env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(",")
    )
    for name, service in worker_services(compose).items():
        for server in environment(service)["CONCORD_BOOTSTRAP_SERVERS"].split(","):
            assert server in advertised, f"{name}: {server} is not an advertised listener"
            listener = advertised[server]
            assert listeners[listener] == server.rsplit(":", 1)[1]
            assert listener in protocols


def test_topic_partition_counts_are_the_codes() -> None:
    # init-topics creates ALL_TOPICS; nothing in the compose file may override the counts.
    env = environment(load_compose()["services"]["kafka"])
    assert "KAFKA_NUM_PARTITIONS" not in env
    assert all(spec.partitions >= 1 for spec in topics.ALL_TOPICS)


def test_postgres_service_matches_the_dsn(compose: dict[str, Any]) -> None:
    postgres = compose["services"]["postgres"]
    major = int(re.search(r":(\d+)", postgres["image"]).group(1))  # type: ignore[union-attr]
    assert major >= 16
    data_dir = "/var/lib/postgresql" if major >= 18 else "/var/lib/postgresql/data"
    assert any(str(volume).endswith(f":{data_dir}") for volume in postgres["volumes"])
    assert "pg_isready" in " ".join(as_argv(postgres["healthcheck"]["test"]))
    env = environment(postgres)
    dsn = urlsplit(environment(compose["services"]["conflicts"])["CONCORD_DATABASE_URL"])
    assert (dsn.hostname, dsn.port or 5432) == ("postgres", 5432)
    assert dsn.username == env["POSTGRES_USER"]
    assert dsn.password == env["POSTGRES_PASSWORD"] == TEST_ENV["POSTGRES_PASSWORD"]
    assert dsn.path.lstrip("/") == env["POSTGRES_DB"]


def test_secrets_are_required_variables_never_values() -> None:
    raw = yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))
    for name, service in raw["services"].items():
        for key, value in environment(service).items():
            if re.search(r"PASSWORD|SECRET|TOKEN", key):
                assert re.fullmatch(r"\$\{[A-Z0-9_]+:\?[^}]+\}", value), f"{name}: {key}={value}"
    for variable in REQUIRED_ENV:
        env = {key: value for key, value in TEST_ENV.items() if key != variable}
        with pytest.raises(MissingVariable, match=variable):
            load_compose(env)


# --- Dockerfile -------------------------------------------------------------------------------


def test_dockerfile_builds_a_non_root_worker_image() -> None:
    instructions = dockerfile_instructions()
    args = dict(arg.split("=", 1) for name, arg in instructions if name == "ARG" and "=" in arg)
    stage = final_stage()
    base = interpolate(stage[0][1].split()[0], args)
    assert base.startswith("python:3.11-slim"), base
    users = [arg for name, arg in stage if name == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    assert image_entrypoint() == WORKER_MODULE
    env = " ".join(arg for name, arg in stage if name == "ENV")
    schema_dir = re.search(r"CONCORD_SCHEMA_DIR=(\S+)", env)
    assert schema_dir, "the image must tell the codec where schemas/ is"
    copies = [arg.split() for name, arg in stage if name == "COPY"]
    assert ["schemas", schema_dir.group(1)] in copies


def test_dockerfile_copies_only_what_exists() -> None:
    for name, arg in dockerfile_instructions():
        if name != "COPY" or arg.startswith("--from"):
            continue
        for source in arg.split()[:-1]:
            if "*" not in source:
                assert (ROOT / source).exists(), f"COPY {source}: no such file"
    ignored = DOCKERIGNORE.read_text(encoding="utf-8").splitlines()
    assert "*" in ignored or ".env" in ignored, ".env files must stay out of the build context"


# --- Prometheus -------------------------------------------------------------------------------


def scrape_targets() -> dict[str, set[str]]:
    """job name -> the host:port targets it scrapes (DNS names with their port)."""
    prometheus = yaml.safe_load(PROMETHEUS_CONFIG.read_text(encoding="utf-8"))
    jobs: dict[str, set[str]] = {}
    for job in prometheus["scrape_configs"]:
        assert job.get("metrics_path", "/metrics") == "/metrics"
        targets = jobs.setdefault(job["job_name"], set())
        for static in job.get("static_configs", []):
            targets.update(static["targets"])
        for dns in job.get("dns_sd_configs", []):
            targets.update(f"{host}:{dns['port']}" for host in dns["names"])
    return jobs


def test_prometheus_scrapes_every_worker_on_its_port(compose: dict[str, Any]) -> None:
    jobs = scrape_targets()
    for name, service in worker_services(compose).items():
        target = f"{name}:{web_port(service, SETTINGS[name])}"
        assert target in jobs.get(f"concord-{name}", set()), f"no job concord-{name} on {target}"


def test_prometheus_scrapes_the_review_service_on_its_port(compose: dict[str, Any]) -> None:
    port = environment(review_service(compose))["CONCORD_REVIEW_PORT"]
    assert f"review:{port}" in scrape_targets().get("concord-review", set())


def test_prometheus_mounts_its_config_and_rules(compose: dict[str, Any]) -> None:
    prometheus = compose["services"]["prometheus"]
    target = mount_target(prometheus, "./deploy/prometheus")
    assert f"--config.file={target}/prometheus.yml" in as_argv(prometheus["command"])
    rule_files = yaml.safe_load(PROMETHEUS_CONFIG.read_text(encoding="utf-8"))["rule_files"]
    matched = [p for pattern in rule_files for p in PROMETHEUS_CONFIG.parent.glob(pattern)]
    assert RULES_FILE in matched


def test_rules_and_dashboard_use_only_exported_metrics() -> None:
    for expr in rule_exprs() + dashboard_exprs():
        unknown = metric_names(expr) - EXPORTED_METRICS
        assert not unknown, f"{sorted(unknown)} in {expr!r}"


def test_recording_rules_used_are_defined() -> None:
    defined = set(recording_rules())
    for expr in rule_exprs() + dashboard_exprs():
        missing = recording_names_used(expr) - defined
        assert not missing, f"{sorted(missing)} in {expr!r}"


def test_metrics_module_exports_the_names() -> None:
    from prometheus_client.metrics import MetricWrapperBase

    from concord import metrics

    exported = set()
    for value in vars(metrics).values():
        if isinstance(value, MetricWrapperBase):
            for family in value.describe():
                suffix = "_total" if family.type == "counter" else ""
                exported.add(family.name + suffix)
        elif isinstance(value, str) and value.startswith("concord_"):
            exported.add(value)
    assert exported == WORKER_METRICS


def test_review_metrics_module_exports_the_names() -> None:
    from prometheus_client.metrics import MetricWrapperBase

    from concord.review import metrics

    exported = set()
    for value in vars(metrics).values():
        if isinstance(value, MetricWrapperBase):
            for family in value.describe():
                exported.add(family.name + ("_total" if family.type == "counter" else ""))
    assert exported == REVIEW_METRICS


def used_labels() -> Iterator[tuple[str, str]]:
    """(where, label name) for every label the rules and the dashboard name."""
    for rule in all_rules():
        where = rule.get("alert") or rule["record"]
        for label in label_names(rule["expr"]) | set(rule.get("labels", {})):
            yield where, label
        for text in rule.get("annotations", {}).values():
            for label in re.findall(r"\$labels\.([A-Za-z_][A-Za-z0-9_]*)", text):
                yield where, label
    for panel in dashboard_panels():
        for target in panel.get("targets", []):
            for label in label_names(target.get("expr", "")):
                yield panel["title"], label
            for label in re.findall(
                r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}", target.get("legendFormat", "")
            ):
                yield panel["title"], label


def test_no_phi_labels_in_rules_or_dashboard() -> None:
    for where, label in used_labels():
        assert not PHI_LIKE_LABEL.search(label), f"{where}: label {label!r} may carry PHI"
        assert label in ALLOWED_LABELS, f"{where}: unexpected label {label!r}"


def test_label_values_name_real_stages_topics_and_jobs(services: tuple[str, ...]) -> None:
    known = {
        "stage": set(services),
        "topic": {spec.name for spec in topics.ALL_TOPICS},
        "job": set(scrape_targets()),
        "since": {"received", "event"},
    }
    for expr in rule_exprs() + dashboard_exprs():
        for label, op, value in label_values(expr):
            if label not in known:
                continue
            if op == "=":
                assert value in known[label], f"{label}={value!r} in {expr!r}"
            elif op == "=~":
                assert any(re.fullmatch(value, v) for v in known[label]), (label, value, expr)


def test_every_worker_job_is_watched(services: tuple[str, ...]) -> None:
    rules = {rule["alert"]: rule["expr"] for rule in all_rules() if "alert" in rule}
    job_regex = next(
        v for label, _, v in label_values(rules["ConcordWorkerDown"]) if label == "job"
    )
    for service in services:
        assert re.fullmatch(job_regex, f"concord-{service}")
        assert f'up{{job="concord-{service}"}}' in rules["ConcordWorkerMissing"]


def test_the_review_service_is_watched_apart_from_the_workers() -> None:
    rules = {rule["alert"]: rule["expr"] for rule in all_rules() if "alert" in rule}
    assert 'up{job="concord-review"}' in rules["ConcordReviewServiceDown"]
    assert 'absent(up{job="concord-review"})' in rules["ConcordReviewServiceDown"]
    # ConcordWorkerDown names workers: the review service has an alert of its own.
    matchers = [
        (op, v) for label, op, v in label_values(rules["ConcordWorkerDown"]) if label == "job"
    ]
    assert ("!=", "concord-review") in matchers
    assert "concord-review" not in rules["ConcordWorkerMissing"]


def test_every_review_metric_is_in_a_rule_or_on_the_dashboard() -> None:
    used: set[str] = set()
    for expr in rule_exprs() + dashboard_exprs():
        used |= underlying_metrics(expr)
    assert sorted(REVIEW_METRICS - used) == []


# --- Grafana ----------------------------------------------------------------------------------


def test_dashboard_is_valid_and_provisioned(compose: dict[str, Any]) -> None:
    dashboard = load_dashboard()
    assert dashboard["uid"] and dashboard["title"] and dashboard.get("id") is None
    datasource = yaml.safe_load(DATASOURCE_FILE.read_text(encoding="utf-8"))["datasources"][0]
    assert datasource["type"] == "prometheus"
    assert urlsplit(datasource["url"]).netloc == "prometheus:9090"
    assert "prometheus" in compose["services"]
    ids = [panel["id"] for panel in dashboard_panels()]
    assert len(ids) == len(set(ids))
    for panel in dashboard_panels():
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24 and grid["h"] > 0, panel["title"]
        for item in [panel, *panel.get("targets", [])]:
            assert item["datasource"]["uid"] == datasource["uid"], panel["title"]
    provider = yaml.safe_load(DASHBOARD_PROVIDER_FILE.read_text(encoding="utf-8"))["providers"][0]
    grafana = compose["services"]["grafana"]
    assert mount_target(grafana, "./deploy/grafana/dashboards") == provider["options"]["path"]
    home = environment(grafana).get("GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH")
    assert home in (None, f"{provider['options']['path']}/{DASHBOARD_FILE.name}")
    for folder in ("datasources", "dashboards"):
        target = mount_target(grafana, f"./deploy/grafana/provisioning/{folder}")
        assert target == f"/etc/grafana/provisioning/{folder}"


def test_dashboard_has_the_sre_panels() -> None:
    wanted = {
        "throughput": {"concord_events_consumed_total", "concord_events_produced_total"},
        "dead letters": {"concord_events_deadlettered_total"},
        "lag": {"concord_consumer_lag"},
        "latency": {"concord_alert_latency_seconds"},
        "open alerts": {"concord_alerts_open"},
        "outbox": {"concord_outbox_pending"},
    }
    shown = set()
    quantiles = set()
    for panel in dashboard_panels():
        for expr in [t["expr"] for t in panel.get("targets", []) if t.get("expr")]:
            shown |= underlying_metrics(expr)
            if "concord_alert_latency_seconds" in underlying_metrics(expr):
                quantiles |= {v for label, _, v in label_values(expr) if label == "quantile"}
    for panel_kind, metric_set in wanted.items():
        assert metric_set <= shown, f"no {panel_kind} panel"
    assert {"0.5", "0.99"} <= quantiles, "event-to-alert latency: p50 and p99"


def test_dashboard_has_the_review_row() -> None:
    panels = load_dashboard()["panels"]
    [row] = [p for p in panels if p["type"] == "row" and p["title"] == "Review"]
    below = [p for p in panels if p["gridPos"]["y"] > row["gridPos"]["y"]]
    wanted = {
        "backlog by age": {"concord_review_alerts_open"},
        "time to acknowledge and decide": {
            "concord_review_acknowledge_seconds",
            "concord_review_resolve_seconds",
        },
        "decisions and corrections": {
            "concord_review_decisions_total",
            "concord_review_corrections_total",
        },
        "dismissals": {"concord_review_dismissals_total"},
        "identity tasks": {"concord_review_identity_tasks"},
        "refresh failures": {"concord_review_refresh_failures_total"},
    }
    shown: set[str] = set()
    groupings: set[str] = set()
    for panel in below:
        for expr in [t["expr"] for t in panel.get("targets", []) if t.get("expr")]:
            shown |= underlying_metrics(expr)
            if "concord_review_alerts_open" in underlying_metrics(expr):
                groupings |= label_names(expr)
    for panel_kind, metric_set in wanted.items():
        assert metric_set <= shown, f"no {panel_kind} panel in the review row"
    assert "age_bucket" in groupings, "the backlog by age bucket"
    exprs = [t["expr"] for p in below for t in p.get("targets", [])]
    assert any('up{job="concord-review"}' in expr for expr in exprs)


# --- promtool ---------------------------------------------------------------------------------


def run_promtool(promtool: str, *args: str | Path) -> str:
    result = subprocess.run(
        [promtool, *map(str, args)], capture_output=True, text=True, timeout=120, check=False
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    return output


def test_promtool_checks_the_rules(promtool: str) -> None:
    run_promtool(promtool, "check", "rules", RULES_FILE)


def test_promtool_checks_the_config(promtool: str) -> None:
    output = run_promtool(promtool, "check", "config", PROMETHEUS_CONFIG)
    assert "1 rule files found" in output


def test_dashboard_queries_parse(promtool: str, tmp_path: Path) -> None:
    """Each dashboard query, as a recording rule, must pass promtool's PromQL parser."""
    rules = [
        {"record": f"dashboard:query_{i}:check", "expr": re.sub(r"\$__\w+", "5m", expr)}
        for i, expr in enumerate(dashboard_exprs())
    ]
    path = tmp_path / "dashboard.rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    run_promtool(promtool, "check", "rules", path)


def series(metric: str, labels: dict[str, str], values: str) -> dict[str, str]:
    selector = ", ".join(f'{key}="{value}"' for key, value in labels.items())
    return {"series": f"{metric}{{{selector}}}", "values": values}


def expect(at: str, alert: str, *label_sets: dict[str, str]) -> dict[str, Any]:
    return {
        "eval_time": at,
        "alertname": alert,
        "exp_alerts": [{"exp_labels": s} for s in label_sets],
    }


def alert_scenarios(services: tuple[str, ...]) -> list[dict[str, Any]]:
    """promtool unit tests: each alert fires when it should, and not when it should not."""
    consumed, produced = "concord_events_consumed_total", "concord_events_produced_total"
    latency = "concord_alert_latency_seconds_bucket"

    def slow(since: str) -> list[dict[str, str]]:
        buckets = [("1", "0x30"), ("30", "0x30"), ("60", "0+10x30"), ("+Inf", "0+10x30")]
        return [series(latency, {"since": since, "le": le}, v) for le, v in buckets]

    def fast(since: str) -> list[dict[str, str]]:
        buckets = [("1", "0+10x30"), ("30", "0+10x30"), ("+Inf", "0+10x30")]
        return [series(latency, {"since": since, "le": le}, v) for le, v in buckets]

    ingestion_raw = {"stage": "ingestion", "topic": topics.RAW_FHIR}
    review = "10.0.0.9:8480"
    review_down = {"job": "concord-review", "severity": "critical"}
    alerts_open = "concord_review_alerts_open"
    refreshed = "concord_review_refresh_timestamp_seconds"

    def waiting(kind: str, severity: str, status: str, age: str) -> dict[str, str]:
        labels = {"kind": kind, "severity": severity, "status": status, "age_bucket": age}
        return {**labels, "instance": review}

    missing = [{"job": f"concord-{s}", "severity": "critical"} for s in services[1:]]
    return [
        {  # dead letters: 1/s after 70 quiet minutes, 2% of a 50/s input
            "interval": "1m",
            "input_series": [
                series(
                    "concord_events_deadlettered_total",
                    {"stage": "ingestion", "reason_code": "invalid_json"},
                    "0x70 0+60x30",
                ),
                series(consumed, ingestion_raw, "0+3000x100"),
            ],
            "alert_rule_test": [
                expect("60m", "ConcordDeadLettersRising"),
                expect(
                    "95m",
                    "ConcordDeadLettersRising",
                    {"stage": "ingestion", "reason_code": "invalid_json", "severity": "warning"},
                ),
                expect(
                    "95m",
                    "ConcordDeadLetterRatioHigh",
                    {"stage": "ingestion", "severity": "warning"},
                ),
            ],
        },
        {  # the raw topics receive (lag grows) while ingestion consumes nothing
            "interval": "1m",
            "input_series": [
                series("concord_consumer_lag", {**ingestion_raw, "partition": "0"}, "0+100x40"),
                series(consumed, ingestion_raw, "0x40"),
            ],
            "alert_rule_test": [
                expect(
                    "30m",
                    "ConcordRawEventsNotConsumed",
                    {"stage": "ingestion", "severity": "critical"},
                ),
                expect(
                    "30m", "ConcordConsumerLagGrowing", {**ingestion_raw, "severity": "warning"}
                ),
                expect("30m", "ConcordConsumerLagHigh"),
            ],
        },
        {  # ingestion produces to concord.ingested, normalization consumes none; the rest flows
            "interval": "1m",
            "input_series": [
                series(produced, {"stage": "ingestion", "topic": topics.INGESTED}, "0+600x40"),
                series(consumed, {"stage": "normalization", "topic": topics.INGESTED}, "0x40"),
                series(produced, {"stage": "normalization", "topic": topics.FACTS}, "0+600x40"),
                series(consumed, {"stage": "conflicts", "topic": topics.FACTS}, "0+600x40"),
                series(produced, {"stage": "alerting", "topic": topics.ALERTS}, "0+60x40"),
            ],
            "alert_rule_test": [
                expect(
                    "30m",
                    "ConcordTopicNotConsumed",
                    {"topic": topics.INGESTED, "severity": "critical"},
                ),
            ],
        },
        {  # p99 since receipt between 30 and 60 s; since the source's event time it may be late
            "interval": "1m",
            "input_series": slow("received") + fast("event"),
            "alert_rule_test": [
                expect(
                    "25m",
                    "ConcordAlertLatencyHigh",
                    {"since": "received", "quantile": "0.99", "severity": "critical"},
                ),
            ],
        },
        {  # only the source is slow: no alert
            "interval": "1m",
            "input_series": fast("received") + slow("event"),
            "alert_rule_test": [expect("25m", "ConcordAlertLatencyHigh")],
        },
        {  # one worker fails its scrapes, the others have no replica at all
            "interval": "1m",
            "input_series": [
                series(
                    "up", {"job": f"concord-{services[0]}", "instance": "10.0.0.5:6066"}, "0x10"
                ),
            ],
            "alert_rule_test": [
                expect(
                    "6m",
                    "ConcordWorkerDown",
                    {
                        "job": f"concord-{services[0]}",
                        "instance": "10.0.0.5:6066",
                        "severity": "critical",
                    },
                ),
                expect("6m", "ConcordWorkerMissing", *missing),
            ],
        },
        {  # the review service stops answering its scrapes; it is no worker
            "interval": "1m",
            "input_series": [
                series("up", {"job": "concord-review", "instance": review}, "1x5 0x10"),
            ],
            "alert_rule_test": [
                expect("4m", "ConcordReviewServiceDown"),
                expect("10m", "ConcordReviewServiceDown", review_down),
                expect("10m", "ConcordWorkerDown"),
            ],
        },
        {  # no review service deployed at all
            "interval": "1m",
            "input_series": [
                series("up", {"job": f"concord-{services[0]}", "instance": "w:6066"}, "1x10"),
            ],
            "alert_rule_test": [expect("5m", "ConcordReviewServiceDown", review_down)],
        },
        {  # HIGH alerts under a day, LOW ones for weeks: no alert; then CRITICAL ones over a day
            "interval": "1m",
            "input_series": [
                series(alerts_open, waiting("CONFLICT", "HIGH", "OPEN", "4h_24h"), "3x40"),
                series(alerts_open, waiting("CONFLICT", "LOW", "OPEN", "gt_7d"), "5x40"),
                series(
                    alerts_open,
                    waiting("STALE", "CRITICAL", "ACKNOWLEDGED", "1d_7d"),
                    "0x10 2x30",
                ),
            ],
            "alert_rule_test": [
                expect("10m", "ConcordReviewBacklogAging"),
                expect("20m", "ConcordReviewBacklogAging"),  # pending: 15 m
                expect("35m", "ConcordReviewBacklogAging", {"severity": "warning"}),
            ],
        },
        {  # one family refreshes every minute, the other stops refreshing at 5 m
            "interval": "1m",
            "input_series": [
                series(refreshed, {"family": "alerts_open", "instance": review}, "0+60x20"),
                series(
                    refreshed, {"family": "identity_tasks", "instance": review}, "0+60x5 300x15"
                ),
            ],
            "alert_rule_test": [
                expect("9m", "ConcordReviewMetricsStale"),
                expect(
                    "18m",
                    "ConcordReviewMetricsStale",
                    {"family": "identity_tasks", "severity": "warning"},
                ),
            ],
        },
        {
            "interval": "1m",
            "input_series": [
                series("concord_outbox_pending", {"stage": "alerting"}, "1500x20"),
                series("concord_outbox_pending", {"stage": "conflicts"}, "10x20"),
            ],
            "alert_rule_test": [
                expect(
                    "15m", "ConcordOutboxPendingHigh", {"stage": "alerting", "severity": "warning"}
                ),
            ],
        },
    ]


def test_alerts_fire_when_they_should(
    promtool: str, services: tuple[str, ...], tmp_path: Path
) -> None:
    # promtool compares annotations too: test the expressions and labels on a copy without them.
    rules = load_rules()
    for group in rules["groups"]:
        for rule in group["rules"]:
            rule.pop("annotations", None)
    rules_copy = tmp_path / "concord.rules.yml"
    rules_copy.write_text(yaml.safe_dump(rules))
    tests = {
        "rule_files": [str(rules_copy)],
        "evaluation_interval": "1m",
        "tests": alert_scenarios(services),
    }
    test_file = tmp_path / "concord.rules.test.yml"
    test_file.write_text(yaml.safe_dump(tests))
    run_promtool(promtool, "test", "rules", test_file)
