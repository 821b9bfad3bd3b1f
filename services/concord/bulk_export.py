"""Which files `concord publish` reads, and in which order: FHIR Bulk Data exports.

A Bulk Data export (FHIR Bulk Data Access IG, `$export`) is a folder of `Type.NNN.ndjson`
files, possibly gzipped, with or without the manifest JSON the server answered with
(`transactionTime`, `request`, `requiresAccessToken`, `output: [{type, url, count?}]`,
`error: [...]`). Given the folder, every `.ndjson`/`.jsonl` file in it (`.gz` too) is
published; given the manifest, the files its `output` lists, a relative or `file:` url
resolved against the manifest's folder. An http(s) url is an error: the files must be
downloaded first. The export's error files (OperationOutcome) are not patient data and are
not published; the summary says so.

Patient files go first, ahead of the resources that point to them, whatever order the
folder, the manifest or the command line gave; the other files keep that order.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit
from urllib.request import url2pathname

import orjson

PATIENT = "Patient"
ERROR_TYPE = "OperationOutcome"
NDJSON_NAME = re.compile(r"\.(ndjson|jsonl)(\.gz)?$", re.IGNORECASE)
# `Patient.000.ndjson`, `Observation.ndjson.gz`: a FHIR type name, then anything.
TYPE_PREFIX = re.compile(r"^([A-Z][A-Za-z]+)(?:\.|$)")
# A manifest is a small JSON object; a JSON file larger than this is not read to find out.
MANIFEST_MAX_BYTES = 16 * 1024 * 1024


class ExportError(ValueError):
    """An export that cannot be published as given (the message says what to do)."""


@dataclass(frozen=True)
class InputFile:
    """A file to publish; `resource_type` is what the export says it holds (its `type` in the
    manifest, else its name's prefix), `count` how many resources the manifest says."""

    path: Path
    resource_type: str | None = None
    count: int | None = None


@dataclass(frozen=True)
class Inputs:
    files: list[InputFile]
    not_published: list[str] = field(default_factory=list)  # what was left out, and why


def plan(paths: Sequence[Path]) -> Inputs:
    """The files to publish for these paths (files, export folders, manifests), Patient files
    first and otherwise in the order given."""
    files: list[InputFile] = []
    notes: list[str] = []
    for path in paths:
        if path.is_dir():
            found, left_out = folder_inputs(path)
        elif (manifest := read_manifest(path)) is not None:
            found, left_out = manifest_inputs(path, manifest)
        else:
            found, left_out = [InputFile(path, type_from_name(path.name))], []
        files += found
        notes += left_out
    return Inputs(patients_first(files), notes)


def patients_first(files: Sequence[InputFile]) -> list[InputFile]:
    """Patient files first; the order is otherwise kept (the sort is stable)."""
    return sorted(files, key=lambda file: file.resource_type != PATIENT)


def type_from_name(name: str) -> str | None:
    """`Observation` for `Observation.003.ndjson(.gz)`; None for a name that says no type."""
    if not NDJSON_NAME.search(name):
        return None
    match = TYPE_PREFIX.match(name)
    return match.group(1) if match else None


def folder_inputs(folder: Path) -> tuple[list[InputFile], list[str]]:
    """The NDJSON files of an export folder, by name (`Type.2` before `Type.10`)."""
    files: list[InputFile] = []
    errors: list[str] = []
    ignored: list[str] = []
    for path in sorted(folder.iterdir(), key=lambda p: _natural(p.name)):
        resource_type = type_from_name(path.name)
        if not path.is_file() or not NDJSON_NAME.search(path.name):
            ignored.append(path.name)
        elif resource_type == ERROR_TYPE:
            errors.append(path.name)
        else:
            files.append(InputFile(path, resource_type))
    if not files:
        raise ExportError(f"{folder}: no .ndjson or .ndjson.gz files to publish")
    notes = []
    if errors:
        notes.append(f"{folder}: the export's error files ({ERROR_TYPE}): {_names(errors)}")
    if ignored:
        notes.append(f"{folder}: not NDJSON: {_names(ignored)}")
    return files, notes


def read_manifest(path: Path) -> dict[str, Any] | None:
    """The Bulk Data manifest in this file, or None when it holds something else."""
    if path.suffix.lower() != ".json" or path.stat().st_size > MANIFEST_MAX_BYTES:
        return None
    try:
        document = orjson.loads(path.read_bytes())
    except orjson.JSONDecodeError:
        return None
    return document if is_manifest(document) else None


def is_manifest(document: object) -> bool:
    return (
        isinstance(document, dict)
        and "resourceType" not in document
        and isinstance(document.get("output"), list)
        and ("transactionTime" in document or "request" in document)
    )


def manifest_inputs(path: Path, manifest: dict[str, Any]) -> tuple[list[InputFile], list[str]]:
    """The files the manifest's `output` lists, in its order; what it lists besides them
    (`error`, `deleted`) is noted, not published."""
    files: list[InputFile] = []
    for number, entry in enumerate(manifest["output"], start=1):
        url = entry.get("url") if isinstance(entry, dict) else None
        if not isinstance(url, str) or not url:
            raise ExportError(f"{path}: output entry {number} has no url")
        file = resolve_url(path.parent, url, manifest=path)
        declared = entry.get("type")
        count = entry.get("count")
        files.append(
            InputFile(
                file,
                declared if isinstance(declared, str) and declared else type_from_name(file.name),
                count if isinstance(count, int) and not isinstance(count, bool) else None,
            )
        )
    notes = []
    for key, what in (
        ("error", f"error files ({ERROR_TYPE})"),
        ("deleted", "deleted-resource files"),
    ):
        listed = manifest.get(key)
        if isinstance(listed, list) and listed:
            notes.append(f"{path}: the {what} it lists: {len(listed)}")
    return files, notes


def resolve_url(folder: Path, url: str, *, manifest: Path) -> Path:
    """The local file an output url names: relative to the manifest's folder, or file:."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme in ("http", "https"):
        raise ExportError(
            f"{manifest}: {url} is on the export server. Download the export's files first "
            "(any Bulk Data client, or curl with the access token), then publish the folder "
            "they are in, or a manifest whose urls are the files' paths."
        )
    if scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise ExportError(f"{manifest}: {url} is on another host")
        relative = Path(url2pathname(parts.path))
    elif scheme and len(scheme) > 1:  # one letter: a Windows drive
        raise ExportError(f"{manifest}: cannot read {url}: download it and give its path")
    else:
        relative = Path(unquote(url))
    file = relative if relative.is_absolute() else folder / relative
    if not file.is_file():
        raise ExportError(f"{manifest}: {url} names {file}, which is not a file")
    return file


def _natural(name: str) -> list[Any]:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def _names(names: list[str], shown: int = 5) -> str:
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return ", ".join(names[:shown]) + more
