"""`concord generate`: writes a synthetic population's files and answer key to a folder."""

from __future__ import annotations

import gc
import time
from pathlib import Path

import click

from concord.config import DEFAULT_ENTERPRISE_ID_SYSTEM
from concord.extras import MissingExtra, require_local
from concord.generate.config import DEFAULT_SOURCES, GeneratorConfig, parse_sources
from concord.generate.generator import generate as generate_set
from concord.generate.generator import write


@click.command("generate")
@click.option(
    "--patients",
    type=click.IntRange(min=1),
    default=1000,
    show_default=True,
    help="How many true persons.",
)
@click.option(
    "--seed",
    type=int,
    default=42,
    show_default=True,
    help="The same seed and options write the same bytes.",
)
@click.option(
    "--sources",
    default=DEFAULT_SOURCES,
    show_default=True,
    help="Comma-separated NAME:FORMAT (fhir or hl7v2); NAME is the file name and the --source "
    "to publish it with.",
)
@click.option(
    "--out",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Folder to write to (created; the set's files in it are overwritten).",
)
@click.option(
    "--overlap",
    type=click.FloatRange(0.0, 1.0),
    default=0.8,
    show_default=True,
    help="Share of persons held by two or more sources.",
)
@click.option(
    "--duplicate-rate",
    type=click.FloatRange(0.0, 1.0),
    default=0.05,
    show_default=True,
    help="Share of a source's patients it registers a second time under a new MRN.",
)
@click.option(
    "--variation-rate",
    type=click.FloatRange(0.0, 1.0),
    default=0.3,
    show_default=True,
    help="Share of patient records whose demographics differ from the person's "
    "(typos, nicknames, birth-date errors, moves, missing fields).",
)
@click.option(
    "--shared-id-rate",
    type=click.FloatRange(0.0, 1.0),
    default=0.2,
    show_default=True,
    help="Share of patient records that carry the shared enterprise identifier.",
)
@click.option(
    "--shared-id-system",
    default=DEFAULT_ENTERPRISE_ID_SYSTEM,
    show_default=True,
    help="Identifier system of the shared enterprise identifier.",
)
@click.option(
    "--hard-negative-rate",
    type=click.FloatRange(0.0, 1.0),
    default=0.04,
    show_default=True,
    help="Share of persons made into twins or father/son pairs (must not link).",
)
@click.option(
    "--conflict-rate",
    type=click.FloatRange(0.0, 1.0),
    default=0.1,
    show_default=True,
    help="Share of persons given a planted disagreement or stale record (as many again are "
    "kept as controls); the answer key says what each must raise.",
)
@click.option(
    "--progress-every",
    type=click.IntRange(min=1),
    default=1000,
    show_default=True,
    help="Print progress to stderr every this many patient records.",
)
def generate(
    patients: int,
    seed: int,
    sources: str,
    out: Path,
    overlap: float,
    duplicate_rate: float,
    variation_rate: float,
    shared_id_rate: float,
    shared_id_system: str,
    hard_negative_rate: float,
    conflict_rate: float,
    progress_every: int,
) -> None:
    """Write a synthetic population as FHIR R4 (.ndjson) and HL7 v2 (.hl7) files, one per
    source, with realistic duplicates and look-alikes, and its answer_key.json.

    Publish each file with `concord publish --source NAME OUT/NAME.ndjson` (or .hl7)."""
    try:
        require_local("faker", "concord generate")
    except MissingExtra as missing:
        raise click.ClickException(str(missing)) from None
    try:
        config = GeneratorConfig(
            patients=patients,
            seed=seed,
            sources=parse_sources(sources),
            overlap=overlap,
            duplicate_rate=duplicate_rate,
            variation_rate=variation_rate,
            shared_id_rate=shared_id_rate,
            shared_id_system=shared_id_system,
            hard_negative_rate=hard_negative_rate,
            conflict_rate=conflict_rate,
        )
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    started = time.monotonic()
    # The plan holds millions of small objects and makes no garbage cycles worth collecting:
    # without the collector's passes over them, 30k persons take 15 s instead of 21 s.
    gc.disable()
    try:
        generated = generate_set(
            config,
            progress=lambda line: click.echo(f"generate: {line}", err=True),
            progress_every=progress_every,
        )
    finally:
        gc.enable()
    for path in write(generated, out):
        click.echo(f"wrote {path} ({path.stat().st_size:,} bytes)", err=True)
    click.echo(generated.summary)
    click.echo(f"\ngenerated in {time.monotonic() - started:.1f} s; publish with:")
    for source in config.sources:
        click.echo(f"  concord publish --source {source.name} {out / source.file_name}")
