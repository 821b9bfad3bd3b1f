"""Blocking: which known patients a record is compared with at all.

Scoring every known patient would make each match cost grow with the population. A record
is compared only with patients that share at least one blocking key with it. The keys
overlap on purpose, so that one error in any single field still leaves another key to find
the patient by:

- `dob`: the birth date with day and month in sorted order (a day/month swap keeps it);
- `yf`: birth year + NYSIIS of the family name (a day or month typo keeps it);
- `gf`: NYSIIS of the first given name + NYSIIS of the family name (any birth date error);
- `ph`: the phone number (a name change and a birth date error together);
- `pf`: the postal code + NYSIIS of the family name (no birth date, no phone);
- `id`: an identifier of a system the identifier systems table names (an SSN): the same
  value written in HL7 v2 and in FHIR finds its patient even when every demographic differs.

`pf` uses the family name's sound rather than its first letter: a postal code holds
thousands of patients, and a first letter splits them only ~20 ways (measured on 100k
synthetic patients: ~10 candidates a lookup from `pf` alone, against ~1 with NYSIIS).

Keys carry PHI-derived text (a birth date, a phone number): a persistent index should store
them where PHI may be stored, or store a keyed hash of them instead.
"""

from __future__ import annotations

from functools import lru_cache

from concord.normalization.identity.demographics import Demographics


# The store, the resolution, the matcher and the index all ask for a record's keys; a frozen
# Demographics hashes cheaply next to recomputing its phonetic codes.
@lru_cache(maxsize=65_536)
def blocking_keys(record: Demographics) -> frozenset[str]:
    keys = record.keys
    found: set[str] = set()
    digits = keys.birth_digits
    if len(digits) == 8:
        month, day = sorted((digits[4:6], digits[6:8]))
        found.add(f"dob:{digits[:4]}{month}{day}")
    if digits and keys.family_nysiis:
        found.add(f"yf:{digits[:4]}:{keys.family_nysiis}")
    if keys.given_nysiis and keys.family_nysiis:
        found.add(f"gf:{keys.given_nysiis}:{keys.family_nysiis}")
    if record.phone:
        found.add(f"ph:{record.phone}")
    if record.postal_code and keys.family_nysiis:
        found.add(f"pf:{record.postal_code}:{keys.family_nysiis}")
    # An identifier of a system named across formats (an SSN in PID-3 and in Identifier)
    # finds its patient whatever the demographics say.
    found.update(
        f"id:{system}|{value}" for system, value in keys.identifiers if system in keys.named
    )
    return frozenset(found)
