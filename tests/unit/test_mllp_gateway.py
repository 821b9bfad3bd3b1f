"""The MLLP gateway's decisions, with a fake port: what is written where, and which ACK follows."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from functools import partial

import pytest

from concord.deadletters import Rejection
from concord.events.models import DeadLetter
from concord.events.raw import Headers
from concord.hl7v2 import er7
from concord.ingestion.gateway import MllpGateway, ack_for, error_location, sending_system
from concord.ingestion.hl7v2 import ingest_hl7v2, zones_from
from concord.ingestion.mllp import Hl7ErrorCode, Peer, build_ack, parse_ack

FAMILY = "Quorvatz"
VALID = (
    b"MSH|^~\\&|LAB-APP|GH|CONCORD|GH|20240301083000-0500||ADT^A08^ADT_A01|CTRL-1|P|2.5.1\r"
    b"EVN|A08|20240301082500-0500\r"
    b"PID|1||MRN-1^^^GH^MR||" + FAMILY.encode() + b"^Ann||19700512|F\r"
)


@dataclass
class FakePort:
    raw: list[tuple[bytes, bytes | None, Headers]] = field(default_factory=list)
    letters: list[DeadLetter] = field(default_factory=list)
    stall: bool = False

    async def publish_raw_hl7v2(
        self, *, message: bytes, key: bytes | None, headers: Headers
    ) -> None:
        if self.stall:
            await asyncio.sleep(10)
        self.raw.append((message, key, headers))

    async def publish_dead_letter(self, *, letter: DeadLetter) -> None:
        self.letters.append(letter)


def gateway(
    port: FakePort,
    *,
    source: str | None = None,
    zones: dict[str, str] | None = None,
    client_sources: dict[str, str] | None = None,
    source_from_msh: bool | None = None,
) -> MllpGateway:
    """Without a configured source, the source is read from MSH (a loopback listener's opt-in),
    which is what most of these tests are about."""
    ingest = partial(ingest_hl7v2, max_payload_bytes=100_000, zone_of=zones_from(zones or {}, None))
    if source_from_msh is None:
        source_from_msh = source is None and not client_sources
    return MllpGateway(
        port,
        ingest,
        source=source,
        client_sources=client_sources or {},
        source_from_msh=source_from_msh,
        write_timeout_seconds=0.2,
    )


@pytest.mark.asyncio
async def test_an_accepted_message_is_written_with_its_source_and_key_before_aa() -> None:
    port = FakePort()
    decision = await gateway(port).handle(VALID, "127.0.0.1:5000")
    assert decision.code == "AA"
    [(message, key, headers)] = port.raw
    assert message == VALID
    assert key == b"LAB-APP/PID/MRN-1"
    assert dict(headers) == {"source": b"LAB-APP", "received-via": b"mllp"}
    assert port.letters == []


@pytest.mark.asyncio
async def test_a_message_accepted_with_a_warning_is_written_and_answered_aa() -> None:
    """A missing EVN is a warning the ingestion stage records, not a reason to refuse."""
    port = FakePort()
    without_evn = VALID.replace(b"EVN|A08|20240301082500-0500\r", b"")
    assert (await gateway(port).handle(without_evn, "peer")).code == "AA"
    assert [message for message, _, _ in port.raw] == [without_evn] and port.letters == []


@pytest.mark.asyncio
async def test_a_configured_source_wins_over_msh_3() -> None:
    port = FakePort()
    assert (await gateway(port, source="lab-system").handle(VALID, "peer")).code == "AA"
    assert dict(port.raw[0][2])["source"] == b"lab-system"


@pytest.mark.asyncio
async def test_a_content_error_is_dead_lettered_then_answered_ae_with_the_location() -> None:
    port = FakePort()
    no_zone = VALID.replace(b"20240301082500-0500", b"20240301082500")
    decision = await gateway(port).handle(no_zone, "peer")
    assert decision.code == "AE"
    assert decision.error is not None
    assert decision.error.code == Hl7ErrorCode.DATA_TYPE_ERROR
    assert decision.error.location == "EVN^1^2"
    assert FAMILY not in decision.error.text
    [letter] = port.letters
    assert letter.reason_code == "HL7_TIME_ZONE_UNKNOWN"
    assert letter.original_value == no_zone
    assert letter.original_topic == "ehr.raw.hl7v2"
    assert letter.original_offset == -1  # never on the raw topic
    assert letter.original_key == b"LAB-APP/PID/MRN-1"
    assert port.raw == []


@pytest.mark.asyncio
async def test_the_same_message_passes_once_the_source_has_a_zone() -> None:
    port = FakePort()
    no_zone = VALID.replace(b"20240301082500-0500", b"20240301082500")
    assert (
        await gateway(port, zones={"LAB-APP": "America/Chicago"}).handle(no_zone, "p")
    ).code == "AA"


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("change", "code", "error"),
    [
        ((b"|2.5.1", b"|2.1"), "AR", Hl7ErrorCode.UNSUPPORTED_VERSION_ID),
        ((b"ADT^A08^ADT_A01", b"SIU^S12^SIU_S12"), "AR", Hl7ErrorCode.UNSUPPORTED_MESSAGE_TYPE),
        ((b"ADT^A08^ADT_A01", b"MDM^T01^MDM_T01"), "AR", Hl7ErrorCode.UNSUPPORTED_EVENT_CODE),
        ((b"ADT^A08^ADT_A01", b"ADT^A40^ADT_A39"), "AE", Hl7ErrorCode.SEGMENT_SEQUENCE_ERROR),
        ((b"|CTRL-1|", b"||"), "AE", Hl7ErrorCode.REQUIRED_FIELD_MISSING),
        ((b"MSH|^~\\&|LAB-APP|GH|", b"MSH|^~\\&|||"), "AR", Hl7ErrorCode.REQUIRED_FIELD_MISSING),
    ],
)
async def test_rejections_map_to_ar_or_ae_with_table_0357_codes(
    change: tuple[bytes, bytes], code: str, error: Hl7ErrorCode
) -> None:
    port = FakePort()
    decision = await gateway(port).handle(VALID.replace(*change), "peer")
    assert decision.code == code
    assert decision.error is not None and decision.error.code == error
    assert len(port.letters) == 1 and port.raw == []


def test_an_unsupported_trigger_of_a_known_type_is_an_unsupported_event() -> None:
    message = er7.parse(VALID.replace(b"ADT^A08", b"ORU^R30"))
    rejection = Rejection("HL7_UNSUPPORTED_MESSAGE_TYPE", "ORU^R30 is not ingested", "MSH-9")
    decision = ack_for(rejection, message)
    assert decision.error is not None
    assert decision.error.code == Hl7ErrorCode.UNSUPPORTED_EVENT_CODE


@pytest.mark.asyncio
async def test_a_write_that_does_not_finish_raises_so_the_sender_gets_ae() -> None:
    port = FakePort(stall=True)
    with pytest.raises(TimeoutError):
        await gateway(port).handle(VALID, "peer")


@pytest.mark.parametrize(
    ("ours", "erl"),
    [
        ("PID-3", "PID^1^3"),
        ("OBX[2]-5", "OBX^2^5"),
        ("OBX[2]-3.1", "OBX^2^3^^1"),
        ("EVN", "EVN^1"),
        (None, None),
        ("Patient.name", None),
    ],
)
def test_error_locations_in_hl7_form(ours: str | None, erl: str | None) -> None:
    assert error_location(ours) == erl


def test_the_sending_system_falls_back_to_the_facility() -> None:
    message = er7.parse(VALID.replace(b"|LAB-APP|GH|", b"||GH|"))
    assert sending_system(message, None) == "GH"
    assert sending_system(None, None) is None
    assert sending_system(None, "configured") == "configured"


@pytest.mark.asyncio
async def test_an_unreadable_message_is_rejected_as_malformed_not_as_sourceless() -> None:
    port = FakePort()
    garbled = b"MSH|^~|" + VALID[7:]  # too few encoding characters: no MSH to read
    decision = await gateway(port).handle(garbled, "peer")
    assert decision.code == "AR"
    [letter] = port.letters
    assert letter.reason_code == "HL7_MALFORMED"


@pytest.mark.asyncio
async def test_a_core_that_raises_dead_letters_the_message_and_answers_ae_207() -> None:
    port = FakePort()

    def broken(raw: object) -> list[object]:
        raise ValueError(f"bad {FAMILY}")

    failing = MllpGateway(port, broken, source="LAB-APP", write_timeout_seconds=0.2)  # type: ignore[arg-type]
    decision = await failing.handle(VALID, "peer")
    assert decision.code == "AE"
    assert decision.error is not None
    assert decision.error.code == Hl7ErrorCode.APPLICATION_INTERNAL_ERROR
    assert FAMILY not in decision.error.text
    [letter] = port.letters
    assert letter.reason_code == "INGESTION_FAILED" and FAMILY not in letter.reason


# --- a sender's junk is answered in HL7 terms ---------------------------------------------------


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("change", "field", "location"),
    [
        ((b"|LAB-APP|GH|", b"|LAB\x07\x01APP|GH|"), "MSH-3.1 (sending application)", "MSH^1^3^^1"),
        (
            (b"|LAB-APP|GH|", b"|" + b"A" * 129 + b"|GH|"),
            "MSH-3.1 (sending application)",
            "MSH^1^3^^1",
        ),
        ((b"|LAB-APP|GH|", b"||G\x00H|"), "MSH-4.1 (sending facility)", "MSH^1^4^^1"),
    ],
)
async def test_junk_where_the_source_is_read_is_rejected_naming_the_msh_field(
    change: tuple[bytes, bytes], field: str, location: str
) -> None:
    """Not a Kafka "'source' header" (the sender never sees one) and not an empty ERR-2."""
    port = FakePort()
    decision = await gateway(port).handle(VALID.replace(*change), "peer")
    assert decision.code == "AR"
    assert decision.error is not None
    assert decision.error.code == Hl7ErrorCode.DATA_TYPE_ERROR
    assert decision.error.text.startswith(field)
    assert "header" not in decision.error.text and "Kafka" not in decision.error.text
    assert decision.error.location == location
    [letter] = port.letters
    assert letter.reason_code == "INVALID_SOURCE_HEADER"
    assert letter.reason == decision.error.text
    assert port.raw == []


@pytest.mark.asyncio
async def test_an_invalid_configured_source_is_named_as_the_listeners_setting() -> None:
    port = FakePort()
    decision = await gateway(port, source="lab\x01system").handle(VALID, "peer")
    assert decision.code == "AR"
    assert decision.error is not None
    assert "CONCORD_MLLP_SOURCE" in decision.error.text
    assert "header" not in decision.error.text
    assert decision.error.location is None  # nothing in the message is wrong


@pytest.mark.asyncio
async def test_a_blank_sending_application_falls_back_to_the_facility() -> None:
    port = FakePort()
    decision = await gateway(port).handle(VALID.replace(b"|LAB-APP|GH|", b"|  |GH|"), "peer")
    assert decision.code == "AA"
    assert dict(port.raw[0][2])["source"] == b"GH"


@pytest.mark.asyncio
async def test_no_sending_application_or_facility_is_a_required_field_missing_at_msh_3() -> None:
    port = FakePort()
    decision = await gateway(port).handle(VALID.replace(b"|LAB-APP|GH|", b"| | |"), "peer")
    assert decision.code == "AR"
    assert decision.error is not None
    assert decision.error.code == Hl7ErrorCode.REQUIRED_FIELD_MISSING
    assert decision.error.location == "MSH^1^3"
    assert "MSH-3" in decision.error.text and "MSH-4" in decision.error.text
    assert "header" not in decision.error.text


@pytest.mark.asyncio
async def test_a_message_in_no_readable_character_set_is_located_at_msh_18() -> None:
    port = FakePort()
    decision = await gateway(port).handle(VALID.replace(FAMILY.encode(), b"\xff\xfe"), "peer")
    assert decision.code == "AR"
    assert decision.error is not None
    assert decision.error.text.startswith("the message is not UTF-8")
    assert decision.error.location == "MSH^1^18"


@pytest.mark.asyncio
@pytest.mark.parametrize("version", [b"2.5.1", b"2.3"])
async def test_the_sender_reads_the_reason_and_its_location_in_the_ack(version: bytes) -> None:
    """v2.5+: ERR-2 and ERR-8; before v2.5: ERR-1 and MSA-3 (build_ack's layout)."""
    junk = VALID.replace(b"|LAB-APP|", b"|\x1bLAB|").replace(b"|2.5.1", b"|" + version)
    decision = await gateway(FakePort()).handle(junk, "peer")
    ack = parse_ack(build_ack(junk, decision))
    assert ack.code == "AR" and ack.control_id == "CTRL-1"
    assert ack.error is not None and ack.error.startswith("MSH-3.1 (sending application)")
    assert ack.location is not None and ack.location.startswith("MSH^1^3")


# --- who may send as which source -------------------------------------------------------------

LAB_ENGINE = Peer("10.0.0.7:40001", common_name="lab-engine", alt_names=("lab.example.org",))
CLIENT_SOURCES = {"lab-engine": "lab-system", "ehr.example.org": "hospital-ehr"}
# The lab's connection, sending a merge that claims the hospital EHR as its sending application.
CLAIMS_THE_EHR = (
    VALID.replace(b"|LAB-APP|GH|", b"|hospital-ehr|GH|").replace(
        b"ADT^A08^ADT_A01", b"ADT^A40^ADT_A39"
    )
    + b"MRG|MRN-0^^^GH^MR\r"
)


def recorded_source(port: FakePort) -> bytes:
    [(_, _, headers)] = port.raw
    return dict(headers)["source"]


@pytest.mark.asyncio
async def test_without_a_configured_source_a_message_is_refused_not_recorded_as_its_msh_3() -> None:
    """The default: nothing the sender writes decides the source. Nothing is written either
    (not even a dead letter: the connection is entitled to no topic)."""
    port = FakePort()
    ingest = partial(ingest_hl7v2, max_payload_bytes=100_000)
    decision = await MllpGateway(port, ingest).handle(VALID, Peer("10.0.0.9:5000"))
    assert decision.code == "AR"
    assert decision.error is not None
    assert decision.error.code == Hl7ErrorCode.APPLICATION_INTERNAL_ERROR
    assert "not authorised" in decision.error.text
    assert "CONCORD_MLLP_SOURCE" in decision.error.text
    assert port.raw == [] and port.letters == []


@pytest.mark.asyncio
async def test_the_source_comes_from_the_client_certificate_not_from_msh_3() -> None:
    port = FakePort()
    decision = await gateway(port, client_sources=CLIENT_SOURCES).handle(VALID, LAB_ENGINE)
    assert decision.code == "AA"
    assert recorded_source(port) == b"lab-system"
    assert port.raw[0][1] == b"lab-system/PID/MRN-1"  # keyed by the entitled source too


@pytest.mark.asyncio
async def test_a_certificate_is_matched_by_a_subject_alternative_name_too() -> None:
    port = FakePort()
    ehr = Peer("10.0.0.8:1", common_name="interface-7", alt_names=("ehr.example.org",))
    assert (await gateway(port, client_sources=CLIENT_SOURCES).handle(VALID, ehr)).code == "AA"
    assert recorded_source(port) == b"hospital-ehr"


@pytest.mark.asyncio
async def test_a_merge_claiming_another_source_is_recorded_as_the_connections_own(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """MSH-3 says hospital-ehr; the certificate says lab-system: the merge is the lab's. The
    sender hears AA (its message is kept), the log says so once per connection, without the
    value it claimed."""
    port = FakePort()
    lab = gateway(port, client_sources=CLIENT_SOURCES)
    with caplog.at_level(logging.WARNING, logger="concord.ingestion.gateway"):
        for _ in range(3):
            assert (await lab.handle(CLAIMS_THE_EHR, LAB_ENGINE)).code == "AA"
    assert [dict(headers)["source"] for _, _, headers in port.raw] == [b"lab-system"] * 3
    [warning] = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert "lab-system" in warning.getMessage() and "CN=lab-engine" in warning.getMessage()
    assert "hospital-ehr" not in warning.getMessage()


@pytest.mark.asyncio
async def test_the_listeners_source_applies_to_a_certificate_it_does_not_list() -> None:
    port = FakePort()
    other = Peer("10.0.0.5:2", common_name="unlisted-engine")
    listener = gateway(port, source="interfaces", client_sources=CLIENT_SOURCES)
    assert (await listener.handle(CLAIMS_THE_EHR, other)).code == "AA"
    assert (await listener.handle(VALID, LAB_ENGINE)).code == "AA"
    assert [dict(headers)["source"] for _, _, headers in port.raw] == [
        b"interfaces",
        b"lab-system",
    ]


@pytest.mark.asyncio
async def test_an_unlisted_certificate_without_a_listener_source_is_refused() -> None:
    port = FakePort()
    other = Peer("10.0.0.5:2", common_name="unlisted-engine")
    decision = await gateway(port, client_sources=CLIENT_SOURCES).handle(VALID, other)
    assert decision.code == "AR"
    assert decision.error is not None and "not authorised" in decision.error.text
    assert port.raw == [] and port.letters == []


@pytest.mark.asyncio
async def test_a_certificate_whose_names_map_to_two_sources_is_refused() -> None:
    port = FakePort()
    both = Peer("10.0.0.5:3", common_name="lab-engine", alt_names=("ehr.example.org",))
    decision = await gateway(port, client_sources=CLIENT_SOURCES).handle(VALID, both)
    assert decision.code == "AR"
    assert decision.error is not None
    assert "CONCORD_MLLP_CLIENT_SOURCES" in decision.error.text
    assert port.raw == [] and port.letters == []


@pytest.mark.asyncio
async def test_msh_names_the_source_only_when_the_listener_opts_in() -> None:
    port = FakePort()
    assert (await gateway(port, source_from_msh=True).handle(VALID, Peer("127.0.0.1:9"))).code == (
        "AA"
    )
    assert recorded_source(port) == b"LAB-APP"
