"""What the benchmarks share, and pipeline.py's parts, one module each.

Shared by pipeline.py, recovery.py and identity.py: runner.py (progress lines, the teardown
of whatever a benchmark started, running it under that teardown, its database and stack, the
run's metadata, the output options and the JSON file), backend.py (a bulk producer, a fresh
broker and database for one part, a background reader of a topic), stages.py (one stage as
one worker runs it, timed, and the raw aiokafka loop it is compared with), metrics.py (CPU,
the workers' batch counters, percentiles, the conflicts state's size) and patients.py (FHIR
Patients from two sources). pipeline.py's parts: throughput.py (part 1), latency.py (part 2),
formats.py with its input in raw_formats.py (part 3), population.py (part 4) and
narrative.py (part 5, the narrative worker); endtoend.py
(part 2's realistic mix and lag sampling, and the --max-rate search against a four-hop
pass-through).

Imported as `benchlib`: running a script in benchmarks/ puts that folder on sys.path.
"""
