"""Broadcast storage and replay (PROTOCOL.md §4.7) and the replay-completeness extension.

Raw frames over real sockets, against both stores: memory (no database) and PostgreSQL (an
embedded throwaway cluster, shared by this module; every test uses its own topics). The
ordering barrier is ``RawClient.sync()`` (see ``_server_helpers``), never a sleep.
"""

from __future__ import annotations

import ast
import functools
import itertools
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import trio
from _server_helpers import kind3

from trio_realtime._embedded_postgres import _Cluster
from trio_realtime.server import ServerConfig, _authorization, _limits, _replay, serve_realtime
from trio_realtime.server._replay import (
    MemoryMessageStore,
    ReplayRequest,
    StoredMessage,
    replay_request,
)

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Iterator

    from _server_helpers import Frame, RawClient
    from conftest import Connect

    from trio_realtime._embedded_postgres import EmbeddedPostgres
    from trio_realtime.server import RealtimeServer

    Start = Callable[..., Awaitable[RealtimeServer]]

_topics = itertools.count(1)


@pytest.fixture(scope="module")
def postgres() -> Iterator[EmbeddedPostgres]:
    cluster = _Cluster()
    try:
        yield cluster.start()
    finally:
        cluster.stop()


@pytest.fixture(params=["memory", "postgres"])
def store(request: pytest.FixtureRequest) -> str:
    value: str = request.param
    return value


@pytest.fixture
def start(nursery: trio.Nursery, store: str, request: pytest.FixtureRequest) -> Start:
    """Start a server on the parametrized store (PostgreSQL only when asked for)."""
    dsn = request.getfixturevalue("postgres").dsn if store == "postgres" else None

    async def start(**config: Any) -> RealtimeServer:
        server: RealtimeServer = await nursery.start(functools.partial(
            serve_realtime, "127.0.0.1", 0, config=ServerConfig(**config), database_url=dsn))
        return server

    return start


@pytest.fixture
def topic() -> str:
    return f"realtime:replay-{next(_topics)}"


def bcast(event: str, payload: Any) -> dict[str, Any]:
    return {"type": "broadcast", "event": event, "payload": payload}


async def publish(client: RawClient, topic: str, count: int, *, start: int = 0) -> list[Frame]:
    """Join ``topic`` privately with ack+self, send ``count`` broadcasts; their self echoes."""
    await client.join(topic, {"private": True, "broadcast": {"ack": True, "self": True}})
    for n in range(start, start + count):
        await client.push(topic, "broadcast", bcast("m", {"n": n}), join_ref="1")
    frames = await client.sync()
    echoes = [f for f in frames if f.event == "broadcast"]
    assert [f.payload["payload"]["n"] for f in echoes] == list(range(start, start + count))
    assert sum(f.event == "phx_reply" for f in frames) == count
    return echoes


def numbers(frames: list[Frame]) -> list[int]:
    """The ``n`` of each broadcast (other frames, e.g. a previous join's phx_close, skipped)."""
    return [f.payload["payload"]["n"] for f in frames if f.event == "broadcast"]


def replay_join(since: int, limit: int | None = None) -> dict[str, Any]:
    replay: dict[str, Any] = {"since": since}
    if limit is not None:
        replay["limit"] = limit
    return {"private": True, "broadcast": {"replay": replay}}


# -- live delivery carries meta.id ---------------------------------------------------------------


async def test_private_broadcasts_carry_meta_id(start: Start, connect: Connect, topic: str) -> None:
    with trio.fail_after(10):
        server = await start()
        async with (
            connect(server, "2.0.0") as sender,
            connect(server, "1.0.0") as v1,
            connect(server, "2.0.0") as v2,
        ):
            await v1.join(topic, {"private": True})
            await v2.join(topic, {"private": True})
            await sender.join(topic, {"private": True, "broadcast": {"ack": True}})
            await sender.push(topic, "broadcast", bcast("json", {"a": 1}), join_ref="1")
            await sender.send_raw(kind3("1", "3", topic, "bin", b"\x00\x01", encoding=0))
            await sender.send_raw(kind3("1", "4", topic, "k3json", b'{"b":2}'))
            assert [f.reply[0] for f in await sender.sync()] == ["ok", "ok", "ok"]
            got_v1 = await v1.sync()
            got_v2 = await v2.sync()
    # vsn 1.0.0: JSON payload.meta; the binary one is not delivered at all.
    assert [f.payload["event"] for f in got_v1] == ["json", "k3json"]
    # vsn 2.0.0: the JSON push as a text frame, the two user broadcasts as kind 4 + metadata.
    assert [type(f.raw) for f in got_v2] == [str, bytes, bytes]
    ids = [f.payload["meta"]["id"] for f in got_v2]
    assert len(set(ids)) == 3
    assert [f.payload["meta"]["id"] for f in got_v1] == [ids[0], ids[2]]
    for frame in got_v1 + got_v2:
        meta = frame.payload["meta"]
        assert set(meta) == {"id", "inserted_at"}
        assert isinstance(meta["inserted_at"], int)
        assert "replayed" not in meta
    assert got_v2[0].payload == {**bcast("json", {"a": 1}), "meta": got_v2[0].payload["meta"]}
    assert got_v2[1].payload["payload"] == b"\x00\x01"
    assert [f.payload["meta"]["inserted_at"] for f in got_v2] == sorted(
        f.payload["meta"]["inserted_at"] for f in got_v2)
    assert server.statistics().stored_messages >= 3


async def test_public_broadcasts_are_not_stored(start: Start, connect: Connect, topic: str) -> None:
    with trio.fail_after(10):
        server = await start()
        async with connect(server, "2.0.0") as a, connect(server, "2.0.0") as b:
            await a.join(topic, {"broadcast": {"ack": True}})
            await b.join(topic)
            await a.push(topic, "broadcast", bcast("m", {}), join_ref="1")
            await a.sync()
            [frame] = await b.sync()
            assert frame.payload == bcast("m", {})  # verbatim, no meta
            assert server.statistics().stored_messages == 0


async def test_client_meta_is_replaced(start: Start, connect: Connect, topic: str) -> None:
    with trio.fail_after(10):
        server = await start()
        async with connect(server, "1.0.0") as a:
            await a.join(topic, {"private": True, "broadcast": {"self": True}})
            forged = {**bcast("m", 1), "meta": {"id": "forged", "x": 1}}
            await a.push(topic, "broadcast", forged, join_ref="1")
            [frame] = await a.sync()
            assert frame.payload["meta"]["id"] != "forged"
            assert set(frame.payload["meta"]) == {"id", "inserted_at"}


# -- replay -----------------------------------------------------------------------------------------


async def test_replay_newest_limit_oldest_first(start: Start, connect: Connect, vsn: str, topic: str) -> None:
    with trio.fail_after(10):
        server = await start()
        async with connect(server, "1.0.0") as pub, connect(server, vsn) as sub:
            echoes = await publish(pub, topic, 5)
            reply = await sub.join(topic, replay_join(0, 3))
            assert reply.reply == ("ok", {"postgres_changes": [], "replay": {"count": 3, "complete": False}})
            frames = await sub.sync()
    assert [f.payload["payload"]["n"] for f in frames] == [2, 3, 4]
    for frame, echo in zip(frames, echoes[2:], strict=True):
        assert frame.event == "broadcast"
        assert frame.payload["meta"] == {**echo.payload["meta"], "replayed": True}
        assert frame.ref is None
        # A channel push: on vsn 2.0.0 it carries the join_ref (the join's ref, "1").
        assert frame.join_ref == ("1" if vsn == "2.0.0" else "<absent>")
    assert server.statistics().replayed_messages == 3


async def test_replay_complete_when_fewer_than_limit(start: Start, connect: Connect, topic: str) -> None:
    with trio.fail_after(10):
        server = await start()
        async with connect(server) as pub, connect(server) as sub, connect(server) as empty:
            await publish(pub, topic, 2)
            reply = await sub.join(topic, replay_join(0, 5))
            assert reply.reply[1]["replay"] == {"count": 2, "complete": True}
            assert [f.payload["payload"]["n"] for f in await sub.sync()] == [0, 1]
            # nothing stored at all: complete, and nothing follows the reply
            reply = await empty.join(f"{topic}-none", replay_join(0))
            assert reply.reply[1]["replay"] == {"count": 0, "complete": True}
            assert await empty.sync() == []


async def test_replay_since_is_inclusive(start: Start, connect: Connect, topic: str) -> None:
    """``since`` = a message's ``meta.inserted_at`` replays it and everything after it."""
    with trio.fail_after(10):
        server = await start()
        async with connect(server) as pub, connect(server) as sub:
            echoes = await publish(pub, topic, 4)
            stamp = echoes[2].payload["meta"]["inserted_at"]
            reply = await sub.join(topic, replay_join(stamp, 25))
            replayed = [f.payload["payload"]["n"] for f in await sub.sync()]
            same_ms = [e.payload["payload"]["n"] for e in echoes if e.payload["meta"]["inserted_at"] >= stamp]
            assert replayed == same_ms
            assert 2 in replayed
            assert reply.reply[1]["replay"] == {"count": len(replayed), "complete": True}
            # a since in the future replays nothing
            reply = await sub.join(f"{topic}-later", replay_join(stamp + 10_000_000))
            assert reply.reply[1]["replay"] == {"count": 0, "complete": True}


async def test_replay_of_binary_messages(start: Start, connect: Connect, topic: str) -> None:
    with trio.fail_after(10):
        server = await start()
        async with connect(server, "2.0.0") as pub, connect(server, "2.0.0") as v2, \
                connect(server, "1.0.0") as v1:
            await pub.join(topic, {"private": True, "broadcast": {"ack": True}})
            await pub.send_raw(kind3("1", "2", topic, "bin", b"\xff\x00", encoding=0))
            await pub.push(topic, "broadcast", bcast("json", [1]), join_ref="1")
            await pub.send_raw(kind3("1", "4", topic, "k3", b'{"c":3}'))
            assert [f.reply[0] for f in await pub.sync()] == ["ok", "ok", "ok"]
            for client in (v2, v1):
                reply = await client.join(topic, replay_join(0, 10))
                assert reply.reply[1]["replay"] == {"count": 3, "complete": True}
            got_v2 = await v2.sync()
            got_v1 = await v1.sync()
    # vsn 2.0.0: the binary one as kind 4 with the meta as metadata; JSON ones as text pushes
    # (the official server replays stored JSON as JSON, whatever framing it arrived in).
    assert [(type(f.raw), f.payload["event"]) for f in got_v2] == [(bytes, "bin"), (str, "json"), (str, "k3")]
    assert got_v2[0].payload["payload"] == b"\xff\x00"
    assert got_v2[0].payload["meta"]["replayed"] is True
    assert got_v2[2].payload["payload"] == {"c": 3}
    # vsn 1.0.0: the binary one is skipped
    assert [f.payload["event"] for f in got_v1] == ["json", "k3"]


@pytest.mark.parametrize(
    ("limit", "expected"),
    [(None, 4), (100, 4), (2, 2), (0, 1), (-5, 1)],
    ids=["default", "above-max", "within", "zero", "negative"],
)
async def test_replay_limit_is_clamped(start: Start, connect: Connect, topic: str, limit: int | None,
                                       expected: int) -> None:
    with trio.fail_after(10):
        server = await start(replay_max_limit=4)
        async with connect(server) as pub, connect(server) as sub:
            await publish(pub, topic, 6)
            reply = await sub.join(topic, replay_join(0, limit))
            assert reply.reply[1]["replay"] == {"count": expected, "complete": False}
            assert [f.payload["payload"]["n"] for f in await sub.sync()] == list(range(6 - expected, 6))


async def test_default_limit_is_25(start: Start, connect: Connect, topic: str) -> None:
    with trio.fail_after(10):
        server = await start(replay_max_limit=100)
        async with connect(server) as pub, connect(server) as sub:
            await publish(pub, topic, 30)
            reply = await sub.join(topic, replay_join(0))
            assert reply.reply[1]["replay"] == {"count": 25, "complete": False}
            assert len(await sub.sync()) == 25


@pytest.mark.parametrize(
    ("config", "reason"),
    [
        ({"broadcast": {"replay": {"since": 0}}}, "Replay is not allowed for public channels"),
        ({"private": True, "broadcast": {"replay": {"since": "0"}}}, "Replay params are not valid"),
        ({"private": True, "broadcast": {"replay": {"limit": 3}}}, "Replay params are not valid"),
        ({"private": True, "broadcast": {"replay": {"since": 0, "limit": 1.5}}},
         "Replay params are not valid"),
        ({"private": True, "broadcast": {"replay": {"since": True}}}, "Replay params are not valid"),
        ({"private": True, "broadcast": {"replay": 7}}, "Replay params are not valid"),
    ],
    ids=["public", "since-string", "since-missing", "limit-float", "since-bool", "not-a-map"],
)
async def test_replay_join_errors(start: Start, connect: Connect, vsn: str, topic: str,
                                  config: dict[str, Any], reason: str) -> None:
    with trio.fail_after(10):
        server = await start()
        async with connect(server, vsn) as client:
            reply = await client.join(topic, config)
            assert reply.reply == ("error", {"reason": f"UnableToReplayMessages: {reason}"})
            assert await client.sync() == []
            assert server.statistics().channels == 0


async def test_replayed_ids_are_not_delivered_again(start: Start, connect: Connect, topic: str) -> None:
    """A message both replayed and fanned out to a joining channel reaches it once.

    With a database the replay query runs while the server keeps serving, and broadcasts
    fanned out meanwhile are held for the joining channel; one committed before the query
    and fanned out after the channel subscribed is in both. Joins race a stream of acked
    broadcasts here; whatever interleaving happens, each joiner must see every message from
    its replay on exactly once, in order.
    """
    joiners = 6
    with trio.fail_after(20):
        server = await start(replay_max_limit=1000)
        async with connect(server, "2.0.0") as pub, trio.open_nursery() as nursery:
            await pub.join(topic, {"private": True, "broadcast": {"ack": True}})
            results: list[list[Frame]] = []
            done = trio.Event()

            async def publisher() -> None:
                for n in range(300):
                    await pub.push(topic, "broadcast", bcast("m", {"n": n}), join_ref="1")
                    await pub.reply_to(str(n + 2))  # ack: stored and fanned out
                done.set()

            async def joiner(index: int) -> None:
                async with connect(server, "2.0.0") as sub:
                    for _ in range(index * 7):
                        await sub.sync()  # stagger the joins through the stream
                    await sub.join(topic, replay_join(0, 1000))
                    await done.wait()
                    results.append(await sub.sync())

            nursery.start_soon(publisher)
            for index in range(joiners):
                nursery.start_soon(joiner, index)
    assert len(results) == joiners
    for frames in results:
        numbers = [f.payload["payload"]["n"] for f in frames]
        assert numbers == list(range(300)), numbers[:20]
        ids = [f.payload["meta"]["id"] for f in frames]
        assert len(set(ids)) == len(ids)


async def test_memory_eviction_makes_replay_incomplete(nursery: trio.Nursery, connect: Connect) -> None:
    with trio.fail_after(10):
        server: RealtimeServer = await nursery.start(functools.partial(
            serve_realtime, "127.0.0.1", 0, config=ServerConfig(replay_memory_per_topic=3)))
        async with connect(server) as pub, connect(server) as sub:
            echoes = await publish(pub, "realtime:evict", 5)
            stamps = [e.payload["meta"]["inserted_at"] for e in echoes]
            reply = await sub.join("realtime:evict", replay_join(0, 10))
            assert reply.reply[1]["replay"] == {"count": 3, "complete": False}
            assert [f.payload["payload"]["n"] for f in await sub.sync()] == [2, 3, 4]
            # A since after everything evicted (messages 0 and 1) is complete again.
            since = stamps[1] + 1
            reply = await sub.join("realtime:evict", replay_join(since, 10))
            expected = [n for n, s in enumerate(stamps) if s >= since]
            assert numbers(await sub.sync()) == expected
            assert reply.reply[1]["replay"] == {"count": len(expected), "complete": True}


async def test_database_store_survives_restart_and_trims(nursery: trio.Nursery, connect: Connect,
                                                         postgres: EmbeddedPostgres) -> None:
    topic = f"realtime:restart-{next(_topics)}"
    config = ServerConfig(replay_database_per_topic=10, replay_max_limit=50)
    with trio.fail_after(20):
        scope = trio.CancelScope()
        stopped = trio.Event()

        async def first(task_status: trio.TaskStatus[RealtimeServer]) -> None:
            try:
                with scope:
                    await serve_realtime("127.0.0.1", 0, config=config, database_url=postgres.dsn,
                                         task_status=task_status)
            finally:
                stopped.set()

        server: RealtimeServer = await nursery.start(first)
        async with connect(server) as pub:
            echoes = await publish(pub, topic, 99)
        scope.cancel()
        await stopped.wait()
        server = await nursery.start(functools.partial(
            serve_realtime, "127.0.0.1", 0, config=config, database_url=postgres.dsn))
        async with connect(server) as pub, connect(server) as sub:
            reply = await sub.join(topic, replay_join(0, 5))
            assert reply.reply[1]["replay"] == {"count": 5, "complete": False}
            frames = await sub.sync()
            assert [f.payload["meta"]["id"] for f in frames] == [e.payload["meta"]["id"] for e in echoes[-5:]]
            # A server trims a topic at its first insert there (then every 100th): 10 rows left.
            last = await publish(pub, topic, 1, start=99)
            assert numbers(await sub.sync()) == [99]  # live, to the joined subscriber
            reply = await sub.join(topic, replay_join(0, 50))
            assert reply.reply[1]["replay"] == {"count": 10, "complete": False}
            assert numbers(await sub.sync()) == list(range(90, 100))
            since = last[0].payload["meta"]["inserted_at"]
            reply = await sub.join(topic, replay_join(since, 50))
            evicted_stamps = [e.payload["meta"]["inserted_at"] for e in echoes[:90]]
            assert reply.reply[1]["replay"]["complete"] is (max(evicted_stamps) < since)


# -- sans-IO units -------------------------------------------------------------------------------


def _message(n: int, at: int, key: tuple[bool, str] = (True, "t")) -> StoredMessage:
    return StoredMessage(id=f"id{n}", key=key, inserted_at=at, payload=bcast("m", {"n": n}))


def test_replay_request_clamps_and_defaults() -> None:
    assert replay_request({"since": 5}, 100) == ReplayRequest(since=5, limit=25)
    assert replay_request({"since": 5}, 10) == ReplayRequest(since=5, limit=10)
    assert replay_request({"since": 5, "limit": None}, 100) == ReplayRequest(since=5, limit=25)
    assert replay_request({"since": 5, "limit": 0}, 100) == ReplayRequest(since=5, limit=1)
    assert replay_request({"since": 5, "limit": 99}, 50) == ReplayRequest(since=5, limit=50)
    assert replay_request({"since": 10**4000, "limit": 10**4000}, 50) == ReplayRequest(since=2**62, limit=50)
    assert replay_request({"since": -(10**30)}, 50).since == -(2**62)


def test_memory_store_selection_and_high_water_mark() -> None:
    store = MemoryMessageStore(per_topic=4)
    for n, at in enumerate([10, 20, 20, 30, 40, 50]):
        store.add(_message(n, at))
    store.add(_message(99, 15, key=(True, "other")))
    assert store.evicted_until((True, "t")) == 20  # messages 0 (10) and 1 (20) evicted
    now = 1_000

    def ids(since: int, limit: int) -> tuple[list[str], bool]:
        result = store.replay((True, "t"), ReplayRequest(since=since, limit=limit), now)
        return [m.id for m in result.messages], result.complete

    assert ids(0, 10) == (["id2", "id3", "id4", "id5"], False)  # evicted at/after since
    assert ids(20, 10) == (["id2", "id3", "id4", "id5"], False)  # 20 was evicted too
    assert ids(21, 10) == (["id3", "id4", "id5"], True)
    assert ids(21, 3) == (["id3", "id4", "id5"], False)  # the limit was reached
    assert ids(21, 2) == (["id4", "id5"], False)  # the newest, oldest first
    assert ids(51, 2) == ([], True)
    assert store.replay((False, "t"), ReplayRequest(since=0, limit=5), now).messages == ()
    # messages stamped more than a minute in the future are not replayed
    store.add(_message(7, now + 60_000))
    assert ids(45, 10) == (["id5"], True)


def test_stored_message_meta_and_storage_json() -> None:
    message = StoredMessage(id="x", key=(True, "t"), inserted_at=5,
                            payload={**bcast("e", {"a": "é"}), "meta": {"old": 1}})
    meta = {"id": "x", "inserted_at": 5}
    assert message.with_meta(replayed=False) == {**bcast("e", {"a": "é"}), "meta": meta}
    assert message.with_meta(replayed=True)["meta"] == {"id": "x", "inserted_at": 5, "replayed": True}
    text, binary = message.storage_json()
    assert binary is None
    assert json.loads(text) == bcast("e", {"a": "é"})
    assert text.isascii()
    binary_message = StoredMessage(id="y", key=(True, "t"), inserted_at=5, payload=bcast("e", b"\x00"))
    assert binary_message.binary
    assert binary_message.storage_json() == ('{"type":"broadcast","event":"e"}', b"\x00")
    with pytest.raises(ValueError, match="cannot be stored as JSON"):
        StoredMessage(id="z", key=(True, "t"), inserted_at=5, payload=bcast("e", float("inf"))).storage_json()


BANNED = {"trio", "trio_websocket", "wsproto", "socket", "time", "asyncio", "anyio", "select", "ssl",
          "psycopg"}


@pytest.mark.parametrize("module", [_replay, _limits, _authorization], ids=lambda m: m.__name__)
def test_new_sans_io_modules_import_no_io(module: object) -> None:
    tree = ast.parse(Path(module.__file__).read_text())  # type: ignore[attr-defined]
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        for name in names:
            assert name.split(".")[0] not in BANNED, f"{module} imports {name}"
