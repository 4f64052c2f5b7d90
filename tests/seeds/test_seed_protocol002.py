"""The seed-002 wire protocol (SPEC L7) end to end, on real loopback sockets.

The seed's server requirements, each checked here against ``serve_realtime`` — and the same
client API (channels, broadcast, reconnect, visibility pause) over the protocol:

1. the JWT travels as the WebSocket subprotocols ``["jwt", token]`` (a bad one: HTTP 401);
2. ``auth_success`` with a ``connectionId`` comes first;
3. messages are routed as ``{"type": "channel_message", "channel": ..., ...}``;
4. ``ping`` is answered with ``pong``.

No mock clock (real I/O); every test runs under an absolute ``fail_after`` and orders things
by waiting for events, never by sleeping. The codec itself is tested frame by frame in
``tests/protocol/test_seed002_codec.py``.
"""

from __future__ import annotations

import json
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

import jwt
import pytest
import trio
import trio.testing
from trio_websocket import serve_websocket

from trio_realtime import (
    BackoffPolicy,
    Broadcast,
    BroadcastConfig,
    ChannelErrored,
    ConnectionState,
    HandshakeFailed,
    LocalProtocolError,
    RealtimeConfig,
    RealtimeEvent,
    Rejoined,
    SubscriptionClosed,
    SystemMessage,
    open_realtime,
)
from trio_realtime._transport import WsprotoTransport, connect_websocket
from trio_realtime.server import RealtimeServer
from trio_realtime.server._auth import TokenVerifier
from trio_realtime.server._handshake import Accept, Refuse
from trio_realtime.server._seed002 import evaluate_seed002_upgrade

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from trio_websocket import WebSocketRequest

    from trio_realtime import Subscription

GUARD = 10
SECRET = "seed002-test-secret-0123456789-abcdefghijklmnopqrstuvwxyz"
StartServer = Callable[..., Awaitable[RealtimeServer]]


def token(*, exp_in: float = 3600, secret: str = SECRET) -> str:
    return jwt.encode({"exp": int(time.time() + exp_in), "role": "authenticated"}, secret, algorithm="HS256")


def seed(**kw: Any) -> RealtimeConfig:
    return RealtimeConfig(vsn="seed002", reconnect_backoff=BackoffPolicy(base=0.05, cap=0.2), **kw)


async def next_matching(sub: Subscription, predicate: Callable[[RealtimeEvent], bool]) -> RealtimeEvent:
    async for event in sub:
        if predicate(event):
            return event
    raise AssertionError("subscription ended before the expected event")


def is_broadcast(event: str) -> Callable[[RealtimeEvent], bool]:
    return lambda e: isinstance(e, Broadcast) and e.event == event


class RawSeedClient:
    """A bare seed-002 peer: JSON frames in and out, nothing interpreted."""

    def __init__(self, transport: WsprotoTransport) -> None:
        self.transport = transport
        self._buffer: deque[str | bytes] = deque()

    async def send(self, obj: Any) -> None:
        await self.transport.send_message(obj if isinstance(obj, str) else json.dumps(obj))

    async def recv(self) -> Any:
        while not self._buffer:
            self._buffer.extend(await self.transport.receive_messages())
        data = self._buffer.popleft()
        assert isinstance(data, str), "seed-002 frames are text"
        return json.loads(data)


@asynccontextmanager
async def open_raw(url: str, subprotocols: list[str] | None = None) -> AsyncIterator[RawSeedClient]:
    transport = await connect_websocket(
        url, subprotocols=["jwt", "dev-token"] if subprotocols is None else subprotocols
    )
    try:
        yield RawSeedClient(transport)
    finally:
        await transport.aclose()


# -- the wire, frame by frame ------------------------------------------------------------------


async def test_wire_frames_from_the_reference_server(server: RealtimeServer) -> None:
    with trio.fail_after(GUARD):
        async with open_raw(server.seed002_url) as a, open_raw(server.seed002_url) as b:
            assert a.transport.subprotocol == "jwt"
            hello_a, hello_b = await a.recv(), await b.recv()
            assert hello_a.keys() == {"type", "connectionId"}
            assert hello_a["type"] == "auth_success"
            assert uuid.UUID(hello_a["connectionId"]).version == 4
            assert hello_a["connectionId"] != hello_b["connectionId"]

            await a.send({"type": "subscribe", "channel": "room", "ref": "1"})
            assert await a.recv() == {"type": "subscribed", "channel": "room", "ref": "1"}
            await b.send({"type": "subscribe", "channel": "room", "ref": "1"})
            assert await b.recv() == {"type": "subscribed", "channel": "room", "ref": "1"}

            await a.send(
                {
                    "type": "channel_message",
                    "channel": "room",
                    "event": "chat",
                    "payload": {"text": "hi"},
                    "ref": "2",
                }
            )
            assert await a.recv() == {"type": "ack", "ref": "2"}
            assert await b.recv() == {
                "type": "channel_message",
                "channel": "room",
                "event": "chat",
                "payload": {"text": "hi"},
            }
            # The next frame a gets is the pong: it never received its own message.
            await a.send({"type": "ping", "ref": "3"})
            assert await a.recv() == {"type": "pong", "ref": "3"}

            await a.send(
                {"type": "channel_message", "channel": "elsewhere", "event": "x", "payload": 1, "ref": "4"}
            )
            assert await a.recv() == {
                "type": "error",
                "ref": "4",
                "channel": "elsewhere",
                "message": "unmatched topic",
            }
            await a.send({"type": "subscribe", "channel": "", "ref": "5"})
            assert await a.recv() == {
                "type": "error",
                "ref": "5",
                "channel": "",
                "message": "TopicNameRequired: You must provide a topic name",
            }

            # auth has no reply; a malformed frame is dropped; the socket carries on.
            await a.send({"type": "auth", "token": "rotated-token"})
            await a.send("this is not json")
            await a.send({"type": "ping", "ref": "6"})
            assert await a.recv() == {"type": "pong", "ref": "6"}
            assert server.statistics().malformed_frames == 1

            await a.send({"type": "unsubscribe", "channel": "room", "ref": "7"})
            assert await a.recv() == {"type": "unsubscribed", "channel": "room", "ref": "7"}
            assert await a.recv() == {"type": "phx_close", "channel": "room", "ref": "1", "payload": {}}


async def test_phoenix_broadcasts_reach_seed_clients_as_channel_messages(server: RealtimeServer) -> None:
    with trio.fail_after(GUARD):
        async with (
            open_raw(server.seed002_url) as raw,
            open_realtime(server.url, api_key="k", config=RealtimeConfig(vsn="2.0.0")) as phoenix,
            phoenix.channel("room", broadcast=BroadcastConfig(ack=True)) as sub,
        ):
            assert (await raw.recv())["type"] == "auth_success"
            await raw.send({"type": "subscribe", "channel": "room", "ref": "1"})
            assert (await raw.recv())["type"] == "subscribed"
            # Binary payloads cannot travel over seed-002: not delivered (and nothing breaks).
            await sub.send_broadcast("bin", b"\x00\x01")
            await sub.send_broadcast("json", {"n": 1})
            assert await raw.recv() == {
                "type": "channel_message",
                "channel": "room",
                "event": "json",
                "payload": {"n": 1},
            }
            await raw.send(
                {"type": "channel_message", "channel": "room", "event": "back", "payload": [1, 2], "ref": "2"}
            )
            event = await next_matching(sub, is_broadcast("back"))
            assert isinstance(event, Broadcast)
            assert event.payload == [1, 2]


async def test_any_path_offering_jwt_speaks_seed002(server: RealtimeServer) -> None:
    with trio.fail_after(GUARD):
        async with open_raw(server.url + "/websocket") as raw:
            assert (await raw.recv())["type"] == "auth_success"


async def test_seed002_path_without_the_subprotocol_is_refused(server: RealtimeServer) -> None:
    with trio.fail_after(GUARD), pytest.raises(HandshakeFailed) as info:
        await connect_websocket(server.seed002_url)
    assert info.value.status == 401
    assert json.loads(info.value.body) == {
        "error": 'seed-002 connections must offer the WebSocket subprotocols ["jwt", <token>]'
    }


# -- the client API over seed-002 ---------------------------------------------------------------


async def test_two_seed_clients_share_a_channel(server: RealtimeServer) -> None:
    with trio.fail_after(GUARD):
        async with (
            open_realtime(server.seed002_url, api_key="dev", config=seed()) as a,
            open_realtime(server.seed002_url, access_token="dev", config=seed()) as b,
            a.channel("room", broadcast=BroadcastConfig(ack=True)) as sa,
            b.channel("room") as sb,
        ):
            assert a.connection_id is not None
            assert b.connection_id is not None
            assert uuid.UUID(a.connection_id).version == 4
            assert a.connection_id != b.connection_id
            await sa.send_broadcast("greet", {"text": "hi"})  # returns once acknowledged
            event = await sb.receive()
            assert event == Broadcast(topic="realtime:room", event="greet", payload={"text": "hi"})
            await sb.send_broadcast("reply", {"text": "hello"})
            # a's next event is b's reply: the sender never receives its own message.
            assert await sa.receive() == Broadcast(
                topic="realtime:room", event="reply", payload={"text": "hello"}
            )


@pytest.mark.parametrize("phoenix_vsn", ["1.0.0", "2.0.0"])
async def test_seed_and_phoenix_clients_share_a_channel(server: RealtimeServer, phoenix_vsn: str) -> None:
    with trio.fail_after(GUARD):
        async with (
            open_realtime(server.seed002_url, api_key="dev", config=seed()) as s,
            open_realtime(server.url, api_key="k", config=RealtimeConfig(vsn=phoenix_vsn)) as p,
            s.channel("room", broadcast=BroadcastConfig(ack=True)) as ss,
            p.channel("room", broadcast=BroadcastConfig(ack=True)) as ps,
        ):
            await ps.send_broadcast("from-phoenix", {"n": 1})
            assert await ss.receive() == Broadcast(
                topic="realtime:room", event="from-phoenix", payload={"n": 1}
            )
            await ss.send_broadcast("from-seed", {"n": 2})
            event = await next_matching(ps, is_broadcast("from-seed"))
            assert isinstance(event, Broadcast)
            assert event.payload == {"n": 2}
            assert p.connection_id is None  # Phoenix servers send no auth_success


async def test_ping_pong_keeps_the_connection_alive(start_server: StartServer) -> None:
    """With pings every 50 ms, a server that drops sockets idle for 300 ms keeps this one."""
    server = await start_server(idle_timeout=0.3)
    with trio.fail_after(GUARD):
        async with (
            open_realtime(server.seed002_url, api_key="dev", config=seed(heartbeat_interval=0.05)) as client,
            client.channel("room"),
            client.watch_state() as states,
        ):
            assert await states.receive() is ConnectionState.CONNECTED
            with trio.move_on_after(1.0):  # over three idle timeouts
                async for state in states:
                    pytest.fail(f"the connection changed state to {state}")
            stats = client.statistics()
            assert stats.heartbeats_sent >= 5
            assert stats.last_heartbeat_rtt is not None
            assert (stats.connections, stats.connection_losses) == (1, 0)


async def test_reconnect_after_disconnect_all(server: RealtimeServer) -> None:
    with trio.fail_after(GUARD):
        async with (
            open_realtime(server.seed002_url, api_key="dev", config=seed()) as client,
            open_realtime(server.seed002_url, api_key="dev", config=seed()) as other,
            client.channel("room") as sub,
            other.channel("room") as osub,
        ):
            first_id = client.connection_id
            await server.disconnect_all()
            seen: list[type] = []
            async for event in sub:
                seen.append(type(event))
                if isinstance(event, Rejoined):
                    break
            assert seen == [SystemMessage, ChannelErrored, Rejoined]
            assert client.connection_id not in (None, first_id)
            assert client.statistics().reconnects == 1
            await next_matching(osub, lambda e: isinstance(e, Rejoined))
            await sub.send_broadcast("after", {"ok": True})
            assert await next_matching(osub, is_broadcast("after")) == Broadcast(
                topic="realtime:room", event="after", payload={"ok": True}
            )


async def test_visibility_pause_over_seed002(server: RealtimeServer) -> None:
    with trio.fail_after(GUARD):
        async with (
            open_realtime(server.seed002_url, api_key="dev", config=seed()) as client,
            open_realtime(server.seed002_url, api_key="dev", config=seed()) as other,
            client.channel("room") as sub,
            other.channel("room") as osub,
            client.watch_state() as states,
            trio.open_nursery() as nursery,
        ):
            client.set_visible(False)
            async for state in states:
                if state is ConnectionState.PAUSED:
                    break
            assert client.connection_id is None
            assert isinstance(await sub.receive(), ChannelErrored)
            nursery.start_soon(sub.send_broadcast, "queued", {"n": 1})
            await trio.testing.wait_all_tasks_blocked()
            assert sub.statistics().pending_pushes == 1
            client.set_visible(True)
            assert isinstance(await sub.receive(), Rejoined)
            assert await next_matching(osub, is_broadcast("queued")) == Broadcast(
                topic="realtime:room", event="queued", payload={"n": 1}
            )
            assert client.connection_id is not None


# -- tokens -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("bad", "error"),
    [
        ("not-a-jwt", "The token provided is not a valid JWT"),
        (token(exp_in=-60), "Token has expired"),
        (
            token(secret="another-secret-0123456789-abcdefghijklmnopqrstuvwxyz"),
            "Failed to validate JWT signature",
        ),
    ],
)
async def test_bad_token_is_refused_with_401(start_server: StartServer, bad: str, error: str) -> None:
    server = await start_server(jwt_secret=SECRET)
    with trio.fail_after(GUARD), pytest.raises(HandshakeFailed) as info:
        async with open_realtime(server.seed002_url, access_token=bad, config=seed()):
            pytest.fail("connected with a bad token")
    assert info.value.status == 401
    assert json.loads(info.value.body) == {"error": error}


async def test_valid_token_works_and_is_fetched_per_connection(start_server: StartServer) -> None:
    server = await start_server(jwt_secret=SECRET)
    fetched = 0

    async def fresh_token() -> str:
        nonlocal fetched
        fetched += 1
        return token()

    with trio.fail_after(GUARD):
        async with (
            open_realtime(server.seed002_url, access_token=fresh_token, config=seed()) as a,
            open_realtime(server.seed002_url, access_token=token(), config=seed()) as b,
            a.channel("room", broadcast=BroadcastConfig(ack=True)) as sa,
            b.channel("room") as sb,
        ):
            assert a.connection_id is not None
            await sa.send_broadcast("secure", 1)
            assert await sb.receive() == Broadcast(topic="realtime:room", event="secure", payload=1)
            before = fetched
            await server.disconnect_all()
            await next_matching(sa, lambda e: isinstance(e, Rejoined))
            assert fetched > before  # the reconnect offered a freshly fetched token


async def test_auth_with_an_invalid_token_closes_the_channels(start_server: StartServer) -> None:
    server = await start_server(jwt_secret=SECRET)
    with trio.fail_after(GUARD):
        async with (
            open_realtime(server.seed002_url, access_token=token(), config=seed()) as client,
            client.channel("room") as sub,
        ):
            await client.set_auth(token())  # a valid refresh changes nothing visible
            await client.set_auth("bogus")
            with pytest.raises(SubscriptionClosed) as info:
                await next_matching(sub, lambda e: False)
            assert info.value.reason == "The token provided is not a valid JWT"
            async with client.channel("again") as again:  # the socket's token is still the valid one
                assert again.status.value == "joined"


# -- what seed-002 cannot do ------------------------------------------------------------------


async def test_presence_and_binary_are_refused_locally(server: RealtimeServer) -> None:
    with trio.fail_after(GUARD):
        async with (
            open_realtime(server.seed002_url, api_key="dev", config=seed()) as client,
            client.channel("room") as sub,
        ):
            with pytest.raises(LocalProtocolError, match=r"presence is not part of the seed-002 protocol"):
                await sub.track({"user": "a"})
            with pytest.raises(LocalProtocolError, match=r"^cannot send a binary payload on 'realtime:room'"):
                await sub.send_broadcast("bin", b"\x00")
            with pytest.raises(LocalProtocolError, match=r"presence is not part of the seed-002 protocol"):
                async with client.channel("with-presence", presence=True):
                    pytest.fail("joined with presence over seed-002")
            await sub.send_broadcast("still", "fine")  # the client is unharmed


async def test_seed002_needs_a_token() -> None:
    with pytest.raises(LocalProtocolError, match=r"^RealtimeConfig\(vsn='seed002'\) needs a token"):
        async with open_realtime("ws://127.0.0.1:9/seed002", config=seed()):
            pytest.fail("opened without a token")


async def test_server_that_ignores_the_jwt_subprotocol_is_refused(nursery: trio.Nursery) -> None:
    async def plain(request: WebSocketRequest) -> None:
        ws = await request.accept()  # no subprotocol selected: not a seed-002 server
        await ws.get_message()

    ws_server = await nursery.start(serve_websocket, plain, "127.0.0.1", 0, None)
    with (
        trio.fail_after(GUARD),
        pytest.raises(HandshakeFailed, match=r"without selecting the 'jwt' subprotocol"),
    ):
        async with open_realtime(f"ws://127.0.0.1:{ws_server.port}/ws", api_key="dev", config=seed()):
            pytest.fail("connected to a server that does not speak seed-002")


# -- the upgrade decision, sans-IO ------------------------------------------------------------


def test_upgrade_decision() -> None:
    verifier = TokenVerifier(secret=SECRET)
    now = time.time()
    assert evaluate_seed002_upgrade("/realtime/v1/websocket?vsn=2.0.0", [], verifier=None, now=now) is None
    dev = evaluate_seed002_upgrade("/seed002", ["jwt", "anything"], verifier=None, now=now)
    assert dev == Accept(vsn="seed002", token="anything", subprotocol="jwt")
    anywhere = evaluate_seed002_upgrade("/app/ws?x=1", ["chat", "jwt", "t"], verifier=None, now=now)
    assert isinstance(anywhere, Accept)
    assert anywhere.token == "t"
    for offered in ([], ["jwt"], ["chat"]):
        refused = evaluate_seed002_upgrade("/seed002", offered, verifier=None, now=now)
        assert isinstance(refused, Refuse)
        assert refused.status == 401
    good = token()
    assert evaluate_seed002_upgrade("/seed002", ["jwt", good], verifier=verifier, now=now) == Accept(
        vsn="seed002", token=good, subprotocol="jwt"
    )
    expired = evaluate_seed002_upgrade("/seed002", ["jwt", token(exp_in=-5)], verifier=verifier, now=now)
    assert isinstance(expired, Refuse)
    assert (expired.status, json.loads(expired.body)) == (401, {"error": "Token has expired"})
