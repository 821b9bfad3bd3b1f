"""The readers that pull narrative text out of FHIR and HL7 v2 records (issue 18)."""

from __future__ import annotations

import base64
import gzip
import json
import time
import zlib
from pathlib import Path
from typing import Any

import pytest

from concord.clinical_text.documents import (
    MAX_GUNZIPPED_BYTES,
    MAX_TEXT_CHARS,
    DocumentText,
    fhir_documents,
    hl7_documents,
    html_to_text,
)
from concord.hl7v2 import er7

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = ROOT.parent / "shared" / "data" / "fhir-converter-samples"
LOINC = "http://loinc.org"
V2_0074 = "http://terminology.hl7.org/CodeSystem/v2-0074"


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _document_reference(*attachments: dict[str, Any], **fields: Any) -> dict[str, Any]:
    return {
        "resourceType": "DocumentReference",
        "status": "current",
        "type": {"coding": [{"system": LOINC, "code": "11506-3"}]},
        "date": "2024-03-01T07:30:00Z",
        "content": [{"attachment": a} for a in attachments],
        **fields,
    }


def _texts(documents: list[DocumentText]) -> dict[str, str]:
    return {d.part: d.text for d in documents}


# --- FHIR attachments -----------------------------------------------------------------------


def test_plain_text_is_decoded_in_the_charset_its_content_type_names() -> None:
    data = "Résumé: carcinome canalaire, marges saines.".encode("latin-1")
    resource = _document_reference(
        {"contentType": "Text/Plain; charset=ISO-8859-1", "data": _b64(data)}
    )
    [document] = fhir_documents(resource)
    assert document.text == "Résumé: carcinome canalaire, marges saines."
    assert document.media_type == "text/plain"
    assert document.part == "content/0"
    assert document.kind == "note-text"
    assert document.authored == "2024-03-01T07:30:00Z"
    assert document.type_code == (LOINC, "11506-3")


def test_plain_text_defaults_to_utf8_and_replaces_what_it_cannot_decode() -> None:
    data = "\ufeffline one\r\nline two\rline thr".encode() + b"\xff" + b"e\r\n"
    [document] = fhir_documents(
        _document_reference({"contentType": "text/plain", "data": _b64(data)})
    )
    assert document.text == "line one\nline two\nline thr\ufffde\n"


def test_html_keeps_block_elements_as_line_breaks_and_drops_script_and_style() -> None:
    html = (
        "<html><head><title>Report</title><style>p { color: red }</style></head><body>"
        "<h2>Final diagnosis</h2><p>Invasive ductal   carcinoma,\n grade <b>2</b>.</p>"
        "<p>ER positive<br>PR negative<br/>HER2 1+</p>"
        "<script>var secret = 'x';</script>"
        "<ul><li>No metastases &amp; margins clear</li><li>pT2 pN0</li></ul></body></html>"
    )
    resource = _document_reference({"contentType": "text/html", "data": _b64(html.encode())})
    [document] = fhir_documents(resource)
    assert document.media_type == "text/html"
    assert document.text == (
        "Final diagnosis\n"
        "Invasive ductal carcinoma, grade 2.\n"
        "ER positive\nPR negative\nHER2 1+\n"
        "No metastases & margins clear\n"
        "pT2 pN0"
    )
    assert "secret" not in document.text and "color" not in document.text
    assert "Report" not in document.text


def test_xhtml_tables_give_one_line_per_row() -> None:
    xhtml = '<div xmlns="http://www.w3.org/1999/xhtml"><table><tr><td>T</td><td>pT2</td></tr>'
    xhtml += "<tr><td>N</td><td>pN1a</td></tr></table></div>"
    resource = _document_reference(
        {"contentType": "application/xhtml+xml", "data": _b64(xhtml.encode())}
    )
    [document] = fhir_documents(resource)
    assert document.text == "T\tpT2\nN\tpN1a"
    assert html_to_text("<pre>  a\n    b</pre>") == "  a\n    b"


def test_rtf_is_converted_to_text() -> None:
    rtf = (
        r"{\rtf1\ansi\ansicpg1252\deff0{\fonttbl{\f0 Arial;}}\f0\fs20 "
        r"Final diagnosis:\par Invasive ductal carcinoma, grade 2.\par Caf\'e9 margins clear.\par}"
    )
    for content_type in ("text/rtf", "application/rtf"):
        resource = _document_reference({"contentType": content_type, "data": _b64(rtf.encode())})
        [document] = fhir_documents(resource)
        assert document.media_type == content_type
        assert "{" not in document.text and "\\" not in document.text
        assert document.text.startswith("Final diagnosis:\nInvasive ductal carcinoma, grade 2.")
        assert "Café margins clear." in document.text


@pytest.mark.parametrize(
    "attachment",
    [
        {"contentType": "text/plain", "url": "https://example.org/notes/1.txt"},
        {"contentType": "application/pdf", "data": _b64(b"%PDF-1.4 Final diagnosis")},
        {"contentType": "image/jpeg", "data": _b64(b"\xff\xd8\xff\xe0")},
        {"contentType": "text/plain", "data": "not base64 !!"},
        {"contentType": "text/plain", "data": _b64(b"")},
        {"contentType": "text/plain", "data": _b64(b" \r\n\t ")},
        {"contentType": "text/html", "data": _b64(b"<p> </p><script>x()</script>")},
        # Gzipped XML that is no C-CDA (a ClinicalDocument outside the HL7 v3 namespace).
        {"contentType": "text/plain", "data": _b64(gzip.compress(b"<ClinicalDocument/>"))},
        # Gzipped bytes that are no text, and a gzip stream cut short.
        {"contentType": "text/plain", "data": _b64(gzip.compress(b"%PDF-1.4\x00\x01"))},
        {"contentType": "text/plain", "data": _b64(gzip.compress(b"Progress note." * 99)[:40])},
        {"contentType": "text/plain"},
        "not an attachment",
    ],
)
def test_an_attachment_without_readable_text_yields_nothing(attachment: Any) -> None:
    readable = {"contentType": "text/plain", "data": _b64(b"Progress note.")}
    resource = _document_reference(attachment, readable)
    assert [(d.part, d.text) for d in fhir_documents(resource)] == [("content/1", "Progress note.")]


def test_a_withdrawn_document_is_still_read() -> None:
    resource = _document_reference(
        {"contentType": "text/plain", "data": _b64(b"Wrong patient.")},
        status="entered-in-error",
        docStatus="entered-in-error",
    )
    assert _texts(fhir_documents(resource)) == {"content/0": "Wrong patient."}


def test_the_period_start_is_the_time_when_the_document_has_no_date() -> None:
    resource = _document_reference(
        {"contentType": "text/plain", "data": _b64(b"Note.")},
        context={"period": {"start": "2024-02-01"}},
    )
    del resource["date"]
    [document] = fhir_documents(resource)
    assert document.authored == "2024-02-01"


def test_a_text_longer_than_the_limit_is_cut_there() -> None:
    data = ("x" * (MAX_TEXT_CHARS + 10)).encode()
    [document] = fhir_documents(
        _document_reference({"contentType": "text/plain", "data": _b64(data)})
    )
    assert len(document.text) == MAX_TEXT_CHARS


def test_diagnostic_report_gives_presented_form_and_conclusion_as_distinct_parts() -> None:
    report = {
        "resourceType": "DiagnosticReport",
        "status": "final",
        "category": [{"coding": [{"system": V2_0074, "code": "SP"}]}],
        "code": {"coding": [{"system": LOINC, "code": "60568-3"}]},
        "effectiveDateTime": "2024-02-28",
        "issued": "2024-03-01T09:00:00Z",
        "presentedForm": [
            {"contentType": "application/pdf", "data": _b64(b"%PDF-1.4")},
            {"contentType": "text/plain", "data": _b64(b"Invasive lobular carcinoma.")},
        ],
        "conclusion": "Lobular carcinoma, pT1c.\r\nMargins negative.",
    }
    documents = fhir_documents(report)
    assert _texts(documents) == {
        "presentedForm/1": "Invasive lobular carcinoma.",
        "conclusion": "Lobular carcinoma, pT1c.\nMargins negative.",
    }
    assert {d.kind for d in documents} == {"pathology-text"}
    assert {d.authored for d in documents} == {"2024-03-01T09:00:00Z"}
    assert {d.type_code for d in documents} == {(LOINC, "60568-3")}
    assert {d.media_type for d in documents} == {"text/plain"}


def test_the_effective_time_is_the_report_time_when_it_was_not_issued() -> None:
    report = {
        "resourceType": "DiagnosticReport",
        "code": {"coding": [{"system": LOINC, "code": "24627-2"}]},
        "effectivePeriod": {"start": "2024-02-28T10:00:00Z"},
        "conclusion": "No acute findings.",
    }
    [document] = fhir_documents(report)
    assert document.authored == "2024-02-28T10:00:00Z"
    assert document.kind == "note-text"  # a chest CT is no pathology report


@pytest.mark.parametrize(
    ("fields", "kind"),
    [
        ({"category": [{"coding": [{"system": V2_0074, "code": "PAT"}]}]}, "pathology-text"),
        ({"category": [{"coding": [{"system": V2_0074, "code": "CP"}]}]}, "pathology-text"),
        ({"code": {"coding": [{"system": LOINC, "code": "22637-3"}]}}, "pathology-text"),
        ({"category": [{"coding": [{"system": V2_0074, "code": "RAD"}]}]}, "note-text"),
        # A pathology code in another system is not the LOINC code.
        ({"code": {"coding": [{"system": "urn:local", "code": "22637-3"}]}}, "note-text"),
        ({"code": {"coding": [{"system": LOINC, "code": "18842-5"}]}}, "note-text"),
    ],
)
def test_pathology_reports_are_told_from_notes(fields: dict[str, Any], kind: str) -> None:
    report = {"resourceType": "DiagnosticReport", "conclusion": "Text.", **fields}
    assert [d.kind for d in fhir_documents(report)] == [kind]


def test_a_document_reference_typed_as_a_pathology_report_is_pathology() -> None:
    resource = _document_reference(
        {"contentType": "text/plain", "data": _b64(b"Final diagnosis: benign.")},
        type={"coding": [{"system": LOINC, "code": "11526-1"}]},
    )
    assert [d.kind for d in fhir_documents(resource)] == ["pathology-text"]


def test_other_resources_have_no_documents() -> None:
    assert fhir_documents({"resourceType": "Observation", "valueString": "Text."}) == []
    assert fhir_documents({"resourceType": "Composition", "conclusion": "Text."}) == []


# --- HL7 v2 ---------------------------------------------------------------------------------

_MSH_ORU = "MSH|^~\\&|LIS|LAB|CONCORD|HOSP|20240301080000||ORU^R01^ORU_R01|M1|P|2.5.1\r"
_PID = "PID|1||12345^^^HOSP^MR||Doe^Jane\r"


def test_oru_text_lines_are_joined_in_set_id_order_per_identifier_and_sub_id() -> None:
    message = er7.parse(
        _MSH_ORU
        + _PID
        + "OBR|1||S-24-1|11529-5^Surgical pathology study^LN|||20240301073000"
        + "|||||||||||||||||SP\r"
        + "OBX|1|TX|22637-3^Final diagnosis^LN|1|Left breast, core biopsy:||||||F\r"
        + "OBX|3|TX|22637-3^Final diagnosis^LN|1|Metastatic carcinoma in 2 of 14 nodes.||||||F\r"
        + "OBX|2|TX|22637-3^Final diagnosis^LN|1|Invasive ductal carcinoma, grade 2.||||||F\r"
        + "OBX|5|TX|22637-3^Final diagnosis^LN|2|Right breast: benign tissue.||||||F\r"
        + "OBX|4|NM|21889-1^Size^LN||1.8|cm|||||F\r"
        + "OBX|6|TX|22637-3^Final diagnosis^LN|2|No carcinoma.~Margins not applicable.|||||"
        + "|F|||20240302\r"
    )
    documents = {d.part: d for d in hl7_documents(message)}
    assert set(documents) == {"OBX/22637-3/1", "OBX/22637-3/2"}
    first, second = documents["OBX/22637-3/1"], documents["OBX/22637-3/2"]
    assert first.text == (
        "Left breast, core biopsy:\n"
        "Invasive ductal carcinoma, grade 2.\n"
        "Metastatic carcinoma in 2 of 14 nodes."
    )
    assert second.text == "Right breast: benign tissue.\nNo carcinoma.\nMargins not applicable."
    assert first.kind == second.kind == "pathology-text"
    assert first.media_type == "text/plain"
    assert first.type_code == ("LN", "22637-3")
    assert first.authored == "20240301073000"  # OBR-7: no OBX-14 on its first line


@pytest.mark.parametrize(
    ("obr", "obx_code", "kind"),
    [
        (
            "OBR|1||A1|99999^Local report^L|||20240301|||||||||||||||||SP\r",
            "X1^x^L",
            "pathology-text",
        ),
        (
            "OBR|1||A1|99999^Local report^L|||20240301|||||||||||||||||CP\r",
            "X1^x^L",
            "pathology-text",
        ),
        ("OBR|1||A1|99999^Local report^L|||20240301|||||||||||||||||RAD\r", "X1^x^L", "note-text"),
        ("OBR|1||A1|60567-5^Comprehensive path^LN|||20240301\r", "X1^x^L", "pathology-text"),
        ("OBR|1||A1|99999^Local report^L|||20240301\r", "22634-0^Gross^LN", "pathology-text"),
        # LOINC as the alternate coding (CWE-4..6) of a local code.
        (
            "OBR|1||A1|99999^Local report^L|||20240301\r",
            "X1^x^L^22635-7^Micro^LN",
            "pathology-text",
        ),
        ("OBR|1||A1|18842-5^Discharge summary^LN|||20240301\r", "X1^x^L", "note-text"),
    ],
)
def test_hl7_pathology_is_read_from_the_service_section_or_the_codes(
    obr: str, obx_code: str, kind: str
) -> None:
    message = er7.parse(_MSH_ORU + _PID + obr + f"OBX|1|TX|{obx_code}||Some text.||||||F\r")
    assert [d.kind for d in hl7_documents(message)] == [kind]


def test_formatted_text_line_breaks_come_from_er7_and_st_lines_count_too() -> None:
    message = er7.parse(
        _MSH_ORU
        + "OBR|1||A1|11502-2^Lab report^LN|||20240301\r"
        + "OBX|1|FT|C1^Comment^L||First line\\.br\\Second line||||||F\r"
        + "OBX|2|ST|C1^Comment^L||Third line||||||F\r"
    )
    [document] = hl7_documents(message)
    assert document.text == "First line\nSecond line\nThird line"
    assert document.type_code == ("L", "C1")


def test_the_same_identifier_under_two_orders_gives_two_documents() -> None:
    message = er7.parse(
        _MSH_ORU
        + "OBR|1||A1|11529-5^Surgical path^LN|||20240301\r"
        + "OBX|1|TX|22637-3^Dx^LN|1|Specimen A: benign.||||||F\r"
        + "OBR|2||A2|11529-5^Surgical path^LN|||20240302\r"
        + "OBX|1|TX|22637-3^Dx^LN|1|Specimen B: carcinoma.||||||F\r"
    )
    documents = hl7_documents(message)
    assert [(d.part, d.text, d.authored) for d in documents] == [
        ("OBX/22637-3/1", "Specimen A: benign.", "20240301"),
        ("OBX/22637-3/1#2", "Specimen B: carcinoma.", "20240302"),
    ]


def test_mdm_document_is_its_text_lines_after_txa() -> None:
    message = er7.parse(
        "MSH|^~\\&|EHR|HOSP|CONCORD|HOSP|20240301100000||MDM^T02^MDM_T02|M2|P|2.5.1\r"
        + _PID
        + "EVN|T02|20240301100000\r"
        + "TXA|1|DS|TX|20240301093000|||20240301094500||||||DOC-77||||AU\r"
        + "OBX|2|TX|DS^Discharge summary^HL70270||Discharged home in stable condition.||||||F\r"
        + "OBX|1|TX|DS^Discharge summary^HL70270||Admitted with chest pain.||||||F\r"
        + "OBX|3|TX|DS^Discharge summary^HL70270||Follow up in 2 weeks.||||||F\r"
    )
    [document] = hl7_documents(message)
    assert document.part == "TXA/OBX"
    assert document.text == (
        "Admitted with chest pain.\nDischarged home in stable condition.\nFollow up in 2 weeks."
    )
    assert document.kind == "note-text"
    assert document.authored == "20240301093000"  # TXA-4, not OBX-14 or OBR-7
    assert document.type_code == ("HL70270", "DS")
    assert document.media_type == "text/plain"


def test_a_surgical_pathology_mdm_document_is_pathology() -> None:
    message = er7.parse(
        "MSH|^~\\&|EHR|HOSP|CONCORD|HOSP|20240301100000||MDM^T04|M3|P|2.5.1\r"
        + "TXA|1|SP^Surgical pathology^HL70270|TX|20240301093000\r"
        + "OBX|1|TX|X^x^L||Invasive carcinoma.||||||F\r"
    )
    [document] = hl7_documents(message)
    assert (document.kind, document.type_code) == ("pathology-text", ("HL70270", "SP"))


def test_ed_base64_text_is_decoded_and_other_ed_is_not() -> None:
    html = _b64(b"<p>Final diagnosis:</p><p>Benign.</p>")
    plain = _b64("Gross: tan \u00e9 tissue.\r\n".encode())
    message = er7.parse(
        _MSH_ORU
        + "OBR|1||A1|11529-5^Surgical path^LN|||20240301\r"
        + f"OBX|1|ED|22637-3^Dx^LN|1|LIS^TEXT^HTML^Base64^{html}||||||F\r"
        + f"OBX|2|ED|22634-0^Gross^LN|1|LIS^TEXT^^BASE64^{plain}||||||F\r"
        + f"OBX|3|ED|R^Report^L|1|LIS^application^pdf^Base64^{_b64(b'%PDF-1.4')}||||||F\r"
        + "OBX|4|ED|R^Report^L|2|LIS^TEXT^PLAIN^A^Not base64 encoded||||||F\r"
        + "OBX|5|ED|R^Report^L|3|LIS^TEXT^PLAIN^Base64^!!not base64!!||||||F\r"
    )
    documents = {d.part: d for d in hl7_documents(message)}
    assert set(documents) == {"OBX/22637-3/1", "OBX/22634-0/1"}
    assert documents["OBX/22637-3/1"].text == "Final diagnosis:\nBenign."
    assert documents["OBX/22637-3/1"].media_type == "text/html"
    assert documents["OBX/22634-0/1"].text == "Gross: tan \u00e9 tissue.\n"
    assert documents["OBX/22634-0/1"].media_type == "text/plain"
    assert {d.kind for d in documents.values()} == {"pathology-text"}


def test_a_message_without_text_results_has_no_documents() -> None:
    message = er7.parse(
        _MSH_ORU
        + "OBR|1||A1|24331-1^Lipid^LN|||20240301\r"
        + "OBX|1|NM|2093-3^Chol^LN||180|mg/dL\r"
    )
    assert hl7_documents(message) == []


# --- gzip and C-CDA -------------------------------------------------------------------------

_CCDA = """<?xml version="1.0" encoding="UTF-8"?>
<?xml-stylesheet type="text/xsl" href="CDA.xsl"?>
<!-- A C-CDA as EHRs send it: a header, then sections with narrative and coded entries. -->
<ClinicalDocument xmlns="urn:hl7-org:v3" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">
  <typeId root="2.16.840.1.113883.1.3" extension="POCD_HD000040"/>
  <code code="{code}" codeSystem="2.16.840.1.113883.6.1" displayName="Note"/>
  <title>Community Hospital: Progress Note</title>
  <effectiveTime value="20130607000000-0500"/>
  <component><structuredBody>
    <component><section>
      <code code="11450-4" codeSystem="2.16.840.1.113883.6.1"/>
      <title>PROBLEMS</title>
      <text>
        <list listType="ordered">
          <item>Invasive ductal <content styleCode="Bold">carcinoma</content> of the left
            breast</item>
          <item>Hypertension<br/>controlled</item>
        </list>
        <paragraph>Reviewed <content revised="delete">in error </content>today.</paragraph>
      </text>
      <entry typeCode="DRIV"><act classCode="ACT" moodCode="EVN">
        <code code="CONC" codeSystem="2.16.840.1.113883.5.6"/>
        <entryRelationship typeCode="SUBJ"><observation classCode="OBS" moodCode="EVN">
          <code code="55607006" codeSystem="2.16.840.1.113883.6.96"/>
          <text>Coded statement only</text>
          <value xsi:type="CD" code="254837009" codeSystem="2.16.840.1.113883.6.96"
                 displayName="Malignant neoplasm of breast"/>
        </observation></entryRelationship>
      </act></entry>
      <component><section>
        <title>Receptor status:</title>
        <text><paragraph>ER positive.</paragraph><paragraph>HER2 negative.</paragraph></text>
      </section></component>
    </section></component>
    <component><section>
      <title>Results</title>
      <text>
        <table border="1">
          <thead><tr><th>Test</th><th>Value</th><th>Date</th></tr></thead>
          <tbody>
            <tr><td>Hemoglobin</td><td> 13.2 g/dL </td><td>June 7, 2013</td></tr>
            <tr><td>Ki-67</td><td>20 %</td><td/></tr>
          </tbody>
        </table>
      </text>
      <entry><observation classCode="OBS" moodCode="EVN">
        <code code="718-7" codeSystem="2.16.840.1.113883.6.1"/>
        <value xsi:type="PQ" value="13.2" unit="g/dL"/>
      </observation></entry>
    </section></component>
  </structuredBody></component>
</ClinicalDocument>
"""
_CCDA_TEXT = (
    "PROBLEMS:\n"
    "Invasive ductal carcinoma of the left breast\n"
    "Hypertension\n"
    "controlled\n"
    "Reviewed today.\n"
    "\n"
    "Receptor status:\n"
    "ER positive.\n"
    "HER2 negative.\n"
    "\n"
    "Results:\n"
    "Test\tValue\tDate\n"
    "Hemoglobin\t13.2 g/dL\tJune 7, 2013\n"
    "Ki-67\t20 %\n"
    "\n"
)


def _ccda(code: str = "11506-3") -> bytes:
    return _CCDA.replace("{code}", code).encode()


def _non_xml_body(text_element: str) -> bytes:
    return (
        '<ClinicalDocument xmlns="urn:hl7-org:v3"><code code="18842-5" '
        'codeSystem="2.16.840.1.113883.6.1"/><component><nonXMLBody>'
        f"{text_element}</nonXMLBody></component></ClinicalDocument>"
    ).encode()


def test_gzipped_plain_text_is_unpacked_and_read_as_text() -> None:
    data = gzip.compress("Progress note.\r\nCaf\u00e9 stable.".encode())
    [document] = fhir_documents(
        _document_reference({"contentType": "text/plain", "data": _b64(data)})
    )
    assert document.text == "Progress note.\nCaf\u00e9 stable."
    assert document.media_type == "text/plain"


def test_gzipped_html_is_read_as_the_html_it_is_labelled() -> None:
    data = gzip.compress(b"<p>Final diagnosis:</p><p>Benign.</p>")
    [document] = fhir_documents(
        _document_reference({"contentType": "text/html", "data": _b64(data)})
    )
    assert document.text == "Final diagnosis:\nBenign."


@pytest.mark.parametrize(
    "content_type", ["application/xml", "text/xml", "Application/HL7-V3+XML; charset=UTF-8"]
)
def test_a_c_cda_gives_its_section_titles_and_narrative_and_not_its_entries(
    content_type: str,
) -> None:
    resource = _document_reference({"contentType": content_type, "data": _b64(_ccda())})
    [document] = fhir_documents(resource)
    assert document.text == _CCDA_TEXT
    # Coded entries are no text: neither their codes, display names nor statement text.
    for coded in ("55607006", "254837009", "Malignant neoplasm", "Coded statement", "718-7"):
        assert coded not in document.text
    assert "in error" not in document.text  # content the author marked deleted
    assert "Community Hospital" not in document.text  # the document title is no section
    assert document.media_type == content_type.split(";")[0].lower()
    assert document.kind == "note-text"
    assert (document.authored, document.type_code) == ("2024-03-01T07:30:00Z", (LOINC, "11506-3"))


def test_a_gzipped_c_cda_labelled_text_plain_is_read_as_a_c_cda() -> None:
    """As Microsoft's FHIR converter stores the C-CDA it converted."""
    resource = _document_reference(
        {"contentType": "text/plain", "data": _b64(gzip.compress(_ccda()))}
    )
    [document] = fhir_documents(resource)
    assert document.text == _CCDA_TEXT
    assert document.media_type == "text/plain"  # as sent


@pytest.mark.parametrize(
    "data",
    [
        _ccda(),  # XML labelled text/plain: read by what it is
        _ccda().split(b"\n", 2)[2],  # no XML declaration: a comment, then the root
        b"\xef\xbb\xbf" + _ccda(),
        _ccda().replace(b'encoding="UTF-8"', b'encoding="UTF-16"').decode().encode("utf-16"),
    ],
)
def test_a_c_cda_is_told_by_its_start_whatever_its_label(data: bytes) -> None:
    for content_type in ("text/plain", "application/octet-stream", ""):
        resource = _document_reference({"contentType": content_type, "data": _b64(data)})
        assert [d.text for d in fhir_documents(resource)] == [_CCDA_TEXT], content_type


def test_the_c_cda_time_and_code_stand_in_for_those_the_record_lacks() -> None:
    resource = _document_reference(
        {"contentType": "application/xml", "data": _b64(_ccda())},
        context={"period": {"start": "2013-06-01"}},
    )
    del resource["date"], resource["type"]
    [document] = fhir_documents(resource)
    # The C-CDA's effectiveTime (its own time) before the period (the encounter's), as FHIR.
    assert document.authored == "2013-06-07T00:00:00-05:00"
    assert document.type_code == ("2.16.840.1.113883.6.1", "11506-3")


def test_a_c_cda_with_a_pathology_code_is_pathology() -> None:
    for code in ("11526-1", "60567-5"):
        resource = _document_reference(
            {"contentType": "application/xml", "data": _b64(_ccda(code))}
        )
        assert [d.kind for d in fhir_documents(resource)] == ["pathology-text"], code


@pytest.mark.parametrize(
    ("text_element", "expected"),
    [
        (
            '<text mediaType="text/plain" representation="B64">'
            f"{_b64(b'Discharged home.' + bytes([13, 10]) + b'Stable.')}</text>",
            "Discharged home.\nStable.",
        ),
        (
            "<text>Discharged home in stable condition.</text>",
            "Discharged home in stable condition.",
        ),
        (
            '<text mediaType="text/plain" representation="B64" compression="GZ">'
            f"{_b64(gzip.compress(b'Gzipped note.'))}</text>",
            "Gzipped note.",
        ),
        (
            '<text mediaType="text/html" representation="B64">'
            f"{_b64(b'<p>One.</p><p>Two.</p>')}</text>",
            "One.\nTwo.",
        ),
    ],
)
def test_a_non_xml_body_with_text_is_read(text_element: str, expected: str) -> None:
    resource = _document_reference(
        {"contentType": "application/xml", "data": _b64(_non_xml_body(text_element))}
    )
    assert [d.text for d in fhir_documents(resource)] == [expected]


@pytest.mark.parametrize(
    "data",
    [
        _non_xml_body(
            f'<text mediaType="application/pdf" representation="B64">{_b64(b"%PDF-1.4")}</text>'
        ),
        _non_xml_body('<text><reference value="UD_sample.pdf"/></text>'),
        _non_xml_body('<text representation="B64">not base64 !!</text>'),
        # An empty structured body, as in the public samples that show only a header.
        b'<ClinicalDocument xmlns="urn:hl7-org:v3"><component><structuredBody><component/>'
        b"</structuredBody></component></ClinicalDocument>",
        b'<?xml version="1.0"?><Bundle xmlns="http://hl7.org/fhir"/>',  # XML, no C-CDA
        b'<?xml version="1.0"?><ClinicalDocument xmlns="urn:hl7-org:v3"><component>',  # cut
        b"\x1f\x8b\x08\x00 not a gzip stream",
    ],
)
def test_xml_without_c_cda_text_yields_nothing(data: bytes) -> None:
    resource = _document_reference({"contentType": "application/xml", "data": _b64(data)})
    assert fhir_documents(resource) == []


def test_nesting_deeper_than_the_recursion_limit_is_read_without_error() -> None:
    depth = 5000
    text = "<content>" * depth + "Deep." + "</content>" * depth
    sections = "<component><section><title>T</title>" * depth
    data = (
        '<ClinicalDocument xmlns="urn:hl7-org:v3"><component><structuredBody>'
        f"<component><section><title>A</title><text>{text}</text></section></component>"
        f"{sections}{'</section></component>' * depth}</structuredBody></component>"
        "</ClinicalDocument>"
    ).encode()
    resource = _document_reference({"contentType": "application/xml", "data": _b64(data)})
    [document] = fhir_documents(resource)
    assert document.text.startswith("A:\nDeep.\n\nT:\n\nT:\n")


_LAUGHS = "".join(f' <!ENTITY lol{n} "' + f"&lol{n - 1};" * 10 + '">\n' for n in range(1, 10))
_BILLION_LAUGHS = (
    '<?xml version="1.0"?>\n<!DOCTYPE ClinicalDocument [\n <!ENTITY lol0 "lol">\n'
    + _LAUGHS
    + ']>\n<ClinicalDocument xmlns="urn:hl7-org:v3"><component><structuredBody><component>'
    + "<section><title>Laughs</title><text>&lol9;</text></section>"
    + "</component></structuredBody></component></ClinicalDocument>"
).encode()


@pytest.mark.parametrize("packed", [False, True])
def test_entity_expansion_yields_nothing_at_once(packed: bool) -> None:
    data = gzip.compress(_BILLION_LAUGHS) if packed else _BILLION_LAUGHS
    content_type = "text/plain" if packed else "application/xml"
    started = time.monotonic()
    documents = fhir_documents(
        _document_reference({"contentType": content_type, "data": _b64(data)})
    )
    assert documents == []
    assert time.monotonic() - started < 2.0  # 10^9 "lol"s expanded would take minutes


def test_an_external_entity_is_not_read(tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("TOP-SECRET-3141")
    data = (
        '<?xml version="1.0"?>'
        f'<!DOCTYPE ClinicalDocument [<!ENTITY xxe SYSTEM "{secret.as_uri()}">]>'
        '<ClinicalDocument xmlns="urn:hl7-org:v3"><component><structuredBody><component>'
        "<section><title>Notes</title><text>Before &xxe; after.</text></section>"
        "</component></structuredBody></component></ClinicalDocument>"
    ).encode()
    documents = fhir_documents(
        _document_reference({"contentType": "application/xml", "data": _b64(data)})
    )
    assert documents == []
    assert "TOP-SECRET" not in repr(documents)


def _gzipped_run(byte: bytes, size: int) -> bytes:
    """`size` times `byte`, gzipped without holding them all."""
    packer = zlib.compressobj(9, zlib.DEFLATED, 31)  # 31: a gzip stream
    chunk = byte * (1024 * 1024)
    parts = [packer.compress(chunk) for _ in range(size // len(chunk))]
    return b"".join([*parts, packer.flush()])


@pytest.mark.parametrize("byte", [b"\x00", b"a"])
def test_a_gzip_bomb_yields_nothing_quickly(byte: bytes) -> None:
    bomb = _gzipped_run(byte, 100 * 1024 * 1024)  # 100 MiB of zeros, or of text
    assert len(bomb) < 200_000
    started = time.monotonic()
    for content_type in ("text/plain", "application/xml"):
        resource = _document_reference({"contentType": content_type, "data": _b64(bomb)})
        assert fhir_documents(resource) == []
    assert time.monotonic() - started < 5.0


def test_gzipped_text_is_read_up_to_the_limit_and_not_beyond() -> None:
    at_limit = gzip.compress(b"a" * MAX_GUNZIPPED_BYTES)
    over = gzip.compress(b"a" * (MAX_GUNZIPPED_BYTES + 1))
    [document] = fhir_documents(
        _document_reference({"contentType": "text/plain", "data": _b64(at_limit)})
    )
    assert len(document.text) == MAX_TEXT_CHARS
    assert (
        fhir_documents(_document_reference({"contentType": "text/plain", "data": _b64(over)})) == []
    )


def test_an_hl7_ed_c_cda_or_gzipped_text_is_read_as_a_fhir_attachment_is() -> None:
    message = er7.parse(
        _MSH_ORU
        + "OBR|1||A1|11506-3^Progress note^LN|||20240301\r"
        + f"OBX|1|ED|11506-3^Note^LN|1|EHR^TEXT^XML^Base64^{_b64(_ccda())}||||||F\r"
        + f"OBX|2|ED|11506-3^Note^LN|2|EHR^multipart^x-hl7-cda-level-one^Base64^{_b64(_ccda())}"
        + "||||||F\r"
        + f"OBX|3|ED|11506-3^Note^LN|3|EHR^TEXT^PLAIN^Base64^{_b64(gzip.compress(b'Packed.'))}"
        + "||||||F\r"
        + f"OBX|4|ED|11506-3^Note^LN|4|EHR^AP^XML^Base64^{_b64(_BILLION_LAUGHS)}||||||F\r"
    )
    documents = {d.part: (d.text, d.media_type) for d in hl7_documents(message)}
    assert documents == {
        "OBX/11506-3/1": (_CCDA_TEXT, "text/xml"),
        "OBX/11506-3/2": (_CCDA_TEXT, "application/x-hl7-cda-level-one+xml"),
        "OBX/11506-3/3": ("Packed.", "text/plain"),
    }


# --- the public samples ---------------------------------------------------------------------


def _sample(name: str) -> Path:
    path = SAMPLES / name
    if not path.exists():
        pytest.skip(f"NOT RUN: the public samples are absent ({path} not found)")
    return path


@pytest.mark.shared_data
def test_the_public_mdm_t02_document_is_read_line_by_line() -> None:
    message = er7.parse(_sample("hl7v2/MDM-T02-03.hl7").read_bytes())
    [document] = hl7_documents(message)
    lines = document.text.split("\n")
    assert len(lines) == 29  # OBX 1..29, one line each
    assert lines[0] == "Toilet cylinder crackers model step-mother visor opening communication"
    assert lines[-1] == "Reminder shofar congo vibration mother-in-law bondsman suspect"
    assert document.kind == "note-text"  # TXA-2 DS: a discharge summary
    assert document.type_code == ("HL70270", "DS")
    assert document.authored == "20210801090642+0215"


@pytest.mark.shared_data
def test_public_messages_with_only_a_pdf_or_octet_stream_have_no_documents() -> None:
    for name in ("hl7v2/MDM-T02-01.hl7", "hl7v2/MDM-T10-01.hl7", "hl7v2/ORU-R01-01.hl7"):
        assert hl7_documents(er7.parse(_sample(name).read_bytes())) == [], name


# The converted C-CDAs whose document has no narrative to read: its body is a PDF, a reference
# to a PDF file elsewhere, or an empty structuredBody (samples that show only a header).
_CCDA_WITHOUT_TEXT = {
    "CDA_with_Embedded_PDF": "nonXMLBody: an embedded PDF",
    "Unstructured_Document_embed": "nonXMLBody: an embedded PDF",
    "Unstructured_Document_reference": "nonXMLBody: a reference to UD_sample.pdf",
    "sample": "nonXMLBody: a reference to UD_sample.pdf",
    "Consult-Document-Closing-Referral-C-CDAR2.1": "structuredBody with one empty component",
    "Patient-and-Provider-Organization-Direct-Address-C-CDAR2.1": "structuredBody: '...' only",
}


@pytest.mark.shared_data
def test_public_c_cda_conversions_yield_the_text_of_their_gzipped_c_cda() -> None:
    """The converter stores each C-CDA gzipped, base64 and labelled text/plain: each one with
    a narrative gives its text; a PDF one (an empty application/pdf attachment, or a C-CDA
    whose body is a PDF) gives none."""
    read: dict[str, list[DocumentText]] = {}
    pdf_attachments = 0
    for path in sorted((_sample("fhir-expected") / "Ccda").rglob("*.json")):
        name = path.name.removesuffix("-expected.json")
        for entry in json.loads(path.read_text())["entry"]:
            resource = entry["resource"]
            if resource["resourceType"] != "DocumentReference":
                continue
            [content] = resource["content"]
            if content["attachment"]["contentType"] == "application/pdf":
                pdf_attachments += 1
                assert fhir_documents(resource) == [], name
            else:
                assert name not in read, name
                read[name] = fhir_documents(resource)
    assert pdf_attachments == 3 and len(read) == 22
    assert {name for name, documents in read.items() if not documents} == set(_CCDA_WITHOUT_TEXT)
    for name, documents in read.items():
        if name in _CCDA_WITHOUT_TEXT:
            continue
        [document] = documents
        assert document.part == "content/0" and document.media_type == "text/plain", name
        assert "\ufffd" not in document.text and "<" not in document.text.split(":\n", 1)[0]
        assert document.text.count(":\n") >= 3, name  # section titles as headers
        assert document.authored and document.authored.endswith("Z"), name  # the record's date


@pytest.mark.parametrize(
    ("name", "titles", "entry_code", "entry_display"),
    [
        ("Progress_Note", ["ASSESSMENT", "CHIEF COMPLAINT"], "419199007", "Allergy to substance"),
        (
            "Transfer_Summary",
            ["HISTORY OF PRESENT ILLNESS", "Hospital Course of Care"],
            "371924009",
            "Moderate to severe",
        ),
        ("Discharge_Summary", ["HOSPITAL COURSE", "Problem List"], "414285001", "Food allergy"),
        ("Operative_Note", ["PROCEDURE FINDINGS"], "309226005", "colonic polyp sample"),
    ],
)
@pytest.mark.shared_data
def test_public_c_cda_files_give_section_titles_and_not_entry_codes(
    name: str, titles: list[str], entry_code: str, entry_display: str
) -> None:
    data = _sample(f"ccda/{name}.ccda").read_bytes()
    for title in titles:
        assert f"<title>{title}</title>".encode() in data
    assert f'code="{entry_code}"'.encode() in data  # coded in one of the file's entries
    resource = _document_reference({"contentType": "application/xml", "data": _b64(data)})
    [document] = fhir_documents(resource)
    lines = document.text.split("\n")
    for title in titles:
        assert f"{title}:" in lines, title
    assert entry_code not in document.text
    assert entry_display not in document.text
    assert document.type_code == (LOINC, "11506-3")  # the record's type comes first


@pytest.mark.shared_data
def test_public_progress_note_narrative_rows_and_time() -> None:
    data = _sample("ccda/Progress_Note.ccda").read_bytes()
    resource = _document_reference({"contentType": "application/xml", "data": _b64(data)})
    del resource["date"], resource["type"]
    [document] = fhir_documents(resource)
    lines = document.text.split("\n")
    # A table row is one line, cells apart by a tab; a paragraph is a line.
    assert "Penicillin\tNausea" in lines
    assert "CHIEF COMPLAINT:" in lines and "Dark stools." in lines
    assert document.authored == "2005-03-29T17:15:04-05:00"  # <effectiveTime value=...-0500>
    assert document.type_code == ("2.16.840.1.113883.6.1", "11506-3")
    assert document.kind == "note-text"
