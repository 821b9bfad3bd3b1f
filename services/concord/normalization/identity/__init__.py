"""Patient identity: the pure core of probabilistic matching (issue 4, item 1).

`demographics` extracts one source's view of a patient (FHIR Patient, HL7 v2 PID) as
comparison keys; `compare` grades each field's agreement; `scoring` weighs the grades
(Fellegi-Sunter) and decides LINK / REVIEW / NEW; `blocking` and `index` find the known
patients worth comparing; `matcher` puts them together. No I/O here: the durable index and
the worker wiring live elsewhere. The model, its values and its cost: docs/identity.md.
"""

from concord.normalization.identity.blocking import blocking_keys
from concord.normalization.identity.compare import Field, Level, compare
from concord.normalization.identity.demographics import (
    Demographics,
    Identifier,
    from_fhir_patient,
    from_pid,
    shares_identifier,
)
from concord.normalization.identity.index import IdentityIndex, InMemoryIdentityIndex, KnownPerson
from concord.normalization.identity.matcher import MatchDecision, match
from concord.normalization.identity.scoring import (
    Decision,
    FieldWeight,
    Score,
    Thresholds,
    score,
)

__all__ = [
    "Decision",
    "Demographics",
    "Field",
    "FieldWeight",
    "Identifier",
    "IdentityIndex",
    "InMemoryIdentityIndex",
    "KnownPerson",
    "Level",
    "MatchDecision",
    "Score",
    "Thresholds",
    "blocking_keys",
    "compare",
    "from_fhir_patient",
    "from_pid",
    "match",
    "score",
    "shares_identifier",
]
