"""True persons: names from Faker in several locales, birth dates, addresses, phones, and the
clinical facts that are true of them (which each source then holds a part of).

Faker draws from one instance per locale, each seeded from the generator's seed, so the
population is the same for a seed whatever else changes in the process; the locale of each
person is drawn from our own random stream, not Faker's multi-locale proxy.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from datetime import UTC, date, datetime, timedelta
from typing import TYPE_CHECKING, Literal

from concord.extras import require_local
from concord.generate.catalogue import CONDITIONS, LAB_TESTS, REACTIONS, SUBSTANCES
from concord.generate.model import (
    Address,
    AllergyFact,
    ConditionFact,
    Demographics,
    LabDraw,
    LabResult,
    Person,
    Sex,
    World,
)

if TYPE_CHECKING:  # Faker is in the `local` extra: imported when first used
    from faker import Faker

# Mostly US English names; the rest bring accents (José, Françoise, Häring, Nguyễn), two
# surnames (García López), particles (van der Berg), compound and hyphenated given names.
LOCALES: tuple[tuple[str, float], ...] = (
    ("en_US", 0.55),
    ("es_MX", 0.17),
    ("en_IE", 0.06),
    ("fr_FR", 0.06),
    ("de_DE", 0.06),
    ("nl_NL", 0.05),
    ("vi_VN", 0.05),
)
_ADDRESS_LOCALE = "en_US"
# The sources serve one region, so postal codes cluster as they do in a real catchment area.
_STATES = ("IL", "IN", "WI")
_STATE_WEIGHTS = (0.7, 0.2, 0.1)


class Fakers:
    """One seeded Faker per locale, created when first used."""

    def __init__(self, seed: int, purpose: str) -> None:
        self._seed = seed
        self._purpose = purpose
        self._fakers: dict[str, Faker] = {}

    def __getitem__(self, locale: str) -> Faker:
        faker = self._fakers.get(locale)
        if faker is None:
            require_local("faker", "concord generate")
            from faker import Faker

            faker = Faker(locale)
            stream = random.Random(f"{self._seed}:faker:{self._purpose}:{locale}")  # noqa: S311
            faker.seed_instance(stream.getrandbits(64))
            self._fakers[locale] = faker
        return faker

    def address(self, rng: random.Random) -> Address:
        faker = self[_ADDRESS_LOCALE]
        state = rng.choices(_STATES, _STATE_WEIGHTS)[0]
        return Address(faker.street_address(), faker.city(), state, faker.postcode_in_state(state))

    def given_name(self, locale: str, sex: Sex) -> str:
        faker = self[locale]
        return faker.first_name_male() if sex == "male" else faker.first_name_female()


def make_persons(world: World) -> list[Person]:
    config = world.config
    rng = world.rng("population")
    clinical_rng = world.rng("clinical-truth")
    fakers = Fakers(config.seed, "population")
    locales = [name for name, _ in LOCALES]
    weights = [weight for _, weight in LOCALES]
    persons = []
    for number in range(1, config.patients + 1):
        locale = rng.choices(locales, weights)[0]
        sex: Sex = "male" if rng.random() < 0.5 else "female"
        demographics = Demographics(
            family=_family(fakers, locale, sex, rng),
            given=_given(fakers, locale, sex, rng),
            sex=sex,
            birth_date=_birth_date(rng, config.as_of),
            address=fakers.address(rng),
            phone=phone_number(rng),
        )
        person = Person(f"EP-{number:06d}", demographics, locale)
        add_clinical_truth(person, clinical_rng, config.as_of)
        persons.append(person)
    return persons


def _given(fakers: Fakers, locale: str, sex: Sex, rng: random.Random) -> tuple[str, ...]:
    # Some locales already return compound names ("María Eugenia"): each word is a given name.
    given = fakers.given_name(locale, sex).split()
    middle_rate = {"en_US": 0.35, "en_IE": 0.3, "es_MX": 0.25, "fr_FR": 0.15}.get(locale, 0.0)
    if rng.random() < middle_rate:
        middle = fakers.given_name(locale, sex).split()[0]
        if middle not in given:
            given.append(middle)
    return tuple(given)


def _family(fakers: Fakers, locale: str, sex: Sex, rng: random.Random) -> str:
    family = fakers[locale].last_name()
    if locale == "es_MX" and rng.random() < 0.6:
        second = fakers[locale].last_name()
        if second != family:
            family = f"{family} {second}"
    elif locale in ("en_US", "fr_FR", "de_DE") and sex == "female" and rng.random() < 0.08:
        second = fakers[locale].last_name()
        if second != family and " " not in second:
            family = f"{family}-{second}"
    return family


def _birth_date(rng: random.Random, as_of: datetime) -> date:
    band = rng.random()
    if band < 0.15:
        years = rng.uniform(0.5, 18)
    elif band < 0.87:
        years = rng.uniform(18, 80)
    else:
        years = rng.uniform(80, 98)
    return as_of.date() - timedelta(days=int(years * 365.25))


def phone_number(rng: random.Random) -> str:
    """Ten digits with the 555 exchange, which North American numbering keeps out of real
    use for most lines, so a generated number is unlikely to ring anyone."""
    area = rng.choice("23456789") + f"{rng.randrange(0, 100):02d}"
    return f"{area}555{rng.randrange(0, 10_000):04d}"


_PANELS = {test.panel for test in LAB_TESTS}


def add_clinical_truth(person: Person, rng: random.Random, as_of: datetime) -> None:
    """Conditions, allergies and lab draws that are true of the person."""
    birth = person.demographics.birth_date
    age = (as_of.date() - birth).days / 365.25
    for concept in rng.sample(CONDITIONS, k=_count(rng, age)):
        earliest = birth + timedelta(days=int(min(age, 18) * 365.25))
        onset = _day_between(rng, earliest, as_of.date() - timedelta(days=30))
        if rng.random() < 0.1:
            abated = _day_between(rng, onset, as_of.date() - timedelta(days=1))
            person.conditions.append(ConditionFact(concept, onset, "resolved", abated))
        else:
            person.conditions.append(ConditionFact(concept, onset))
    allergies = rng.choices((0, 1, 2), (0.55, 0.3, 0.15))[0]
    for substance in rng.sample(SUBSTANCES, k=allergies):
        recorded = _day_between(rng, birth, as_of.date() - timedelta(days=30))
        criticality: Literal["low", "high"] = "high" if rng.random() < 0.3 else "low"
        reaction = rng.choice(REACTIONS)
        person.allergies.append(AllergyFact(substance, criticality, reaction, recorded))
    panels = sorted(_PANELS)
    for _ in range(rng.choice((1, 2, 2, 3))):
        panel = rng.choice(panels)
        taken = as_of - timedelta(minutes=rng.randrange(24 * 60, 730 * 24 * 60))
        results = tuple(
            LabResult(test, _lab_value(rng, test.mean, test.spread, test.conventional.decimals))
            for test in LAB_TESTS
            if test.panel == panel
        )
        person.draws.append(LabDraw(_accession(rng), taken.astimezone(UTC), results))


def _accession(rng: random.Random) -> str:
    # Opaque, so that no record gives away the answer key's person id; with 16 digits two of
    # a million draws share one with a chance of about 1 in 20,000.
    return f"{rng.randrange(10**16):016d}"


def _count(rng: random.Random, age: float) -> int:
    weights: Sequence[float] = (0.5, 0.3, 0.15, 0.05) if age < 45 else (0.2, 0.35, 0.3, 0.15)
    return rng.choices((0, 1, 2, 3), weights)[0]


def _day_between(rng: random.Random, start: date, end: date) -> date:
    if end <= start:
        return start
    return start + timedelta(days=rng.randrange((end - start).days + 1))


def _lab_value(rng: random.Random, mean: float, spread: float, decimals: int) -> float:
    value = max(rng.gauss(mean, spread), mean * 0.3)
    return round(value, decimals)
