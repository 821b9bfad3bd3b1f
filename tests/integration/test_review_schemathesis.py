"""Schemathesis against the review service's served OpenAPI document (issue 16): the real
service (`python -m concord.review`, its own process) on the session's PostgreSQL and broker,
with alerts and an identity review task planted so that valid ids exist, fuzzed through every
operation by the schemathesis command line: no 5xx, no response that breaks its schema, its
status codes, content types or headers.

Run as a reviewer (every operation: the auditor's answer 403) and as an auditor (the audit
trail's operations answer 200). Each run prints its command and counts (operations, test cases,
failures); `-s` shows them."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

import asyncpg
import httpx
import pytest

from concord.normalization.identity_store import PostgresIdentityStore
from concord.review.access import PURPOSE_OF_USE_HEADER, Role
from concord.review.alerts import AlertFilter, Position, encode_cursor
from concord.review.auth import LocalSigningKey
from concord.runtime.db import apply_migrations
from concord.stack.broker import BrokerInfo
from concord.stack.postgres import PostgresInfo, create_database, drop_database
from concord.stack.processes import LOOPBACK, ProcessRecord, free_port, spawn, stop_process
from concord.stack.stack import wait_worker_ready
from identity_tools import review_task_of
from review_tools import plant_alerts, review_alert

pytestmark = [pytest.mark.integration]

SCHEMATHESIS = Path(sys.executable).with_name("schemathesis")
# Test cases per operation and phase: the two runs take about a minute on two cores.
MAX_EXAMPLES = 30
SEED = 16
# Schemathesis runs every check by default; these at least must have run.
REQUIRED_CHECKS = {
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_schema_conformance",
    "response_headers_conformance",
    "negative_data_rejection",
    "positive_data_acceptance",
    "missing_required_header",
    "unsupported_method",
}
# Every check, but where one cannot hold for this API (its schemathesis.toml):
CONFIG = """\
# GET /api/v1/alerts: `cursor` is opaque (a string the service handed out in next_cursor), so
# a schema-valid made-up cursor is rightly refused with 422; the schema cannot say which strings
# are cursors the service handed out.
[[operations]]
include-path = "/api/v1/alerts"
include-method = "GET"
checks.positive_data_acceptance.enabled = false
"""


@dataclass(frozen=True)
class Service:
    url: str
    key: LocalSigningKey
    alert_ids: list[str]
    task_id: str

    def token(self, role: Role) -> str:
        return self.key.issue(f"fuzz-{role}", role, timedelta(hours=1))


async def _plant(dsn: str) -> tuple[list[str], str]:
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=2)
    assert pool is not None
    try:
        token = uuid.uuid4().hex[:8]
        alerts = [
            review_alert(token, n, prefix="Fz", severity="HIGH" if n % 2 else "LOW")
            for n in range(20)
        ]
        await plant_alerts(pool, alerts)
        task_id, *_ = await review_task_of(PostgresIdentityStore(pool), token)
        return [a.alert_id for a in alerts], task_id
    finally:
        await pool.close()


@pytest.fixture(scope="module")
def database(postgres: PostgresInfo) -> Iterator[str]:
    """A database of its own on the session's server: the fuzzing decides every alert and
    identity review task it can list, which must be only those planted here."""
    name = f"concord_fuzz_{uuid.uuid4().hex[:12]}"
    dsn = asyncio.run(create_database(postgres.dsn, name))
    asyncio.run(apply_migrations(dsn))
    yield dsn
    asyncio.run(drop_database(postgres.dsn, name))


@pytest.fixture(scope="module")
def service(
    database: str, broker: BrokerInfo, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Service]:
    """The review service as `concord stack up` runs it, on a free loopback port."""
    home = tmp_path_factory.mktemp("review-fuzz")
    key_path = home / "key.pem"
    key, _ = LocalSigningKey.load_or_create(key_path)
    alert_ids, task_id = asyncio.run(_plant(database))
    port = free_port()
    env = {
        **os.environ,
        "CONCORD_DATABASE_URL": database,
        "CONCORD_BOOTSTRAP_SERVERS": broker.bootstrap_servers,
        "CONCORD_REVIEW_HOST": LOOPBACK,
        "CONCORD_REVIEW_PORT": str(port),
        "CONCORD_LOCAL_KEY_PATH": str(key_path),
        "CONCORD_RATE_LIMIT_PER_MINUTE": "1000000",
        "CONCORD_LOG_LEVEL": "warning",
    }
    record: ProcessRecord = spawn(
        "review",
        "review",
        (sys.executable, "-m", "concord.review"),
        home / "review.log",
        env=env,
        port=port,
    )
    try:
        asyncio.run(wait_worker_ready(record))
        yield Service(f"http://{LOOPBACK}:{port}", key, alert_ids, task_id)
    finally:
        stop_process(record)
        print(f"review service log: {home / 'review.log'}")


@dataclass(frozen=True)
class Run:
    command: list[str]
    returncode: int
    output: str
    operations: int  # operations in the document
    tested: int  # operations schemathesis ran test cases against
    cases: int
    failures: int
    checks: frozenset[str]  # the checks that ran

    def summary(self) -> str:
        return (
            f"operations {self.tested}/{self.operations}, test cases {self.cases}, "
            f"failures {self.failures}"
        )


def _fuzz(service: Service, role: Role, report: Path, *extra: str) -> Run:
    document = httpx.get(f"{service.url}/openapi.json").json()
    operations = sum(len(methods) for methods in document["paths"].values())
    ndjson = report / f"{role}.ndjson"
    config = report / "schemathesis.toml"
    config.write_text(CONFIG)
    command = [
        str(SCHEMATHESIS),
        "--config-file",
        str(config),
        "run",
        f"{service.url}/openapi.json",
        "--header",
        f"Authorization: Bearer {service.token(role)}",
        "--max-examples",
        str(MAX_EXAMPLES),
        "--seed",
        str(SEED),
        # One worker: with two, hypothesis' ast.parse in two threads at once can raise
        # "SystemError: AST constructor recursion depth mismatch" on Python 3.11 (a
        # CPython bug: ast.parse is not thread-safe there), a runtime error of the tool's.
        "--workers",
        "1",
        "--no-color",
        "--generation-database",
        "none",
        "--report",
        "ndjson",
        "--report-ndjson-path",
        str(ndjson),
        *extra,
    ]
    # In the test's directory: schemathesis keeps a cache of crashes in .schemathesis/ there.
    done = subprocess.run(
        command, capture_output=True, text=True, check=False, timeout=900, cwd=report
    )
    events = [json.loads(line) for line in ndjson.read_text().splitlines() if line.strip()]
    return Run(command, done.returncode, done.stdout + done.stderr, operations, *_counts(events))


def _counts(events: list[dict[str, Any]]) -> tuple[int, int, int, frozenset[str]]:
    """From schemathesis' event stream (--report ndjson): the operations it generated test
    cases for, the test cases, and the distinct failures (operation, check, title)."""
    tested: set[str] = set()
    names: set[str] = set()
    cases = 0
    failures: set[tuple[str, str, str]] = set()
    for event in events:
        finished = event.get("ScenarioFinished")
        if finished is None:
            continue
        recorder = finished["recorder"]
        generated = recorder.get("cases") or {}
        cases += len(generated)
        if generated and finished["phase"] != "stateful":
            tested.add(recorder["label"])
        for case_id, checks in (recorder.get("checks") or {}).items():
            case = generated[case_id]["value"]
            for check in checks:
                names.add(check["name"])
                if check["status"] == "failure":
                    title = check.get("failure_info", {}).get("failure", {}).get("title", "")
                    failures.add((f"{case['method']} {case['path']}", check["name"], title))
    for failure in sorted(failures):
        print("failure:", *failure)
    return len(tested), cases, len(failures), frozenset(names)


# --- what schemathesis found, one request each ----------------------------------------------


def _declared(document: dict[str, Any], method: str, path: str, status: int) -> Any:
    responses = document["paths"][path][method.lower()]["responses"]
    return responses[str(status)]["content"]["application/json"]["schema"]


def test_a_422_is_the_problem_the_document_declares(service: Service) -> None:
    """The 422 of a validation error is {"detail": "..."}, as for every other error; the
    document said FastAPI's default (a list of errors), so every 422 broke its schema."""
    document = httpx.get(f"{service.url}/openapi.json").json()
    headers = {"Authorization": f"Bearer {service.token(Role.REVIEWER)}"}
    response = httpx.get(
        f"{service.url}/api/v1/identity/reviews", params={"limit": 0}, headers=headers
    )
    assert response.status_code == 422
    assert isinstance(response.json()["detail"], str)
    for path, methods in document["paths"].items():
        for method in methods:
            assert _declared(document, method, path, 422) == {
                "$ref": "#/components/schemas/Problem"
            }, (method, path)


NUL = "a\x00b"


def _odd_requests(service: Service) -> list[tuple[str, str, str, dict[str, Any]]]:
    """(what, method, path, httpx arguments) of requests with text PostgreSQL cannot hold (NUL)
    or the audit trail refuses (control characters), where they reach the database."""
    alert = f"/api/v1/alerts/{service.alert_ids[-1]}"
    cursor = encode_cursor(Position(opened_at=datetime.now(UTC), alert_id=NUL), AlertFilter())
    return [
        ("alert id", "GET", f"/api/v1/alerts/{quote(NUL)}", {}),
        ("alert id, acknowledge", "POST", f"/api/v1/alerts/{quote(NUL)}/acknowledge", {}),
        ("task id", "GET", f"/api/v1/identity/reviews/{quote(NUL)}", {}),
        ("task id, link", "POST", f"/api/v1/identity/reviews/{quote(NUL)}/link", {}),
        ("source filter", "GET", "/api/v1/alerts", {"params": {"source": NUL}}),
        ("assignee filter", "GET", "/api/v1/alerts", {"params": {"assignee": NUL}}),
        ("cursor", "GET", "/api/v1/alerts", {"params": {"cursor": cursor}}),
        ("assignee", "POST", f"{alert}/assign", {"json": {"assignee": NUL}}),
        ("assignee, newline", "POST", f"{alert}/assign", {"json": {"assignee": "a\nb"}}),
        ("comment", "POST", f"{alert}/comments", {"json": {"body": NUL}}),
        ("value", "POST", f"{alert}/resolve", {"json": {"decision": "correct", "value": NUL}}),
        (
            "dismissal comment",
            "POST",
            f"{alert}/dismiss",
            {"json": {"reason": "OTHER", "comment": NUL}},
        ),
    ]


def test_a_body_that_is_not_json_gets_a_declared_status(service: Service) -> None:
    """FastAPI answers 400 to a body it cannot decode; the document did not say so."""
    document = httpx.get(f"{service.url}/openapi.json").json()
    path = "/api/v1/alerts/{alert_id}/comments"
    response = httpx.post(
        f"{service.url}{path.format(alert_id=service.alert_ids[-1])}",
        content=b"\xc7",
        headers={
            "Authorization": f"Bearer {service.token(Role.REVIEWER)}",
            "Content-Type": "application/json",
        },
    )
    assert response.status_code == 400 and isinstance(response.json()["detail"], str)
    assert _declared(document, "POST", path, 400) == {"$ref": "#/components/schemas/Problem"}


def test_text_the_database_cannot_hold_is_refused_not_a_500(service: Service) -> None:
    headers = {
        "Authorization": f"Bearer {service.token(Role.REVIEWER)}",
        PURPOSE_OF_USE_HEADER: "HOPERAT",
    }
    statuses = {
        what: httpx.request(method, f"{service.url}{path}", headers=headers, **arguments)
        for what, method, path, arguments in _odd_requests(service)
    }
    assert {what: r.status_code for what, r in statuses.items()} == {what: 422 for what in statuses}
    for response in statuses.values():
        assert "\x00" not in response.text and isinstance(response.json()["detail"], str)


def _shown(run: Run) -> None:
    """The command (token left out), schemathesis' own summary, and the counts."""
    command = [
        "Authorization: Bearer $TOKEN" if part.startswith("Authorization:") else part
        for part in run.command
    ]
    print(" ".join(f"'{part}'" if " " in part else part for part in command))
    print(run.output[-3000:])
    print(run.summary())


def test_schemathesis_as_a_reviewer_finds_no_failure(service: Service, tmp_path: Path) -> None:
    """Every operation, with a reviewer's token and a purpose of use: the reviewer's own
    operations answer 2xx/404/409/422, the auditor's 403."""
    run = _fuzz(service, Role.REVIEWER, tmp_path, "--header", f"{PURPOSE_OF_USE_HEADER}: HOPERAT")
    _shown(run)
    assert (run.returncode, run.failures) == (0, 0), run.output
    assert run.tested == run.operations
    assert run.cases >= run.operations * 10
    assert REQUIRED_CHECKS <= run.checks


def test_schemathesis_as_an_auditor_finds_no_failure(service: Service, tmp_path: Path) -> None:
    """Every operation with an auditor's token, without a purpose of use: the audit trail's
    operations answer 200 (the trail holds the reviewer run's rows), the reviewer's 403."""
    run = _fuzz(service, Role.AUDITOR, tmp_path)
    _shown(run)
    assert (run.returncode, run.failures) == (0, 0), run.output
    assert run.tested == run.operations
    assert run.cases >= run.operations * 10
    assert REQUIRED_CHECKS <= run.checks


def test_schemathesis_as_an_administrator_finds_no_failure(
    service: Service, tmp_path: Path
) -> None:
    """Every operation with an administrator's token: the principals, subscriptions and
    operations views answer (subscriptions are created and deleted), every PHI view 403."""
    run = _fuzz(service, Role.ADMIN, tmp_path)
    _shown(run)
    assert (run.returncode, run.failures) == (0, 0), run.output
    assert run.tested == run.operations
    assert run.cases >= run.operations * 10
    assert REQUIRED_CHECKS <= run.checks
