"""The review API's OpenAPI document is kept in docs/ (for API consumers and reviews of a
change): it must be the one the service serves. `python tests/unit/test_review_openapi.py`
rewrites it."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from concord.review.api import openapi_document

DOCUMENT = Path(__file__).resolve().parents[2] / "docs" / "review-openapi.json"


def rendered() -> str:
    return json.dumps(openapi_document(), indent=2, sort_keys=True) + "\n"


def test_the_kept_openapi_document_is_the_served_one() -> None:
    assert DOCUMENT.read_text(encoding="utf-8") == rendered(), (
        "docs/review-openapi.json is out of date: run "
        "`.venv/bin/python tests/unit/test_review_openapi.py` to rewrite it"
    )


def test_every_operation_declares_its_errors_and_needs_a_token() -> None:
    document = openapi_document()
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            codes = set(operation["responses"])
            assert {"401", "403", "429", "422"} <= codes, (method, path, codes)


if __name__ == "__main__":
    DOCUMENT.write_text(rendered(), encoding="utf-8")
    sys.exit(0)
