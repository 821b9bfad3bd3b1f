"""Identity matching on a generated population, scored against its answer key (issue 4):
the generated files go through the ingestion and normalization cores, in process."""

from __future__ import annotations

from concord.generate.config import GeneratorConfig
from concord.generate.generator import generate
from concord.normalization.identity.evaluation import evaluate


def test_identity_matching_f1_on_a_generated_population() -> None:
    config = GeneratorConfig(patients=1000, seed=42)
    population = generate(config)
    scores = evaluate(
        population.files,
        population.answer_key,
        config.sources,
        systems=[config.shared_id_system],
    )
    print(f"\n1,000 persons, seed 42: {scores.report()}")
    assert scores.true_pairs > 1000  # the population really has duplicates to find
    assert scores.false_merges == 0
    assert scores.hard_negatives_merged == 0
    assert scores.f1 >= 0.98
    # Every decision kind shows up: the score is not reached by linking on ids alone.
    assert {"AUTHORITATIVE", "CROSSWALK", "MATCHED", "NEW"} <= set(scores.decisions)
