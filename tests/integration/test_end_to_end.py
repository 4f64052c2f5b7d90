"""Our client against our reference server over real loopback sockets.

No mock clock here (MockClock and real I/O do not mix): these tests assert behaviour, each
under an absolute ``fail_after`` guard, and order things by waiting for events, never by
sleeping.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import jwt
import pytest
import trio

from trio_realtime import (
    BackoffPolicy,
    Broadcast,
    BroadcastConfig,
    ChannelErrored,
    ConnectionState,
    HandshakeFailed,
    JoinRejected,
    LocalProtocolError,
    PresenceConfig,
    PresenceLeave,
    PresenceSync,
    RealtimeConfig,
    RealtimeEvent,
    Rejoined,
    Subscription,
    open_realtime,
)

if TYPE_CHECKING:
    from collections.abc import Callable

GUARD = 10
SECRET = "integration-test-secret-0123456789-abcdefghijklmnopqrstuvwxyz"
VSNS = ["1.0.0", "2.0.0"]


def token(*, exp_in: float = 3600, role: str | None = "authenticated", secret: str = SECRET) -> str:
    claims: dict[str, object] = {"exp": int(time.time() + exp_in)}
    if role is not None:
        claims["role"] = role
    return jwt.encode(claims, secret, algorithm="HS256")


def fast(vsn: str = "2.0.0", **kw: object) -> RealtimeConfig:
    return RealtimeConfig(vsn=vsn, reconnect_backoff=BackoffPolicy(base=0.05, cap=0.2), **kw)  # type: ignore[arg-type]


async def next_matching(sub: Subscription, predicate: Callable[[RealtimeEvent], bool]) -> RealtimeEvent:
    async for event in sub:
        if predicate(event):
            return event
    raise AssertionError("subscription ended before the expected event")


def is_broadcast(event: str) -> Callable[[RealtimeEvent], bool]:
    return lambda e: isinstance(e, Broadcast) and e.event == event


@pytest.mark.parametrize("sender_vsn", VSNS)
@pytest.mark.parametrize("receiver_vsn", VSNS)
async def test_broadcast_between_clients(server, sender_vsn: str, receiver_vsn: str) -> None:
    with trio.fail_after(GUARD):
        async with (
            open_realtime(server.url, api_key="k", config=fast(sender_vsn)) as a,
            open_realtime(server.url, api_key="k", config=fast(receiver_vsn)) as b,
            a.channel("room", broadcast=BroadcastConfig(ack=True)) as sa,
            b.channel("room") as sb,
        ):
            await sa.send_broadcast("greet", {"text": "hi", "n": 1})
            event = await next_matching(sb, is_broadcast("greet"))
            assert isinstance(event, Broadcast)
            assert event.payload == {"text": "hi", "n": 1}
            assert event.topic == "realtime:room"


async def test_receive_own_and_ack(server) -> None:
    with trio.fail_after(GUARD):
        async with (
            open_realtime(server.url, api_key="k", config=fast()) as a,
            a.channel("echo", broadcast=BroadcastConfig(ack=True, receive_own=True)) as sub,
        ):
            await sub.send_broadcast("ping", {"i": 1})  # returns only after the server's ack
            event = await next_matching(sub, is_broadcast("ping"))
            assert isinstance(event, Broadcast)
            assert event.payload == {"i": 1}


async def test_without_receive_own_sender_sees_nothing(server) -> None:
    with trio.fail_after(GUARD):
        async with (
            open_realtime(server.url, api_key="k", config=fast()) as a,
            a.channel("quiet", broadcast=BroadcastConfig(ack=True)) as sub,
            a.channel("marker", broadcast=BroadcastConfig(ack=True, receive_own=True)) as marker,
        ):
            await sub.send_broadcast("mine", {})
            await marker.send_broadcast("done", {})
            await next_matching(marker, is_broadcast("done"))
            with pytest.raises(trio.WouldBlock):
                sub.receive_nowait()


async def test_binary_broadcast_v2_and_dropped_for_v1(server) -> None:
    with trio.fail_after(GUARD):
        async with (
            open_realtime(server.url, api_key="k", config=fast("2.0.0")) as a,
            open_realtime(server.url, api_key="k", config=fast("2.0.0")) as b,
            open_realtime(server.url, api_key="k", config=fast("1.0.0")) as c,
            a.channel("bin", broadcast=BroadcastConfig(ack=True)) as sa,
            b.channel("bin") as sb,
            c.channel("bin") as sc,
        ):
            await sa.send_broadcast("blob", b"\x00\x01\xff")
            await sa.send_broadcast("after", {"json": True})
            event = await next_matching(sb, is_broadcast("blob"))
            assert isinstance(event, Broadcast)
            assert event.payload == b"\x00\x01\xff"
            # vsn 1.0.0 cannot carry binary: the V1 subscriber gets the next JSON one only.
            first = await next_matching(sc, lambda e: isinstance(e, Broadcast))
            assert isinstance(first, Broadcast)
            assert first.event == "after"


async def test_binary_on_v1_is_a_local_error(server) -> None:
    with trio.fail_after(GUARD):
        async with (
            open_realtime(server.url, api_key="k", config=fast("1.0.0")) as a,
            a.channel("bin1") as sub,
        ):
            with pytest.raises(LocalProtocolError, match=r"vsn 1\.0\.0"):
                await sub.send_broadcast("blob", b"\x01")
            assert a.statistics().frames_sent == 1  # the join only


async def test_presence_between_clients(server) -> None:
    with trio.fail_after(GUARD):
        async with (
            open_realtime(server.url, api_key="k", config=fast()) as a,
            open_realtime(server.url, api_key="k", config=fast("1.0.0")) as b,
            a.channel("lobby", presence=PresenceConfig(key="alice")) as sa,
        ):
            await sa.track({"name": "Alice"})
            async with b.channel("lobby", presence=PresenceConfig(key="bob")) as sb:
                await sb.track({"name": "Bob"})
                both = {"alice", "bob"}
                for sub in (sa, sb):
                    await next_matching(sub, lambda e: isinstance(e, PresenceSync) and set(e.state) == both)
                assert sa.presence()["bob"][0]["name"] == "Bob"
                assert "presence_ref" in sa.presence()["bob"][0]
            leave = await next_matching(sa, lambda e: isinstance(e, PresenceLeave))
            assert isinstance(leave, PresenceLeave)
            assert leave.key == "bob"
            assert set(sa.presence()) == {"alice"}


async def test_join_rejected_with_server_reason(server) -> None:
    with trio.fail_after(GUARD):
        async with open_realtime(server.url, api_key="k", config=fast()) as a:
            with pytest.raises(JoinRejected, match="TopicNameRequired") as info:
                async with a.channel(""):
                    pass  # pragma: no cover
            assert info.value.reason == "TopicNameRequired: You must provide a topic name"
            assert a.statistics().channels == 0


async def test_reconnect_rejoins_and_retracks(server) -> None:
    with trio.fail_after(GUARD):
        async with (
            open_realtime(server.url, api_key="k", config=fast()) as a,
            open_realtime(server.url, api_key="k", config=fast()) as b,
            a.channel("r", presence=PresenceConfig(key="a"), broadcast=BroadcastConfig(ack=True)) as sa,
            b.channel("r", presence=PresenceConfig(key="b")) as sb,
            a.watch_state() as states,
        ):
            await sa.track({"who": "a"})
            await next_matching(sb, lambda e: isinstance(e, PresenceSync) and "a" in e.state)
            assert await states.receive() is ConnectionState.CONNECTED
            await server.disconnect_all()
            assert isinstance(
                await next_matching(sa, lambda e: isinstance(e, ChannelErrored)), ChannelErrored
            )
            rejoined = await next_matching(sa, lambda e: isinstance(e, Rejoined))
            assert isinstance(rejoined, Rejoined)
            assert rejoined.recovered is False
            assert await states.receive() is ConnectionState.RECONNECTING
            assert await states.receive() is ConnectionState.CONNECTED
            # b reconnected too; a's presence comes back without a's code tracking it again.
            await next_matching(sb, lambda e: isinstance(e, Rejoined))
            await next_matching(sb, lambda e: isinstance(e, PresenceSync) and "a" in e.state)
            await sa.send_broadcast("after-reconnect", {"ok": True})
            await next_matching(sb, is_broadcast("after-reconnect"))
            assert a.statistics().reconnects == 1


async def test_leaving_block_leaves_no_server_side_join(server) -> None:
    with trio.fail_after(GUARD):
        async with open_realtime(server.url, api_key="k", config=fast()) as a:
            async with a.channel("one"), a.channel("two"):
                assert server.statistics().channels == 2
            assert a.statistics().channels == 0
            # The leave was acknowledged before the block exited: nothing left on the server.
            assert server.statistics().channels == 0


async def test_cancel_inside_block_leaves_cleanly(server) -> None:
    with trio.fail_after(GUARD):
        async with open_realtime(server.url, api_key="k", config=fast()) as a:
            with trio.move_on_after(0.05):
                async with a.channel("cancelled") as sub:
                    await sub.receive()  # nothing comes: cancelled here
            assert a.statistics().channels == 0
            assert server.statistics().channels == 0


async def test_jwt_refused_upgrade_raises_handshake_failed(start_server) -> None:
    with trio.fail_after(GUARD):
        server = await start_server(jwt_secret=SECRET)
        with pytest.raises(HandshakeFailed) as info:
            async with open_realtime(server.url, api_key=token(secret="wrong-secret-" * 4)):
                pass  # pragma: no cover
        assert info.value.status == 401
        assert "Failed to validate JWT signature" in info.value.body
        assert "wrong-secret" not in str(info.value)


async def test_jwt_valid_token_and_expired_channel_token(start_server) -> None:
    with trio.fail_after(GUARD):
        server = await start_server(jwt_secret=SECRET)
        good = token()
        async with open_realtime(server.url, api_key=good, config=fast()) as a:
            async with a.channel("ok") as sub:
                assert sub.topic == "realtime:ok"
        async with open_realtime(
            server.url, api_key=good, access_token=token(exp_in=-30), config=fast()
        ) as b:
            with pytest.raises(JoinRejected, match=r"InvalidJWTToken: Token has expired \d+ seconds ago"):
                async with b.channel("expired"):
                    pass  # pragma: no cover


async def test_token_callable_is_called_before_each_join(server) -> None:
    calls: list[int] = []

    async def fetch() -> str:
        calls.append(1)
        return f"token-{len(calls)}"

    with trio.fail_after(GUARD):
        async with open_realtime(server.url, api_key="k", access_token=fetch, config=fast()) as a:
            async with a.channel("t1"), a.channel("t2"):
                pass
        assert len(calls) == 2
        assert "token-" not in repr(a)
