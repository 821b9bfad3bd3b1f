"""Comparison keys for demographic values: what "equal" means for identity matching.

Keys are built once, at extraction, so that comparing two records is string equality and a
few cheap similarity calls. Unlike `concord.normalization.patient` (where José and Jose are
different values a reviewer must see), identity keys keep accents for exact equality but fold
them away for phonetic codes: a dropped accent is one of the commonest registration variants.
"""

from __future__ import annotations

import re
import unicodedata

import jellyfish

# Generational suffixes only: degrees and honorifics (MD, PhD, Dr.) say nothing about who the
# person is, while Jr./Sr./III separate a father from his son.
GENERATIONAL_SUFFIXES = frozenset({"jr", "sr", "ii", "iii", "iv", "v", "2nd", "3rd", "4th"})

# A subset of USPS Publication 28 street suffix and unit abbreviations: the variants that
# differ between registration desks for the same address.
_STREET_WORDS = {
    "street": "st",
    "avenue": "ave",
    "av": "ave",
    "road": "rd",
    "drive": "dr",
    "lane": "ln",
    "boulevard": "blvd",
    "court": "ct",
    "place": "pl",
    "terrace": "ter",
    "parkway": "pkwy",
    "highway": "hwy",
    "circle": "cir",
    "square": "sq",
    "north": "n",
    "south": "s",
    "east": "e",
    "west": "w",
    "apartment": "apt",
    "suite": "ste",
    "unit": "unit",
    "number": "",
    "no": "",
}
_US_POSTAL = re.compile(r"^\d{5}(\d{4})?$")
# ASCII apostrophe, right single quotation mark, modifier letter apostrophe, grave, acute.
_APOSTROPHES = str.maketrans("", "", "'\u2019\u02bc`\u00b4")
_ASCII_SEPARATORS = re.compile(r"[^0-9a-z]+")  # after casefold, ASCII letters are a-z


def _nfc(text: str) -> str:
    return unicodedata.normalize("NFC", text)


def tokens(text: str) -> list[str]:
    """NFC, case-folded words with punctuation removed. Apostrophes join (O'Brien → obrien)
    because sources disagree on keeping them; other punctuation (hyphens, dots, commas)
    separates words."""
    folded = _nfc(text).casefold().translate(_APOSTROPHES)
    if folded.isascii():  # most names: no marks, and a regex does what the loop below does
        return _ASCII_SEPARATORS.sub(" ", folded).split()
    # Combining marks stay with their letter (a few letters have no precomposed form).
    cleaned = "".join(
        ch if ch.isalnum() or unicodedata.category(ch).startswith("M") else " " for ch in folded
    )
    return cleaned.split()


def name_key(text: str | None) -> str | None:
    words = tokens(text or "")
    return " ".join(words) if words else None


def split_suffix(words: list[str]) -> tuple[list[str], str | None]:
    """A trailing generational suffix written inside a name ("Smith Jr") moved out of it.
    A one-word name is never emptied: "V" alone is an initial, not a suffix."""
    if len(words) > 1 and words[-1] in GENERATIONAL_SUFFIXES:
        return words[:-1], words[-1]
    return words, None


def suffix_key(text: str | None) -> str | None:
    for word in tokens(text or ""):
        if word in GENERATIONAL_SUFFIXES:
            return {"2nd": "ii", "3rd": "iii", "4th": "iv"}.get(word, word)
    return None


def compact(key: str) -> str:
    """The key without spaces: "de la cruz" and "delacruz" are one family name."""
    return key.replace(" ", "")


def ascii_fold(text: str) -> str:
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(ch for ch in decomposed if ch.isascii() and ch.isalpha())


def nysiis(key: str) -> str:
    """NYSIIS of the ASCII-folded letters; "" when nothing is left to encode.
    NYSIIS rather than Soundex: it keeps vowel positions and was designed for names."""
    letters = ascii_fold(key)
    return jellyfish.nysiis(letters) if letters else ""


def metaphone(key: str) -> str:
    """Metaphone of the ASCII-folded letters: catches the C/K, TH/T and PH/F spellings
    (Catherine ~ Kathryn, Smith ~ Smyth) that NYSIIS keeps apart."""
    letters = ascii_fold(key)
    return jellyfish.metaphone(letters) if letters else ""


def phone_digits(text: str | None) -> str | None:
    """The last ten digits of a phone number (a leading country code or trunk prefix
    dropped); None below seven digits, which cannot identify a line."""
    digits = "".join(ch for ch in text or "" if ch.isdigit())
    if len(digits) < 7:
        return None
    return digits[-10:]


def postal_key(text: str | None) -> str | None:
    """US ZIP and ZIP+4 → the five-digit ZIP (the +4 part is often left out); any other
    code → its case-folded letters and digits (A1A 1A1 and a1a1a1 are one code)."""
    key = "".join(ch for ch in _nfc(text or "").casefold() if ch.isalnum())
    if not key:
        return None
    return key[:5] if _US_POSTAL.match(key) else key


def address_key(text: str | None) -> str | None:
    words = [_STREET_WORDS.get(word, word) for word in tokens(text or "")]
    joined = " ".join(word for word in words if word)
    return joined or None
