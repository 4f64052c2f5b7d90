"""Fixtures for the interop tier: our reference server on a free loopback port.

The official clients run as subprocesses driven through ``_peers.open_peer``; the tests in
this directory are marked ``interop`` and are never skipped: a missing Node, npm package or
PyPI ``realtime`` package fails them with a message to run ``scripts/bootstrap``.
"""

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
    """Start our reference server on 127.0.0.1 (free port) for the duration of the test."""

    async def start(jwt_secret: str | None = None, **config: Any) -> RealtimeServer:
        server: RealtimeServer = await nursery.start(
            functools.partial(
                serve_realtime, "127.0.0.1", 0, jwt_secret=jwt_secret, config=ServerConfig(**config)
            )
        )
        return server

    return start


@pytest.fixture
async def server(start_server: StartServer) -> RealtimeServer:
    return await start_server()
