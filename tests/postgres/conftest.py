"""Fixtures for the postgres_changes tests: one embedded PostgreSQL for the session, and per
test a fresh schema, a reference server streaming from it, and raw WebSocket clients.

These tests are mandatory: if PostgreSQL cannot be started (binaries or wal2json missing) the
``postgres`` fixture raises and every test here errors, with the message saying what to
install (``bash scripts/bootstrap`` does it). They never skip.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import pytest
import trio
from _pg_helpers import Database, RawClient
from trio_websocket import wrap_client_stream

from trio_realtime._embedded_postgres import EmbeddedPostgres, _Cluster
from trio_realtime.server import RealtimeServer, ServerConfig, serve_realtime

Connect = Callable[..., AbstractAsyncContextManager[RawClient]]
StartServer = Callable[..., Awaitable[RealtimeServer]]

_schemas = itertools.count(1)


@pytest.fixture(scope="session")
def postgres() -> Iterator[EmbeddedPostgres]:
    """The session's PostgreSQL (about half a second to start)."""
    cluster = _Cluster()
    try:
        yield cluster.start()
    finally:
        cluster.stop()


@pytest.fixture
def db(postgres: EmbeddedPostgres) -> Iterator[Database]:
    database = Database(postgres.dsn)
    try:
        yield database
    finally:
        database.close()


@pytest.fixture
async def schema(db: Database) -> str:
    """A fresh schema for this test's tables, so tests never see each other's rows."""
    name = f"t{next(_schemas)}"
    await db.execute(f"create schema {name}")
    return name


@pytest.fixture
def start_server(nursery: trio.Nursery, postgres: EmbeddedPostgres) -> StartServer:
    async def start(database_url: str | None = postgres.dsn, **config: Any) -> RealtimeServer:
        server: RealtimeServer = await nursery.start(functools.partial(
            serve_realtime, "127.0.0.1", 0, config=ServerConfig(**config), database_url=database_url
        ))
        return server

    return start


@pytest.fixture
async def server(start_server: StartServer) -> RealtimeServer:
    return await start_server()


@pytest.fixture
def connect() -> Connect:
    @asynccontextmanager
    async def connect(server: RealtimeServer, vsn: str = "2.0.0") -> AsyncIterator[RawClient]:
        resource = f"/realtime/v1/websocket?vsn={vsn}&apikey=anon-key"
        async with trio.open_nursery() as nursery:
            stream = await trio.open_tcp_stream("127.0.0.1", server.port)
            async with stream:
                ws = await wrap_client_stream(nursery, stream, f"127.0.0.1:{server.port}", resource,
                                              max_message_size=16 * 2**20)
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
