"""How one registration's demographics come to differ from the person's: the errors and
changes that make the same person look like two. Each kind is a pure function of the
demographics and a random stream; None when the kind cannot apply (a name too short for a
typo, a birth day above 12 for a day/month swap)."""

from __future__ import annotations

import random
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import date

from concord.generate.catalogue import NICKNAMES
from concord.generate.model import Address, Demographics

FAMILY_TYPO = "family_typo"
GIVEN_TYPO = "given_typo"
NICKNAME = "nickname"
BIRTH_DATE_SWAPPED = "birth_date_swapped"
BIRTH_DATE_TYPO = "birth_date_typo"
MOVED = "moved"
MISSING_PHONE = "missing_phone"
MISSING_ADDRESS = "missing_address"
MISSING_SEX = "missing_sex"
# Only for the son of a father/son pair: some sources drop "Jr.".
SUFFIX_DROPPED = "suffix_dropped"
# Only planted disagreements (generate/planted.py) make these, on a person's second source.
PLANTED_BIRTH_DATE = "planted_birth_date"
PLANTED_SEX = "planted_sex"
PLANTED_NAME = "planted_name"

DESCRIPTIONS: dict[str, str] = {
    FAMILY_TYPO: "the family name has one edit (a letter changed, dropped, added, two "
    "neighbours swapped, or an accent lost)",
    GIVEN_TYPO: "the first given name has one edit, as for family_typo",
    NICKNAME: "the first given name is a nickname of it (Robert -> Bob, Elizabeth -> Liz)",
    BIRTH_DATE_SWAPPED: "day and month of the birth date are swapped (only when the day is "
    "12 or less and differs from the month)",
    BIRTH_DATE_TYPO: "one digit of the birth date is wrong (still a valid, past date)",
    MOVED: "a different address with a different postal code (the person moved; the phone stays)",
    MISSING_PHONE: "no phone",
    MISSING_ADDRESS: "no address",
    MISSING_SEX: "no sex (FHIR gender and PID-8 absent)",
    SUFFIX_DROPPED: "the name suffix (Jr.) of the son of a father/son pair is not sent",
    PLANTED_BIRTH_DATE: "a planted disagreement: another birth date, 1 to 400 days off",
    PLANTED_SEX: "a planted disagreement: the other administrative sex",
    PLANTED_NAME: "a planted disagreement: another family name",
}

# Kinds a varied registration draws from, with their relative weights.
WEIGHTS: dict[str, float] = {
    FAMILY_TYPO: 3.0,
    GIVEN_TYPO: 2.0,
    NICKNAME: 2.0,
    BIRTH_DATE_SWAPPED: 1.5,
    BIRTH_DATE_TYPO: 1.5,
    MOVED: 2.0,
    MISSING_PHONE: 1.5,
    MISSING_ADDRESS: 1.0,
    MISSING_SEX: 0.7,
}
# Kinds that touch the same element: a registration gets at most one of each group.
_GROUPS = (
    {GIVEN_TYPO, NICKNAME},
    {BIRTH_DATE_SWAPPED, BIRTH_DATE_TYPO},
    {MOVED, MISSING_ADDRESS},
)

AddressSource = Callable[[random.Random], Address]


def compatible(kind: str, chosen: list[str]) -> bool:
    if kind in chosen:
        return False
    return not any(kind in group and group.intersection(chosen) for group in _GROUPS)


@dataclass(frozen=True)
class Context:
    rng: random.Random
    new_address: AddressSource  # a fresh address, for a move
    latest: date  # no birth date may come after it


def apply(kind: str, demographics: Demographics, context: Context) -> Demographics | None:
    """The demographics with one variation of the kind, or None when it cannot apply."""
    variation = _VARIATIONS.get(kind)
    if variation is None:
        raise ValueError(f"unknown variation kind {kind!r}")
    return variation(demographics, context)


def _family_typo(demographics: Demographics, context: Context) -> Demographics | None:
    family = typo(demographics.family, context.rng)
    return replace(demographics, family=family) if family else None


def _given_typo(demographics: Demographics, context: Context) -> Demographics | None:
    first = typo(demographics.given[0], context.rng) if demographics.given else None
    return replace(demographics, given=(first, *demographics.given[1:])) if first else None


def _nickname(demographics: Demographics, context: Context) -> Demographics | None:
    options = NICKNAMES.get(demographics.given[0]) if demographics.given else None
    if not options:
        return None
    return replace(demographics, given=(context.rng.choice(options), *demographics.given[1:]))


def _birth_date_swapped(demographics: Demographics, context: Context) -> Demographics | None:
    born = demographics.birth_date
    if born.day > 12 or born.day == born.month:
        return None
    return replace(demographics, birth_date=date(born.year, born.day, born.month))


def _birth_date_typo(demographics: Demographics, context: Context) -> Demographics | None:
    mistyped = birth_date_typo(demographics.birth_date, context.rng, context.latest)
    return replace(demographics, birth_date=mistyped) if mistyped else None


def _moved(demographics: Demographics, context: Context) -> Demographics | None:
    if demographics.address is None:
        return None
    for _ in range(10):
        address = context.new_address(context.rng)
        if address.postal_code != demographics.address.postal_code:
            return replace(demographics, address=address)
    return None


def _missing_phone(demographics: Demographics, context: Context) -> Demographics | None:
    return replace(demographics, phone=None) if demographics.phone else None


def _missing_address(demographics: Demographics, context: Context) -> Demographics | None:
    return replace(demographics, address=None) if demographics.address else None


def _missing_sex(demographics: Demographics, context: Context) -> Demographics | None:
    return replace(demographics, sex=None) if demographics.sex else None


_VARIATIONS: dict[str, Callable[[Demographics, Context], Demographics | None]] = {
    FAMILY_TYPO: _family_typo,
    GIVEN_TYPO: _given_typo,
    NICKNAME: _nickname,
    BIRTH_DATE_SWAPPED: _birth_date_swapped,
    BIRTH_DATE_TYPO: _birth_date_typo,
    MOVED: _moved,
    MISSING_PHONE: _missing_phone,
    MISSING_ADDRESS: _missing_address,
    MISSING_SEX: _missing_sex,
}  # SUFFIX_DROPPED is applied by the hard-negatives scenario, to sons only


_KEYBOARD = "qwertyuiopasdfghjklzxcvbnm"
_MIN_TYPO_LENGTH = 4


def typo(name: str, rng: random.Random) -> str | None:
    """The name with one edit inside one of its words (never its first letter: people and
    registration clerks rarely get that wrong), or None when no word is long enough."""
    words = name.replace("-", " ").split()
    eligible = [w for w in words if len(w) >= _MIN_TYPO_LENGTH and w.isalpha()]
    if not eligible:
        return None
    word = rng.choice(eligible)
    for _ in range(10):
        edited = _edit(word, rng)
        if edited != word:
            start = _find_word(name, word)
            return name[:start] + edited + name[start + len(word) :]
    return None


def _find_word(name: str, word: str) -> int:
    """Where the word starts as a whole word (so 'Ann' in 'Ann-Anna' is the first one)."""
    position = 0
    while True:
        index = name.index(word, position)
        end = index + len(word)
        before_ok = index == 0 or not name[index - 1].isalpha()
        after_ok = end == len(name) or not name[end].isalpha()
        if before_ok and after_ok:
            return index
        position = index + 1


def _edit(word: str, rng: random.Random) -> str:
    accented = [i for i, c in enumerate(word) if _strip_accent(c) != c]
    if accented and rng.random() < 0.5:
        i = rng.choice(accented)
        return word[:i] + _strip_accent(word[i]) + word[i + 1 :]
    i = rng.randrange(1, len(word))
    operation = rng.choice(("substitute", "delete", "insert", "transpose"))
    if operation == "substitute":
        return word[:i] + rng.choice(_KEYBOARD) + word[i + 1 :]
    if operation == "delete":
        return word[:i] + word[i + 1 :]
    if operation == "insert":
        return word[:i] + rng.choice((word[i - 1], rng.choice(_KEYBOARD))) + word[i:]
    if i + 1 < len(word):
        return word[:i] + word[i + 1] + word[i] + word[i + 2 :]
    return word[: i - 1] + word[i] + word[i - 1]


def _strip_accent(char: str) -> str:
    decomposed = unicodedata.normalize("NFD", char)
    return decomposed[0] if decomposed[0].isascii() else char


def birth_date_typo(born: date, rng: random.Random, latest: date) -> date | None:
    """One digit of YYYYMMDD changed, the result a valid date no later than latest and
    different from a day/month swap (which is a kind of its own)."""
    digits = born.strftime("%Y%m%d")
    # Century digits are never mistyped into a plausible date; the rest are.
    positions = [2, 3, 4, 5, 6, 7]
    for _ in range(30):
        position = rng.choice(positions)
        digit = rng.choice("0123456789")
        if digit == digits[position]:
            continue
        text = digits[:position] + digit + digits[position + 1 :]
        try:
            candidate = date(int(text[:4]), int(text[4:6]), int(text[6:]))
        except ValueError:
            continue
        swapped = born.day <= 12 and candidate == date(born.year, born.day, born.month)
        if not swapped and candidate <= latest:
            return candidate
    return None
