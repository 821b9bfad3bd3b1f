"""Patient identity, pure: extraction, field levels, Fellegi-Sunter scores, blocking, decisions."""

from __future__ import annotations

import unicodedata
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from concord.hl7v2 import er7
from concord.normalization.identity import (
    Decision,
    Demographics,
    Field,
    Identifier,
    InMemoryIdentityIndex,
    KnownPerson,
    Level,
    Thresholds,
    blocking_keys,
    compare,
    from_fhir_patient,
    from_pid,
    match,
    normalize,
    score,
    shares_identifier,
)
from concord.normalization.identity.demographics import LOCAL_SYSTEM_PREFIX

ROBERT: dict[str, Any] = {
    "source": "hospital-a",
    "family": "Smith",
    "given": ("Robert", "James"),
    "birth_date": "1970-03-14",
    "sex": "male",
    "postal_code": "02139",
    "phone": "617-555-0101",
    "address_line": "12 Main Street",
}


def view(**changes: Any) -> Demographics:
    return Demographics(**{**ROBERT, "source": "clinic-b", **changes})


def known(*people: tuple[str, Demographics]) -> InMemoryIdentityIndex:
    return InMemoryIdentityIndex(
        KnownPerson(enterprise_id=eid, demographics=(d,)) for eid, d in people
    )


def level(a: Demographics, b: Demographics, field: Field) -> Level:
    return dict(compare(a, b))[field]


ROBERT_INDEX = known(("E-robert", Demographics(**ROBERT)))


# --- the cases a matcher must get right --------------------------------------------------


def test_a_nickname_is_its_own_level_and_links() -> None:
    record = view(given=("Bob",))
    assert level(record, Demographics(**ROBERT), Field.GIVEN) is Level.NICKNAME
    assert level(view(given=("Liz",)), view(given=("Elizabeth",)), Field.GIVEN) is Level.NICKNAME
    decision = match(record, ROBERT_INDEX)
    assert (decision.kind, decision.enterprise_id) == (Decision.LINK, "E-robert")


def test_a_swapped_day_and_month_links() -> None:
    a, b = view(birth_date="1970-03-04"), view(birth_date="1970-04-03")
    assert level(a, b, Field.BIRTH_DATE) is Level.SWAPPED
    index = known(("E-robert", a))
    assert match(b, index).kind is Decision.LINK


@pytest.mark.parametrize(
    ("recorded", "expected"),
    [
        ("1970-03-15", Level.TYPO),  # one digit of the day
        ("1970-08-14", Level.TYPO),  # one digit of the month
        ("1979-03-14", Level.TYPO),  # last digit of the year
        ("1907-03-14", Level.DIFFERENT),  # a transposition, but 63 years apart
        ("1940-03-14", Level.DIFFERENT),  # one digit, but a generation apart: not a slip
        ("1960-03-14", Level.TYPO),  # the decade digit, on the same day: a slip
        ("1960-03-15", Level.DIFFERENT),  # a decade and another day: two differences
        ("1970-11-30", Level.SAME_YEAR),
        ("1970", Level.PARTIAL),
        ("1970-03", Level.PARTIAL),
        ("1971", Level.DIFFERENT),
        (None, Level.MISSING),
    ],
)
def test_birth_date_levels(recorded: str | None, expected: Level) -> None:
    assert level(Demographics(**ROBERT), view(birth_date=recorded), Field.BIRTH_DATE) is expected


def test_a_transposition_within_a_decade_is_a_typo() -> None:
    a, b = view(birth_date="1987-05-20"), view(birth_date="1978-05-20")
    assert level(a, b, Field.BIRTH_DATE) is Level.TYPO


def test_a_one_digit_typo_in_the_birth_date_links() -> None:
    assert match(view(birth_date="1970-03-15"), ROBERT_INDEX).kind is Decision.LINK


def test_a_phonetic_variant_of_the_family_name_links() -> None:
    record = view(family="Smyth")
    assert level(record, Demographics(**ROBERT), Field.FAMILY) is Level.PHONETIC
    assert match(record, ROBERT_INDEX).kind is Decision.LINK


def test_a_patient_who_moved_still_links_when_the_other_fields_agree() -> None:
    record = view(postal_code="10001", phone="212 555 0199", address_line="5 Broadway")
    decision = match(record, ROBERT_INDEX)
    levels = {w.field: w.level for w in decision.breakdown}
    assert levels[Field.POSTAL_CODE] is Level.DIFFERENT
    assert levels[Field.PHONE] is Level.DIFFERENT
    assert decision.kind is Decision.LINK


def test_twins_at_one_address_do_not_link() -> None:
    brother = Demographics(**ROBERT)
    sister = view(given=("Mary",), sex="female")
    decision = match(sister, known(("E-brother", brother)))
    assert decision.kind is not Decision.LINK
    # The shared address and phone are what a twin has too: kept, marked, weighing nothing.
    household = [w for w in decision.breakdown if w.field in (Field.POSTAL_CODE, Field.PHONE)]
    assert household and all(w.discounted and w.weight == 0 for w in household)


def test_brother_and_sister_with_names_that_sound_alike_do_not_link() -> None:
    brother = view(given=("John",))
    sister = view(given=("Jane",), sex="female")
    decision = match(sister, known(("E-brother", brother)))
    given_term = next(w for w in decision.breakdown if w.field is Field.GIVEN)
    assert given_term.level is Level.PHONETIC and given_term.discounted
    assert decision.kind is not Decision.LINK


def test_twins_of_one_sex_do_not_link_either() -> None:
    decision = match(view(given=("William",)), ROBERT_INDEX)
    assert decision.kind is not Decision.LINK


def test_father_and_son_of_one_name_do_not_link() -> None:
    son = view(suffix="Jr.", birth_date="1996-07-02")
    decision = match(son, ROBERT_INDEX)
    assert decision.kind is Decision.NEW
    levels = {w.field: w.level for w in decision.breakdown}
    assert levels[Field.BIRTH_DATE] is Level.DIFFERENT
    # The father's record has no suffix: one-sided suffixes are no evidence either way.
    assert levels[Field.SUFFIX] is Level.MISSING


def test_jr_against_sr_is_evidence_against() -> None:
    weights = {w.field: w for w in score(view(suffix="Sr"), view(suffix="Jr.")).breakdown}
    assert weights[Field.SUFFIX].level is Level.DIFFERENT and weights[Field.SUFFIX].weight < 0


def test_missing_fields_weigh_nothing() -> None:
    sparse = Demographics(source="lab", family="Smith", given=("Robert",), birth_date="1970-03-14")
    decision = match(sparse, ROBERT_INDEX)
    weights = {w.field: w for w in decision.breakdown}
    for field in (Field.SEX, Field.POSTAL_CODE, Field.PHONE, Field.SUFFIX, Field.IDENTIFIERS):
        assert weights[field].level is Level.MISSING and weights[field].weight == 0
    assert decision.kind is Decision.LINK  # name and full birth date are enough

    family_only = Demographics(source="lab", family="Smith", postal_code="02139")
    assert match(family_only, ROBERT_INDEX).kind is Decision.NEW


def test_nothing_to_compare_is_new_without_a_candidate() -> None:
    decision = match(Demographics(source="lab"), ROBERT_INDEX)
    assert decision.kind is Decision.NEW
    assert decision.enterprise_id is None and decision.score is None
    assert decision.candidates_compared == 0


# --- blocking --------------------------------------------------------------------------


def test_blocking_keeps_a_record_with_a_typo_in_the_family_name() -> None:
    johnson = view(family="Johnson", given=("Emily",), sex="female")
    typo = view(family="Jonhsno", given=("Emily",), sex="female", phone=None, postal_code=None)
    assert blocking_keys(johnson) & blocking_keys(typo)  # the birth date key survives
    index = known(("E-johnson", johnson), ("E-robert", Demographics(**ROBERT)))
    decision = match(typo, index)
    assert decision.enterprise_id == "E-johnson"
    assert decision.kind is not Decision.NEW


def test_blocking_keys_survive_a_day_month_swap() -> None:
    a, b = view(birth_date="1970-03-04"), view(birth_date="1970-04-03", family="Smithe")
    assert any(key.startswith("dob:") for key in blocking_keys(a) & blocking_keys(b))


def test_a_record_is_compared_only_with_candidates_sharing_a_key() -> None:
    stranger = Demographics(
        source="x", family="Okafor", given=("Ngozi",), birth_date="1991-12-01", sex="female"
    )
    index = known(("E-robert", Demographics(**ROBERT)), ("E-ngozi", stranger))
    assert match(view(given=("Bob",)), index).candidates_compared == 1


def test_an_oversized_block_is_skipped() -> None:
    index = known(*((f"E{n}", view(phone=f"61755501{n:02d}")) for n in range(3)))
    index.max_block_size = 2
    # Three share every key but the phone: only the record's own phone block is small enough.
    found = index.candidates(blocking_keys(view(phone="6175550101")))
    assert [person.enterprise_id for person in found] == ["E1"]


def test_adding_a_person_again_replaces_its_views_and_keys() -> None:
    index = known(("E-robert", Demographics(**ROBERT)))
    moved = Demographics(**{**ROBERT, "family": "Okafor", "birth_date": "1991-12-01"})
    index.add(KnownPerson(enterprise_id="E-robert", demographics=(moved,)))
    assert len(index) == 1
    assert index.candidates(blocking_keys(Demographics(**ROBERT))) == [index.get("E-robert")]
    old_keys_only = blocking_keys(view(phone=None, postal_code=None))
    assert index.candidates(old_keys_only) == []


# --- decisions -------------------------------------------------------------------------


def test_ties_go_to_the_smaller_enterprise_id_whatever_the_insertion_order() -> None:
    twin_records = [("E-2", Demographics(**ROBERT)), ("E-1", Demographics(**ROBERT))]
    first = match(view(), known(*twin_records))
    second = match(view(), known(*reversed(twin_records)))
    assert first == second
    assert first.enterprise_id == "E-1" and first.runner_up_id == "E-2"
    # Two known patients fit equally well: that is a question for a reviewer.
    assert first.kind is Decision.REVIEW and first.runner_up_score == first.score


def test_the_best_view_of_a_person_is_its_score() -> None:
    person = KnownPerson(
        enterprise_id="E-robert",
        demographics=(
            Demographics(**{**ROBERT, "source": "old", "family": "Okafor"}),
            Demographics(**ROBERT),
        ),
    )
    index = InMemoryIdentityIndex([person])
    decision = match(view(), index)
    assert decision.score == score(view(), Demographics(**ROBERT)).total


def test_the_breakdown_sums_to_the_score() -> None:
    for record in (view(given=("Bob",)), view(given=("Mary",), sex="female"), view(family=None)):
        decision = match(record, ROBERT_INDEX)
        assert decision.score is not None
        assert sum(w.weight for w in decision.breakdown) == pytest.approx(decision.score)
        assert [w.field for w in decision.breakdown] == list(Field)


def test_thresholds_decide_link_review_and_new() -> None:
    record = view(given=("Bob",), postal_code="10001", phone=None)
    total = score(record, Demographics(**ROBERT)).total
    below = Thresholds(link_threshold=total + 1, review_threshold=total - 1)
    above = Thresholds(link_threshold=total + 2, review_threshold=total + 1)
    assert match(record, ROBERT_INDEX, below).kind is Decision.REVIEW
    assert match(record, ROBERT_INDEX, above).kind is Decision.NEW
    with pytest.raises(ValidationError):
        Thresholds(link_threshold=5, review_threshold=10)


# --- extraction --------------------------------------------------------------------------


def test_from_fhir_patient_normalizes_at_extraction() -> None:
    patient = {
        "resourceType": "Patient",
        "identifier": [
            {"system": "urn:a:mrn", "value": "A-1", "type": {"coding": [{"code": "MR"}]}},
            {"value": "no-system"},
            {"system": "urn:a:empty", "value": "  "},
        ],
        "name": [
            {"use": "old", "family": "Jones", "given": ["Bobby"]},
            {"use": "official", "family": "O'Brien-Smith", "given": ["JOSE\u0301", "Luis"]},
        ],
        "birthDate": "1980-02",
        "gender": "male",
        "address": [
            {"use": "work", "postalCode": "99999"},
            {"use": "home", "line": ["12 Main Street", "Apt 4"], "postalCode": "02139-4307"},
        ],
        "telecom": [
            {"system": "email", "value": "x@example.org"},
            {"system": "phone", "use": "work", "value": "555 000 1111"},
            {"system": "phone", "use": "home", "value": "+1 (617) 555-0101"},
        ],
    }
    d = from_fhir_patient(patient, "hospital-a")
    assert d.identifiers == (
        Identifier(system="urn:a:mrn", value="A-1", type="MR"),
        Identifier(system=f"{LOCAL_SYSTEM_PREFIX}hospital-a", value="no-system"),
    )
    assert d.family == "obrien smith"
    assert d.given == (unicodedata.normalize("NFC", "jose\u0301"), "luis")
    assert (d.birth_date, d.birth_date_parsed) == ("1980-02", None)
    assert d.sex == "male"
    assert (d.postal_code, d.address_line, d.phone) == ("02139", "12 main st", "6175550101")


def test_from_fhir_patient_leaves_unusable_values_out() -> None:
    d = from_fhir_patient(
        {"birthDate": "1980-02-30", "gender": "M", "name": [{"text": "Ann  Lee Jr."}]}, "s"
    )
    assert d.birth_date is None and d.sex is None
    assert (d.family, d.given, d.suffix) == ("lee", ("ann",), "jr")
    assert from_fhir_patient({}, "s") == Demographics(source="s")


def _pid(text: str) -> er7.Segment:
    message = er7.parse(f"MSH|^~\\&|APP|FAC|||20240101||ADT^A01|1|P|2.5\r{text}\r")
    segment = message.first("PID")
    assert segment is not None
    return segment


def test_from_pid_reads_identifiers_name_birth_sex_address_and_phone() -> None:
    pid = _pid(
        "PID|1||PATID1234^5^M11^test1&2.16.1&HCD^MR~123456789^^^USSSA^SS~777^^^^MR||"
        "EVERYMAN&&&&Aniston^ADAM^A^III^Dr.^^D~Josh^Stanley^^^^^L||198808181126+0215|F|||"
        "1000&Hospital Lane^Ste. 123^Ann Arbor^MI^99999-1234^USA^M~"
        "5 Elm St^^Ann Arbor^MI^48104^USA^H||^PRN^PH^^^734^5550101~^NET^Internet^a@b.org"
    )
    d = from_pid(pid, "adt")
    assert [(i.system, i.value, i.type) for i in d.identifiers] == [
        ("test1", "PATID1234", "MR"),
        ("USSSA", "123456789", "SS"),
        (f"{LOCAL_SYSTEM_PREFIX}adt", "777", "MR"),
    ]
    assert (d.family, d.given) == ("josh", ("stanley",))  # the legal (L) name
    assert d.birth_date == "1988-08-18" and d.birth_date_parsed is not None
    assert d.sex == "female"
    assert (d.postal_code, d.address_line) == ("48104", "5 elm st")  # the home (H) address
    assert d.phone == "7345550101"


def test_from_pid_first_name_suffix_and_unstructured_phone() -> None:
    pid = _pid("PID|||555-44-4444||EVERYWOMAN^EVE^E^JR|JONES|196203|A|||||(206)3345232")
    d = from_pid(pid, "adt")
    assert (d.family, d.given, d.suffix) == ("everywoman", ("eve", "e"), "jr")
    assert d.birth_date == "1962-03"
    assert d.sex == "other"
    assert d.phone == "2063345232"
    assert d.postal_code is None and d.address_line is None


@pytest.mark.parametrize(
    ("pid7", "birth_date"),
    [
        (" 19620315 ", "1962-03-15"),
        ("1962031", "1962-03"),  # the date a PID-7 starts with, whatever follows it
        ("19620315120000.123456", "1962-03-15"),
        ("19620315xyz", "1962-03-15"),
        ("19620230", None),  # no calendar day
        ("196", None),
        ("", None),
    ],
)
def test_from_pid_reads_the_birth_date_a_pid7_starts_with(
    pid7: str, birth_date: str | None
) -> None:
    assert from_pid(_pid(f"PID|||1||Doe^Jo||{pid7}|F"), "adt").birth_date == birth_date


def test_shares_identifier_of_given_systems() -> None:
    a = view(identifiers=(Identifier(system="urn:mpi", value="E1"),))
    b = view(
        identifiers=(Identifier(system="urn:mpi", value="E1"), Identifier(system="x", value="1"))
    )
    assert shares_identifier(a, b, ["urn:mpi"])
    assert shares_identifier(a, b, None)
    assert not shares_identifier(a, b, ["x"])
    c = view(identifiers=(Identifier(system="urn:mpi", value="E2"),))
    assert not shares_identifier(a, c, None)
    assert level(a, c, Field.IDENTIFIERS) is Level.CONFLICTING
    assert level(a, b, Field.IDENTIFIERS) is Level.SHARED


def test_unicode_forms_and_case_compare_equal() -> None:
    composed = view(family="Garc\u00eda")
    decomposed = view(family="GARCI\u0301A")
    assert composed.family == decomposed.family
    assert level(composed, decomposed, Field.FAMILY) is Level.EXACT


# --- no PHI in errors or reprs -----------------------------------------------------------


def test_validation_errors_and_reprs_carry_no_phi() -> None:
    with pytest.raises(ValidationError) as raised:
        Demographics(source="s", birth_date="1980-02-30")
    assert "1980-02-30" not in str(raised.value)
    decision = match(view(), known(("E-100", Demographics(**ROBERT))))
    text = repr(Demographics(**ROBERT)) + repr(decision)
    for value in ("smith", "robert", "1970", "02139", "6175550101", "main"):
        assert value not in text.casefold()


# --- symmetry ----------------------------------------------------------------------------

NAMES = ["smith", "smyth", "smiht", "robert", "bob", "rob", "roberta", "liz", "elizabeth", "j", ""]
DATES = ["1970-03-14", "1970-04-03", "1970-03-15", "1907-03-14", "1979-03-14", "1970", "1970-03"]


@st.composite
def demographics(draw: st.DrawFn) -> Demographics:
    def maybe(values: list[str]) -> str | None:
        return draw(st.sampled_from([*values, None]))

    return Demographics(
        source=draw(st.sampled_from(["a", "b"])),
        identifiers=tuple(
            Identifier(system=s, value=v)
            for s, v in draw(
                st.lists(st.tuples(st.sampled_from(["mrn", "ssn"]), st.sampled_from("123")))
            )
        ),
        family=maybe(NAMES),
        given=tuple(draw(st.lists(st.sampled_from(NAMES), max_size=2))),
        suffix=maybe(["jr", "sr"]),
        birth_date=maybe(DATES),
        sex=draw(st.sampled_from(["male", "female", "other", None])),
        postal_code=maybe(["02139", "02139-1234", "10001"]),
        phone=maybe(["6175550101", "7815550101", "6175550199"]),
        address_line=maybe(["12 Main Street", "12 main st", "5 Broadway"]),
    )


@settings(max_examples=300, deadline=None)
@given(demographics(), demographics())
def test_the_score_is_symmetric(a: Demographics, b: Demographics) -> None:
    ab, ba = score(a, b), score(b, a)
    assert ab.total == ba.total
    assert [(w.field, w.level) for w in ab.breakdown] == [(w.field, w.level) for w in ba.breakdown]
    assert sum(w.weight for w in ab.breakdown) == ab.total


def test_a_stored_view_reads_back_equal_without_normalizing_again() -> None:
    view = Demographics(**ROBERT)
    again = Demographics.from_stored(view.model_dump_json())
    assert again == view
    assert again.keys == view.keys


def _tokens_char_by_char(text: str) -> list[str]:
    """tokens() as first written, one character at a time: the reference its ASCII fast path
    must agree with."""
    folded = unicodedata.normalize("NFC", text).casefold()
    folded = folded.translate(str.maketrans("", "", "'\u2019\u02bc`\u00b4"))
    cleaned = "".join(
        ch if ch.isalnum() or unicodedata.category(ch).startswith("M") else " " for ch in folded
    )
    return cleaned.split()


@settings(max_examples=500)
@given(
    st.one_of(
        st.text(alphabet=st.characters(max_codepoint=127)),
        st.text(),
        st.sampled_from(["O'Brien", "de la Cruz-Smith", "JOSÉ", "Ng\u0303", "Müller, Jr.", ""]),
    )
)
def test_tokens_agree_with_the_character_by_character_reference(text: str) -> None:
    assert normalize.tokens(text) == _tokens_char_by_char(text)
