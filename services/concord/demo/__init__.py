"""The demo's sample population: FHIR R4 Patients from three fictional source systems.

The committed files in this folder (one NDJSON file per source, ``updates.ndjson`` and
``answer_key.json``) are written by :func:`concord.demo.sample.generate`; regenerate them
with ``python -m concord.demo.sample services/concord/demo``.
"""
