"""The MLLP transport over real sockets on 127.0.0.1: framing, ACKs, limits, TLS, the client."""

from __future__ import annotations

import asyncio
import logging
import os
import random
import shutil
import ssl
import subprocess
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from prometheus_client import REGISTRY

from concord.config import IngestionSettings, MllpSettings, SettingsProblem, load_settings
from concord.ingestion.mllp import (
    Ack,
    AckDecision,
    Frame,
    Hl7ErrorCode,
    MllpError,
    MllpFramer,
    MllpServer,
    OversizeFrame,
    Peer,
    build_ack,
    frame,
    parse_ack,
    send_messages,
)
from mllp_client import HOST, RawClient
from throwaway_ca import Certificate as TlsCertificate
from throwaway_ca import ThrowawayCa, need_openssl

# A marker that stands for PHI: it must never reach a log line or an ACK.
PATIENT_NAME = b"ZZSECRETNAME"


def message(control_id: str, *, version: str = "2.5.1", padding: int = 0) -> bytes:
    return (
        b"MSH|^~\\&|EPIC|HOSP|CONCORD|CDR|20240101120000||ADT^A01^ADT_A01|"
        + control_id.encode()
        + b"|P|"
        + version.encode()
        + b"\rPID|1||MRN"
        + control_id.encode()
        + b"^^^HOSP^MR||"
        + PATIENT_NAME
        + b"^JANE\r"
        + (b"NTE|1||" + b"x" * padding + b"\r" if padding else b"")
    )


def segments(ack: bytes) -> dict[str, list[str]]:
    return {s[:3].decode(): s.decode().split("|") for s in ack.split(b"\r") if s}


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


@dataclass
class FakeKafka:
    """A handle that stands in for validation + the durable Kafka write."""

    delay: float = 0.0
    reject: Callable[[bytes], bool] = lambda _message: False
    records: list[bytes] = field(default_factory=list)
    calls: int = 0
    in_flight: int = 0
    most_in_flight: int = 0
    peers: set[Peer] = field(default_factory=set)

    async def __call__(self, msg: bytes, peer: Peer) -> AckDecision:
        self.calls += 1
        self.peers.add(peer)
        if self.reject(msg):
            return AckDecision.application_error(
                Hl7ErrorCode.REQUIRED_FIELD_MISSING, "PID-3 is required", "PID^1^3"
            )
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            await asyncio.sleep(self.delay)  # the producer awaiting acks=all
            self.records.append(msg)
        finally:
            self.in_flight -= 1
        return AckDecision.accept()


async def wait_until(condition: Callable[[], bool], seconds: float = 5.0) -> None:
    # The server's connection count has no event to wait on; polling keeps the server simple.
    async with asyncio.timeout(seconds):
        while not condition():  # noqa: ASYNC110
            await asyncio.sleep(0.01)


def server(
    handle: Callable[[bytes, Peer], Awaitable[AckDecision]], **options: object
) -> MllpServer:
    return MllpServer(handle, host=HOST, port=0, **options)  # type: ignore[arg-type]


# --- the listener over TCP ----------------------------------------------------------------------


@pytest.mark.asyncio
async def test_twenty_concurrent_clients_get_every_ack_in_order() -> None:
    kafka = FakeKafka()

    async def jittery(msg: bytes, peer: Peer) -> AckDecision:
        kafka.delay = random.uniform(0, 0.005)
        return await kafka(msg, peer)

    async with server(jittery) as listener:

        async def client(number: int) -> tuple[list[str], list[Ack]]:
            ids = [f"C{number:02d}M{index}" for index in range(5)]
            acks = await send_messages(HOST, listener.port, [message(i) for i in ids])
            return ids, acks

        results = await asyncio.gather(*(client(number) for number in range(20)))

    for ids, acks in results:
        assert [ack.code for ack in acks] == ["AA"] * 5
        assert [ack.control_id for ack in acks] == ids
    assert len(kafka.records) == 100 and len(kafka.peers) == 20
    assert kafka.most_in_flight > 1  # connections are served in parallel


@pytest.mark.asyncio
async def test_two_messages_coalesced_in_one_write_get_two_acks_in_order() -> None:
    kafka = FakeKafka()
    async with server(kafka) as listener:
        client = await RawClient.connect(listener.port)
        await client.write(frame(message("FIRST")) + frame(message("SECOND")))
        first, second = await client.ack(), await client.ack()
        await client.close()
    assert parse_ack(first) == Ack("AA", "FIRST")
    assert parse_ack(second) == Ack("AA", "SECOND")
    assert kafka.records == [message("FIRST"), message("SECOND")]


@pytest.mark.asyncio
async def test_a_slow_client_writing_one_byte_at_a_time_is_acknowledged() -> None:
    kafka = FakeKafka()
    async with server(kafka) as listener:
        client = await RawClient.connect(listener.port)
        for byte in frame(message("SLOW")):
            await client.write(bytes([byte]))
            await asyncio.sleep(0.001)
        ack = await client.ack()
        await client.close()
    assert parse_ack(ack) == Ack("AA", "SLOW")
    assert kafka.records == [message("SLOW")]


@pytest.mark.asyncio
async def test_junk_before_a_frame_is_discarded_and_counted() -> None:
    kafka = FakeKafka()
    junk = b"GET / HTTP/1.0\r\n\r\n\x00\xff"
    before = metric("concord_mllp_discarded_bytes_total")
    async with server(kafka) as listener:
        client = await RawClient.connect(listener.port)
        await client.write(junk + frame(message("AFTERJUNK")))
        ack = await client.ack()
        await client.close()
    assert parse_ack(ack) == Ack("AA", "AFTERJUNK")
    assert kafka.records == [message("AFTERJUNK")]
    assert metric("concord_mllp_discarded_bytes_total") - before == len(junk)


@pytest.mark.asyncio
async def test_an_oversize_frame_gets_an_ar_nak_and_the_connection_keeps_working() -> None:
    kafka = FakeKafka()
    big = message("TOOBIG", padding=10_000)
    before = metric("concord_mllp_oversize_frames_total")
    async with server(kafka, max_frame_bytes=2048) as listener:
        client = await RawClient.connect(listener.port)
        framed = frame(big)
        for start in range(0, len(framed), 700):  # the limit is passed mid-stream
            await client.write(framed[start : start + 700])
        nak = await client.ack()
        await client.write(frame(message("NEXT")))
        next_ack = await client.ack()
        await client.close()
    assert parse_ack(nak) == Ack("AR", "TOOBIG", "frame exceeds 2048 bytes")
    assert segments(nak)["ERR"][3] == "207^Application internal error^HL70357"
    assert PATIENT_NAME not in nak
    assert parse_ack(next_ack) == Ack("AA", "NEXT")
    assert kafka.records == [message("NEXT")]
    assert metric("concord_mllp_oversize_frames_total") - before == 1


@pytest.mark.asyncio
async def test_a_client_that_disconnects_mid_frame_causes_no_handle_call() -> None:
    kafka = FakeKafka()
    async with server(kafka) as listener:
        client = await RawClient.connect(listener.port)
        framed = frame(message("HALF"))
        await client.write(framed[: len(framed) // 2])
        await wait_until(lambda: listener.connection_count == 1)
        await client.close()
        await wait_until(lambda: listener.connection_count == 0)
        assert kafka.calls == 0
        acks = await send_messages(HOST, listener.port, [message("WHOLE")])
    assert acks == [Ack("AA", "WHOLE")]
    assert kafka.records == [message("WHOLE")]


@pytest.mark.asyncio
async def test_a_handle_that_returns_ae_yields_an_err_segment() -> None:
    kafka = FakeKafka(reject=lambda msg: b"BAD" in msg)
    async with server(kafka) as listener:
        client = await RawClient.connect(listener.port)
        await client.write(frame(message("BAD1")))
        ack = await client.ack()
        await client.close()
    parts = segments(ack)
    assert parts["MSA"][1:3] == ["AE", "BAD1"]
    assert parts["ERR"][2] == "PID^1^3"
    assert parts["ERR"][3] == "101^Required field missing^HL70357"
    assert parts["ERR"][4] == "E"
    assert parts["ERR"][8] == "PID-3 is required"
    assert parse_ack(ack).error == "PID-3 is required"
    assert kafka.records == []


@pytest.mark.asyncio
async def test_a_handle_that_raises_yields_ae_and_the_server_keeps_serving(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def explode(msg: bytes, peer: Peer) -> AckDecision:
        if b"BOOM" in msg:
            raise ValueError(f"cannot store {msg!r}")  # the text quotes PHI
        if b"NONE" in msg:
            return None  # type: ignore[return-value]  # a caller's bug
        return AckDecision.accept()

    caplog.set_level(logging.DEBUG, logger="concord.ingestion.mllp")
    async with server(explode) as listener:
        acks = await send_messages(HOST, listener.port, [message("BOOM1"), message("OK1")])
        again = await send_messages(HOST, listener.port, [message("NONE1"), message("OK2")])
    assert acks[0] == Ack("AE", "BOOM1", "internal error while accepting the message")
    assert acks[1] == Ack("AA", "OK1")
    assert [ack.code for ack in again] == ["AE", "AA"]
    assert "ValueError" in caplog.text
    assert PATIENT_NAME.decode() not in caplog.text and "MRN" not in caplog.text


def test_an_ack_keeps_the_truncation_character_of_its_message() -> None:
    v27 = message("T1", version="2.7").replace(b"MSH|^~\\&|", b"MSH|^~\\&#|", 1)
    decision = AckDecision.application_error(Hl7ErrorCode.DATA_TYPE_ERROR, "a#b|c")
    ack = build_ack(v27, decision)
    assert b"a\\P\\b\\F\\c" in ack
    assert parse_ack(ack).error == "a#b|c"


@pytest.mark.asyncio
async def test_aa_only_after_the_slow_durable_write_and_never_for_a_naked_message() -> None:
    entered, gate = asyncio.Event(), asyncio.Event()
    records: list[bytes] = []

    async def gated(msg: bytes, peer: Peer) -> AckDecision:
        entered.set()
        await gate.wait()
        records.append(msg)
        return AckDecision.accept()

    async with server(gated) as listener:
        sending = asyncio.create_task(send_messages(HOST, listener.port, [message("GATED")]))
        await asyncio.wait_for(entered.wait(), 5)  # the message reached "Kafka"...
        await asyncio.sleep(0.05)  # ...and the client had time to read an early ACK
        assert not sending.done()  # no ACK while "Kafka" has not acknowledged
        gate.set()
        assert await sending == [Ack("AA", "GATED")]
    assert records == [message("GATED")]

    kafka = FakeKafka(delay=0.01, reject=lambda msg: b"M3|" in msg or b"M6|" in msg)
    ids = [f"M{index}" for index in range(9)]
    async with server(kafka) as listener:
        acks = await send_messages(HOST, listener.port, [message(i) for i in ids])
    recorded = {segments(msg)["MSH"][9] for msg in kafka.records}
    accepted = {ack.control_id for ack in acks if ack.code == "AA"}
    naked = {ack.control_id for ack in acks if ack.code != "AA"}
    assert accepted == recorded
    assert naked == {"M3", "M6"} and not naked & recorded


@pytest.mark.asyncio
async def test_a_frame_without_msh_is_rejected_without_calling_the_handle() -> None:
    kafka = FakeKafka()
    async with server(kafka) as listener:
        client = await RawClient.connect(listener.port)
        await client.write(frame(b"PID|1||123\r"))
        ack = await client.ack()
        await client.close()
    assert parse_ack(ack).code == "AR"
    assert segments(ack)["ERR"][3] == "100^Segment sequence error^HL70357"
    assert segments(ack)["MSH"][1] == "^~\\&" and segments(ack)["MSH"][11] == "2.5"
    assert kafka.calls == 0


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("payload", "code", "text", "location"),
    [
        (
            b"hello, this is not HL7",
            "100^Segment sequence error^HL70357",
            "not an HL7 v2 message: the frame does not begin with an MSH segment",
            "MSH^1",
        ),
        (b"", "100^Segment sequence error^HL70357", "not an HL7 v2 message", "MSH^1"),
        (
            b"MSH|^~|A|B\r",
            "102^Data type error^HL70357",
            "MSH-1 and MSH-2 do not define five distinct separators",
            "MSH^1^2",
        ),
    ],
)
async def test_a_frame_that_is_not_hl7_is_rejected_in_hl7_terms_with_a_location(
    payload: bytes, code: str, text: str, location: str
) -> None:
    kafka = FakeKafka()
    async with server(kafka) as listener:
        client = await RawClient.connect(listener.port)
        await client.write(frame(payload))
        ack = await client.ack()
        await client.close()
    parsed = parse_ack(ack)
    assert parsed.code == "AR"
    assert parsed.error is not None and parsed.error.startswith(text)
    assert parsed.location == location
    assert segments(ack)["ERR"][3] == code
    assert kafka.calls == 0


@pytest.mark.asyncio
async def test_a_silent_connection_is_closed_after_the_idle_timeout() -> None:
    async with server(FakeKafka(), idle_timeout_seconds=0.2) as listener:
        client = await RawClient.connect(listener.port)
        async with asyncio.timeout(3):
            assert await client.reader.read() == b""
        await client.close()


@pytest.mark.asyncio
async def test_connections_beyond_the_maximum_are_closed_at_once() -> None:
    before = metric("concord_mllp_connections_refused_total")
    async with server(FakeKafka(), max_connections=2) as listener:
        held = [await RawClient.connect(listener.port) for _ in range(2)]
        await wait_until(lambda: listener.connection_count == 2)
        extra = await RawClient.connect(listener.port)
        async with asyncio.timeout(3):
            assert await extra.reader.read() == b""
        await held[0].write(frame(message("STILL")))
        assert parse_ack(await held[0].ack()) == Ack("AA", "STILL")
        for client in [*held, extra]:
            await client.close()
    assert metric("concord_mllp_connections_refused_total") - before == 1


@pytest.mark.asyncio
async def test_close_finishes_the_message_in_flight_and_stops_accepting() -> None:
    gate = asyncio.Event()
    started = asyncio.Event()

    async def gated(msg: bytes, peer: Peer) -> AckDecision:
        started.set()
        await gate.wait()
        return AckDecision.accept()

    listener = MllpServer(gated, host=HOST, port=0)
    await listener.start()
    port = listener.port
    idle = await RawClient.connect(listener.port)
    sending = asyncio.create_task(send_messages(HOST, port, [message("INFLIGHT")]))
    await started.wait()
    closing = asyncio.create_task(listener.close())
    await asyncio.sleep(0.1)
    with pytest.raises(MllpError):
        await send_messages(HOST, port, [message("LATE")], timeout=1)
    async with asyncio.timeout(3):
        assert await idle.reader.read() == b""  # an idle connection is closed at once
    assert not closing.done()
    gate.set()
    assert await sending == [Ack("AA", "INFLIGHT")]
    await closing
    await idle.close()


# --- TLS ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Certificate:
    cert: Path
    key: Path


def _self_signed(directory: Path, name: str) -> Certificate:
    cert, key = directory / f"{name}.pem", directory / f"{name}.key"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
            "-nodes", "-days", "2", "-subj", f"/CN={name}",
            "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
            "-keyout", str(key), "-out", str(cert),
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return Certificate(cert, key)


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Certificate]:
    # The cryptography package is not installed in this environment; the openssl CLI is.
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command to make a self-signed certificate")
    directory = tmp_path_factory.mktemp("tls")
    return {name: _self_signed(directory, name) for name in ("mllp-server", "test-client")}


@pytest.mark.asyncio
async def test_tls_round_trip(certificates: dict[str, Certificate]) -> None:
    server_cert = certificates["mllp-server"]
    settings = MllpSettings(
        mllp_host=HOST, mllp_port=0, mllp_tls_certfile=server_cert.cert,
        mllp_tls_keyfile=server_cert.key,
    )  # fmt: skip
    kafka = FakeKafka()
    client_context = ssl.create_default_context(cafile=server_cert.cert)
    async with MllpServer.from_settings(kafka, settings) as listener:
        acks = await send_messages(
            HOST, listener.port, [message("TLS1"), message("TLS2")], ssl=client_context
        )
        with pytest.raises(MllpError):  # plain TCP to a TLS port gets no ACK
            await send_messages(HOST, listener.port, [message("PLAIN")], timeout=1)
    assert acks == [Ack("AA", "TLS1"), Ack("AA", "TLS2")]
    assert kafka.records == [message("TLS1"), message("TLS2")]


@pytest.mark.asyncio
async def test_mutual_tls_requires_a_client_certificate(
    certificates: dict[str, Certificate],
) -> None:
    server_cert, client_cert = certificates["mllp-server"], certificates["test-client"]
    settings = MllpSettings(
        mllp_host=HOST, mllp_port=0, mllp_tls_certfile=server_cert.cert,
        mllp_tls_keyfile=server_cert.key, mllp_tls_client_cafile=client_cert.cert,
    )  # fmt: skip
    kafka = FakeKafka()
    anonymous = ssl.create_default_context(cafile=server_cert.cert)
    identified = ssl.create_default_context(cafile=server_cert.cert)
    identified.load_cert_chain(client_cert.cert, client_cert.key)
    async with MllpServer.from_settings(kafka, settings) as listener:
        with pytest.raises(MllpError):
            await send_messages(HOST, listener.port, [message("ANON")], ssl=anonymous, timeout=2)
        acks = await send_messages(HOST, listener.port, [message("MTLS")], ssl=identified)
    assert acks == [Ack("AA", "MTLS")]
    assert kafka.records == [message("MTLS")]
    assert any("(CN=test-client)" in str(peer) for peer in kafka.peers)


def test_tls_settings_need_a_certificate(tmp_path: Path) -> None:
    assert MllpSettings().ssl_context() is None
    with pytest.raises(ValueError, match="CERTFILE"):
        MllpSettings(mllp_tls_keyfile=tmp_path / "server.key")


# --- exposure: TLS before the network, and who the client is ------------------------------------

# Every interface: what an exposed listener binds, and what these tests refuse or opt into.
EVERYWHERE = "0.0.0.0"  # noqa: S104
_EXPOSURE_VARIABLES = (
    "CONCORD_MLLP_HOST",
    "CONCORD_MLLP_TLS_CERTFILE",
    "CONCORD_MLLP_INSECURE_PLAINTEXT",
)


@pytest.mark.parametrize("host", [EVERYWHERE, "::", "", "10.1.2.3", "mllp.example.org"])
def test_a_listener_on_the_network_without_tls_refuses_to_start(host: str) -> None:
    with pytest.raises(ValueError, match="not a loopback address") as caught:
        MllpServer(FakeKafka(), host=host, port=0)
    message = str(caught.value)
    assert "\n" not in message
    assert all(variable in message for variable in _EXPOSURE_VARIABLES)


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.53", "::1", "localhost"])
def test_a_loopback_listener_may_be_plain_tcp(host: str) -> None:
    assert MllpServer(FakeKafka(), host=host, port=0).ssl is None


@pytest.mark.asyncio
async def test_the_loud_opt_out_lets_plain_tcp_bind_the_network() -> None:
    kafka = FakeKafka()
    listener = MllpServer(kafka, host=EVERYWHERE, port=0, allow_plaintext=True)
    async with listener:
        acks = await send_messages(HOST, listener.port, [message("OPEN")])
    assert acks == [Ack("AA", "OPEN")]


def test_from_settings_refuses_an_exposed_plain_listener_unless_opted_out() -> None:
    exposed = MllpSettings(mllp_host=EVERYWHERE, mllp_port=0)
    with pytest.raises(ValueError, match="CONCORD_MLLP_INSECURE_PLAINTEXT"):
        MllpServer.from_settings(FakeKafka(), exposed)
    opted_out = MllpSettings(
        mllp_host=EVERYWHERE,
        mllp_port=0,
        mllp_insecure_plaintext=True,
    )
    assert MllpServer.from_settings(FakeKafka(), opted_out).ssl is None


def _clear_concord_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.upper().startswith("CONCORD_"):
            monkeypatch.delenv(key)


def _ingestion_problems(monkeypatch: pytest.MonkeyPatch, **env: str) -> list[str]:
    """What stops the ingestion worker with these CONCORD_MLLP_* variables ([] if nothing)."""
    _clear_concord_env(monkeypatch)
    monkeypatch.setenv("CONCORD_DATABASE_URL", "postgresql://concord@localhost/concord")
    for key, value in env.items():
        monkeypatch.setenv(f"CONCORD_MLLP_{key.upper()}", value)
    try:
        load_settings(IngestionSettings)
    except SettingsProblem as problem:
        return problem.lines
    return []


def test_the_worker_does_not_start_an_exposed_listener_without_tls(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    exposed = {"enabled": "true", "host": EVERYWHERE, "source": "lab-system"}
    [line] = _ingestion_problems(monkeypatch, **exposed)
    assert all(variable in line for variable in _EXPOSURE_VARIABLES), line
    cert = str(tmp_path / "server.pem")
    assert _ingestion_problems(monkeypatch, **exposed, tls_certfile=cert) == []
    assert _ingestion_problems(monkeypatch, **exposed, insecure_plaintext="true") == []
    # No listener, nothing exposed: the host alone stops nothing.
    assert _ingestion_problems(monkeypatch, host=EVERYWHERE) == []
    assert _ingestion_problems(monkeypatch, enabled="true", source="lab-system") == []


def test_the_worker_does_not_start_a_listener_with_no_source_to_record(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    [line] = _ingestion_problems(monkeypatch, enabled="true")
    assert "CONCORD_MLLP_SOURCE" in line and "CONCORD_MLLP_CLIENT_SOURCES" in line


def test_a_source_named_by_the_message_is_for_a_loopback_listener_only(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """MSH-3 names whatever the sender likes: trusted only where nobody else can connect."""
    local = {"enabled": "true", "source_from_msh": "true"}
    assert _ingestion_problems(monkeypatch, **local) == []
    cert = str(tmp_path / "server.pem")
    [line] = _ingestion_problems(
        monkeypatch, **local, host=EVERYWHERE, tls_certfile=cert, insecure_plaintext="true"
    )  # TLS and the plain-TCP opt-out change nothing: anyone could still claim any source
    assert "CONCORD_MLLP_SOURCE_FROM_MSH" in line and "CONCORD_MLLP_HOST" in line


def test_client_sources_need_verified_client_certificates(tmp_path: Path) -> None:
    cert = tmp_path / "server.pem"
    with pytest.raises(ValueError, match="CONCORD_MLLP_TLS_CLIENT_CAFILE"):
        MllpSettings(mllp_tls_certfile=cert, mllp_client_sources={"lab-engine": "lab-system"})
    with pytest.raises(ValueError, match="printable"):
        MllpSettings(
            mllp_tls_certfile=cert,
            mllp_tls_client_cafile=cert,
            mllp_client_sources={"lab-engine": "lab\x01system"},
        )


@pytest.fixture(scope="module")
def client_ca(tmp_path_factory: pytest.TempPathFactory) -> dict[str, TlsCertificate]:
    """A CA for clients, its server certificate and two clients; and a client of another CA."""
    need_openssl()
    directory = tmp_path_factory.mktemp("client-ca")
    ca = ThrowawayCa(directory / "ca")
    stranger = ThrowawayCa(directory / "other", name="other-ca")
    return {
        "ca": TlsCertificate(ca.cert, ca.key),
        "server": ca.issue("mllp-server", server=True),
        "lab": ca.issue("lab-engine", alt_names=("DNS:lab.example.org", "URI:urn:example:lab")),
        "stranger": stranger.issue("lab-engine"),
    }


def _mutual_tls(certs: dict[str, TlsCertificate]) -> MllpSettings:
    return MllpSettings(
        mllp_host=HOST, mllp_port=0, mllp_tls_certfile=certs["server"].cert,
        mllp_tls_keyfile=certs["server"].key, mllp_tls_client_cafile=certs["ca"].cert,
    )  # fmt: skip


def _client_context(certs: dict[str, TlsCertificate], name: str | None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=certs["ca"].cert)
    if name is not None:
        context.load_cert_chain(certs[name].cert, certs[name].key)
    return context


@pytest.mark.asyncio
async def test_under_mutual_tls_a_client_without_a_certificate_of_the_ca_is_refused(
    client_ca: dict[str, TlsCertificate],
) -> None:
    kafka = FakeKafka()
    async with MllpServer.from_settings(kafka, _mutual_tls(client_ca)) as listener:
        for who in (None, "stranger"):  # no certificate; one the client CA did not sign
            with pytest.raises(MllpError):
                await send_messages(
                    HOST, listener.port, [message("NOPE")],
                    ssl=_client_context(client_ca, who), timeout=2,
                )  # fmt: skip
        acks = await send_messages(
            HOST, listener.port, [message("LAB1")], ssl=_client_context(client_ca, "lab")
        )
    assert acks == [Ack("AA", "LAB1")]
    assert kafka.records == [message("LAB1")]  # the refused clients never reached the handle


@pytest.mark.asyncio
async def test_the_handle_is_told_the_names_of_the_verified_client_certificate(
    client_ca: dict[str, TlsCertificate],
) -> None:
    kafka = FakeKafka()
    async with MllpServer.from_settings(kafka, _mutual_tls(client_ca)) as listener:
        await send_messages(
            HOST, listener.port, [message("WHO")], ssl=_client_context(client_ca, "lab")
        )
    [peer] = kafka.peers
    assert peer.common_name == "lab-engine"
    assert peer.identities == ("lab.example.org", "urn:example:lab", "lab-engine")
    assert str(peer).startswith("127.0.0.1:") and str(peer).endswith("(CN=lab-engine)")


@pytest.mark.asyncio
async def test_a_plain_connection_has_no_certificate_names() -> None:
    kafka = FakeKafka()
    async with server(kafka) as listener:
        await send_messages(HOST, listener.port, [message("ANON")])
    [peer] = kafka.peers
    assert peer.identities == () and peer.common_name is None


# --- build_ack ----------------------------------------------------------------------------------


def test_build_ack_mirrors_standard_separators_and_swaps_applications() -> None:
    ack = build_ack(message("CTRL1"), AckDecision.accept())
    msh = segments(ack)["MSH"]
    assert ack.startswith(b"MSH|^~\\&|CONCORD|CDR|EPIC|HOSP|")
    assert msh[8] == "ACK^A01^ACK" and msh[10] == "P" and msh[11] == "2.5.1"
    assert msh[9] != "CTRL1" and len(msh[9]) <= 20
    assert segments(ack)["MSA"] == ["MSA", "AA", "CTRL1"]
    assert "ERR" not in segments(ack)
    assert ack.endswith(b"\r") and b"\n" not in ack


def test_build_ack_with_custom_encoding_characters_round_trips_the_separators() -> None:
    custom = (
        b"MSH#$%^&#SEND#SFAC#RECV#RFAC#20240101##ADT$A08$ADT_A01#CTRL9#T#2.6\rPID#1##MRN1$$$HOSP\r"
    )
    text = "bad | value ^ & # $ % in PID-3"
    ack = build_ack(custom, AckDecision.application_reject(102, text, "PID^1^3^1^1"))
    fields = {s[:3]: s.split(b"#") for s in ack.split(b"\r") if s}
    assert ack.startswith(b"MSH#$%^&#RECV#RFAC#SEND#SFAC#")
    assert fields[b"MSH"][8] == b"ACK$A08$ACK"
    assert fields[b"MSH"][10:12] == [b"T", b"2.6"]
    assert fields[b"MSA"] == [b"MSA", b"AR", b"CTRL9"]
    assert fields[b"ERR"][2] == b"PID$1$3$1$1"
    assert fields[b"ERR"][3] == b"102$Data type error$HL70357"
    assert fields[b"ERR"][8] == b"bad | value ^E^ ^T^ ^F^ ^S^ ^R^ in PID-3"
    assert parse_ack(ack) == Ack("AR", "CTRL9", text, "PID^1^3^1^1")


def test_build_ack_before_v2_5_puts_the_error_in_err_1_and_msa_3() -> None:
    custom = b"MSH#$%^&#SEND#SFAC#RECV#RFAC#20240101##ADT$A01#CTRL3#P#2.3\rPID#1\r"
    ack = build_ack(custom, AckDecision.application_error(101, "PID-3 # required", "PID^1^3"))
    fields = {s[:3]: s.split(b"#") for s in ack.split(b"\r") if s}
    assert fields[b"MSH"][8] == b"ACK$A01"  # no message structure before v2.3.1
    assert fields[b"MSA"] == [b"MSA", b"AE", b"CTRL3", b"PID-3 ^F^ required"]
    assert fields[b"ERR"] == [b"ERR", b"PID$1$3$101&Required field missing&HL70357"]
    assert parse_ack(ack) == Ack("AE", "CTRL3", "PID-3 # required", "PID^1^3")


@pytest.mark.parametrize("broken", [b"", b"garbage", b"MSH", b"MSH|^~|A", b"MSHA^~\\&|"])
def test_build_ack_for_an_unreadable_message_uses_defaults(broken: bytes) -> None:
    ack = build_ack(broken, AckDecision.application_reject(100, "no MSH"))
    parts = segments(ack)
    assert parts["MSH"][1] == "^~\\&" and parts["MSH"][8] == "ACK" and parts["MSH"][11] == "2.5"
    assert parts["MSA"] == ["MSA", "AR", ""]
    assert parse_ack(ack) == Ack("AR", "", "no MSH")


def test_ack_decisions_are_checked() -> None:
    with pytest.raises(ValueError):
        AckDecision("AX")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        AckDecision("AA", AckDecision.application_error(101, "x").error)


# --- the framer without sockets -----------------------------------------------------------------

_payloads = st.lists(
    st.binary(min_size=1, max_size=60).filter(lambda b: 0x0B not in b and 0x1C not in b),
    min_size=1,
    max_size=6,
)


@settings(max_examples=200, deadline=None)
@given(payloads=_payloads, junk=st.binary(max_size=8), cuts=st.lists(st.integers(0, 400)))
# Found by this test: an oversize frame's head stopped filling once the limit was passed.
@example(payloads=[b"\x00" * 3, b"\x00" * 42], junk=b"", cuts=[48])
def test_any_split_of_the_stream_yields_the_same_frames(
    payloads: list[bytes], junk: bytes, cuts: list[int]
) -> None:
    junk = junk.replace(b"\x0b", b"")
    stream = b"".join(junk + frame(payload) for payload in payloads)
    framer = MllpFramer(max_frame_bytes=40)
    events = []
    previous = 0
    for cut in [*sorted(c for c in cuts if c < len(stream)), len(stream)]:
        events += framer.feed(stream[previous:cut])
        previous = cut
    expected = [Frame(p) if len(p) <= 40 else OversizeFrame(len(p), p) for p in payloads]
    assert events == expected
    assert framer.discarded_bytes == len(junk) * len(payloads)
    assert not framer.in_frame


def test_a_new_start_block_abandons_the_partial_frame() -> None:
    framer = MllpFramer(max_frame_bytes=100)
    assert framer.feed(b"\x0bpartial") == []
    assert framer.feed(b"\x0bwhole\x1c\x0d") == [Frame(b"whole")]
    assert framer.discarded_bytes == len(b"\x0bpartial")


def test_a_frame_of_exactly_the_limit_passes_even_with_the_end_block_split() -> None:
    framer = MllpFramer(max_frame_bytes=5)
    assert framer.feed(b"\x0b12345\x1c") == []
    assert framer.feed(b"\x0d") == [Frame(b"12345")]
    assert framer.feed(b"\x0b123456\x1c") == []
    assert framer.feed(b"\x0d") == [OversizeFrame(6, b"123456")]
