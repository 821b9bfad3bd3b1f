"""Which sources hold each person, and what each registration starts out holding."""

from __future__ import annotations

import random
from datetime import timedelta

from concord.generate.config import CLAIMS, SourceSpec
from concord.generate.model import Person, Registration, World

# Share of a person's true facts that a registration holds: the first MRN at a source holds
# most of them, a duplicate MRN only the few that were filed under it by mistake.
_HELD = {1: 0.75, 2: 0.3}
# HL7 sources also send an A08 for this share of registrations.
_A08_RATE = 0.3


def assign_sources(world: World) -> None:
    """Most persons are held by two or more sources (config.overlap), the rest by one. A claims
    source holds no one here: only the persons a planted kind registers with it."""
    rng = world.rng("sources")
    names = [source.name for source in world.config.sources if source.format != CLAIMS]
    many = list(range(2, len(names) + 1))
    for person in world.persons:
        if len(names) > 1 and rng.random() < world.config.overlap:
            # Two sources is most common; each further one is less likely than the last.
            count = rng.choices(many, [0.6**k for k in range(len(many))])[0]
        else:
            count = 1
        chosen = set(rng.sample(names, count))
        person.sources = [name for name in names if name in chosen]


def register_all(world: World) -> None:
    rng = world.rng("registrations")
    for person in world.persons:
        for name in person.sources:
            world.registrations.append(register(world, person, world.source(name), 1, rng))


def register(
    world: World, person: Person, source: SourceSpec, number: int, rng: random.Random
) -> Registration:
    """A new MRN for the person at the source, with the person's true demographics (scenarios
    vary them afterwards) and a share of the person's clinical facts."""
    held = _HELD[min(number, 2)]
    draws = [d for d in person.draws if rng.random() < held]
    conditions = [c for c in person.conditions if rng.random() < held]
    allergies = [a for a in person.allergies if rng.random() < held]
    as_of = world.config.as_of
    registered = as_of - timedelta(minutes=rng.randrange(30 * 24 * 60, 1100 * 24 * 60))
    if draws:
        # A source registers a patient before it files their results.
        registered = min(registered, min(d.taken for d in draws) - timedelta(days=1))
    updated = None
    if source.format == "hl7v2" and rng.random() < _A08_RATE:
        updated = registered + timedelta(minutes=rng.randrange(10, 60 * 24 * 20))
    return Registration(
        source=source,
        person_id=person.person_id,
        mrn=world.new_mrn(source, rng),
        patient_id=world.new_patient_id(source, rng),
        number=number,
        demographics=person.demographics,
        registered=registered,
        shared_id=rng.random() < world.config.shared_id_rate,
        draws=draws,
        conditions=conditions,
        allergies=allergies,
        updated=updated,
    )
