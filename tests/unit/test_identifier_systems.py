"""Identifiers across formats (issue 13, item 3): one identifier system named by a FHIR URI, an
HL7 v2 assigning authority or an identifier type; agreement links, and a different value of a
unique identifier (an SSN) is evidence against that no other field can outweigh."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from concord.hl7v2 import er7
from concord.normalization.identity import (
    Decision,
    Demographics,
    Field,
    Identifier,
    InMemoryIdentityIndex,
    KnownPerson,
    Level,
    compare,
    from_fhir_patient,
    from_pid,
    match,
)
from concord.normalization.identity import systems as naming
from concord.normalization.identity.systems import IdentifierSystems, NamingError

US_SSN = "http://hl7.org/fhir/sid/us-ssn"
CONVERTER = "http://example.com/v2-to-fhir-converter/Identifier/"

ANNA: dict[str, Any] = {
    "family": "Okafor",
    "given": ("Anna",),
    "birth_date": "1984-06-02",
    "sex": "female",
    "postal_code": "60614",
    "phone": "312-555-0199",
    "address_line": "1200 W Fullerton Ave",
}


def _pid(cx: str, birth: str = "19840602") -> er7.Segment:
    message = er7.parse(
        "MSH|^~\\&|LAB|LAB|CONCORD|CONCORD|20240301120000||ADT^A08|1|P|2.5.1\r"
        f"PID|1||{cx}||Okafor^Anna||{birth}|F|||1200 W Fullerton Ave^^Chicago^IL^60614||"
        "(312)555-0199\r"
    )
    pid = message.first("PID")
    assert pid is not None
    return pid


def _index(*people: tuple[str, Demographics]) -> InMemoryIdentityIndex:
    return InMemoryIdentityIndex(
        KnownPerson(enterprise_id=eid, demographics=(d,)) for eid, d in people
    )


def _identifiers_level(a: Demographics, b: Demographics) -> Level:
    return dict(compare(a, b))[Field.IDENTIFIERS]


@pytest.fixture(autouse=True)
def _builtin_table() -> Iterator[None]:
    naming.configure(None)
    yield
    naming.configure(None)


def test_an_ssn_in_pid_3_and_in_a_fhir_identifier_is_one_identifier() -> None:
    hl7 = from_pid(_pid("MRN-1^^^LAB^MR~123-45-6789^^^USSSA^SS"), "lab")
    fhir = from_fhir_patient(
        {
            "resourceType": "Patient",
            "identifier": [{"system": US_SSN, "value": "123456789"}],
            "name": [{"family": "Okafor", "given": ["Anna"]}],
            "birthDate": "1984-06-02",
        },
        "ehr",
    )
    assert _identifiers_level(hl7, fhir) is Level.SHARED


def test_a_converter_uri_names_the_hl7_assigning_authority() -> None:
    """FHIR-Converter writes CX.4 `test` as .../Identifier/test: one MRN system."""
    hl7 = from_pid(_pid("1234567^4^M11^test^MR"), "lab")
    fhir = Demographics(
        source="ehr", identifiers=(Identifier(system=f"{CONVERTER}test", value="1234567"),)
    )
    assert _identifiers_level(hl7, fhir) is Level.SHARED


def test_an_oid_with_and_without_urn_oid_is_one_system() -> None:
    hl7 = from_pid(_pid("77^^^&1.2.840.99&ISO^MR"), "lab")
    fhir = Demographics(
        source="ehr", identifiers=(Identifier(system="urn:oid:1.2.840.99", value="77"),)
    )
    assert _identifiers_level(hl7, fhir) is Level.SHARED


def test_a_shared_identifier_links_when_the_birth_date_disagrees() -> None:
    """The converter samples' HL7 and FHIR twins with one birth date planted apart: the SSN
    finds the patient (blocking) and links, so the birth-date conflict can be raised."""
    known = Demographics(
        source="ehr",
        identifiers=(Identifier(system=US_SSN, value="123456789"),),
        **{**ANNA, "birth_date": "1948-02-06", "phone": None, "postal_code": None},
    )
    record = from_pid(_pid("123456789^^^SSA^SS", birth="19840602"), "lab")
    decision = match(record, _index(("E-anna", known)))
    assert decision.kind is Decision.LINK and decision.enterprise_id == "E-anna"
    terms = {term.field: term for term in decision.breakdown}
    assert terms[Field.IDENTIFIERS].level is Level.SHARED
    assert terms[Field.BIRTH_DATE].level is Level.DIFFERENT


def test_people_alike_in_everything_but_their_ssn_are_never_linked_automatically() -> None:
    first = Demographics(
        source="hospital", identifiers=(Identifier(system=US_SSN, value="111-22-3333"),), **ANNA
    )
    second = Demographics(
        source="clinic",
        identifiers=(Identifier(system="SSA", value="444556666", type="SS"),),
        **ANNA,
    )
    decision = match(second, _index(("E-first", first)))
    assert decision.kind is Decision.REVIEW
    assert decision.enterprise_id == "E-first"
    [term] = [t for t in decision.breakdown if t.field is Field.IDENTIFIERS]
    assert term.level is Level.CONTRADICTING and term.weight < -6


def test_five_people_sharing_a_household_and_given_name_stay_apart() -> None:
    """The report: five people with one given name, birth date, address and phone, and their
    own surnames, SSNs and MRNs, were linked into one enterprise id."""
    surnames = ["Okafor", "Mensah", "Adeyemi", "Boateng", "Nwosu"]
    index = _index()
    for n, surname in enumerate(surnames):
        record = Demographics(
            source="ehr",
            identifiers=(
                Identifier(system="urn:oid:2.16.840.1.113883.4.1", value=f"55566{n:04d}"),
                Identifier(system="urn:hospital:mrn", value=f"M{n}"),
            ),
            **{**ANNA, "family": surname},
        )
        decision = match(record, index)
        assert decision.kind is not Decision.LINK, surname
        index.add(KnownPerson(enterprise_id=f"E-{n}", demographics=(record,)))


def test_a_type_names_the_system_whatever_the_system_says() -> None:
    a = Demographics(
        source="a", identifiers=(Identifier(system="urn:a:ssn", value="1", type="SS"),)
    )
    b = Demographics(source="b", identifiers=(Identifier(system=US_SSN, value="2"),))
    assert _identifiers_level(a, b) is Level.CONTRADICTING


def test_two_mrns_of_one_hospital_stay_weak_evidence() -> None:
    """A duplicate registration holds two MRNs of one system: not a contradiction."""
    a = Demographics(source="a", identifiers=(Identifier(system="urn:h:mrn", value="1"),))
    b = Demographics(source="b", identifiers=(Identifier(system="urn:h:mrn", value="2"),))
    assert _identifiers_level(a, b) is Level.CONFLICTING


def test_a_site_table_names_its_own_systems() -> None:
    table = IdentifierSystems.parse(
        """
version: "site-1"
systems:
  - system: https://hospital.example/mrn
    name: Hospital MRN
    aliases: [HOSP, urn:oid:1.2.3.4]
    unique: true
""",
        "site.yaml",
    )

    def pair() -> tuple[Demographics, Demographics]:
        return (
            Demographics(source="a", identifiers=(Identifier(system="hosp", value="9"),)),
            Demographics(
                source="b",
                identifiers=(Identifier(system="https://hospital.example/mrn", value="8"),),
            ),
        )

    naming.configure(table)
    assert _identifiers_level(*pair()) is Level.CONTRADICTING
    naming.configure(None)  # match keys are made when a view is first compared
    assert _identifiers_level(*pair()) is Level.MISSING


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("version: '1'\nsystems: [{system: x, name: X, aliases: [y]}, {system: y, name: Y}]",
         "site.yaml: 'y' names both x and y"),
        ("version: '1'\nsystems: [{system: x, name: X, unique: maybe}]",
         "site.yaml: systems.0.unique: Input should be a valid boolean"),
        ("version: '1'\nuri_templates: ['http://h/{ns}']",
         "site.yaml: uri template 'http://h/{ns}' must hold {namespace} once"),
    ],
)  # fmt: skip
def test_a_bad_table_is_refused_with_its_file_and_entry(text: str, message: str) -> None:
    with pytest.raises(NamingError) as caught:
        IdentifierSystems.parse(text, "site.yaml")
    assert str(caught.value).startswith(message)
