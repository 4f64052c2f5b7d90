"""The frame blaster: a minimal Realtime server that only floods broadcasts.

It answers the WebSocket upgrade (wsproto), waits for a ``phx_join``, replies ok, then writes
pre-framed broadcast frames (see :mod:`._frames`) as fast as the socket takes them, cycling
through a buffer of distinct messages, until the client goes away. The payload size comes from
the URL query (``&size=100``; default 100) and the framing from ``vsn``. Messages from the
client with a ref (heartbeats, ``phx_leave``) get an ok reply between two buffer writes, so
every client stays happy; nothing else is parsed.

Being a bulk ``send_all`` of ready bytes, it is far faster than any reader (the ``raw_socket``
reader in the throughput table shows its ceiling), so readers are measured, not the server.
"""

from __future__ import annotations

from typing import Final
from urllib.parse import parse_qs, urlsplit

import trio
from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Ping,
    Request,
    TextMessage,
)

from trio_realtime.protocol import serializer_for

from ._frames import blast_buffer, reply_frame, ws_frame

#: Distinct messages per buffer (cycled); a few MB at 10 KB.
MESSAGES_PER_BUFFER: Final = 512
_RECEIVE: Final = 65536


class Blaster:
    """Serves blasts; ``buffers`` caches one pre-framed buffer per (vsn, size)."""

    def __init__(self) -> None:
        self.buffers: dict[tuple[str, int], tuple[bytes, int]] = {}
        self.port = 0
        self.connections = 0

    def buffer(self, vsn: str, size: int) -> tuple[bytes, int]:
        key = (vsn, size)
        if key not in self.buffers:
            self.buffers[key] = blast_buffer(vsn, size, MESSAGES_PER_BUFFER)
        return self.buffers[key]

    async def serve(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        async with trio.open_nursery() as nursery:
            task_status.started(self.port)
            await trio.serve_listeners(self._handle, listeners, handler_nursery=nursery)

    async def _handle(self, stream: trio.SocketStream) -> None:
        self.connections += 1
        try:
            await _Session(self, stream).run()
        except* (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass  # the reader went away: that is how every blast ends
        finally:
            await trio.aclose_forcefully(stream)


class _Session:
    def __init__(self, blaster: Blaster, stream: trio.SocketStream) -> None:
        self.blaster = blaster
        self.stream = stream
        self.ws = WSConnection(ConnectionType.SERVER)
        self.vsn = "1.0.0"
        self.size = 100
        self.control: list[bytes] = []
        self.joined = trio.Event()
        self.finished = False

    async def run(self) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._read, nursery.cancel_scope)
            await self.joined.wait()
            buf, _ = self.blaster.buffer(self.vsn, self.size)
            view = memoryview(buf)
            while not self.finished:
                if self.control:
                    data, self.control = b"".join(self.control), []
                    await self.stream.send_all(data)
                await self.stream.send_all(view)
            nursery.cancel_scope.cancel()

    async def _read(self, scope: trio.CancelScope) -> None:
        serializer = None
        while True:
            data = await self.stream.receive_some(_RECEIVE)
            if not data:
                self.finished = True
                scope.cancel()
                return
            self.ws.receive_data(data)
            for event in self.ws.events():
                if isinstance(event, Request):
                    query = parse_qs(urlsplit(event.target).query)
                    self.vsn = query.get("vsn", ["1.0.0"])[0]
                    self.size = int(query.get("size", ["100"])[0])
                    serializer = serializer_for(self.vsn, "server")
                    await self.stream.send_all(self.ws.send(AcceptConnection()))
                elif isinstance(event, TextMessage | BytesMessage) and serializer is not None:
                    msg = serializer.decode(event.data)
                    if msg.ref is None:
                        continue
                    response = {"postgres_changes": []} if msg.event == "phx_join" else {}
                    frame = ws_frame(reply_frame(self.vsn, msg.topic, msg.ref, msg.join_ref, response))
                    if msg.event == "phx_join" and not self.joined.is_set():
                        await self.stream.send_all(frame)
                        self.joined.set()
                    else:
                        self.control.append(frame)
                elif isinstance(event, Ping):
                    self.control.append(self.ws.send(event.response()))
                elif isinstance(event, CloseConnection):
                    self.finished = True
                    scope.cancel()
                    return


def main() -> None:
    """``python -m benchmarks._blaster``: serve on a free loopback port (for profiling readers)."""

    async def serve() -> None:
        blaster = Blaster()
        async with trio.open_nursery() as nursery:
            port = await nursery.start(blaster.serve)
            print(f"ws://127.0.0.1:{port}/realtime/v1", flush=True)

    trio.run(serve)


if __name__ == "__main__":
    main()
