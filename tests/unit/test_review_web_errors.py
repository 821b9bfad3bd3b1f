"""The review page's last-resort error path: a failure no handler knew is a 500 page, and its
log line names the failure's type and code line, never its text (which may quote PHI)."""

from __future__ import annotations

import logging

import pytest
from starlette.requests import Request

from concord.review import web


def _request() -> Request:
    return Request({"type": "http", "method": "GET", "path": "/ui/alerts", "headers": []})


def test_an_unexpected_failure_is_a_500_page_logged_without_its_text(
    caplog: pytest.LogCaptureFixture,
) -> None:
    try:
        raise RuntimeError("patient Jane Quennell, born 1981-03-04, MRN 998877")
    except RuntimeError as exc:
        failure = exc
    with caplog.at_level(logging.DEBUG, logger=web.log.name):
        response = web._error_page(_request(), failure)
    assert response.status_code == 500
    logged = "\n".join([r.getMessage() for r in caplog.records] + [caplog.text])
    assert "RuntimeError at" in logged and "test_review_web_errors.py" in logged
    for phi in ("Quennell", "1981-03-04", "998877"):
        assert phi not in logged
    assert all(r.exc_info is None for r in caplog.records)  # no traceback text either
