"""The whole stack as separate processes (broker, PostgreSQL, four Faust workers), per module."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from concord.stack.stack import StackInfo, start_stack, stop_stack


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StackInfo]:
    state_dir: Path = tmp_path_factory.mktemp("stack")
    info = asyncio.run(start_stack(state_dir, progress=lambda line: None))
    try:
        yield info
    finally:
        stop_stack(state_dir)


# HL7 v2 timestamps without an offset take this zone, as a deployment configures it.
ZONE = "America/New_York"


@pytest.fixture(scope="module")
def zoned_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StackInfo]:
    """The whole stack with a default time zone for HL7 v2 (workers inherit os.environ)."""
    state_dir: Path = tmp_path_factory.mktemp("stack")
    previous = os.environ.get("CONCORD_DEFAULT_TIME_ZONE")
    os.environ["CONCORD_DEFAULT_TIME_ZONE"] = ZONE
    try:
        info = asyncio.run(start_stack(state_dir, progress=lambda line: None))
    finally:
        if previous is None:
            del os.environ["CONCORD_DEFAULT_TIME_ZONE"]
        else:
            os.environ["CONCORD_DEFAULT_TIME_ZONE"] = previous
    try:
        yield info
    finally:
        stop_stack(state_dir)
