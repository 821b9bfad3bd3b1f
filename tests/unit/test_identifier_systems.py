"""Identifiers across formats (issue 13, item 3): one identifier system named by a FHIR URI, an
HL7 v2 assigning authority or an identifier type; agreement links, and a different value of a
unique identifier (an SSN) is evidence against that no other field can outweigh. An SSN sent
in PID-19 and a driver's licence in PID-20 are read as PID-3's would be; a placeholder SSN
(000-00-0000) is no one's, and neither links nor separates."""

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
    shares_identifier,
)
from concord.normalization.identity import systems as naming
from concord.normalization.identity.demographics import LOCAL_SYSTEM_PREFIX
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


def _pid(cx: str, birth: str = "19840602", *, ssn: str = "", licence: str = "") -> er7.Segment:
    """A PID for Anna: PID-3 `cx`, PID-19 `ssn`, PID-20 `licence`."""
    message = er7.parse(
        "MSH|^~\\&|LAB|LAB|CONCORD|CONCORD|20240301120000||ADT^A08|1|P|2.5.1\r"
        f"PID|1||{cx}||Okafor^Anna||{birth}|F|||1200 W Fullerton Ave^^Chicago^IL^60614||"
        f"(312)555-0199||||||{ssn}|{licence}\r"
    )
    pid = message.first("PID")
    assert pid is not None
    assert (pid.value(19), pid.raw(20)) == (ssn, licence)
    return pid


def _fhir_anna(*identifiers: dict[str, Any], birth_date: str = "1984-06-02") -> Demographics:
    return from_fhir_patient(
        {
            "resourceType": "Patient",
            "identifier": list(identifiers),
            "name": [{"family": "Okafor", "given": ["Anna"]}],
            "gender": "female",
            "birthDate": birth_date,
        },
        "ehr",
    )


def _ssns(record: Demographics) -> list[str]:
    return [i.value for i in record.identifiers if i.match()[0].system == US_SSN]


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
            identifiers=(  # from serial 0001: serial 0000 is no one's SSN
                Identifier(system="urn:oid:2.16.840.1.113883.4.1", value=f"55566{n + 1:04d}"),
                Identifier(system="urn:hospital:mrn", value=f"M{n}"),
            ),
            **{**ANNA, "family": surname},
        )
        decision = match(record, index)
        assert decision.kind is not Decision.LINK, surname
        index.add(KnownPerson(enterprise_id=f"E-{n}", demographics=(record,)))


def test_a_type_names_the_system_whatever_the_system_says() -> None:
    a = Demographics(
        source="a",
        identifiers=(Identifier(system="urn:a:ssn", value="111-22-3333", type="SS"),),
    )
    b = Demographics(source="b", identifiers=(Identifier(system=US_SSN, value="444556666"),))
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


def test_an_ssn_in_pid_19_links_to_the_fhir_us_ssn_of_its_twin() -> None:
    """PID-3 holds only the lab's MRN; the SSN is in PID-19, as v2.3 to v2.5 senders write
    it. It is the FHIR twin's us-ssn identifier: it finds the patient and links, though the
    birth dates disagree, and the breakdown shows the agreement."""
    hl7 = from_pid(_pid("MRN-1^^^LAB^MR", ssn="111-22-3333"), "lab")
    assert [(i.system, i.value, i.type) for i in hl7.identifiers] == [
        ("LAB", "MRN-1", "MR"),
        (US_SSN, "111-22-3333", "SS"),
    ]
    known = _fhir_anna({"system": US_SSN, "value": "111223333"}, birth_date="1948-02-06")
    assert _identifiers_level(hl7, known) is Level.SHARED  # compared without dashes
    # The system is the one the table names for SS: written alike, the pair itself is shared.
    assert shares_identifier(hl7, _fhir_anna({"system": US_SSN, "value": "111-22-3333"}), [US_SSN])
    decision = match(hl7, _index(("E-anna", known)))
    assert decision.kind is Decision.LINK and decision.enterprise_id == "E-anna"
    terms = {term.field: term for term in decision.breakdown}
    assert terms[Field.IDENTIFIERS].level is Level.SHARED and terms[Field.IDENTIFIERS].weight > 19
    assert terms[Field.BIRTH_DATE].level is Level.DIFFERENT


def test_a_different_ssn_in_pid_19_counts_against_the_match() -> None:
    hl7 = from_pid(_pid("MRN-1^^^LAB^MR", ssn="111223333"), "lab")
    known = _fhir_anna({"system": US_SSN, "value": "444-55-6666"})
    decision = match(hl7, _index(("E-anna", known)))
    assert decision.kind is Decision.REVIEW  # everything else agrees: a reviewer decides
    [term] = [t for t in decision.breakdown if t.field is Field.IDENTIFIERS]
    assert term.level is Level.CONTRADICTING and term.weight < -6


@pytest.mark.parametrize(
    "placeholder",
    ["000-00-0000", "000000000", "999-99-9999", "999999999", "123-00-4567", "123-45-0000",
     "666-12-3456", "078-05-1120", "987-65-4321", "PSSN123121234", "12345678", "  "],
)  # fmt: skip
def test_a_placeholder_ssn_neither_links_nor_separates(placeholder: str) -> None:
    """SSA never issues area 000 or 666, group 00 or serial 0000; 999-99-9999 and the
    numbers printed on specimen cards are no one's either, and a value that is not nine
    digits is not an SSN. In PID-19, in PID-3 or in a FHIR Identifier, it is left out."""
    in_pid_19 = from_pid(_pid("MRN-1^^^LAB^MR", ssn=placeholder), "lab")
    in_pid_3 = from_pid(_pid(f"MRN-1^^^LAB^MR~{placeholder}^^^SSA^SS"), "lab")
    in_fhir = _fhir_anna({"system": US_SSN, "value": placeholder})
    for record in (in_pid_19, in_pid_3, in_fhir):
        assert _ssns(record) == []
    assert _identifiers_level(in_pid_19, in_fhir) is Level.MISSING  # does not link
    real = _fhir_anna({"system": US_SSN, "value": "111-22-3333"})
    assert _identifiers_level(in_pid_19, real) is Level.MISSING  # does not separate
    assert _identifiers_level(in_pid_3, real) is Level.MISSING


def test_a_stored_view_holding_a_placeholder_ssn_compares_without_it() -> None:
    """A view stored before the table named its placeholders: its match keys, its blocking
    keys and `shares_identifier` leave the value out."""
    a, b = (
        Demographics.from_stored(
            Demographics(source=source, **ANNA).model_dump_json().replace(
                '"identifiers":[]',
                f'"identifiers":[{{"system":"{US_SSN}","value":"000-00-0000","type":null}}]',
            )
        )
        for source in ("a", "b")
    )  # fmt: skip
    assert [i.value for i in a.identifiers] == ["000-00-0000"]
    assert a.keys.identifiers == frozenset() and a.keys.unique_systems == frozenset()
    assert _identifiers_level(a, b) is Level.MISSING
    assert not shares_identifier(a, b, None)


def test_an_ssn_in_pid_3_and_again_in_pid_19_is_one_identifier() -> None:
    record = from_pid(_pid("MRN-1^^^LAB^MR~123-45-6789^^^USSSA^SS", ssn="123456789"), "lab")
    assert [(i.system, i.value) for i in record.identifiers] == [
        ("LAB", "MRN-1"),
        ("USSSA", "123-45-6789"),
    ]
    # Two different numbers are both kept: which one is right is for the matcher to weigh.
    two = from_pid(_pid("123-45-6789^^^USSSA^SS", ssn="444-33-3333"), "lab")
    assert _ssns(two) == ["123-45-6789", "444-33-3333"]


def test_pid_19_takes_the_system_the_table_names_for_type_ss() -> None:
    """A site table naming its own SSN system: PID-19 is read in it; a table naming none
    reads PID-19 as PID-3's `<value>^^^^SS` would be, in the source's local system."""
    naming.configure(
        IdentifierSystems.parse(
            "version: '1'\nsystems: [{system: 'urn:site:ssn', name: SSN, types: [SS]}]", "site"
        )
    )
    [_, ssn] = from_pid(_pid("MRN-1^^^LAB^MR", ssn="111-22-3333"), "lab").identifiers
    assert (ssn.system, ssn.type) == ("urn:site:ssn", "SS")
    naming.configure(IdentifierSystems.parse("version: '1'", "site"))
    [_, ssn] = from_pid(_pid("MRN-1^^^LAB^MR", ssn="111-22-3333"), "lab").identifiers
    [as_pid_3] = from_pid(_pid("111-22-3333^^^^SS"), "lab").identifiers
    assert (
        ssn
        == as_pid_3
        == Identifier(system=f"{LOCAL_SYSTEM_PREFIX}lab", value="111-22-3333", type="SS")
    )


def test_a_driving_licence_in_pid_20_is_read_with_its_issuing_state() -> None:
    """DLN: number ^ issuing state ^ expiration date. Read as PID-3's `<number>^^^<state>^DL`
    is, and so one identifier with the FHIR-Converter twin's .../CodeSystem/<state>."""
    record = from_pid(_pid("MRN-1^^^LAB^MR", licence="S123-4567-8901^NC^20300101"), "lab")
    as_pid_3 = from_pid(_pid("MRN-1^^^LAB^MR~S123-4567-8901^^^NC^DL"), "lab")
    assert record.identifiers == as_pid_3.identifiers
    assert record.identifiers[1] == Identifier(system="NC", value="S123-4567-8901", type="DL")
    twin = _fhir_anna(
        {
            "system": "http://example.com/v2-to-fhir-converter/CodeSystem/NC",
            "value": "S123-4567-8901",
            "type": {"coding": [{"code": "DL"}]},
        }
    )
    assert record.keys.identifiers & twin.keys.identifiers == {("NC", "S123-4567-8901")}
    # A licence of another state is another system: not evidence against (a person may
    # hold two), and a licence number is not one person's everywhere.
    other_state = from_pid(_pid("X^^^LAB2^MR", licence="S123-4567-8901^SC"), "lab2")
    assert _identifiers_level(record, other_state) is Level.MISSING
    no_state = from_pid(_pid("MRN-1^^^LAB^MR", licence="S123"), "lab")
    assert no_state.identifiers[1] == Identifier(
        system=f"{LOCAL_SYSTEM_PREFIX}lab", value="S123", type="DL"
    )


def test_a_site_lists_its_own_placeholders_and_value_pattern() -> None:
    naming.configure(
        IdentifierSystems.parse(
            """
version: "site-2"
systems:
  - system: http://hl7.org/fhir/sid/us-ssn
    name: SSN
    types: [SS]
    unique: true
    pattern: '[0-9]{9}'
    placeholders: ['123-45-6789']
""",
            "site.yaml",
        )
    )
    assert _ssns(from_pid(_pid("MRN-1^^^LAB^MR", ssn="123456789"), "lab")) == []
    assert _ssns(from_pid(_pid("MRN-1^^^LAB^MR", ssn="000-00-0000"), "lab")) == ["000-00-0000"]


def test_a_bad_value_pattern_is_refused_with_its_file_and_entry() -> None:
    with pytest.raises(NamingError) as caught:
        IdentifierSystems.parse("version: '1'\nsystems: [{system: x, name: X, pattern: '('}]", "s")
    assert str(caught.value).startswith("s: systems.0.pattern: Value error, not a regular")
