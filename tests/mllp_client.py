"""A raw MLLP test client: writes whatever bytes a test wants (split, coalesced, cut off) and
reads the framed ACKs, for the listener's tests with and without Kafka behind it."""

from __future__ import annotations

import asyncio

from concord.ingestion.mllp import Frame, MllpFramer

HOST = "127.0.0.1"


async def read_ack(reader: asyncio.StreamReader, framer: MllpFramer, pending: list[bytes]) -> bytes:
    async with asyncio.timeout(5):
        while not pending:
            data = await reader.read(65536)
            assert data, "the server closed the connection instead of answering"
            for event in framer.feed(data):
                assert isinstance(event, Frame)
                pending.append(event.payload)
    return pending.pop(0)


class RawClient:
    """A socket that writes whatever bytes a test wants and reads framed ACKs."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.framer = MllpFramer()
        self.pending: list[bytes] = []

    @classmethod
    async def connect(cls, port: int) -> RawClient:
        reader, writer = await asyncio.open_connection(HOST, port)
        return cls(reader, writer)

    async def write(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def ack(self) -> bytes:
        return await read_ack(self.reader, self.framer, self.pending)

    async def close(self) -> None:
        self.writer.close()
        await self.writer.wait_closed()
