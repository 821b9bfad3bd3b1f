"""The runner every benchmark shares: progress lines, the error that stops a benchmark, the
teardown of whatever it started (stacks, processes, databases, temp dirs), running it under
that teardown (Ctrl-C and SIGTERM included), its database and stack, the run's metadata, the
output options and the results file."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import signal
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

from concord.runtime import heap
from concord.runtime.db import apply_migrations
from concord.stack.postgres import create_database, drop_database, start_postgres
from concord.stack.processes import ProcessRecord, stop_process
from concord.stack.stack import StackInfo, start_stack, stop_stack

REPO = Path(__file__).resolve().parents[2]
_STARTED = time.monotonic()


class BenchmarkError(RuntimeError):
    """The benchmark cannot go on (a stage lost records, a part timed out)."""


def progress(message: str) -> None:
    print(f"[{time.monotonic() - _STARTED:6.1f}s] {message}", flush=True)


# --- what everything started is: stopped at the end, whatever happens -------------------------


@dataclass
class Teardown:
    keep_state: bool = False
    processes: list[ProcessRecord] = field(default_factory=list)
    stacks: list[Path] = field(default_factory=list)
    databases: list[tuple[str, str]] = field(default_factory=list)  # (server DSN, name)
    dirs: list[Path] = field(default_factory=list)

    def tempdir(self, label: str) -> Path:
        path = Path(tempfile.mkdtemp(prefix=f"concord-bench-{label}-"))
        self.dirs.append(path)
        return path

    def stop_process(self, record: ProcessRecord) -> None:
        if record in self.processes:
            self.processes.remove(record)
            stop_process(record)

    async def stack(self, label: str, **options: Any) -> tuple[Path, StackInfo]:
        """concord.stack's start_stack(**options) in a new temp dir, stopped at the end unless
        stop_stack has stopped it; returns the dir and the stack."""
        state_dir = self.tempdir(label)
        self.stacks.append(state_dir)
        return state_dir, await start_stack(state_dir, **options)

    def stop_stack(self, state_dir: Path) -> None:
        if state_dir in self.stacks:
            self.stacks.remove(state_dir)
            stop_stack(state_dir)

    def close(self, failed: bool) -> None:
        """Synchronous, so it also runs after Ctrl-C has ended the event loop."""
        steps: list[tuple[str, Callable[[], Any]]] = []
        steps += [(f"stack {d}", partial(self.stop_stack, d)) for d in list(self.stacks)]
        steps += [(r.name, partial(self.stop_process, r)) for r in reversed(self.processes)]
        steps += [
            (f"database {name}", partial(_drop_database, s, name)) for s, name in self.databases
        ]
        for label, step in steps:
            try:
                step()
            except Exception as exc:
                print(f"teardown: could not stop {label}: {exc!r}", file=sys.stderr)
        for path in self.dirs:
            if self.keep_state or failed:
                print(f"teardown: kept {path} (logs under logs/)", file=sys.stderr)
            else:
                shutil.rmtree(path, ignore_errors=True)


def _drop_database(server: str, name: str) -> None:
    asyncio.run(drop_database(server, name))


# --- what a benchmark runs against -----------------------------------------------------------


async def database(state_dir: Path, teardown: Teardown) -> str:
    """A migrated database: a fresh one on CONCORD_DATABASE_URL's server, else embedded."""
    server = os.environ.get("CONCORD_DATABASE_URL")
    if server:
        name = f"concord_bench_{uuid.uuid4().hex[:12]}"
        dsn = await create_database(server, name)
        teardown.databases.append((server, name))
        await apply_migrations(dsn)
        return dsn
    postgres = await start_postgres(state_dir)
    assert postgres.record is not None
    teardown.processes.append(postgres.record)
    return postgres.dsn


# --- running one benchmark ---------------------------------------------------------------------


def _sigterm(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def run_benchmark(
    benchmark: Callable[[argparse.Namespace, Teardown], Coroutine[Any, Any, dict[str, Any]]],
    args: argparse.Namespace,
) -> dict[str, Any] | int:
    """Run one benchmark, tearing down what it started whatever happens (SIGTERM included):
    its results, or the exit code of its failure."""
    signal.signal(signal.SIGTERM, _sigterm)
    # Stages run in this process collect garbage as a worker does (baselines alike).
    heap.settle()
    teardown = Teardown(keep_state=args.keep_state)
    failed = True
    try:
        results = asyncio.run(benchmark(args, teardown))
        failed = False
    except KeyboardInterrupt:
        print("\ninterrupted: tearing down", file=sys.stderr)
        return 130
    except BenchmarkError as exc:
        print(f"benchmark failed: {exc}", file=sys.stderr)
        return 1
    finally:
        teardown.close(failed)
    return results


# --- what a run prints and writes ---------------------------------------------------------------


def run_info(**details: Any) -> dict[str, Any]:
    """What a results file starts with: when, on what machine, with which command; then
    `details`, the run's own settings."""
    return {
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.system()}",
        "python": platform.python_version(),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        **details,
    }


def add_output_arguments(
    parser: argparse.ArgumentParser,
    *,
    img_help: str = "where plots go",
    no_plots_help: str = "do not draw the plots",
) -> None:
    """--out (the results as JSON), --img-dir and --no-plots."""
    parser.add_argument("--out", help="write the results as JSON to this file")
    parser.add_argument("--img-dir", default=str(REPO / "docs" / "img"), help=img_help)
    parser.add_argument("--no-plots", action="store_true", help=no_plots_help)


def write_json(path: str | None, results: dict[str, Any]) -> None:
    """The results as JSON to `path` (--out), if one was given."""
    if path:
        Path(path).write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
        progress(f"results written to {path}")
