"""The readers that pull narrative text out of FHIR and HL7 v2 records (issue 18)."""

from __future__ import annotations

import base64
import gzip
import json
from pathlib import Path
from typing import Any

import pytest

from concord.clinical_text.documents import (
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
        # Compressed bytes mislabelled as text (as in the public C-CDA conversions).
        {"contentType": "text/plain", "data": _b64(gzip.compress(b"<ClinicalDocument/>"))},
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


@pytest.mark.shared_data
def test_public_c_cda_conversions_yield_no_garbage_from_compressed_attachments() -> None:
    """The converter stores each C-CDA gzipped, base64 and labelled text/plain: read as text
    that would be replacement characters; it must give no document instead."""
    paths = sorted((_sample("fhir-expected") / "Ccda").rglob("*.json"))
    references = [
        entry["resource"]
        for path in paths
        for entry in json.loads(path.read_text())["entry"]
        if entry["resource"]["resourceType"] in ("DocumentReference", "DiagnosticReport")
    ]
    assert len(references) > 20
    assert [fhir_documents(resource) for resource in references] == [[]] * len(references)
