"""How a failure is logged: its type and the code line it came from, never its text, which may
quote PHI (asyncpg's DETAIL lines repeat key values; a parser's error may repeat the input)."""

from __future__ import annotations

import traceback


def failure_site(exc: BaseException) -> str:
    """`KeyError at services/concord/x.py:12`, from the innermost frame of the traceback."""
    frames = traceback.extract_tb(exc.__traceback__)
    if not frames:
        return type(exc).__name__
    where = frames[-1]
    return f"{type(exc).__name__} at {where.filename}:{where.lineno}"
