"""Fixtures for the reference server tests: a server on a free loopback port and raw clients."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager

import pytest
import trio
from _server_helpers import RawClient
from trio_websocket import wrap_client_stream

from trio_realtime.server import RealtimeServer

Connect = Callable[..., AbstractAsyncContextManager[RawClient]]
StartServer = Callable[..., Awaitable[RealtimeServer]]


@pytest.fixture
def connect() -> Connect:
    @asynccontextmanager
    async def connect(server: RealtimeServer, vsn: str = "1.0.0", apikey: str | None = "anon-key",
                      headers: list[tuple[bytes, bytes]] | None = None) -> AsyncIterator[RawClient]:
        # Built from wrap_client_stream so this fixture owns (and always closes) the TCP stream:
        # trio-websocket's own client leaves it open when the server closes first.
        resource = f"/realtime/v1/websocket?vsn={vsn}"
        if apikey is not None:
            resource += f"&apikey={apikey}"
        async with trio.open_nursery() as nursery:
            stream = await trio.open_tcp_stream("127.0.0.1", server.port)
            async with stream:
                ws = await wrap_client_stream(nursery, stream, f"127.0.0.1:{server.port}", resource,
                                              extra_headers=headers)
                try:
                    yield RawClient(ws, vsn)
                finally:
                    with trio.move_on_after(2):
                        await ws.aclose()

    return connect


@pytest.fixture(params=["1.0.0", "2.0.0"])
def vsn(request: pytest.FixtureRequest) -> str:
    value: str = request.param
    return value
