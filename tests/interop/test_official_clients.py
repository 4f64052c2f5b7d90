"""The official Supabase Realtime clients against our reference server, and against our client.

Each test starts our server on a free loopback port and drives one or two official clients as
subprocesses (``_peers.open_peer``): ``js-v2`` is ``@supabase/realtime-js`` on its default
vsn 2.0.0 (broadcasts go out as binary kind-3 frames), ``js-v1`` is the same library on
vsn 1.0.0, and ``py`` is the PyPI ``realtime`` package (vsn 1.0.0 only). Where our own client
takes part, it runs in this process on both of its serializers.

Nothing here sleeps for ordering: a peer's ``send_result``/``track_result`` means the server
has processed the push (and already fanned it out, which it does before replying), our
``send_broadcast``/``track`` return after the server's reply, and every wait is for a specific
event, under a ``fail_after`` guard.
"""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Any

import pytest
import trio
from _peers import Event, Peer, PeerKind, matches, open_peer

from trio_realtime import (
    BackoffPolicy,
    Broadcast,
    BroadcastConfig,
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

    from trio_realtime.server import RealtimeServer

pytestmark = pytest.mark.interop

GUARD = 30
KINDS: list[PeerKind] = ["js-v2", "js-v1", "py"]
OUR_VSNS = ["2.0.0", "1.0.0"]

#: A payload that exercises JSON on every hop: unicode, floats, nesting, null, empty containers.
PAYLOAD: dict[str, Any] = {
    "text": 'héllo wörld ✓ "quoted" \\ back',
    "n": 42,
    "f": 1.5,
    "neg": -7,
    "flag": True,
    "nothing": None,
    "nested": {"list": [1, "two", None, False, {"deep": []}], "empty": {}},
}


async def next_matching(sub: Subscription, predicate: Callable[[RealtimeEvent], bool]) -> RealtimeEvent:
    """Consume ``sub`` until an event satisfies ``predicate``; return that event."""
    async for event in sub:
        if predicate(event):
            return event
    raise AssertionError("the subscription ended before the expected event")


def queued(sub: Subscription) -> list[RealtimeEvent]:
    """Take every event already queued on ``sub``, without waiting."""
    events = []
    while True:
        try:
            events.append(sub.receive_nowait())
        except trio.WouldBlock:
            return events


def is_broadcast(event: str) -> Callable[[RealtimeEvent], bool]:
    return lambda e: isinstance(e, Broadcast) and e.event == event


async def subscribed(peer: Peer) -> None:
    """Wait for the peer's channel to report SUBSCRIBED (and nothing worse before it)."""
    status = await peer.expect(matches("status"), f"{peer.kind} to report its join status")
    assert status["status"] == "SUBSCRIBED", status


async def peer_send(peer: Peer, event: str, payload: Any) -> None:
    """Broadcast from the peer and wait until the server acknowledged it."""
    await peer.command({"cmd": "send", "event": event, "payload": payload})
    result = await peer.expect(matches("send_result", event=event), f"{peer.kind} to send {event!r}")
    assert result["result"] == "ok", result


async def peer_track(peer: Peer, meta: dict[str, Any]) -> None:
    await peer.command({"cmd": "track", "meta": meta})
    result = await peer.expect(matches("track_result"), f"{peer.kind} to track")
    assert result["result"] == "ok", result


async def peer_presence_state(peer: Peer) -> dict[str, list[dict[str, Any]]]:
    await peer.command({"cmd": "presence_state"})
    event = await peer.expect(matches("presence_state"), f"{peer.kind} to report its presence state")
    state: dict[str, list[dict[str, Any]]] = event["state"]
    return state


async def peer_presence_joined(peer: Peer, key: str) -> Event:
    """Wait for the peer's presence ``join`` callback for ``key``, then for the ``sync`` after it.

    Both official clients call ``join`` callbacks before the ``sync`` of the same diff, so the
    sync found here reflects the join (an earlier sync, e.g. of the empty initial state, does
    not count).
    """
    joined = await peer.expect(matches("presence", event="join", key=key), f"{peer.kind} to see {key!r} join")
    after = _position(peer, joined)
    await peer.expect(
        lambda e: matches("presence", event="sync")(e) and _position(peer, e) > after,
        f"{peer.kind} to sync presence after {key!r} joined",
    )
    return joined


def _position(peer: Peer, event: Event) -> int:
    return next(index for index, seen in enumerate(peer.events) if seen is event)


def ours(vsn: str) -> RealtimeConfig:
    return RealtimeConfig(vsn=vsn)


# --- 1-3: an official client alone on our server -------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
async def test_join_broadcast_self_ack_and_presence(server: RealtimeServer, kind: PeerKind) -> None:
    with trio.fail_after(GUARD):
        async with open_peer(kind, server.url, topic="solo", key="alice", self_=True, ack=True) as peer:
            await subscribed(peer)

            await peer_send(peer, "greet", PAYLOAD)
            own = await peer.expect(matches("broadcast", event="greet"), "the peer's own broadcast (self)")
            assert own["payload"] == PAYLOAD
            assert own["binary_hex"] is None

            await peer_track(peer, {"online_at": "2024-01-01T00:00:00Z"})
            joined = await peer_presence_joined(peer, "alice")
            assert [p["online_at"] for p in joined["newPresences"]] == ["2024-01-01T00:00:00Z"]
            state = await peer_presence_state(peer)
            assert set(state) == {"alice"}
            [presence] = state["alice"]
            assert presence["online_at"] == "2024-01-01T00:00:00Z"
            assert isinstance(presence["presence_ref"], str)
            assert presence["presence_ref"]

        stats = server.statistics()
        assert stats.malformed_frames == 0


@pytest.mark.parametrize("kind", ["js-v2", "js-v1"])
async def test_heartbeat_replies_accepted(server: RealtimeServer, kind: PeerKind) -> None:
    """realtime-js matches our heartbeat replies (topic ``phoenix``, its ref) and stays connected.

    (The PyPI client sends heartbeats with ``ref: null`` and never checks the replies, and it
    heartbeats every 15 s at the most, so it has nothing to show here.)
    """
    with trio.fail_after(GUARD):
        async with open_peer(kind, server.url, topic="hb", key="", heartbeat_ms=50) as peer:
            await subscribed(peer)
            for _ in range(3):
                sent = await peer.expect(matches("heartbeat"), "a heartbeat to go out")
                assert sent["status"] == "sent", sent
                reply = await peer.expect(matches("heartbeat"), "the heartbeat's reply")
                assert reply["status"] == "ok", reply
            assert [e["status"] for e in peer.events if e["type"] == "status"] == ["SUBSCRIBED"]
        assert server.statistics().malformed_frames == 0


# --- 4: broadcasts between an official client and ours -------------------------------------------


@pytest.mark.parametrize("our_vsn", OUR_VSNS)
@pytest.mark.parametrize("kind", KINDS)
async def test_broadcast_with_our_client(server: RealtimeServer, kind: PeerKind, our_vsn: str) -> None:
    with trio.fail_after(GUARD):
        async with (
            open_realtime(server.url, api_key="k", config=ours(our_vsn)) as client,
            client.channel("room", broadcast=BroadcastConfig(ack=True)) as sub,
            open_peer(kind, server.url, topic="room", key="official", self_=False, ack=True) as peer,
        ):
            await subscribed(peer)

            # official -> ours. A non-ASCII event name checks that the kind-3/kind-4 headers
            # count bytes, not characters.
            await peer_send(peer, "from-official-ü✓", PAYLOAD)
            event = await next_matching(sub, is_broadcast("from-official-ü✓"))
            assert isinstance(event, Broadcast)
            assert event.payload == PAYLOAD
            assert event.topic == "realtime:room"

            # ours -> official
            await sub.send_broadcast("from-trio-ü✓", PAYLOAD)
            got = await peer.expect(matches("broadcast", event="from-trio-ü✓"), "our broadcast")
            assert got["payload"] == PAYLOAD
            assert got["binary_hex"] is None

            # Without self, neither side got its own broadcast back.
            # (An echo would have been queued before the reply, so it would be here by now.)
            assert not any(matches("broadcast", event="from-official-ü✓")(e) for e in peer.events)
            assert not any(is_broadcast("from-trio-ü✓")(e) for e in queued(sub))


@pytest.mark.parametrize("kind", KINDS)
async def test_large_broadcast_with_our_client(server: RealtimeServer, kind: PeerKind) -> None:
    # About 300 KB of JSON each way, mostly non-ASCII.
    big = {"blob": "x" * 50_000 + "é✓" * 40_000, "items": list(range(5000))}
    with trio.fail_after(GUARD):
        async with (
            open_realtime(server.url, api_key="k", config=ours("2.0.0")) as v2,
            open_realtime(server.url, api_key="k", config=ours("1.0.0")) as v1,
            v2.channel("big", broadcast=BroadcastConfig(ack=True)) as sub2,
            v1.channel("big") as sub1,
            open_peer(kind, server.url, topic="big", key="official", self_=False, ack=True) as peer,
        ):
            await subscribed(peer)
            await peer_send(peer, "big", big)
            for sub in (sub1, sub2):
                event = await next_matching(sub, is_broadcast("big"))
                assert isinstance(event, Broadcast)
                assert event.payload == big
            await sub2.send_broadcast("big-back", big)
            got = await peer.expect(matches("broadcast", event="big-back"), "our large broadcast")
            assert got["payload"] == big


@pytest.mark.parametrize("kind", KINDS)
async def test_non_object_payloads_relayed_verbatim(server: RealtimeServer, kind: PeerKind) -> None:
    """A broadcast's inner payload may be any JSON value; the server relays it unchanged.

    Two client-side quirks show up here: realtime-js on vsn 2.0.0 encodes a ``null`` payload
    as ``{}`` before it leaves the client, and the PyPI client silently drops received
    broadcasts whose payload is not an object (captured_frames.md, quirk 14), so it is only
    checked as a sender.
    """
    sent: list[Any] = [[1, "two", None], "text", 5, None]
    expected = [*sent[:3], {} if kind == "js-v2" else None]
    with trio.fail_after(GUARD):
        async with (
            open_realtime(server.url, api_key="k", config=ours("2.0.0")) as v2,
            open_realtime(server.url, api_key="k", config=ours("1.0.0")) as v1,
            v2.channel("any", broadcast=BroadcastConfig(ack=True)) as sub2,
            v1.channel("any") as sub1,
            open_peer(kind, server.url, topic="any", key="official", self_=True, ack=True) as peer,
        ):
            await subscribed(peer)
            for index, payload in enumerate(sent):
                await peer_send(peer, f"p{index}", payload)
            for sub in (sub1, sub2):
                got = [await next_matching(sub, is_broadcast(f"p{i}")) for i in range(len(sent))]
                assert [e.payload for e in got if isinstance(e, Broadcast)] == expected
            if kind != "py":
                own = [
                    await peer.expect(matches("broadcast", event=f"p{i}"), "self") for i in range(len(sent))
                ]
                assert [e["payload"] for e in own] == expected
                await sub2.send_broadcast("from-trio", [1, 2, 3])
                got_back = await peer.expect(matches("broadcast", event="from-trio"), "our list payload")
                assert got_back["payload"] == [1, 2, 3]


# --- 5: presence between an official client and ours ---------------------------------------------


@pytest.mark.parametrize("our_vsn", OUR_VSNS)
@pytest.mark.parametrize("kind", KINDS)
async def test_presence_with_our_client(server: RealtimeServer, kind: PeerKind, our_vsn: str) -> None:
    with trio.fail_after(GUARD):
        async with (
            open_realtime(server.url, api_key="k", config=ours(our_vsn)) as client,
            client.channel("lobby", presence=PresenceConfig(key="trio")) as sub,
        ):
            await sub.track({"who": "trio"})
            async with open_peer(kind, server.url, topic="lobby", key="official") as peer:
                await subscribed(peer)
                # Our presence was there before the peer joined: it arrives in presence_state.
                await peer_presence_joined(peer, "trio")
                await peer_track(peer, {"who": kind})

                sync = await next_matching(
                    sub, lambda e: isinstance(e, PresenceSync) and "official" in e.state
                )
                assert isinstance(sync, PresenceSync)
                assert set(sync.state) == {"trio", "official"}
                [theirs] = sync.state["official"]
                assert theirs["who"] == kind
                assert "presence_ref" in theirs

                await peer_presence_joined(peer, "official")
                state = await peer_presence_state(peer)
                assert set(state) == {"trio", "official"}
                assert [p["who"] for p in state["trio"]] == ["trio"]

                # Our untrack reaches the official client as a leave.
                await sub.untrack()
                left = await peer.expect(matches("presence", event="leave", key="trio"), "our untrack")
                assert [p["who"] for p in left["leftPresences"]] == ["trio"]

            # The peer left the channel (phx_leave) and exited: its presence is gone.
            leave = await next_matching(sub, lambda e: isinstance(e, PresenceLeave) and e.key == "official")
            assert isinstance(leave, PresenceLeave)
            assert [p["who"] for p in leave.left] == [kind]
            assert sub.presence() == {}


@pytest.mark.parametrize("kind", KINDS)
async def test_presence_key_chosen_by_server(server: RealtimeServer, kind: PeerKind) -> None:
    """A client that gives no presence key gets a server-made UUID (PROTOCOL.md §9, server 5)."""
    with trio.fail_after(GUARD):
        async with (
            open_realtime(server.url, api_key="k") as client,
            client.channel("anon", presence=PresenceConfig(key="trio")) as sub,
            open_peer(kind, server.url, topic="anon", key="") as peer,
        ):
            await subscribed(peer)
            await peer_track(peer, {"who": kind})
            sync = await next_matching(sub, lambda e: isinstance(e, PresenceSync) and len(e.state) == 1)
            assert isinstance(sync, PresenceSync)
            [key] = sync.state
            assert str(uuid.UUID(key)) == key
            joined = await peer.expect(matches("presence", event="join"), "its own presence join")
            assert joined["key"] == key


# --- reconnection --------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
async def test_rejoin_after_server_disconnect(server: RealtimeServer, kind: PeerKind) -> None:
    """After ``disconnect_all`` (close 1012) the official client reconnects and rejoins.

    Neither official client tracks its presence again after a rejoin (that is left to the
    application), so the peer tracks again itself, as an application would.
    """
    fast = RealtimeConfig(vsn="2.0.0", reconnect_backoff=BackoffPolicy(base=0.05, cap=0.2))
    with trio.fail_after(GUARD):
        async with (
            open_realtime(server.url, api_key="k", config=fast) as client,
            client.channel("re", presence=PresenceConfig(key="trio")) as sub,
            open_peer(kind, server.url, topic="re", key="official", self_=False, ack=True) as peer,
        ):
            await subscribed(peer)
            await peer_track(peer, {"n": 1})
            await next_matching(sub, lambda e: isinstance(e, PresenceSync) and "official" in e.state)

            await server.disconnect_all()
            errored = await peer.expect(matches("status"), "the peer to notice the disconnect")
            assert errored["status"] == "CHANNEL_ERROR", errored
            if kind != "py":  # the PyPI client drops `system` messages without a `channel`
                notice = await peer.expect(matches("system"), "the disconnect notice")
                assert notice["payload"] == {
                    "extension": "system",
                    "status": "ok",
                    "message": "Server requested disconnect",
                }
            await subscribed(peer)
            await next_matching(sub, lambda e: isinstance(e, Rejoined))

            await peer_send(peer, "after", {"rejoined": True})
            event = await next_matching(sub, is_broadcast("after"))
            assert isinstance(event, Broadcast)
            assert event.payload == {"rejoined": True}

            await peer_track(peer, {"n": 2})
            sync = await next_matching(sub, lambda e: isinstance(e, PresenceSync) and "official" in e.state)
            assert isinstance(sync, PresenceSync)
            assert [p["n"] for p in sync.state["official"]] == [2]
        assert server.statistics().malformed_frames == 0


# --- 6: binary broadcasts (vsn 2.0.0 only) -------------------------------------------------------


async def test_binary_broadcast_js_v2_and_our_client(server: RealtimeServer) -> None:
    blob = bytes(range(256)) + b"\x00\xff"
    with trio.fail_after(GUARD):
        async with (
            open_realtime(server.url, api_key="k", config=ours("2.0.0")) as v2,
            open_realtime(server.url, api_key="k", config=ours("1.0.0")) as v1,
            v2.channel("bin", broadcast=BroadcastConfig(ack=True)) as sub2,
            v1.channel("bin") as sub1,
            open_peer("js-v2", server.url, topic="bin", key="js2", self_=False, ack=True) as js2,
            open_peer("js-v1", server.url, topic="bin", key="js1", self_=False, ack=True) as js1,
        ):
            await subscribed(js2)
            await subscribed(js1)

            # realtime-js binary -> our v2 client, as bytes, exactly.
            await js2.command({"cmd": "send_binary", "event": "blob", "hex": blob.hex()})
            result = await js2.expect(matches("send_result", event="blob"), "the binary send")
            assert result["result"] == "ok"
            event = await next_matching(sub2, is_broadcast("blob"))
            assert isinstance(event, Broadcast)
            assert type(event.payload) is bytes
            assert event.payload == blob

            # Our binary -> realtime-js v2, as an ArrayBuffer with the same bytes.
            await sub2.send_broadcast("trio-blob", blob)
            got = await js2.expect(matches("broadcast", event="trio-blob"), "our binary broadcast")
            assert got["binary_hex"] == blob.hex()

            # vsn 1.0.0 cannot carry binary: the server drops both binaries for the V1 sockets,
            # so the first broadcast they see is the JSON one sent after them.
            await sub2.send_broadcast("after", {"json": True})
            first = await js1.expect(matches("broadcast"), "the first broadcast on the V1 peer")
            assert (first["event"], first["payload"]) == ("after", {"json": True})
            first_ours = await next_matching(sub1, lambda e: isinstance(e, Broadcast))
            assert isinstance(first_ours, Broadcast)
            assert (first_ours.event, first_ours.payload) == ("after", {"json": True})
            await js2.expect(matches("broadcast", event="after"), "the JSON broadcast on the v2 peer")


# --- 7: two official clients through our server --------------------------------------------------


PAIRS: list[tuple[PeerKind, PeerKind]] = [("js-v2", "py"), ("js-v2", "js-v1"), ("js-v1", "py")]


@pytest.mark.parametrize(("kind_a", "kind_b"), [pytest.param(a, b, id=f"{a}+{b}") for a, b in PAIRS])
async def test_two_official_clients(server: RealtimeServer, kind_a: PeerKind, kind_b: PeerKind) -> None:
    with trio.fail_after(GUARD):
        async with (
            open_peer(kind_a, server.url, topic="pair", key="a", self_=False, ack=True) as a,
            open_peer(kind_b, server.url, topic="pair", key="b", self_=False, ack=True) as b,
        ):
            await subscribed(a)
            await subscribed(b)

            await peer_send(a, "a-to-b", PAYLOAD)
            got = await b.expect(matches("broadcast", event="a-to-b"), f"{kind_a}'s broadcast")
            assert got["payload"] == PAYLOAD

            await peer_send(b, "b-to-a", {"reply": [PAYLOAD]})
            got = await a.expect(matches("broadcast", event="b-to-a"), f"{kind_b}'s broadcast")
            assert got["payload"] == {"reply": [PAYLOAD]}

            await peer_track(a, {"kind": kind_a})
            await peer_presence_joined(b, "a")
            state = await peer_presence_state(b)
            assert [p["kind"] for p in state["a"]] == [kind_a]

        assert server.statistics().malformed_frames == 0
