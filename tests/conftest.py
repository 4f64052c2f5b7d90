"""Fixtures shared by every tier that runs the reference server on a free loopback port."""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import pytest

from trio_realtime.server import RealtimeServer, ServerConfig, serve_realtime

if TYPE_CHECKING:
    import trio

StartServer = Callable[..., Awaitable[RealtimeServer]]


@pytest.fixture
def start_server(nursery: trio.Nursery) -> StartServer:
    """``await start_server(jwt_secret=None, database_url=None, **ServerConfig fields)``: our
    reference server on 127.0.0.1 (port 0) for the duration of the test."""

    async def start(
        jwt_secret: str | None = None, database_url: str | None = None, **config: Any
    ) -> RealtimeServer:
        server: RealtimeServer = await nursery.start(
            functools.partial(
                serve_realtime,
                "127.0.0.1",
                0,
                jwt_secret=jwt_secret,
                config=ServerConfig(**config),
                database_url=database_url,
            )
        )
        return server

    return start


@pytest.fixture
async def server(start_server: StartServer) -> RealtimeServer:
    """A reference server with the default configuration."""
    return await start_server()
