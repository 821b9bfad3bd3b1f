"""The MLLP listener with Kafka behind it: every AA is a record on ehr.raw.hl7v2, and nothing
that was not written is acknowledged. Real sockets, the real broker."""

from __future__ import annotations

import asyncio
import signal
import ssl
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import pytest
import pytest_asyncio
from aiokafka import AIOKafkaProducer

from concord.config import MllpSettings
from concord.events import codec
from concord.hl7v2 import er7
from concord.ingestion.gateway import KafkaRawHl7Port, MllpGateway
from concord.ingestion.hl7v2 import ingest_hl7v2
from concord.ingestion.mllp import Ack, MllpError, MllpServer, frame, parse_ack, send_messages
from concord.runtime.reading import read_topic
from concord.stack.broker import BrokerInfo, start_broker
from concord.stack.processes import stop_process
from concord.topics import DEADLETTER, RAW_HL7V2
from mllp_client import HOST, RawClient
from throwaway_ca import ThrowawayCa, need_openssl

pytestmark = pytest.mark.integration

MAX_FRAME = 4096
CLIENTS = 20
PER_CLIENT = 10


def adt(control_id: str, sending_application: str = "ADT-APP") -> bytes:
    return (
        b"MSH|^~\\&|"
        + sending_application.encode()
        + b"|GH|CONCORD|GH|20240301083000-0500||ADT^A08^ADT_A01|"
        + control_id.encode()
        + b"|P|2.5.1\rEVN|A08|20240301082500-0500\rPID|1||MRN-"
        + control_id.encode()
        + b"^^^GH^MR||Quorvatz^Ann||19700512|F\r"
    )


@dataclass
class Listener:
    server: MllpServer
    source: str


def producer_for(bootstrap: str, **options: object) -> AIOKafkaProducer:
    return AIOKafkaProducer(
        bootstrap_servers=bootstrap, acks="all", linger_ms=2, enable_idempotence=False, **options
    )


@pytest_asyncio.fixture
async def listener(broker: BrokerInfo) -> AsyncIterator[Listener]:
    producer = producer_for(broker.bootstrap_servers)
    await producer.start()
    source = f"mllp-{uuid.uuid4().hex[:8]}"
    ingest = partial(ingest_hl7v2, max_payload_bytes=1_000_000)
    gateway = MllpGateway(KafkaRawHl7Port(producer), ingest, source=source)
    server = MllpServer(gateway.handle, host=HOST, port=0, max_frame_bytes=MAX_FRAME)
    try:
        async with server:
            yield Listener(server, source)
    finally:
        await producer.stop()


async def written(bootstrap: str, topic: str, source: str) -> list[bytes]:
    """The values on `topic` whose source header (or dead letter's original one) is `source`."""
    values = []
    for record in await read_topic(bootstrap, topic):
        if topic == DEADLETTER:
            letter = codec.DEAD_LETTER.decode(record.value)
            headers = [(h.key, h.value) for h in letter.original_headers]
            value = letter.original_value
        else:
            headers, value = list(record.headers), record.value
        if (("source", source.encode())) in headers:
            values.append(value)
    return values


def control_id(message: bytes) -> str:
    return er7.parse(message).msh.value(10)


async def sequential(port: int, number: int) -> list[Ack]:
    ids = [f"S{number:02d}-{index}" for index in range(PER_CLIENT)]
    return await send_messages(HOST, port, [adt(i) for i in ids])


async def coalesced_and_split(port: int, number: int) -> list[Ack]:
    """Half the messages in one write, the rest in 7-byte pieces."""
    ids = [f"C{number:02d}-{index}" for index in range(PER_CLIENT)]
    client = await RawClient.connect(port)
    half = PER_CLIENT // 2
    await client.write(b"".join(frame(adt(i)) for i in ids[:half]))
    acks = [parse_ack(await client.ack()) for _ in range(half)]
    for i in ids[half:]:
        framed = frame(adt(i))
        for start in range(0, len(framed), 7):
            await client.write(framed[start : start + 7])
        acks.append(parse_ack(await client.ack()))
    await client.close()
    return acks


@pytest.mark.asyncio
async def test_every_aa_is_a_record_on_kafka_and_nothing_else_is(
    broker: BrokerInfo, listener: Listener
) -> None:
    port = listener.server.port
    clients = [
        (sequential if number % 2 == 0 else coalesced_and_split)(port, number)
        for number in range(CLIENTS)
    ]

    async def oversize() -> list[Ack]:
        client = await RawClient.connect(port)
        await client.write(frame(adt("BIG") + b"NTE|1||" + b"x" * MAX_FRAME + b"\r"))
        ack = parse_ack(await client.ack())
        await client.close()
        return [ack]

    async def gone_mid_frame() -> list[Ack]:
        client = await RawClient.connect(port)
        framed = frame(adt("HALF"))
        await client.write(framed[: len(framed) // 2])
        await client.close()
        return []

    async def invalid() -> list[Ack]:
        no_patient = adt("BAD").replace(b"MRN-BAD^^^GH^MR", b"")
        return await send_messages(HOST, port, [no_patient])

    results = await asyncio.gather(*clients, oversize(), gone_mid_frame(), invalid())
    acks = [ack for result in results for ack in result]

    accepted = sorted(ack.control_id for ack in acks if ack.code == "AA")
    assert len(accepted) == CLIENTS * PER_CLIENT
    by_id = {ack.control_id: ack for ack in acks}
    assert by_id["BIG"].code == "AR" and by_id["BIG"].error == f"frame exceeds {MAX_FRAME} bytes"
    assert by_id["BAD"].code == "AE" and by_id["BAD"].location == "PID^1^3"
    assert "HALF" not in by_id

    on_kafka = await written(broker.bootstrap_servers, RAW_HL7V2, listener.source)
    # The same multiset: each acknowledged message once, and nothing unacknowledged.
    assert sorted(control_id(value) for value in on_kafka) == accepted
    letters = await written(broker.bootstrap_servers, DEADLETTER, listener.source)
    assert [control_id(value) for value in letters] == ["BAD"]


@pytest.mark.asyncio
async def test_without_the_broker_nothing_is_acknowledged(tmp_path: Path) -> None:
    own = await start_broker(tmp_path)
    # Short timeouts so the writes that cannot finish fail fast and the producer stops.
    producer = producer_for(own.bootstrap_servers, request_timeout_ms=2000)
    await producer.start()
    ingest = partial(ingest_hl7v2, max_payload_bytes=1_000_000)
    gateway = MllpGateway(
        KafkaRawHl7Port(producer), ingest, source="down-test", write_timeout_seconds=2.0
    )
    try:
        async with MllpServer(gateway.handle, host=HOST, port=0) as server:
            before = await send_messages(HOST, server.port, [adt("UP-1")])
            stop_process(own.record, sig=signal.SIGKILL)
            after = await send_messages(HOST, server.port, [adt("DOWN-1"), adt("DOWN-2")])
    finally:
        stop_process(own.record)
        await producer.stop()
    assert [ack.code for ack in before] == ["AA"]
    assert [(ack.code, ack.control_id) for ack in after] == [("AE", "DOWN-1"), ("AE", "DOWN-2")]
    assert all(ack.error == "internal error while accepting the message" for ack in after)


@pytest.mark.asyncio
async def test_over_mutual_tls_each_record_is_its_certificates_source_whatever_msh_3_says(
    broker: BrokerInfo, tmp_path: Path
) -> None:
    """Two senders, each claiming the other in MSH-3: Kafka records each under the source its
    client certificate is configured for. A client without a certificate gets no ACK."""
    need_openssl()
    run = uuid.uuid4().hex[:8]
    ca = ThrowawayCa(tmp_path / "ca")
    server_cert = ca.issue("mllp-server", server=True)
    lab, ehr = f"lab-{run}", f"ehr-{run}"
    settings = MllpSettings(
        mllp_host=HOST, mllp_port=0, mllp_tls_certfile=server_cert.cert,
        mllp_tls_keyfile=server_cert.key, mllp_tls_client_cafile=ca.cert,
        mllp_client_sources={"lab-engine": lab, "ehr-engine": ehr},
    )  # fmt: skip

    def client(name: str | None) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=ca.cert)
        if name is not None:
            issued = ca.issue(name)
            context.load_cert_chain(issued.cert, issued.key)
        return context

    producer = producer_for(broker.bootstrap_servers)
    await producer.start()
    ingest = partial(ingest_hl7v2, max_payload_bytes=1_000_000)
    gateway = MllpGateway(
        KafkaRawHl7Port(producer), ingest, client_sources=settings.mllp_client_sources
    )
    try:
        async with MllpServer.from_settings(gateway.handle, settings) as server:
            port = server.port
            from_lab = await send_messages(
                HOST, port, [adt(f"L{run}-{n}", ehr) for n in range(3)], ssl=client("lab-engine")
            )
            from_ehr = await send_messages(
                HOST, port, [adt(f"E{run}-{n}", lab) for n in range(2)], ssl=client("ehr-engine")
            )
            with pytest.raises(MllpError):
                await send_messages(HOST, port, [adt(f"X{run}", lab)], ssl=client(None), timeout=2)
    finally:
        await producer.stop()
    assert [ack.code for ack in from_lab + from_ehr] == ["AA"] * 5
    on_kafka = {
        source: sorted(
            control_id(v) for v in await written(broker.bootstrap_servers, RAW_HL7V2, source)
        )
        for source in (lab, ehr)
    }
    assert on_kafka == {
        lab: [f"L{run}-{n}" for n in range(3)],
        ehr: [f"E{run}-{n}" for n in range(2)],
    }
