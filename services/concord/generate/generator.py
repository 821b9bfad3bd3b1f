"""The generator's pipeline: persons, sources, scenarios, records, answer key. Pure: the same
config gives the same bytes; only write() touches the disk."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from concord.generate import answer_key
from concord.generate.config import GeneratorConfig
from concord.generate.model import World
from concord.generate.narrative_set import NarrativeSet
from concord.generate.planted import PlantedConflicts
from concord.generate.population import make_persons
from concord.generate.registry import assign_sources, register_all
from concord.generate.render import RecordInfo, Rendered, SourceWriter
from concord.generate.scenarios import (
    DemographicVariations,
    HardNegatives,
    Scenario,
    WithinSourceDuplicates,
)

Progress = Callable[[str], None]


@dataclass(frozen=True)
class GeneratedSet:
    files: dict[str, bytes]  # file name -> content, the answer key included
    answer_key: dict[str, Any]

    @property
    def summary(self) -> str:
        return answer_key.summary_text(self.answer_key)


def plan(config: GeneratorConfig, scenarios: Sequence[Scenario]) -> World:
    world = World(config)
    world.persons = make_persons(world)
    assign_sources(world)
    for scenario in scenarios:
        scenario.shape_population(world)
    register_all(world)
    for scenario in scenarios:
        scenario.shape_registrations(world)
    return world


def default_scenarios() -> Sequence[Scenario]:
    """New instances each time: a scenario keeps what it planted until the key is written.
    The planted conflicts come after the others: they undo their edits on the persons they
    choose; the narrative documents last, on persons outside the planted cohort."""
    planted = PlantedConflicts()
    return (
        HardNegatives(),
        WithinSourceDuplicates(),
        DemographicVariations(),
        planted,
        NarrativeSet(planted),
    )


def generate(
    config: GeneratorConfig,
    *,
    scenarios: Sequence[Scenario] | None = None,
    progress: Progress | None = None,
    progress_every: int = 1000,
) -> GeneratedSet:
    chosen = default_scenarios() if scenarios is None else scenarios
    world = plan(config, chosen)
    if progress:
        progress(
            f"planned {len(world.persons)} persons, {len(world.registrations)} patient records"
        )
    rendered = _render(world, progress, progress_every)
    files: dict[str, bytes] = {}
    listed: dict[str, list[RecordInfo]] = {}
    for source in config.sources:
        # One source's texts at a time: they are dropped once joined into its file.
        records = rendered.pop(source.name)
        # NDJSON (FHIR, claim lines) ends each line; an HL7 message ends its own.
        separator = "" if source.format == "hl7v2" else "\n"
        files[source.file_name] = "".join(r.text + separator for r in records).encode("utf-8")
        listed[source.name] = [r.info for r in records]
        del records
    key = answer_key.build(world, listed, chosen)
    files[answer_key.FILE_NAME] = answer_key.dumps(key)
    return GeneratedSet(files, key)


def _render(
    world: World, progress: Progress | None, progress_every: int
) -> dict[str, list[Rendered]]:
    writers = {s.name: SourceWriter(s, world.config.seed) for s in world.config.sources}
    rendered: dict[str, list[Rendered]] = {s.name: [] for s in world.config.sources}
    total = len(world.registrations)
    count = 0
    for done, registration in enumerate(world.registrations, 1):
        records = writers[registration.source.name].render(
            registration, world.config.shared_id_system
        )
        rendered[registration.source.name].extend(records)
        count += len(records)
        if progress and (done % progress_every == 0 or done == total):
            progress(f"rendered {done}/{total} patient records ({count} records)")
    for records in rendered.values():
        # Each file in the order its source would have sent it; the sort is stable, so a
        # Patient stays ahead of the records its source filed at the same moment.
        records.sort(key=lambda r: r.time)
    return rendered


def write(generated: GeneratedSet, out: Path) -> list[Path]:
    """Writes (overwrites) the set's files in out, creating the folder; other files stay."""
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, content in generated.files.items():
        path = out / name
        path.write_bytes(content)
        written.append(path)
    return written
