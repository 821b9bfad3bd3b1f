"""Field-by-field comparison of two demographic views, as agreement LEVELS.

A level says how two values agree (exactly, as a nickname, by sound, by a typo, …), not only
whether they do: a Bob/Robert pair and a Robert/Roberta pair are different evidence, and the
scoring module gives each level its own weight. Every comparison is symmetric, so a pair
scores the same whichever record arrives first.
"""

from __future__ import annotations

from enum import StrEnum
from functools import cache

from nicknames import name_triplets
from rapidfuzz.distance import JaroWinkler

from concord.normalization.identity.demographics import Demographics, MatchKeys
from concord.normalization.identity.normalize import compact

# Below this Jaro-Winkler similarity, unrelated names are common (Mary/Maria 0.85, Baker/
# Parker 0.74); above it, mostly one-letter slips (Jonhson/Johnson 0.96). docs/identity.md.
CLOSE_SIMILARITY = 0.88
# A parent and child are born further apart than this; a one-digit slip in the year is not.
MAX_TYPO_YEARS = 9
DECADE = 10


class Field(StrEnum):
    IDENTIFIERS = "identifiers"
    FAMILY = "family"
    GIVEN = "given"
    SUFFIX = "suffix"
    BIRTH_DATE = "birth_date"
    SEX = "sex"
    POSTAL_CODE = "postal_code"
    PHONE = "phone"


FIELDS: tuple[Field, ...] = tuple(Field)


class Level(StrEnum):
    EXACT = "exact"
    NICKNAME = "nickname"  # given names listed as name and nickname (Bob ~ Robert)
    PHONETIC = "phonetic"  # same NYSIIS or Metaphone code
    CLOSE = "close"  # Jaro-Winkler ≥ CLOSE_SIMILARITY, or a shared word of a compound name
    INITIAL = "initial"  # one given name is an initial of the other
    SWAPPED = "swapped"  # birth date with day and month exchanged
    TYPO = "typo"  # birth date one digit apart, or two adjacent digits transposed
    PARTIAL = "partial"  # birth dates agree at the precision of the less precise one
    SAME_YEAR = "same_year"  # birth dates share only the year
    SAME_ADDRESS = "same_address"  # postal code and first address line both agree
    LAST7 = "last7"  # phone numbers share the last seven digits (area code differs)
    SHARED = "shared"  # an identifier (system, value) in both
    CONFLICTING = "conflicting"  # an identifier system in both, never with the same value
    # A system where one person holds one value (an SSN), in both, with different values.
    CONTRADICTING = "contradicting"
    DIFFERENT = "different"
    MISSING = "missing"  # absent from at least one side: no evidence either way


@cache
def _nickname_pairs() -> frozenset[frozenset[str]]:
    """Unordered (name, nickname) pairs of the `nicknames` package's hand-curated list
    (carltonnorthern/nicknames, Apache-2.0). Only direct pairs count: two nicknames of one
    name (Bill and Bob are both listed under Robert) are not taken as one name."""
    return frozenset(
        frozenset((compact(t.name1), compact(t.name2)))
        for t in name_triplets()
        if t.relationship == "has_nickname" and t.name1 != t.name2
    )


def are_nicknames(a: str, b: str) -> bool:
    return frozenset((a, b)) in _nickname_pairs()


def _phonetic(a_nysiis: str, b_nysiis: str, a_metaphone: str, b_metaphone: str) -> bool:
    return bool(a_nysiis and a_nysiis == b_nysiis) or bool(
        a_metaphone and a_metaphone == b_metaphone
    )


def compare_family(a: MatchKeys, b: MatchKeys) -> Level:
    if not a.family or not b.family:
        return Level.MISSING
    if a.family == b.family:
        return Level.EXACT
    if _phonetic(a.family_nysiis, b.family_nysiis, a.family_metaphone, b.family_metaphone):
        return Level.PHONETIC
    compound = len(a.family_tokens) > 1 or len(b.family_tokens) > 1
    if JaroWinkler.similarity(a.family, b.family) >= CLOSE_SIMILARITY or (
        compound and a.family_tokens & b.family_tokens
    ):
        return Level.CLOSE
    return Level.DIFFERENT


def compare_given(a: MatchKeys, b: MatchKeys) -> Level:
    if not a.given or not b.given:
        return Level.MISSING
    if a.given == b.given:
        return Level.EXACT
    if are_nicknames(a.given, b.given):
        return Level.NICKNAME
    if len(a.given) == 1 or len(b.given) == 1:
        return Level.INITIAL if a.given[0] == b.given[0] else Level.DIFFERENT
    if _phonetic(a.given_nysiis, b.given_nysiis, a.given_metaphone, b.given_metaphone):
        return Level.PHONETIC
    if JaroWinkler.similarity(a.given, b.given) >= CLOSE_SIMILARITY:
        return Level.CLOSE
    return Level.DIFFERENT


def _one_slip(a: str, b: str) -> bool:
    """One digit replaced, or two adjacent digits transposed (strings of equal length)."""
    differing = [i for i in range(len(a)) if a[i] != b[i]]
    if len(differing) == 1:
        return True
    return (
        len(differing) == 2
        and differing[1] == differing[0] + 1
        and a[differing[0]] == b[differing[1]]
        and a[differing[1]] == b[differing[0]]
    )


def compare_birth_date(a: str, b: str) -> Level:
    """a and b are digits: YYYYMMDD, YYYYMM or YYYY ("" when missing)."""
    if not a or not b:
        return Level.MISSING
    if len(a) == 8 and len(b) == 8:
        if a == b:
            return Level.EXACT
        if a[:4] == b[:4] and a[4:6] == b[6:8] and a[6:8] == b[4:6]:
            return Level.SWAPPED
        # A slip in the decade digit (1986 for 1996) is as common as one in the day; a
        # generation apart (a father and son) is not a slip, even on the same day.
        gap = abs(int(a[:4]) - int(b[:4]))
        near = gap <= MAX_TYPO_YEARS or (gap == DECADE and a[4:] == b[4:])
        if near and _one_slip(a, b):
            return Level.TYPO
        return Level.SAME_YEAR if a[:4] == b[:4] else Level.DIFFERENT
    shortest = min(len(a), len(b))
    if a[:shortest] == b[:shortest]:
        return Level.PARTIAL
    return Level.SAME_YEAR if a[:4] == b[:4] else Level.DIFFERENT


def compare_sex(a: str | None, b: str | None) -> Level:
    # "other" and "unknown" are where v2's A (ambiguous) and N (not applicable) land: they
    # do not say the person is of another sex than a record that says male or female.
    if a not in ("male", "female") or b not in ("male", "female"):
        return Level.MISSING
    return Level.EXACT if a == b else Level.DIFFERENT


def compare_postal_code(a: Demographics, b: Demographics) -> Level:
    if not a.postal_code or not b.postal_code:
        return Level.MISSING
    if a.postal_code != b.postal_code:
        return Level.DIFFERENT
    if a.address_line and a.address_line == b.address_line:
        return Level.SAME_ADDRESS
    return Level.EXACT


def compare_phone(a: str | None, b: str | None) -> Level:
    if not a or not b:
        return Level.MISSING
    if a == b:
        return Level.EXACT
    return Level.LAST7 if a[-7:] == b[-7:] else Level.DIFFERENT


def compare_identifiers(a: MatchKeys, b: MatchKeys) -> Level:
    if a.identifiers & b.identifiers:
        return Level.SHARED
    if a.unique_systems & b.unique_systems:
        return Level.CONTRADICTING
    if a.systems & b.systems:
        return Level.CONFLICTING
    return Level.MISSING


def compare_suffix(a: str | None, b: str | None) -> Level:
    # One side without a suffix is common for the same person (sources drop "Jr."), so
    # only two different recorded suffixes are evidence against.
    if not a or not b:
        return Level.MISSING
    return Level.EXACT if a == b else Level.DIFFERENT


def compare(a: Demographics, b: Demographics) -> tuple[tuple[Field, Level], ...]:
    """The level of every field, in FIELDS order."""
    ka, kb = a.keys, b.keys
    return (
        (Field.IDENTIFIERS, compare_identifiers(ka, kb)),
        (Field.FAMILY, compare_family(ka, kb)),
        (Field.GIVEN, compare_given(ka, kb)),
        (Field.SUFFIX, compare_suffix(a.suffix, b.suffix)),
        (Field.BIRTH_DATE, compare_birth_date(ka.birth_digits, kb.birth_digits)),
        (Field.SEX, compare_sex(a.sex, b.sex)),
        (Field.POSTAL_CODE, compare_postal_code(a, b)),
        (Field.PHONE, compare_phone(a.phone, b.phone)),
    )
