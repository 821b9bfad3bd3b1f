"""A TCP forwarder to put between the workers and the broker, and cut: `cut()` closes every
connection it carries (abruptly: a reset, as a dropped network or a dead peer shows) and stops
listening, so new connections are refused; `restore()` listens again on the same port.

It runs its own event loop in a daemon thread, so that it serves every process of a stack for
as long as a test module lasts, whichever event loop each test runs in; `cut` and `restore`
are called from any thread and return once done.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

from concord.stack.processes import LOOPBACK, free_port

T = TypeVar("T")
CHUNK = 64 * 1024


class TcpProxy:
    """Forwards LOOPBACK:`port` (free by default) to LOOPBACK:`target_port`."""

    def __init__(self, target_port: int, *, port: int | None = None) -> None:
        self.port = port or free_port()
        self.target_port = target_port
        self.accepted = 0  # connections forwarded since the start
        self.dropped = 0  # of them, closed by a cut
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None
        self._open: set[asyncio.StreamWriter] = set()

    @property
    def address(self) -> str:
        return f"{LOOPBACK}:{self.port}"

    @property
    def is_cut(self) -> bool:
        return self._server is None

    def start(self) -> TcpProxy:
        self._thread.start()
        self._call(self._listen())
        return self

    def cut(self) -> int:
        """Stop listening and drop every open connection; returns how many were dropped."""
        return self._call(self._cut())

    def restore(self) -> None:
        self._call(self._listen())

    def close(self) -> None:
        if self._thread.is_alive():
            self._call(self._cut())
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=5)
        self._loop.close()

    def _call(self, work: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(work, self._loop).result(timeout=10)

    async def _listen(self) -> None:
        if self._server is None:
            self._server = await asyncio.start_server(
                self._forward, LOOPBACK, self.port, reuse_address=True
            )

    async def _cut(self) -> int:
        server, self._server = self._server, None
        if server is not None:
            server.close()
        dropped = list(self._open)
        for writer in dropped:
            writer.transport.abort()
        self._open.clear()
        if server is not None:
            await server.wait_closed()  # (3.12+: once its connections are gone too)
        self.dropped += len(dropped) // 2
        return len(dropped) // 2

    async def _forward(
        self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter
    ) -> None:
        if self._server is None:  # accepted just as the cut came
            client_w.transport.abort()
            return
        try:
            broker_r, broker_w = await asyncio.open_connection(LOOPBACK, self.target_port)
        except OSError:
            client_w.transport.abort()
            return
        if self._server is None:  # cut while connecting
            for writer in (client_w, broker_w):
                writer.transport.abort()
            return
        self.accepted += 1
        pair = {client_w, broker_w}
        self._open |= pair
        pipes = [
            asyncio.ensure_future(_pipe(client_r, broker_w)),
            asyncio.ensure_future(_pipe(broker_r, client_w)),
        ]
        try:
            # Either side closing or failing ends the connection (Kafka has no half-close).
            await asyncio.wait(pipes, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for pipe in pipes:
                pipe.cancel()
            self._open -= pair
            for writer in pair:
                writer.transport.abort()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Copy until end of stream or an error on either side."""
    with contextlib.suppress(OSError):
        while data := await reader.read(CHUNK):
            writer.write(data)
            await writer.drain()
