"""Scenarios: what makes the generated set hard, each with its part of the answer key.

A scenario edits the plan at two points: the population (before sources register anyone)
and the registrations (before records are written). Each draws from its own random stream
(World.rng), so adding one leaves what the others draw for a seed unchanged. What a scenario returns
from key_section goes into the answer key under "scenarios" -> its name.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import replace
from datetime import date, datetime, timedelta
from typing import Any

from concord.generate import variations
from concord.generate.catalogue import NICKNAMES
from concord.generate.model import Demographics, Person, Registration, Sex, World
from concord.generate.population import Fakers, add_clinical_truth
from concord.generate.registry import register

TWIN = "twin"
JUNIOR = "junior"
HARD_NEGATIVE_KINDS: dict[str, str] = {
    TWIN: "twins: same family name, birth date, address and phone; different given name and sex",
    JUNIOR: "father and son: same family and given names, address and phone; the son born "
    "20 to 35 years later, his 'Jr.' suffix sent by some registrations only",
}


class Scenario:
    """Does nothing at either point; subclasses override what they need."""

    name = "scenario"

    def shape_population(self, world: World) -> None:
        return None

    def shape_registrations(self, world: World) -> None:
        return None

    def key_section(self, world: World) -> list[dict[str, Any]] | None:
        return None


class HardNegatives(Scenario):
    """Pairs of different persons who look alike and must never be linked."""

    name = "hard_negatives"

    def __init__(self) -> None:
        self.pairs: list[tuple[str, str, str]] = []  # (kind, older/first, other)

    def shape_population(self, world: World) -> None:
        self.pairs = []
        rng = world.rng(self.name)
        fakers = Fakers(world.config.seed, self.name)
        pair_count = round(len(world.persons) * world.config.hard_negative_rate / 2)
        if pair_count == 0 or len(world.persons) < 4:
            return
        order = list(range(len(world.persons)))
        rng.shuffle(order)
        as_of = world.config.as_of
        fathers = iter([i for i in order if _can_be_father(world.persons[i], as_of.date())])
        others = iter(order)
        used: set[int] = set()
        for index in range(pair_count):
            kind = TWIN if index % 2 == 0 else JUNIOR
            first = _next_unused(fathers if kind == JUNIOR else others, used)
            other = _next_unused(others, used)
            if first is None or other is None:
                break
            a_id, b_id = self._make_pair(kind, world.persons, first, other, rng, fakers, as_of)
            self.pairs.append((kind, a_id, b_id))

    def _make_pair(
        self,
        kind: str,
        persons: list[Person],
        first: int,
        other: int,
        rng: random.Random,
        fakers: Fakers,
        as_of: datetime,
    ) -> tuple[str, str]:
        """Turns the other person into the twin or son of the first one."""
        a, b = persons[first], persons[other]
        if kind == TWIN:
            demographics = _twin_of(a, fakers)
        else:
            demographics = _son_of(a.demographics, rng, as_of.date())
        b = replace(
            b,
            demographics=demographics,
            locale=a.locale,
            sources=list(a.sources),
            draws=[],
            conditions=[],
            allergies=[],
            related=[(kind, a.person_id)],
            exact=True,
        )
        # Facts drawn for the old birth date could predate the new one.
        add_clinical_truth(b, rng, as_of)
        persons[other] = b
        persons[first] = replace(a, related=[*a.related, (kind, b.person_id)], exact=True)
        return a.person_id, b.person_id

    def shape_registrations(self, world: World) -> None:
        rng = world.rng(f"{self.name}:suffix")
        sons = {son for kind, _, son in self.pairs if kind == JUNIOR}
        held: dict[str, list[Registration]] = {son: [] for son in sons}
        for registration in world.registrations:
            if registration.person_id in held:
                held[registration.person_id].append(registration)
        for son in sorted(sons):
            registrations = held[son]
            # Alternating from a random start: a son held twice is sent both ways.
            drop = rng.random() < 0.5
            for registration in registrations:
                if drop:
                    registration.demographics = replace(registration.demographics, suffix=None)
                    registration.variations.append(variations.SUFFIX_DROPPED)
                drop = not drop

    def key_section(self, world: World) -> list[dict[str, Any]]:
        return [{"kind": kind, "persons": [a, b]} for kind, a, b in self.pairs]


def _next_unused(candidates: Iterator[int], used: set[int]) -> int | None:
    for candidate in candidates:
        if candidate not in used:
            used.add(candidate)
            return candidate
    return None


def _can_be_father(person: Person, as_of: date) -> bool:
    demographics = person.demographics
    age = (as_of - demographics.birth_date).days / 365.25
    return demographics.sex == "male" and 45 <= age <= 85 and demographics.suffix is None


def _twin_of(a: Person, fakers: Fakers) -> Demographics:
    sex: Sex = "female" if a.demographics.sex == "male" else "male"
    taken = {a.demographics.given[0], *NICKNAMES.get(a.demographics.given[0], ())}
    given = a.demographics.given[0]
    for _ in range(20):
        given = fakers.given_name(a.locale, sex).split()[0]
        if given not in taken:
            break
    return replace(a.demographics, given=(given,), sex=sex)


def _son_of(father: Demographics, rng: random.Random, as_of: date) -> Demographics:
    age = (as_of - father.birth_date).days / 365.25
    gap = rng.uniform(20, min(35, age - 1))
    birth = father.birth_date + timedelta(days=int(gap * 365.25) + rng.randrange(-150, 150))
    if birth.month == father.birth_date.month and birth.day == father.birth_date.day:
        birth += timedelta(days=1)
    return replace(father, birth_date=birth, suffix="Jr.")


class WithinSourceDuplicates(Scenario):
    """A second MRN for a person at a source that already holds them, as when a registration
    clerk does not find the existing chart (so DemographicVariations always varies it)."""

    name = "within_source_duplicates"

    def shape_registrations(self, world: World) -> None:
        rng = world.rng(self.name)
        persons = {p.person_id: p for p in world.persons}
        for registration in list(world.registrations):
            person = persons[registration.person_id]
            if person.exact or registration.number != 1:
                continue
            if rng.random() < world.config.duplicate_rate:
                duplicate = register(world, person, registration.source, 2, rng)
                world.registrations.append(duplicate)


class DemographicVariations(Scenario):
    """Typos, nicknames, birth-date errors, moves and missing fields, on a share of the
    registrations and on every second MRN at a source."""

    name = "variations"

    def shape_registrations(self, world: World) -> None:
        rng = world.rng(self.name)
        fakers = Fakers(world.config.seed, "moves")
        context = variations.Context(rng, fakers.address, world.config.as_of.date())
        exact = {p.person_id for p in world.persons if p.exact}
        for registration in world.registrations:
            if registration.person_id in exact:
                continue
            if registration.number == 1 and rng.random() >= world.config.variation_rate:
                continue
            count = 1 if rng.random() < 0.75 else 2
            _vary(registration, count, context)


def _vary(registration: Registration, count: int, context: variations.Context) -> None:
    for _ in range(count):
        candidates = [
            kind
            for kind in variations.WEIGHTS
            if variations.compatible(kind, registration.variations)
        ]
        while candidates:
            weights = [variations.WEIGHTS[k] for k in candidates]
            kind = context.rng.choices(candidates, weights)[0]
            varied = variations.apply(kind, registration.demographics, context)
            if varied is not None and varied != registration.demographics:
                registration.demographics = varied
                registration.variations.append(kind)
                break
            candidates.remove(kind)
