"""The narrative text of a record: FHIR DocumentReference and DiagnosticReport, HL7 v2 ORU
text results and MDM documents, each text as the plain string facts will be read from.

Pure and quiet: nothing here logs or raises on what a sender sent (a record's text is PHI, and
one odd attachment must not stop a worker). What cannot be read as text (a PDF, an image, an
attachment given only by url, broken base64, bytes that are not text) yields no document.
Status is not looked at: a withdrawn document is still returned, its caller decides.

Gzipped bytes (as the FHIR converter stores a C-CDA, labelled text/plain) are unpacked up to
MAX_GUNZIPPED_BYTES, then read by what they are. A C-CDA (CDA R2 XML, sent as XML or sniffed
by its start) is read as its sections' titles and narrative blocks; its coded entries are not
text. XML is parsed by defusedxml: a document that declares entities gives no document.

Offsets into `DocumentText.text` are stored later, so the text is kept as sent but for
line ends (CR LF and CR become LF), a leading byte-order mark, and HTML or RTF turned into
text; it is cut at MAX_TEXT_CHARS.
"""

from __future__ import annotations

import base64
import binascii
import codecs
import gzip
import io
import re
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from html.parser import HTMLParser
from typing import TYPE_CHECKING, Any, Final, cast

from defusedxml import DefusedXmlException
from defusedxml import ElementTree as SafeElementTree
from striprtf import striprtf

from concord.clinical_text.concepts import DocumentKind
from concord.hl7v2 import er7
from concord.hl7v2.results import is_text, joined, results

if TYPE_CHECKING:
    from xml.etree.ElementTree import Element

# striprtf ships no annotations: its one function, typed as it behaves (str in, str out).
_rtf_to_text = cast(Callable[..., str], striprtf.rtf_to_text)
# Nor does defusedxml: its fromstring is ElementTree's, refusing entities and external
# references (billion laughs, XXE) with a DefusedXmlException.
_parse_xml = cast(Callable[..., "Element"], SafeElementTree.fromstring)

# A text longer than this is cut here; the caller sees len(text) == MAX_TEXT_CHARS and flags it.
MAX_TEXT_CHARS: Final = 1_000_000
# Gzipped bytes are unpacked up to this much; a bigger (or broken) stream gives no document.
MAX_GUNZIPPED_BYTES: Final = 20 * 1024 * 1024

PATHOLOGY: Final[DocumentKind] = "pathology-text"
NOTE: Final[DocumentKind] = "note-text"

PLAIN: Final = "text/plain"
_HTML_TYPES: Final = frozenset({"text/html", "application/xhtml+xml"})
_RTF_TYPES: Final = frozenset({"text/rtf", "application/rtf"})
# Media types a C-CDA is sent as; bytes that start as XML are read as XML whatever their label.
_XML_TYPES: Final = frozenset(
    {"application/xml", "text/xml", "application/hl7-v3+xml", "application/x-hl7-cda-level-one+xml"}
)

# Pathology report types: LOINC report and report-section codes (names checked against LOINC:
# 11526-1 Pathology study, 11529-5 Surgical pathology study, 60567-5 Comprehensive pathology
# report panel, 60568-3 Pathology Synoptic report, 22634-0 gross observation, 22635-7
# microscopic observation, 22636-5 relevant history, 22637-3 final diagnosis narrative,
# 34574-4 final diagnosis). Only codes whose names were confirmed are listed.
PATHOLOGY_LOINC: Final = frozenset(
    {
        "11526-1",
        "11529-5",
        "60567-5",
        "60568-3",
        "22634-0",
        "22635-7",
        "22636-5",
        "22637-3",
        "34574-4",
    }
)
# HL7 table 0074 (diagnostic service section): SP Surgical Pathology, PAT Pathology (gross &
# histopath, not surgical), CP Cytopathology.
PATHOLOGY_SECTIONS: Final = frozenset({"SP", "PAT", "CP"})
# HL7 table 0270 (document type, TXA-2): SP Surgical pathology.
PATHOLOGY_DOCUMENT_TYPES: Final = frozenset({"SP"})

_LOINC_SYSTEMS: Final = frozenset({"http://loinc.org", "LN", "LOINC", "2.16.840.1.113883.6.1"})
_V2_0074: Final = "http://terminology.hl7.org/CodeSystem/v2-0074"
# TXA-2 is bound to table 0270 by the standard: the system when a sender names none.
_V2_0270: Final = "HL70270"

# ED (OBX-5: source ^ type of data ^ subtype ^ encoding ^ data) subtypes that are text.
_ED_SUBTYPES: Final = {
    "": PLAIN,
    "PLAIN": PLAIN,
    "TEXT/PLAIN": PLAIN,
    "HTML": "text/html",
    "TEXT/HTML": "text/html",
    "RTF": "text/rtf",
    "TEXT/RTF": "text/rtf",
    "APPLICATION/RTF": "application/rtf",
    # A C-CDA (table 0291 XML and x-hl7-cda-level-one), read as in a FHIR attachment.
    "XML": "text/xml",
    "TEXT/XML": "text/xml",
    "APPLICATION/XML": "application/xml",
    "APPLICATION/HL7-V3+XML": "application/hl7-v3+xml",
    "X-HL7-CDA-LEVEL-ONE": "application/x-hl7-cda-level-one+xml",
}
_MDM: Final = "MDM"


@dataclass(frozen=True)
class DocumentText:
    part: str  # "content/0", "presentedForm/1", "conclusion", "OBX/22637-3/1", "TXA/OBX"
    kind: DocumentKind
    text: str
    media_type: str  # lower-cased, without parameters; "text/plain" for HL7 text and conclusion
    authored: str | None  # the document's own time, as sent
    type_code: tuple[str, str] | None  # (system, code) of the document / report type, as sent


@dataclass(frozen=True)
class _Read:
    """What one attachment's bytes gave: its text and, for a C-CDA, the document's own type
    code and time (the record's, when it has them, come first)."""

    text: str
    code: tuple[str, str] | None = None  # a C-CDA's code: (codeSystem OID, code)
    time: str | None = None  # a C-CDA's effectiveTime, written as a FHIR dateTime


# --- FHIR -----------------------------------------------------------------------------------


def fhir_documents(resource: Mapping[str, Any]) -> list[DocumentText]:
    """The texts of a DocumentReference (its content attachments) or a DiagnosticReport (its
    presentedForm attachments and its conclusion); [] for any other resource."""
    resource_type = resource.get("resourceType")
    if resource_type == "DocumentReference":
        context = _mapping(resource.get("context"))
        # A C-CDA's own effectiveTime comes before the period: that is the encounter's.
        period_start = _str(_mapping(context.get("period")).get("start"))
        codings = _codings(resource.get("type"))
        attachments = [_mapping(c).get("attachment") for c in _list(resource.get("content"))]
        return _attached(
            "content",
            attachments,
            _fhir_kind(resource),
            _str(resource.get("date")),
            _first_code(codings),
            period_start,
        )
    if resource_type == "DiagnosticReport":
        authored = (
            _str(resource.get("issued"))
            or _str(resource.get("effectiveDateTime"))
            or _str(_mapping(resource.get("effectivePeriod")).get("start"))
        )
        kind = _fhir_kind(resource)
        type_code = _first_code(_codings(resource.get("code")))
        forms = _list(resource.get("presentedForm"))
        documents = _attached("presentedForm", forms, kind, authored, type_code)
        conclusion = _prepared(_str(resource.get("conclusion")) or "")
        if conclusion is not None:
            documents.append(
                DocumentText("conclusion", kind, conclusion, PLAIN, authored, type_code)
            )
        return documents
    return []


def _attached(
    name: str,
    attachments: Sequence[object],
    kind: DocumentKind,
    authored: str | None,
    type_code: tuple[str, str] | None,
    later_time: str | None = None,
) -> list[DocumentText]:
    """The attachments' texts. A C-CDA's own code makes it pathology, and its code and time
    stand in for the record's when the record has none (`later_time` comes after its time)."""
    documents = []
    for index, attachment in enumerate(attachments):
        fields = _mapping(attachment)
        media_type, charset = _content_type(_str(fields.get("contentType")) or "")
        read = _attachment_read(fields, media_type, charset)
        if read is not None:
            documents.append(
                DocumentText(
                    f"{name}/{index}",
                    PATHOLOGY if read.code and _is_pathology_loinc(*read.code) else kind,
                    read.text,
                    media_type,
                    authored or read.time or later_time,
                    type_code or read.code,
                )
            )
    return documents


def _attachment_read(attachment: Mapping[str, Any], media_type: str, charset: str) -> _Read | None:
    """An inline attachment's text; None when it has no readable text."""
    data = _str(attachment.get("data"))
    if data is None:  # only a url: the text is elsewhere, and nothing here fetches it
        return None
    try:
        raw = base64.b64decode("".join(data.split()), validate=True)
    except (binascii.Error, ValueError):
        return None
    return _read_bytes(raw, media_type, charset)


def _content_type(value: str) -> tuple[str, str]:
    """The media type (lower-cased, parameters dropped) and the charset it names (utf-8 when
    it names none, or one Python does not know)."""
    media_type, *parameters = value.split(";")
    charset = "utf-8"
    for parameter in parameters:
        key, _, named = parameter.partition("=")
        if key.strip().lower() == "charset":
            named = named.strip().strip("\"'")
            try:
                charset = codecs.lookup(named).name
            except LookupError:
                pass
    return media_type.strip().lower(), charset


def _fhir_kind(resource: Mapping[str, Any]) -> DocumentKind:
    codings = [
        *(c for category in _list(resource.get("category")) for c in _codings(category)),
        *_codings(resource.get("type")),
        *_codings(resource.get("code")),
    ]
    for system, code in codings:
        if (system == _V2_0074 and code in PATHOLOGY_SECTIONS) or _is_pathology_loinc(system, code):
            return PATHOLOGY
    return NOTE


def _is_pathology_loinc(system: str, code: str) -> bool:
    return system in _LOINC_SYSTEMS and code in PATHOLOGY_LOINC


def _codings(concept: object) -> list[tuple[str, str]]:
    """A CodeableConcept's (system, code) pairs, in order; codings without a code left out."""
    pairs = []
    for coding in _list(_mapping(concept).get("coding")):
        fields = _mapping(coding)
        code = _str(fields.get("code"))
        if code:
            pairs.append((_str(fields.get("system")) or "", code))
    return pairs


def _first_code(codings: list[tuple[str, str]]) -> tuple[str, str] | None:
    return codings[0] if codings else None


def _mapping(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _list(value: object) -> list[object]:
    return value if isinstance(value, list) else []


def _str(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


# --- HL7 v2 ---------------------------------------------------------------------------------


def hl7_documents(message: er7.Er7Message) -> list[DocumentText]:
    """An MDM message's document (its TXA and the text OBX lines after it, part "TXA/OBX"), or
    any other message's text results: the TX/FT/ST lines of one OBX-3 and OBX-4 under one OBR
    make one text (part "OBX/<OBX-3.1>/<OBX-4>"). Base64 text in ED results makes one text
    each. A part that would repeat gets "#2", "#3" in message order."""
    txa = message.first("TXA")
    if message.msh.value(9) == _MDM and txa is not None:
        return _mdm_documents(message, txa)
    return _result_documents(message)


def _mdm_documents(message: er7.Er7Message, txa: er7.Segment) -> list[DocumentText]:
    obr = message.first("OBR")
    lines = [obx for obx in message.all("OBX") if is_text(obx)]
    document_type = txa.value(2)
    type_code = (txa.value(2, 3) or _V2_0270, document_type) if document_type else None
    pathology = document_type.upper() in PATHOLOGY_DOCUMENT_TYPES or any(
        _coded_pathology(segment, field)
        for segment, field in [*((obx, 3) for obx in message.all("OBX")), (obr, 4)]
    )
    kind = PATHOLOGY if pathology else NOTE
    activity = txa.value(4) or None
    documents = []
    text = _prepared(joined(lines)) if lines else None
    if text is not None:
        authored = activity or _authored(lines[0], obr)
        documents.append(DocumentText("TXA/OBX", kind, text, PLAIN, authored, type_code))
    for obx in message.all("OBX"):
        read = _encapsulated_text(obx)
        if read is not None:
            part = f"OBX/{obx.value(3)}/{obx.value(4)}"
            authored = activity or _authored(obx, obr)
            documents.append(DocumentText(part, kind, *read, authored, type_code))
    return _unique_parts(documents)


def _result_documents(message: er7.Er7Message) -> list[DocumentText]:
    others, texts = results(message)
    documents = []
    for obx, obr in others:
        read = _encapsulated_text(obx)
        if read is not None:
            documents.append(_result_document(obx, obr, *read))
    for result in texts:
        text = _prepared(result.text)
        if text is not None:
            documents.append(_result_document(result.lines[0], result.obr, text, PLAIN))
    return _unique_parts(documents)


def _result_document(
    obx: er7.Segment, obr: er7.Segment | None, text: str, media_type: str
) -> DocumentText:
    pathology = (
        _coded_pathology(obx, 3)
        or _coded_pathology(obr, 4)
        or (obr is not None and obr.value(24).upper() in PATHOLOGY_SECTIONS)
    )
    identifier = obx.value(3)
    return DocumentText(
        f"OBX/{identifier}/{obx.value(4)}",
        PATHOLOGY if pathology else NOTE,
        text,
        media_type,
        _authored(obx, obr),
        (obx.value(3, 3), identifier) if identifier else None,
    )


def _authored(obx: er7.Segment, obr: er7.Segment | None) -> str | None:
    """OBX-14 (when the observation was made), else OBR-7 (when the specimen was taken)."""
    return obx.value(14) or (obr.value(7) if obr is not None else "") or None


def _coded_pathology(segment: er7.Segment | None, field: int) -> bool:
    """Whether a CWE field's identifier or its alternate identifier is a pathology LOINC."""
    if segment is None:
        return False
    return any(
        segment.value(field, system).strip().upper() in _LOINC_SYSTEMS
        and segment.value(field, code).strip() in PATHOLOGY_LOINC
        for code, system in ((1, 3), (4, 6))
    )


def _encapsulated_text(obx: er7.Segment) -> tuple[str, str] | None:
    """The text and media type of an ED result that is base64 text (or a C-CDA, read as in a
    FHIR attachment); None otherwise."""
    if obx.value(2).upper() != "ED" or obx.value(5, 4).strip().upper() != "BASE64":
        return None
    type_of_data = obx.value(5, 2).strip().upper()
    subtype = obx.value(5, 3).strip().upper()
    media_type = _ED_SUBTYPES.get(subtype)
    # Under another type of data, only a subtype that names a text MIME type (or XML) is text.
    if type_of_data != "TEXT" and "/" not in subtype and media_type not in _XML_TYPES:
        media_type = None
    if media_type is None:
        return None
    try:
        raw = base64.b64decode("".join(obx.value(5, 5).split()), validate=True)
    except (binascii.Error, ValueError):
        return None
    read = _read_bytes(raw, media_type, "utf-8")
    return None if read is None else (read.text, media_type)


def _unique_parts(documents: list[DocumentText]) -> list[DocumentText]:
    seen: dict[str, int] = {}
    unique = []
    for document in documents:
        count = seen[document.part] = seen.get(document.part, 0) + 1
        if count > 1:
            document = DocumentText(
                f"{document.part}#{count}",
                document.kind,
                document.text,
                document.media_type,
                document.authored,
                document.type_code,
            )
        unique.append(document)
    return unique


# --- bytes to text --------------------------------------------------------------------------

_GZIP_MAGIC: Final = b"\x1f\x8b"
# How much of the bytes' start is looked at to tell XML: an XML declaration, or the
# ClinicalDocument root after comments and processing instructions.
_SNIFF_BYTES: Final = 64 * 1024
_XML_DECLARATION: Final = re.compile(rb"\A(?:\xef\xbb\xbf)?\s*<\?xml[\s?]")
_CDA_ROOT: Final = re.compile(
    rb"\A(?:\xef\xbb\xbf)?(?:\s+|<!--.*?-->|<\?.*?\?>)*<(?:[\w.-]+:)?ClinicalDocument[\s/>]",
    re.DOTALL,
)


def _read_bytes(raw: bytes, media_type: str, charset: str) -> _Read | None:
    """Bytes as text: gzip unpacked first; then XML (by its start, or its label) read as a
    C-CDA, other bytes by their media type. HTML and RTF are read as labelled."""
    if raw.startswith(_GZIP_MAGIC):
        unpacked = _gunzip(raw)
        if unpacked is None:
            return None
        raw = unpacked
    if media_type not in _HTML_TYPES and media_type not in _RTF_TYPES:
        if media_type in _XML_TYPES or _looks_like_xml(raw):
            return _cda(raw)
    text = _text_of(raw, media_type, charset)
    return None if text is None else _Read(text)


def _gunzip(raw: bytes) -> bytes | None:
    """Gzipped bytes unpacked, at most MAX_GUNZIPPED_BYTES of them (read no further: a small
    stream can unpack to gigabytes); None for a bigger stream or a broken one."""
    try:
        with gzip.GzipFile(fileobj=io.BytesIO(raw)) as stream:
            unpacked = stream.read(MAX_GUNZIPPED_BYTES + 1)
    except (OSError, EOFError, zlib.error):  # gzip.BadGzipFile is an OSError
        return None
    return unpacked if len(unpacked) <= MAX_GUNZIPPED_BYTES else None


def _looks_like_xml(raw: bytes) -> bool:
    head = raw[:_SNIFF_BYTES]
    if head.startswith((b"\xff\xfe", b"\xfe\xff")):  # UTF-16: looked at as UTF-8
        head = head.decode("utf-16", errors="replace").encode()
    return bool(_XML_DECLARATION.match(head) or _CDA_ROOT.match(head))


def _text_of(raw: bytes, media_type: str, charset: str) -> str | None:
    """Decoded bytes as plain text, by media type; None for a type that is not text here, or
    bytes that are not text at all (a NUL: compressed or binary data labelled text/plain)."""
    if media_type != PLAIN and media_type not in _HTML_TYPES and media_type not in _RTF_TYPES:
        return None
    decoded = raw.decode(charset, errors="replace")
    if "\x00" in decoded:
        return None
    if media_type in _HTML_TYPES:
        decoded = html_to_text(decoded)
    elif media_type in _RTF_TYPES:
        try:
            decoded = _rtf_to_text(decoded, errors="replace")
        except (ValueError, LookupError, IndexError, OverflowError):  # malformed control words
            return None
    return _prepared(decoded)


def _prepared(text: str) -> str | None:
    """Line ends as LF, a leading byte-order mark dropped, cut at MAX_TEXT_CHARS; None when
    nothing but white space is left."""
    text = text.removeprefix("\ufeff").replace("\r\n", "\n").replace("\r", "\n")
    return text[:MAX_TEXT_CHARS] if text.strip() else None


# Elements that begin and end a line: HTML's block elements and list and table rows.
_BLOCK_TAGS: Final = frozenset(
    {
        "address",
        "article",
        "aside",
        "blockquote",
        "caption",
        "dd",
        "div",
        "dl",
        "dt",
        "fieldset",
        "figcaption",
        "figure",
        "footer",
        "form",
        "h1",
        "h2",
        "h3",
        "h4",
        "h5",
        "h6",
        "header",
        "hr",
        "li",
        "main",
        "nav",
        "ol",
        "p",
        "pre",
        "section",
        "table",
        "tbody",
        "tfoot",
        "thead",
        "tr",
        "ul",
    }
)
_CELL_TAGS: Final = frozenset({"td", "th"})
# Elements whose content is never shown as text.
_HIDDEN_TAGS: Final = frozenset({"script", "style", "template", "title", "noscript"})
_HTML_SPACE: Final = re.compile(r"[ \t\n\r\f]+")


def html_to_text(html: str) -> str:
    """HTML as the text a reader sees: block elements and <br> end lines, table cells are
    separated by a tab, runs of white space are one space (but in <pre>), character
    references decoded, and script, style and title content dropped."""
    parser = _HtmlText()
    parser.feed(html)
    parser.close()
    return parser.text()


class _HtmlText(HTMLParser):
    # The stdlib parser rather than a library: selectolax's and BeautifulSoup's text with a
    # separator also split inline elements (<b>, <span>) onto lines of their own and, without
    # one, run paragraphs together; html2text writes Markdown (#, *, table rules) into the text.
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self._out: list[str] = []
        self._hidden = 0
        self._pre = 0
        self._line_has_text = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _HIDDEN_TAGS:
            self._hidden += 1
        elif tag == "br":
            self._newline()
        elif tag in _BLOCK_TAGS:
            self._break()
        elif tag in _CELL_TAGS and self._line_has_text:
            self._trim()
            self._out.append("\t")
        if tag == "pre":
            self._pre += 1

    def handle_endtag(self, tag: str) -> None:
        if tag in _HIDDEN_TAGS:
            self._hidden = max(0, self._hidden - 1)
        elif tag in _BLOCK_TAGS:
            self._break()
        if tag == "pre":
            self._pre = max(0, self._pre - 1)

    def handle_data(self, data: str) -> None:
        if self._hidden:
            return
        if not self._pre:
            data = _HTML_SPACE.sub(" ", data)
            if not self._line_has_text or (self._out and self._out[-1] == "\t"):
                data = data.lstrip(" ")  # a line's or a cell's leading space
        if data:
            self._out.append(data)
            last_line = data.rsplit("\n", 1)[-1]
            self._line_has_text = bool(last_line.strip()) or (
                "\n" not in data and self._line_has_text
            )

    def _break(self) -> None:
        """End the line unless it is empty: nested blocks make one line end, not several."""
        if self._line_has_text:
            self._newline()

    def _newline(self) -> None:
        self._trim(" \t")
        self._out.append("\n")
        self._line_has_text = False

    def _trim(self, blanks: str = " ") -> None:
        """Drop the line's trailing blanks (a cell's last space, empty cells at a row's end),
        but in <pre>."""
        if self._pre:
            return
        while self._out and self._out[-1] != "\n" and not self._out[-1].strip(blanks):
            self._out.pop()
        if self._out:
            self._out[-1] = self._out[-1].rstrip(blanks)

    def text(self) -> str:
        return "".join(self._out).strip("\n")


# --- C-CDA ----------------------------------------------------------------------------------

_V3: Final = "{urn:hl7-org:v3}"
# CDA narrative block elements, read as the HTML elements they are rendered as (the others,
# content, linkHtml, sub, sup, footnote, renderMultiMedia, are inline: their text is kept).
_NARRATIVE_AS_HTML: Final = {
    "paragraph": "p",
    "list": "ul",
    "item": "li",
    "br": "br",
    **{tag: tag for tag in ("table", "caption", "thead", "tbody", "tfoot", "tr", "td", "th")},
}
# An HL7 v3 TS: YYYY[MM[DD[HH[MM[SS[.S]]]]]][+/-ZZZZ].
_TS: Final = re.compile(
    r"(\d{4})(?:(\d{2})(?:(\d{2})(?:(\d{2})(?:(\d{2})(?:(\d{2})(\.\d+)?)?)?)?)?)?([+-]\d{4})?"
)


def _cda(raw: bytes) -> _Read | None:
    """A C-CDA's text: each section's title (a "TITLE:" line) and narrative block, then a
    blank line, nested sections after their parent's text, in document order; coded entries
    are left out. Or the text of a nonXMLBody (plain, HTML or RTF; a PDF has none). None for
    XML that is no C-CDA, does not parse or declares entities, and for a C-CDA without text."""
    try:
        root = _parse_xml(raw, forbid_dtd=False, forbid_entities=True, forbid_external=True)
    except (SafeElementTree.ParseError, DefusedXmlException, ValueError, LookupError):
        return None
    if root.tag != f"{_V3}ClinicalDocument":
        return None
    body = root.find(f"{_V3}component/{_V3}structuredBody")
    if body is not None:
        text = _prepared("".join(_section_texts(body)))
    else:
        text = _non_xml_body(root.find(f"{_V3}component/{_V3}nonXMLBody/{_V3}text"))
    if text is None:
        return None
    code = root.find(f"{_V3}code")
    code_value = code.get("code", "").strip() if code is not None else ""
    type_code = (
        (code.get("codeSystem", ""), code_value) if code is not None and code_value else None
    )
    effective = root.find(f"{_V3}effectiveTime")
    time = _fhir_time(effective.get("value", "")) if effective is not None else None
    return _Read(text, type_code, time)


def _section_texts(body: Element) -> Iterator[str]:
    """Each section's text, a section before the sections nested in it (no recursion: a
    sender's nesting is not bounded)."""
    pending = list(reversed(body.findall(f"{_V3}component/{_V3}section")))
    while pending:
        section = pending.pop()
        title = section.find(f"{_V3}title")
        # (An element with no children is false: "is None", not truth, tells it is absent.)
        heading = "" if title is None else " ".join(_narrative(title).split()).rstrip(":").rstrip()
        narrative = section.find(f"{_V3}text")
        lines = _narrative(narrative) if narrative is not None else ""
        if heading or lines:
            yield (f"{heading}:\n" if heading else "") + (f"{lines}\n\n" if lines else "\n")
        pending.extend(reversed(section.findall(f"{_V3}component/{_V3}section")))


def _narrative(block: Element) -> str:
    """A narrative block as text, as html_to_text reads the HTML it is rendered as."""
    sink = _HtmlText()
    for event, value in _narrative_events(block):
        if event == "start":
            sink.handle_starttag(value, [])
        elif event == "end":
            sink.handle_endtag(value)
        else:
            sink.handle_data(value)
    return sink.text().strip()


def _narrative_events(top: Element) -> Iterator[tuple[str, str]]:
    """("start" | "end", HTML tag) and ("data", text) in document order, content marked
    revised="delete" left out; without recursion."""
    pending: list[tuple[Element, bool]] = [(top, False)]
    while pending:
        element, closing = pending.pop()
        local = element.tag.rpartition("}")[2] if isinstance(element.tag, str) else ""
        tag = _NARRATIVE_AS_HTML.get(local, "span")
        if not closing and element.get("revised") != "delete":
            yield "start", tag
            if element.text:
                yield "data", element.text
            pending.append((element, True))
            pending.extend((child, False) for child in reversed(element))
            continue
        if closing:
            yield "end", tag
        if element is not top and element.tail:
            yield "data", element.tail


def _non_xml_body(content: Element | None) -> str | None:
    """A nonXMLBody's text (an ED: TXT or B64, maybe gzipped); None for a reference, a PDF, an
    image, or another compression."""
    if content is None:
        return None
    media_type, charset = _content_type(
        f"{content.get('mediaType') or PLAIN}; charset={content.get('charset') or 'utf-8'}"
    )
    data = content.text or ""
    if (content.get("representation") or "TXT").strip().upper() != "B64":
        raw, charset = data.encode(), "utf-8"
    else:
        try:
            raw = base64.b64decode("".join(data.split()), validate=True)
        except (binascii.Error, ValueError):
            return None
    compression = (content.get("compression") or "").strip().upper()
    if compression not in ("", "GZ"):
        return None
    if raw.startswith(_GZIP_MAGIC):
        unpacked = _gunzip(raw)
        if unpacked is None:
            return None
        raw = unpacked
    return _text_of(raw, media_type, charset)


def _fhir_time(value: str) -> str | None:
    """An HL7 v3 TS written as a FHIR date or dateTime (20130607000000-0500 →
    2013-06-07T00:00:00-05:00), so that it is read as the record's other times are; None when
    it is no TS."""
    match = _TS.fullmatch(value.strip())
    if match is None:
        return None
    year, month, day, hour, minute, second, fraction, offset = match.groups()
    if hour is None:  # a date: FHIR gives it no zone
        return "-".join(part for part in (year, month, day) if part)
    zone = f"{offset[:3]}:{offset[3:]}" if offset else ""
    return f"{year}-{month}-{day}T{hour}:{minute or '00'}:{second or '00'}{fraction or ''}{zone}"
