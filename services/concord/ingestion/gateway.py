"""The MLLP gateway: HL7 v2 over MLLP into ehr.raw.hl7v2, acknowledged only once Kafka has it.

The source a message is recorded as is the connection's, from the listener's configuration:
the source its verified client certificate is mapped to (``client_sources``), else the
listener's own (``source``). What the message says (MSH-3, MSH-4) never decides it: a message
whose MSH-3 names another system is recorded as the connection's source all the same (and the
log says so once per connection), and a connection with no source is answered AR and nothing
is written. Only ``source_from_msh``, for a loopback listener in development, reads MSH-3.

Each message is checked with the same ingestion core the stage runs, so the sender hears what
is wrong while it still has the message:

* accepted: the message is produced to ``ehr.raw.hl7v2`` (header ``source``, keyed by source
  and patient like ``concord publish``) and AA is sent only after the broker acknowledged it
  (acks=all). The ingestion stage ingests and de-duplicates it from there, so a message the
  sender re-sends because an AA was lost is not emitted twice.
* rejected: the message goes to ``concord.deadletter`` with its reason code and location (so
  nothing is lost, and ``concord deadletter replay`` can re-submit it after a fix), then the
  sender gets AR (a header it must not resend unchanged: version, type, framing) or AE (a
  content error) with an ERR segment built from the same reason.
* Kafka unreachable or slow: the write raises or times out, the listener answers AE 207 and
  the sender keeps the message and retries.

The dead letter of a message that never reached a raw topic has original offset -1.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Protocol

from concord import metrics
from concord.deadletters import Rejection, dead_letter
from concord.events import codec
from concord.events.models import DeadLetter, IngestedRecord
from concord.events.raw import Headers, RawEvent
from concord.hl7v2 import er7
from concord.ingestion.common import MAX_SOURCE_LENGTH, SOURCE_HEADER
from concord.ingestion.hl7v2 import MESSAGE_TYPES
from concord.ingestion.mllp import AckDecision, Hl7ErrorCode, Peer
from concord.publishing import hl7_key
from concord.runtime.stage import core_failure
from concord.topics import DEADLETTER, RAW_HL7V2

if TYPE_CHECKING:
    from aiokafka import AIOKafkaProducer

log = logging.getLogger(__name__)

STAGE = "mllp"
TRANSPORT_HEADER = "received-via"
NOT_ON_A_TOPIC = -1

_NO_SOURCE = Rejection(
    "MISSING_SOURCE_HEADER",
    "MSH-3 and MSH-4 are empty and the listener has no configured source",
    location="MSH-3",
)
# Where the source is read from (see sending_system), as the sender knows those fields.
_SOURCE_FIELDS = {3: "sending application", 4: "sending facility"}

# The settings that give a connection its source, as the sender's ERR text names them.
_LISTENER_SOURCE = "CONCORD_MLLP_SOURCE"
_CLIENT_SOURCES = "CONCORD_MLLP_CLIENT_SOURCES"
# A connection entitled to no source: AR, and nothing written anywhere (not even a dead letter:
# what an unidentified sender writes has no place on a topic). Table 0357 has no code for "not
# authorised"; 207 with the text is the nearest.
_NOT_AUTHORISED = AckDecision.application_reject(
    Hl7ErrorCode.APPLICATION_INTERNAL_ERROR,
    f"this connection is not authorised to send: no source is configured for it "
    f"({_LISTENER_SOURCE}, or its client certificate in {_CLIENT_SOURCES})",
)
_AMBIGUOUS = AckDecision.application_reject(
    Hl7ErrorCode.APPLICATION_INTERNAL_ERROR,
    f"this connection is not authorised to send: its client certificate's names map to "
    f"different sources in {_CLIENT_SOURCES}",
)
# Connections already warned about (by address, which names one TCP connection); forgotten
# wholesale past this many so that a stream of connections cannot grow it.
_WARNED_PEERS = 4096

Ingest = Callable[[RawEvent], list[IngestedRecord] | Rejection]

# Rejections the sender cannot fix by correcting data: HL7 says AR for these.
_REJECTED = {
    "HL7_MALFORMED": Hl7ErrorCode.DATA_TYPE_ERROR,
    "HL7_UNSUPPORTED_VERSION": Hl7ErrorCode.UNSUPPORTED_VERSION_ID,
    "HL7_UNSUPPORTED_MESSAGE_TYPE": Hl7ErrorCode.UNSUPPORTED_MESSAGE_TYPE,
    "PAYLOAD_TOO_LARGE": Hl7ErrorCode.APPLICATION_INTERNAL_ERROR,
    "MISSING_SOURCE_HEADER": Hl7ErrorCode.REQUIRED_FIELD_MISSING,
    "INVALID_SOURCE_HEADER": Hl7ErrorCode.DATA_TYPE_ERROR,
}
_CONTENT_ERRORS = {
    "INVALID_CODE": Hl7ErrorCode.TABLE_VALUE_NOT_FOUND,
    "CODE_WITHOUT_SYSTEM": Hl7ErrorCode.REQUIRED_FIELD_MISSING,
    "HL7_TIME_ZONE_UNKNOWN": Hl7ErrorCode.DATA_TYPE_ERROR,
    "INGESTION_FAILED": Hl7ErrorCode.APPLICATION_INTERNAL_ERROR,
}
# "PID[2]-3.1" (ours) -> segment, sequence, field, component for an HL7 ERL.
_LOCATION = re.compile(r"^([A-Z][A-Z0-9]{2})(?:\[(\d+)\])?(?:-(\d+)(?:\.(\d+))?)?$")


def error_location(location: str | None) -> str | None:
    """Our rejection location as an HL7 error location (ERR-2), e.g. ``PID^1^3^^1``."""
    match = _LOCATION.match(location or "")
    if match is None:
        return None
    segment, sequence, field, component = match.groups()
    parts = [segment, sequence or "1"]
    if field:
        parts.append(field)
        if component:
            parts += ["", component]
    return "^".join(parts)


def ack_for(rejection: Rejection, message: er7.Er7Message | None) -> AckDecision:
    """The AE/AR answer, with table 0357's code, for what the ingestion core rejected."""
    location = error_location(rejection.location)
    code = _REJECTED.get(rejection.reason_code)
    if code is not None:
        if rejection.reason_code == "HL7_UNSUPPORTED_MESSAGE_TYPE" and _known_type(message):
            code = Hl7ErrorCode.UNSUPPORTED_EVENT_CODE
        return AckDecision.application_reject(code, rejection.reason, location)
    code = _CONTENT_ERRORS.get(rejection.reason_code)
    if code is None:  # HL7_INVALID: a segment or a field
        if location is not None and location.count("^") == 1:
            code = Hl7ErrorCode.SEGMENT_SEQUENCE_ERROR  # 0357: "or required segments missing"
        elif "empty" in rejection.reason or "holds no" in rejection.reason:
            code = Hl7ErrorCode.REQUIRED_FIELD_MISSING
        else:
            code = Hl7ErrorCode.DATA_TYPE_ERROR
    return AckDecision.application_error(code, rejection.reason, location)


def _known_type(message: er7.Er7Message | None) -> bool:
    return message is not None and message.msh.value(9, 1) in MESSAGE_TYPES


def sending_system(message: er7.Er7Message | None, configured: str | None) -> str | None:
    """The source a message is from: the listener's configured one, else MSH-3, else MSH-4."""
    return _sending_system(message, configured)[0]


def _sending_system(
    message: er7.Er7Message | None, configured: str | None
) -> tuple[str | None, int | None]:
    """The source and the MSH field it was read from (None for the configured one). A blank
    field counts as empty: the facility is read when the application is blank."""
    if configured or message is None:
        return configured, None
    for field in _SOURCE_FIELDS:
        value = message.msh.value(field, 1).strip()
        if value:
            return value, field
    return None, None


def _in_hl7_terms(
    rejection: Rejection, source_field: int | None, setting: str = _LISTENER_SOURCE
) -> Rejection:
    """The ingestion core checks a Kafka record's 'source' header; an MLLP sender sent none,
    so say which MSH field (or the listener's setting) the source came from instead."""
    if rejection.reason_code == "MISSING_SOURCE_HEADER":
        return _NO_SOURCE
    if rejection.reason_code != "INVALID_SOURCE_HEADER":
        return rejection
    rule = f"printable text of 1-{MAX_SOURCE_LENGTH} characters"
    if source_field is None:
        reason = f"the listener's configured source ({setting}) is not {rule}"
        return Rejection(rejection.reason_code, reason)
    location = f"MSH-{source_field}.1"
    reason = (
        f"{location} ({_SOURCE_FIELDS[source_field]}) names the sending system and must be {rule}"
    )
    return Rejection(rejection.reason_code, reason, location=location)


class RawHl7Port(Protocol):
    """Where the gateway writes; each call returns once the broker has acknowledged."""

    async def publish_raw_hl7v2(
        self, *, message: bytes, key: bytes | None, headers: Headers
    ) -> None:
        """Write an accepted message to ehr.raw.hl7v2."""

    async def publish_dead_letter(self, *, letter: DeadLetter) -> None:
        """Write a rejected message, with why, to concord.deadletter."""


class MllpGateway:
    """The listener's handle: check a message, write it where it belongs, then decide the ACK.

    ``source`` is the listener's source, ``client_sources`` maps a verified client
    certificate's names (subject CN, subjectAltName) to a source and wins over it;
    ``source_from_msh`` lets a connection with neither name its own in MSH-3 (else MSH-4),
    which only a loopback listener may do (``MllpSettings.listener_problem``). With none of
    them, every message is refused.
    """

    def __init__(
        self,
        port: RawHl7Port,
        ingest: Ingest,
        *,
        source: str | None = None,
        client_sources: Mapping[str, str] | None = None,
        source_from_msh: bool = False,
        write_timeout_seconds: float = 10.0,
    ) -> None:
        self.port = port
        self.ingest = ingest
        self.source = source
        self.client_sources = dict(client_sources or {})
        self.source_from_msh = source_from_msh
        self.write_timeout_seconds = write_timeout_seconds
        self._warned: set[tuple[str, str]] = set()

    def entitled_source(self, peer: Peer) -> tuple[str, str] | AckDecision | None:
        """(source, the setting that gives it) for a connection; None when the message is
        to name it (source_from_msh); an AR decision when the connection may not send."""
        mapped = {self.client_sources[n] for n in peer.identities if n in self.client_sources}
        if len(mapped) > 1:
            return _AMBIGUOUS
        if mapped:
            return mapped.pop(), _CLIENT_SOURCES
        if self.source:
            return self.source, _LISTENER_SOURCE
        return None if self.source_from_msh else _NOT_AUTHORISED

    async def handle(self, message: bytes, peer: Peer | str) -> AckDecision:
        """The ACK for one message; ``peer`` as a bare address string has no certificate."""
        peer = peer if isinstance(peer, Peer) else Peer(peer)
        entitled = self.entitled_source(peer)
        if isinstance(entitled, AckDecision):
            self._warn_once(peer, "refused", "MLLP connection from %s refused: %s", peer,
                            entitled.error.text if entitled.error else "")  # fmt: skip
            return entitled
        unreadable: Rejection | None = None
        try:
            parsed: er7.Er7Message | None = er7.parse(message)
        except er7.Er7Error as exc:
            # Said before the source is looked for, which an unreadable MSH cannot give.
            parsed = None
            unreadable = Rejection("HL7_MALFORMED", exc.reason, location=exc.location)
        setting = _LISTENER_SOURCE
        if entitled is None:
            source, source_field = _sending_system(parsed, None)
        else:
            (source, setting), source_field = entitled, None
            self._note_claim(parsed, source, peer)
        headers: Headers = ((TRANSPORT_HEADER, b"mllp"),)
        key = None
        if source is not None:
            headers = ((SOURCE_HEADER, source.encode()), *headers)
            key = hl7_key(source, parsed)
        received = datetime.now(UTC)
        raw = RawEvent(RAW_HL7V2, NOT_ON_A_TOPIC, NOT_ON_A_TOPIC, key, message, headers, received)
        outcome = unreadable or self._ingest(raw)
        # A timeout raises, and the listener answers AE 207: the sender keeps the message.
        async with asyncio.timeout(self.write_timeout_seconds):
            if isinstance(outcome, Rejection):
                outcome = _in_hl7_terms(outcome, source_field, setting)
                letter = dead_letter(raw, outcome, stage=STAGE, at=datetime.now(UTC))
                await self.port.publish_dead_letter(letter=letter)
                return ack_for(outcome, parsed)
            await self.port.publish_raw_hl7v2(message=message, key=key, headers=headers)
        return AckDecision.accept()

    def _note_claim(self, parsed: er7.Er7Message | None, source: str, peer: Peer) -> None:
        """The message is recorded as `source` whatever it claims; when MSH-3 (else MSH-4)
        names another system, say so once per connection. The claimed name stays out of the
        log: it is whatever the sender wrote."""
        claimed, _ = _sending_system(parsed, None)
        if claimed is not None and claimed != source:
            self._warn_once(
                peer, "claim",
                "MLLP connection from %s: its messages' MSH-3/MSH-4 name another sending system "
                "than its configured source; they are recorded as %r",
                peer, source,
            )  # fmt: skip

    def _warn_once(self, peer: Peer, kind: str, text: str, *args: object) -> None:
        # Once per connection: a sender keeps one connection open for many messages.
        key = (kind, peer.address)
        if key in self._warned:
            return
        if len(self._warned) >= _WARNED_PEERS:
            self._warned.clear()
        self._warned.add(key)
        log.warning(text, *args)

    def _ingest(self, raw: RawEvent) -> list[IngestedRecord] | Rejection:
        try:
            return self.ingest(raw)
        except Exception as exc:  # as in the stage: dead-lettered, not retried forever
            return core_failure(exc, raw, stage=STAGE, reason_code="INGESTION_FAILED")


class KafkaRawHl7Port:
    """RawHl7Port on an aiokafka producer (acks=all): each write awaits its acknowledgement."""

    def __init__(self, producer: AIOKafkaProducer) -> None:
        self.producer = producer

    async def publish_raw_hl7v2(
        self, *, message: bytes, key: bytes | None, headers: Headers
    ) -> None:
        await self._send(RAW_HL7V2, message, key, headers)

    async def publish_dead_letter(self, *, letter: DeadLetter) -> None:
        await self._send(DEADLETTER, codec.DEAD_LETTER.encode(letter), letter.original_key, ())
        metrics.EVENTS_DEADLETTERED.labels(STAGE, letter.reason_code).inc()

    async def _send(self, topic: str, value: bytes, key: bytes | None, headers: Headers) -> None:
        delivery = await self.producer.send(topic, value, key=key, headers=list(headers))
        await delivery
        metrics.EVENTS_PRODUCED.labels(STAGE, topic).inc()
