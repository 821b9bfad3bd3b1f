"""`concord generate --engine pysynthea`: the command's side of synthea_set.py (options in,
files and a summary out)."""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import click

from concord.extras import MissingExtra, require_local
from concord.generate import synthea_set
from concord.generate.config import parse_sources
from concord.generate.synthea_engine import GenerationLog, SyntheaSettings
from concord.generate.two_ehrs import Ehr

DEFAULT_PATIENTS = 200
DEFAULT_SOURCES = "hospital-ehr:fhir,clinic-ehr:fhir"
# The built-in engine's options, which mean nothing here.
BUILTIN_ONLY = (
    "overlap",
    "duplicate_rate",
    "variation_rate",
    "shared_id_rate",
    "shared_id_system",
    "hard_negative_rate",
    "narratives",
)
# This engine's options, which mean nothing to the built-in one.
PYSYNTHEA_ONLY = ("b_order", "b_layout", "resource_types", "cancer_cohort", "bundles")
# Taken from the --bundles file when one is given.
FROM_BUNDLES = ("patients", "seed", "cancer_cohort")


def echo(line: str) -> None:
    click.echo(f"generate: {line}", err=True)


def ehrs(text: str | None) -> tuple[Ehr, Ehr]:
    specs = parse_sources(text or DEFAULT_SOURCES)
    if len(specs) != 2 or any(spec.format != "fhir" for spec in specs):
        raise click.BadParameter(
            "--engine pysynthea publishes two FHIR EHRs: give two NAME:fhir sources",
            param_hint="--sources",
        )
    return Ehr(specs[0].name), Ehr(specs[1].name)


def resource_types(text: str) -> frozenset[str] | None:
    if text.strip().lower() == "all":
        return None
    return frozenset(part.strip() for part in text.split(",") if part.strip())


def run(options: Mapping[str, Any], given: set[str], out: Path, progress_every: int) -> None:
    """Generates (or reads --bundles), writes the set into `out`, prints the summary.
    `given`: the options set on the command line."""
    _refuse(given, options["bundles"])
    started = time.monotonic()
    config = _config(options)  # every option checked before minutes of simulation
    bundles: Path | None = options["bundles"]
    log: GenerationLog | None = None
    out.mkdir(parents=True, exist_ok=True)
    if bundles is None:
        bundles = out / synthea_set.BUNDLES_FILE
        log = GenerationLog()
        synthea_set.simulate(config.settings, bundles, log, echo, progress_every)
        echo(f"wrote {bundles} ({bundles.stat().st_size:,} bytes)")
    built = synthea_set.build(config, bundles, out, echo, log)
    for path in built.files:
        if path.name == synthea_set.MANIFEST or path.parent == out:
            echo(f"wrote {path} ({path.stat().st_size:,} bytes)")
    click.echo(synthea_set.summary_text(built.key))
    click.echo(f"\ngenerated in {time.monotonic() - started:.1f} s; publish with:")
    for source in built.key["sources"]:
        click.echo(f"  concord publish --source {source['name']} {out / source['file']}")
    click.echo(f"or score it on the running stack: concord evaluate {out}")


def _refuse(given: set[str], bundles: Path | None) -> None:
    """Options that mean nothing here, and what the local extra must provide."""
    wrong = sorted(given & set(BUILTIN_ONLY))
    if wrong:
        raise click.UsageError(f"{_flags(wrong)}: only for --engine builtin")
    if bundles is not None and given & set(FROM_BUNDLES):
        raise click.UsageError(
            f"{_flags(given & set(FROM_BUNDLES))}: taken from the --bundles file"
        )
    if bundles is None:
        try:
            require_local("synthea", "concord generate --engine pysynthea")
        except MissingExtra as missing:
            raise click.ClickException(str(missing)) from None


def _flags(names: Iterable[str]) -> str:
    return ", ".join("--" + name.replace("_", "-") for name in sorted(names))


def _config(options: Mapping[str, Any]) -> synthea_set.SyntheaSetConfig:
    bundles: Path | None = options["bundles"]
    if bundles is None:
        settings = SyntheaSettings(
            patients=options["patients"] or DEFAULT_PATIENTS,
            seed=options["seed"],
            cancer_cohort=options["cancer_cohort"],
        )
    else:
        try:
            header = synthea_set.read_header(bundles)
        except (OSError, ValueError) as exc:
            raise click.BadParameter(str(exc), param_hint="--bundles") from None
        settings = SyntheaSettings(header["patients"], header["seed"], header["cancer_cohort"])
    try:
        return synthea_set.SyntheaSetConfig(
            settings=settings,
            sources=ehrs(options["sources"]),
            conflict_rate=options["conflict_rate"],
            b_order=options["b_order"],
            b_layout=options["b_layout"],
            resource_types=resource_types(options["resource_types"]),
        )
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
