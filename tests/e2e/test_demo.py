"""`concord demo` as a person runs it: every planted disagreement alerted, none extra, and the
stack gone when the demo is stopped."""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO

import pytest

from concord.stack.processes import is_alive
from concord.stack.stack import load_state

pytestmark = [pytest.mark.e2e]


def _read_until(lines: queue.Queue[str | None], marker: str, within: float) -> list[str]:
    seen: list[str] = []
    deadline = time.monotonic() + within
    while (left := deadline - time.monotonic()) > 0:
        try:
            line = lines.get(timeout=left)
        except queue.Empty:
            break
        if line is None:
            break
        seen.append(line)
        if marker in line:
            return seen
    raise AssertionError(f"no {marker!r} within {within}s; output:\n" + "\n".join(seen))


def _pump(stream: IO[str], lines: queue.Queue[str | None]) -> None:
    # A reader thread, because select() on the pipe misses lines already in Python's buffer.
    for line in stream:
        lines.put(line.rstrip("\n"))
    lines.put(None)


def test_the_demo_alerts_every_planted_disagreement_and_stops_its_stack(tmp_path: Path) -> None:
    state_dir = tmp_path / "demo"
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "concord"), "demo", "--state-dir", str(state_dir)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert proc.stdout is not None
    output: queue.Queue[str | None] = queue.Queue()
    threading.Thread(target=_pump, args=(proc.stdout, output), daemon=True).start()
    try:
        lines = _read_until(output, "following alerts", within=120)
        checks = [line for line in lines if line.startswith("CHECK")]
        assert len(checks) == 2, lines
        assert all("FAILED" not in c and "none where the sources agree" in c for c in checks)
        seconds = [float(re.search(r"open after ([0-9.]+)s", c)[1]) for c in checks]  # type: ignore[index]
        assert all(s < 30 for s in seconds), checks
        assert any(" OPEN " in line and "Patient.birthDate" in line for line in lines)
        assert any(" RESOLVED " in line for line in lines)

        info = load_state(state_dir)
        assert info is not None
        started = info.processes
        # Broker, PostgreSQL, the five workers and the review service, whose address and
        # sign-in command the demo prints.
        assert len(started) == 8 and all(is_alive(r) for r in started)
        assert info.review_url is not None
        assert any(
            f"the review API is at {info.review_url}/api/v1" in line
            and "concord token issue" in line
            for line in lines
        )

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
        assert not any(is_alive(r) for r in started)
        assert load_state(state_dir) is None
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
