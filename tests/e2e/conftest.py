"""The whole stack as separate processes (broker, PostgreSQL, four Faust workers), per module."""

from __future__ import annotations

import asyncio
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
