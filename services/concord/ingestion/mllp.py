"""MLLP transport for HL7 v2: a listener that acknowledges each message, and a sending client.

A frame is ``0x0B`` + message + ``0x1C 0x0D``. The listener hands each message (without the
framing) to an injected ``handle`` coroutine and answers with the ACK built from the
``AckDecision`` it returns. The handle is where the caller validates the message and writes it
to Kafka; it must return AA only after Kafka has acknowledged the record, because the sender
deletes its copy when it reads AA. This module imports nothing from Kafka.

Why our own framing instead of ``hl7.mllp`` (python-hl7 0.4.5, installed): its
``MLLPStreamReader.readblock`` reads up to ``0x1C 0x0D`` and then insists the block starts with
``0x0B``. Measured on 0.4.5 (feeding the reader directly):

* junk before a frame (``b"junk" + frame``) raises ``InvalidBlockError`` and the frame after the
  junk is consumed with it, so a valid message is lost rather than the junk discarded;
* an oversize frame raises ``ValueError`` once per buffer that passes the limit while the frame
  is still arriving, then ``InvalidBlockError`` for its tail: a 5 KB frame with a 1 KB limit,
  arriving in 700-byte reads, gave four exceptions, and its MSH is already thrown away, so
  there is neither one clear event to answer with a NAK nor the control id to put in it;
* ``readmessage`` runs the full ``hl7.parse`` (measured: ~160 us for 240 bytes, ~7 ms for 9 KB),
  and ``start_hl7_server`` creates connection tasks without keeping a reference to them.

Coalesced and partial reads it handles (it is an asyncio ``StreamReader``), but the rest would
need as much code around it as the framer below, which is a small state machine with no I/O
(``MllpFramer``) and is what both the listener and the client use. Only MSH is read for the
ACK, with ``bytes.split``.

ACK layout (``build_ack``): MSH mirrors the message's encoding characters, swaps sender and
receiver, keeps MSH-11 and MSH-12, MSH-9 is ``ACK^<trigger>^ACK`` (``ACK^<trigger>`` before
v2.3.1, which had no message structure component). On AE/AR, for v2.5 and later: ERR-2 the
location, ERR-3 ``<code>^<table 0357 text>^HL70357``, ERR-4 ``E``, ERR-8 the specific text. Before
v2.5 ERR has only ERR-1 (``segment^sequence^field^code&text&HL70357``), so the specific text
goes to MSA-3, where receivers of those versions look for it.
"""

from __future__ import annotations

import asyncio
import logging
import re
import ssl as ssl_module
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from contextlib import suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import IntEnum
from typing import Any, Literal, Self

from concord import metrics
from concord.config import DEFAULT_MLLP_MAX_FRAME_BYTES, MllpSettings, plaintext_exposure
from concord.hl7v2 import er7

log = logging.getLogger(__name__)

START_BLOCK = b"\x0b"
END_BLOCK = b"\x1c\x0d"

_VT = 0x0B
_FS = 0x1C
_CR = 0x0D
_READ_BYTES = 64 * 1024
# Enough of an oversize frame to read its MSH for the NAK; the rest is dropped as it arrives.
_HEAD_BYTES = 4096
_MAX_ERROR_TEXT = 250
_CLOSE_TIMEOUT_SECONDS = 5.0

# --- HL7 table 0357 and ACK decisions ---------------------------------------------------------


class Hl7ErrorCode(IntEnum):
    """HL7 table 0357, message error condition codes (ERR-3)."""

    SEGMENT_SEQUENCE_ERROR = 100
    REQUIRED_FIELD_MISSING = 101
    DATA_TYPE_ERROR = 102
    TABLE_VALUE_NOT_FOUND = 103
    VALUE_TOO_LONG = 104
    UNSUPPORTED_MESSAGE_TYPE = 200
    UNSUPPORTED_EVENT_CODE = 201
    UNSUPPORTED_PROCESSING_ID = 202
    UNSUPPORTED_VERSION_ID = 203
    UNKNOWN_KEY_IDENTIFIER = 204
    DUPLICATE_KEY_IDENTIFIER = 205
    APPLICATION_RECORD_LOCKED = 206
    APPLICATION_INTERNAL_ERROR = 207

    @property
    def text(self) -> str:
        """The table's own wording, e.g. "Required field missing"."""
        return self.name.replace("_", " ").capitalize()


AckCode = Literal["AA", "AE", "AR"]


@dataclass(frozen=True, slots=True)
class AckError:
    """What is wrong with a message, for the ERR segment.

    ``text`` names fields and rules, never values: it travels back to the sender and into logs,
    so it must not carry message content (PHI). ``location`` is an HL7 error location with
    ``^`` between components, e.g. ``PID^1^3`` (segment, sequence, field[, repetition,
    component, subcomponent]); ``^`` is replaced by the message's own component separator.
    """

    code: int
    text: str
    location: str | None = None


@dataclass(frozen=True, slots=True)
class AckDecision:
    """The answer to one message: AA (accepted, durably), AE (error) or AR (rejected)."""

    code: AckCode
    error: AckError | None = None

    def __post_init__(self) -> None:
        if self.code not in ("AA", "AE", "AR"):
            raise ValueError(f"ACK code must be AA, AE or AR, not {self.code!r}")
        if self.code == "AA" and self.error is not None:
            raise ValueError("an AA decision carries no error")

    @classmethod
    def accept(cls) -> AckDecision:
        return cls("AA")

    @classmethod
    def application_error(cls, code: int, text: str, location: str | None = None) -> AckDecision:
        return cls("AE", AckError(code, text, location))

    @classmethod
    def application_reject(cls, code: int, text: str, location: str | None = None) -> AckDecision:
        return cls("AR", AckError(code, text, location))


_GENERIC_ERROR = AckError(Hl7ErrorCode.APPLICATION_INTERNAL_ERROR, "message not accepted")
_HANDLE_FAILED = AckDecision.application_error(
    Hl7ErrorCode.APPLICATION_INTERNAL_ERROR, "internal error while accepting the message"
)
# A frame whose MSH cannot be read: the sender is told what is wrong in HL7 terms, and where.
_NOT_HL7 = AckDecision.application_reject(
    Hl7ErrorCode.SEGMENT_SEQUENCE_ERROR,
    "not an HL7 v2 message: the frame does not begin with an MSH segment",
    "MSH^1",
)
_NO_SEPARATORS = AckDecision.application_reject(
    Hl7ErrorCode.DATA_TYPE_ERROR,
    "MSH-1 and MSH-2 do not define five distinct separators",
    "MSH^1^2",
)

# --- MSH reading (only what the ACK needs; no full parse) ---------------------------------------

_SEGMENT_END = re.compile(rb"[\r\n]")
_LEADING_SPACE = b" \t\r\n"
_DEFAULT_FIELD_SEPARATOR = b"|"
_DEFAULT_ENCODING = b"^~\\&"
_DEFAULT_VERSION = b"2.5"


@dataclass(frozen=True, slots=True)
class _Msh:
    separator: bytes
    encoding: bytes
    fields: list[bytes]  # fields[0] is b"MSH", so fields[n - 1] is MSH-n for n >= 2

    def get(self, number: int) -> bytes:
        index = number - 1
        return self.fields[index] if index < len(self.fields) else b""

    @property
    def component(self) -> bytes:
        return self.encoding[0:1]

    @property
    def escape(self) -> bytes:
        return self.encoding[2:3]

    def version(self) -> tuple[int, ...]:
        return _version_tuple(self.get(12).split(self.component)[0])


def _read_msh(message: bytes) -> _Msh | None:
    """MSH's separators and fields, or None when the message does not start with a usable MSH."""
    start = 0
    while start < len(message) and message[start] in _LEADING_SPACE:
        start += 1
    if message[start : start + 3] != b"MSH" or len(message) - start < 8:
        return None
    separator = message[start + 3 : start + 4]
    end = _SEGMENT_END.search(message, start)
    segment = message[start : end.start() if end else len(message)]
    fields = segment.split(separator)
    encoding = fields[1]
    # The same rule as ingestion's reader, so the listener refuses exactly what it would.
    if er7.separators_of(separator.decode("latin-1"), encoding.decode("latin-1")) is None:
        return None
    return _Msh(separator, encoding, fields)


def _unreadable(message: bytes) -> AckDecision:
    """Why `_read_msh` found no usable MSH: none at all, or one whose separators are unusable."""
    return _NO_SEPARATORS if message.lstrip(_LEADING_SPACE).startswith(b"MSH") else _NOT_HL7


def _version_tuple(version: bytes) -> tuple[int, ...]:
    parts: list[int] = []
    for part in version.split(b"."):
        if not part.strip().isdigit():
            break
        parts.append(int(part))
    return tuple(parts) or (2, 5)


# --- ACK building -------------------------------------------------------------------------------


def _escape(text: str, msh: _Msh) -> bytes:
    """Our own ASCII text, safe inside a field: separators escaped, control characters dropped."""
    escape = msh.escape.decode("latin-1")
    separators = msh.encoding.decode("latin-1")
    replacements = {
        escape: f"{escape}E{escape}",
        msh.separator.decode("latin-1"): f"{escape}F{escape}",
        separators[0]: f"{escape}S{escape}",
        separators[1]: f"{escape}R{escape}",
        separators[3]: f"{escape}T{escape}",
    }
    if len(separators) > 4:
        replacements[separators[4]] = f"{escape}P{escape}"
    out: list[str] = []
    for char in text[:_MAX_ERROR_TEXT]:
        if char in replacements:
            out.append(replacements[char])
        elif char.isascii() and char.isprintable():
            out.append(char)
        else:
            out.append(" " if char.isspace() else "?")
    return "".join(out).encode("ascii")


def _error_name(code: int) -> str:
    try:
        return Hl7ErrorCode(code).text
    except ValueError:
        return ""


def _location(error: AckError, msh: _Msh) -> list[bytes]:
    if not error.location:
        return []
    return [_escape(part, msh) for part in error.location.split("^")]


def _err_segment(error: AckError, msh: _Msh, modern: bool) -> bytes:
    sep, comp = msh.separator, msh.component
    code = str(error.code).encode("ascii")
    name = _escape(_error_name(error.code), msh)
    location = _location(error, msh)
    if modern:
        err3 = comp.join([code, name, b"HL70357"])
        # ERR-1 (deprecated) empty, ERR-2 location, ERR-3 code, ERR-4 severity, ERR-8 text.
        text = _escape(error.text, msh)
        return sep.join([b"ERR", b"", comp.join(location), err3, b"E", b"", b"", b"", text])
    # ERR-1 (ELD): segment ^ sequence ^ field ^ code & text & table.
    subcomponent = msh.encoding[3:4]
    eld = [*location[:3], *[b""] * (3 - len(location[:3]))]
    eld.append(subcomponent.join([code, name, b"HL70357"]))
    return sep.join([b"ERR", comp.join(eld)])


def _new_control_id() -> bytes:
    # MSH-10 is at most 20 characters up to v2.6.
    return uuid.uuid4().hex[:20].encode("ascii")


def build_ack(message: bytes, decision: AckDecision) -> bytes:
    """An HL7 v2 ACK for ``message`` (unframed), segments terminated by ``\\r``.

    When MSH cannot be read, the ACK uses ``|^~\\&``, version 2.5 and an empty MSA-2.
    """
    return _ack_for(_read_msh(message), decision)


def _ack_for(msh: _Msh | None, decision: AckDecision) -> bytes:
    known = msh is not None
    if msh is None:
        msh = _Msh(_DEFAULT_FIELD_SEPARATOR, _DEFAULT_ENCODING, [b"MSH", _DEFAULT_ENCODING])
    sep, comp = msh.separator, msh.component
    version = msh.version() if known else (2, 5)
    message_type: list[bytes] = [b"ACK"]
    if known:
        message_type.append(msh.get(9).split(comp)[1] if comp in msh.get(9) else b"")
        if version >= (2, 3, 1):
            message_type.append(b"ACK")
    timestamp = datetime.now(UTC).strftime("%Y%m%d%H%M%S+0000").encode("ascii")
    header = [
        b"MSH",
        msh.encoding,
        msh.get(5),
        msh.get(6),
        msh.get(3),
        msh.get(4),
        timestamp,
        b"",
        comp.join(message_type),
        _new_control_id(),
        msh.get(11) or b"P",
        msh.get(12) or _DEFAULT_VERSION,
    ]
    msa = [b"MSA", decision.code.encode("ascii"), msh.get(10)]
    segments = [sep.join(header)]
    error = decision.error or (_GENERIC_ERROR if decision.code != "AA" else None)
    if error is not None:
        modern = version >= (2, 5)
        if not modern:
            msa.append(_escape(error.text, msh))
        segments.append(sep.join(msa))
        segments.append(_err_segment(error, msh, modern))
    else:
        segments.append(sep.join(msa))
    return b"".join(segment + b"\r" for segment in segments)


# --- ACK reading (client side) ------------------------------------------------------------------


class MllpError(ConnectionError):
    """The MLLP exchange failed; ``acks`` holds the ACKs received before it did."""

    def __init__(self, reason: str, acks: Sequence[Ack] = ()) -> None:
        super().__init__(reason)
        self.acks = list(acks)


@dataclass(frozen=True, slots=True)
class Ack:
    """An ACK as the client read it: MSA-1, MSA-2, and the error's text and location if any."""

    code: str
    control_id: str
    error: str | None = None
    location: str | None = None


def parse_ack(payload: bytes) -> Ack:
    """Read MSA-1, MSA-2 and the error text from an ACK; ``MllpError`` when it is not one."""
    try:
        message = er7.parse(payload)
    except er7.Er7Error:
        raise MllpError("the response does not begin with an MSH segment") from None
    msa = message.first("MSA")
    if msa is None:
        raise MllpError("the response has no MSA segment")
    err = message.first("ERR")
    # The error text, wherever the ACK's version puts it: ERR-8 user message, ERR-3 text,
    # MSA-3 (before v2.5), ERR-1.4 (before v2.5, code & text & table).
    texts = [msa.value(3)]
    location = None
    if err is not None:
        texts = [err.value(8), err.value(3, 2), msa.value(3), err.value(1, 4, subcomponent=2)]
        # ERR-2 from v2.5 on, else the first three components of ERR-1; shown with ^.
        parts = (
            [err.value(2, n) for n in range(1, 7)]
            if err.raw(2)
            else [err.value(1, n) for n in (1, 2, 3)]
        )
        location = "^".join(parts).rstrip("^") or None
    text = next((text for text in texts if text), None)
    return Ack(msa.value(1), msa.value(2), text, location)


# --- framing ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Frame:
    """A complete frame's payload (without ``0x0B`` and ``0x1C 0x0D``)."""

    payload: bytes


@dataclass(frozen=True, slots=True)
class OversizeFrame:
    """A frame longer than the limit: its size and first bytes (for the NAK); the rest is gone."""

    size: int
    head: bytes


FrameEvent = Frame | OversizeFrame

_OUTSIDE, _INSIDE, _DISCARDING = "outside", "inside", "discarding"


class MllpFramer:
    """Turns a byte stream into frames, whatever the reads' boundaries; no I/O.

    Bytes before a start block are discarded and counted. A start block inside a frame means
    the sender abandoned that frame and began another (it cannot be content: MLLP forbids
    0x0B in a message), so the partial frame is discarded too. A frame that grows past
    ``max_frame_bytes`` is not kept: its first bytes are, and its end yields ``OversizeFrame``.
    Memory per connection stays below the limit plus one read.
    """

    def __init__(self, max_frame_bytes: int = DEFAULT_MLLP_MAX_FRAME_BYTES) -> None:
        if max_frame_bytes < 1:
            raise ValueError("max_frame_bytes must be positive")
        self.max_frame_bytes = max_frame_bytes
        self.discarded_bytes = 0
        self._state = _OUTSIDE
        self._buffer = bytearray()
        self._oversize_size = 0
        self._oversize_head = b""
        self._fs_pending = False

    @property
    def in_frame(self) -> bool:
        """True between a start block and its end: a close now loses a partial frame."""
        return self._state != _OUTSIDE

    def feed(self, data: bytes) -> list[FrameEvent]:
        events: list[FrameEvent] = []
        position = 0
        while position < len(data):
            if self._state == _OUTSIDE:
                position = self._skip_to_start(data, position)
            elif self._state == _INSIDE:
                position = self._read_frame(data, position, events)
            else:
                position = self._discard_oversize(data, position, events)
        return events

    def _skip_to_start(self, data: bytes, position: int) -> int:
        start = data.find(START_BLOCK, position)
        if start < 0:
            self.discarded_bytes += len(data) - position
            return len(data)
        self.discarded_bytes += start - position
        self._begin_frame()
        return start + 1

    def _begin_frame(self) -> None:
        self._state = _INSIDE
        self._buffer = bytearray()
        self._fs_pending = False

    def _read_frame(self, data: bytes, position: int, events: list[FrameEvent]) -> int:
        # The end block split between two reads: 0x1C ended the last one, 0x0D starts this one.
        if self._buffer and self._buffer[-1] == _FS and data[position] == _CR:
            del self._buffer[-1]
            self._finish_frame(events)
            return position + 1
        end = data.find(END_BLOCK, position)
        restart = data.find(START_BLOCK, position, end if end >= 0 else len(data))
        if restart >= 0:
            self.discarded_bytes += 1 + len(self._buffer) + restart - position
            self._begin_frame()
            return restart + 1
        if end >= 0:
            self._buffer += data[position:end]
            self._finish_frame(events)
            return end + 2
        self._buffer += data[position:]
        pending = 1 if self._buffer[-1] == _FS else 0
        if len(self._buffer) - pending > self.max_frame_bytes:
            self._oversize_size = len(self._buffer) - pending
            self._oversize_head = bytes(self._buffer[: min(_HEAD_BYTES, self._oversize_size)])
            self._fs_pending = bool(pending)
            self._buffer = bytearray()
            self._state = _DISCARDING
        return len(data)

    def _finish_frame(self, events: list[FrameEvent]) -> None:
        if len(self._buffer) > self.max_frame_bytes:
            events.append(OversizeFrame(len(self._buffer), bytes(self._buffer[:_HEAD_BYTES])))
        else:
            events.append(Frame(bytes(self._buffer)))
        self._buffer = bytearray()
        self._state = _OUTSIDE

    def _discard_oversize(self, data: bytes, position: int, events: list[FrameEvent]) -> int:
        if self._fs_pending:
            self._fs_pending = False
            if data[position] == _CR:
                self._finish_oversize(events)
                return position + 1
            self._count_oversize(bytes([_FS]))
        end = data.find(END_BLOCK, position)
        restart = data.find(START_BLOCK, position, end if end >= 0 else len(data))
        if restart >= 0:
            self.discarded_bytes += 1 + self._oversize_size + restart - position
            self._begin_frame()
            return restart + 1
        if end >= 0:
            self._count_oversize(data[position:end])
            self._finish_oversize(events)
            return end + 2
        self._fs_pending = data[-1] == _FS
        self._count_oversize(data[position : len(data) - (1 if self._fs_pending else 0)])
        return len(data)

    def _count_oversize(self, chunk: bytes) -> None:
        # The head keeps filling up to its cap: it is where the NAK reads MSH from.
        self._oversize_size += len(chunk)
        room = _HEAD_BYTES - len(self._oversize_head)
        if room > 0:
            self._oversize_head += chunk[:room]

    def _finish_oversize(self, events: list[FrameEvent]) -> None:
        events.append(OversizeFrame(self._oversize_size, self._oversize_head))
        self._oversize_head = b""
        self._oversize_size = 0
        self._state = _OUTSIDE


def frame(message: bytes) -> bytes:
    """``message`` wrapped in MLLP framing."""
    return START_BLOCK + message + END_BLOCK


# --- the listener -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Peer:
    """Who is at the other end of a connection: its address and, when the listener verified a
    client certificate (mutual TLS), the names that certificate carries. Without a verified
    certificate there are no names: nothing the client merely says about itself is here.

    ``str(peer)`` ("host:port", plus " (CN=...)") is what logs show; names are system names,
    not message content.
    """

    address: str
    common_name: str | None = None
    # The certificate's subjectAltName DNS names, URIs and e-mail addresses, in its order.
    alt_names: tuple[str, ...] = ()

    @property
    def identities(self) -> tuple[str, ...]:
        """Every name the certificate vouches for: its alternative names, then its subject CN."""
        return (*self.alt_names, *([self.common_name] if self.common_name else []))

    def __str__(self) -> str:
        return f"{self.address} (CN={self.common_name})" if self.common_name else self.address


Handle = Callable[[bytes, Peer], Awaitable[AckDecision]]


@dataclass(eq=False)
class _Connection:
    task: asyncio.Task[Any] | None
    # True while a message is being handled and answered: close() lets it finish.
    busy: bool = False


# The subjectAltName kinds that name a client (ssl.getpeercert's spelling); an IP address
# names where a certificate may be used from, not who holds it.
_CLIENT_NAME_KINDS = frozenset({"DNS", "URI", "email"})


def _peer_of(writer: asyncio.StreamWriter) -> Peer:
    address = writer.get_extra_info("peername")
    described = f"{address[0]}:{address[1]}" if isinstance(address, tuple) else str(address)
    # getpeercert() is empty unless the listener verified the certificate (mutual TLS).
    cert = writer.get_extra_info("peercert")
    if not isinstance(cert, dict) or not cert:
        return Peer(described)
    common_name = None
    for rdn in cert.get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                common_name = value
    alt_names = tuple(
        value for kind, value in cert.get("subjectAltName", ()) if kind in _CLIENT_NAME_KINDS
    )
    return Peer(described, common_name, alt_names)


class MllpServer:
    """An asyncio MLLP listener: one message in flight per connection, connections in parallel.

    ``handle(message, peer)`` gets each message without framing and the ``Peer`` (its
    address, and the verified client certificate's names under mutual TLS). Its decision
    becomes the ACK; if it raises, the answer is AE (207) and only the exception type is logged.

    Plain TCP on a non-loopback address is refused (``ValueError``) unless ``allow_plaintext``:
    HL7 carries PHI, and anyone who reaches the port could send.
    """

    def __init__(
        self,
        handle: Handle,
        *,
        host: str = "127.0.0.1",
        port: int = 2575,
        max_frame_bytes: int = DEFAULT_MLLP_MAX_FRAME_BYTES,
        idle_timeout_seconds: float = 300.0,
        max_connections: int = 100,
        ssl: ssl_module.SSLContext | None = None,
        allow_plaintext: bool = False,
    ) -> None:
        if max_frame_bytes < 1 or idle_timeout_seconds <= 0 or max_connections < 1:
            raise ValueError("max_frame_bytes, idle_timeout_seconds, max_connections must be > 0")
        exposed = plaintext_exposure(host, tls=ssl is not None, allowed=allow_plaintext)
        if exposed:
            raise ValueError(exposed)
        self._handle = handle
        self.host = host
        self.requested_port = port
        self.max_frame_bytes = max_frame_bytes
        self.idle_timeout_seconds = idle_timeout_seconds
        self.max_connections = max_connections
        self.ssl = ssl
        self._connections: set[_Connection] = set()
        self._server: asyncio.Server | None = None
        self._closing = False
        self._closed = asyncio.Event()

    @classmethod
    def from_settings(cls, handle: Handle, settings: MllpSettings) -> MllpServer:
        return cls(
            handle,
            host=settings.mllp_host,
            port=settings.mllp_port,
            max_frame_bytes=settings.mllp_max_frame_bytes,
            idle_timeout_seconds=settings.mllp_idle_timeout_seconds,
            max_connections=settings.mllp_max_connections,
            ssl=settings.ssl_context(),
            allow_plaintext=settings.mllp_insecure_plaintext,
        )

    @property
    def port(self) -> int:
        """The bound port (the one the OS chose when constructed with port 0)."""
        if self._server is None or not self._server.sockets:
            raise RuntimeError("the server is not listening")
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    @property
    def connection_count(self) -> int:
        return len(self._connections)

    async def start(self) -> None:
        self._server = await asyncio.start_server(
            self._on_client,
            self.host,
            self.requested_port,
            ssl=self.ssl,
            ssl_handshake_timeout=self.idle_timeout_seconds if self.ssl else None,
        )
        log.info("MLLP listening on %s:%d (tls=%s)", self.host, self.port, self.ssl is not None)

    async def serve_forever(self) -> None:
        """Wait until ``close`` has finished."""
        await self._closed.wait()

    async def close(self, grace_seconds: float = 30.0) -> None:
        """Stop accepting, let messages in flight finish and be answered, close connections.

        Connections waiting for data are closed at once (a partial frame is never
        acknowledged, so the sender resends it); complete frames not yet started get no ACK.
        """
        self._closing = True
        if self._server is not None:
            self._server.close()
        tasks = []
        for connection in list(self._connections):
            if connection.task is None:
                continue
            if not connection.busy:
                connection.task.cancel()
            tasks.append(connection.task)
        if tasks:
            _, late = await asyncio.wait(tasks, timeout=grace_seconds)
            for task in late:
                task.cancel()
            if late:
                await asyncio.wait(late, timeout=_CLOSE_TIMEOUT_SECONDS)
        if self._server is not None:
            await self._server.wait_closed()
        self._closed.set()
        log.info("MLLP listener closed")

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def _on_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = _peer_of(writer)
        if self._closing or len(self._connections) >= self.max_connections:
            metrics.MLLP_CONNECTIONS_REFUSED.inc()
            log.warning("MLLP connection from %s refused: %d open", peer, len(self._connections))
            await _close_writer(writer)
            return
        connection = _Connection(asyncio.current_task())
        self._connections.add(connection)
        metrics.MLLP_CONNECTIONS.inc()
        log.info("MLLP connection from %s", peer)
        try:
            await self._serve_connection(reader, writer, connection, peer)
        except (OSError, asyncio.IncompleteReadError) as exc:
            log.info("MLLP connection from %s ended: %s", peer, type(exc).__name__)
        finally:
            self._connections.discard(connection)
            metrics.MLLP_CONNECTIONS.dec()
            await _close_writer(writer)

    async def _serve_connection(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        connection: _Connection,
        peer: Peer,
    ) -> None:
        framer = MllpFramer(self.max_frame_bytes)
        while not self._closing:
            try:
                async with asyncio.timeout(self.idle_timeout_seconds):
                    data = await reader.read(_READ_BYTES)
            except TimeoutError:
                log.info("MLLP connection from %s idle; closing", peer)
                return
            if not data:
                if framer.in_frame:
                    log.info("MLLP connection from %s closed inside a frame", peer)
                return
            discarded = framer.discarded_bytes
            events = framer.feed(data)
            if framer.discarded_bytes > discarded:
                metrics.MLLP_DISCARDED_BYTES.inc(framer.discarded_bytes - discarded)
            connection.busy = True
            try:
                for event in events:
                    if self._closing:
                        return
                    started = time.perf_counter()
                    ack = await self._answer(event, peer)
                    writer.write(frame(ack))
                    # A client that stops reading its ACKs counts as idle.
                    async with asyncio.timeout(self.idle_timeout_seconds):
                        await writer.drain()
                    metrics.MLLP_ACK_SECONDS.observe(time.perf_counter() - started)
            finally:
                connection.busy = False

    async def _answer(self, event: FrameEvent, peer: Peer) -> bytes:
        if isinstance(event, OversizeFrame):
            metrics.MLLP_OVERSIZE_FRAMES.inc()
            log.warning("MLLP frame of %d bytes from %s refused", event.size, peer)
            decision = AckDecision.application_reject(
                Hl7ErrorCode.APPLICATION_INTERNAL_ERROR,
                f"frame exceeds {self.max_frame_bytes} bytes",
            )
            msh = _read_msh(event.head)
        else:
            msh = _read_msh(event.payload)
            if msh is None:
                decision = _unreadable(event.payload)
            else:
                decision = await self._decide(event.payload, peer)
        metrics.MLLP_MESSAGES.labels(outcome=decision.code).inc()
        return _ack_for(msh, decision)

    async def _decide(self, message: bytes, peer: Peer) -> AckDecision:
        try:
            decision = await self._handle(message, peer)
        except Exception as exc:
            # The exception's text may quote the message; its type cannot.
            log.error("MLLP handle failed for a message from %s: %s", peer, type(exc).__name__)
            return _HANDLE_FAILED
        if not isinstance(decision, AckDecision):
            log.error("MLLP handle returned %s, not an AckDecision", type(decision).__name__)
            return _HANDLE_FAILED
        return decision


async def _close_writer(writer: asyncio.StreamWriter) -> None:
    writer.close()
    # A TLS peer that never answers close_notify would otherwise hold the task for 30 s.
    with suppress(OSError, TimeoutError, ssl_module.SSLError):
        async with asyncio.timeout(_CLOSE_TIMEOUT_SECONDS):
            await writer.wait_closed()


# --- the client ---------------------------------------------------------------------------------


async def send_messages(
    host: str,
    port: int,
    messages: Sequence[bytes],
    *,
    ssl: ssl_module.SSLContext | None = None,
    server_hostname: str | None = None,
    # Per message, which a caller's asyncio.timeout around the whole call cannot express.
    timeout: float = 30.0,  # noqa: ASYNC109
    max_ack_bytes: int = DEFAULT_MLLP_MAX_FRAME_BYTES,
    on_ack: Callable[[Ack], None] | None = None,
) -> list[Ack]:
    """Send each message over one connection, waiting for its ACK before sending the next.

    ``timeout`` bounds the connection and each message's round trip; ``on_ack`` sees each ACK
    as it arrives. On a timeout, a closed
    connection or a response that is not an ACK, ``MllpError`` carries the ACKs received so far.
    """
    acks: list[Ack] = []
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(
                host, port, ssl=ssl, server_hostname=server_hostname if ssl else None
            )
    except (OSError, TimeoutError) as exc:
        raise MllpError(f"cannot connect to {host}:{port}: {type(exc).__name__}") from exc
    framer = MllpFramer(max_ack_bytes)
    pending: deque[FrameEvent] = deque()
    try:
        for message in messages:
            writer.write(frame(message))
            async with asyncio.timeout(timeout):
                await writer.drain()
                event = await _next_frame(reader, framer, pending)
            if isinstance(event, OversizeFrame):
                raise MllpError(f"an ACK exceeded {max_ack_bytes} bytes", acks)
            acks.append(parse_ack(event.payload))
            if on_ack is not None:
                on_ack(acks[-1])
    except MllpError as exc:
        raise MllpError(str(exc), acks) from exc
    except (OSError, TimeoutError) as exc:
        raise MllpError(f"no ACK for message {len(acks) + 1}: {type(exc).__name__}", acks) from exc
    finally:
        await _close_writer(writer)
    return acks


async def _next_frame(
    reader: asyncio.StreamReader, framer: MllpFramer, pending: deque[FrameEvent]
) -> FrameEvent:
    while not pending:
        data = await reader.read(_READ_BYTES)
        if not data:
            raise MllpError("the server closed the connection before answering")
        pending.extend(framer.feed(data))
    return pending.popleft()
