"""The documents people read agree with the code they describe."""

from __future__ import annotations

import re
from pathlib import Path

from concord.deadletters import REASON_CODES

ROOT = Path(__file__).resolve().parents[2]


def test_the_dead_letter_catalogue_lists_exactly_the_reason_codes() -> None:
    text = (ROOT / "docs" / "deadletters.md").read_text()
    documented = set(re.findall(r"^\| `([A-Z0-9_]+)` \|", text, flags=re.MULTILINE))
    assert documented == set(REASON_CODES)


def test_the_readme_names_the_two_commands_and_ci_runs_the_test_one() -> None:
    readme = (ROOT / "README.md").read_text()
    assert "make demo" in readme and "make test" in readme
    assert "make test" in (ROOT / ".ci" / "run").read_text()
