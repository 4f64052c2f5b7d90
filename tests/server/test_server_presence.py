"""Presence on the wire: state, diffs, phx_ref bookkeeping, limits (PROTOCOL.md §5)."""

from __future__ import annotations

import json
import uuid
from typing import TYPE_CHECKING, Any

import pytest
import trio

if TYPE_CHECKING:
    from _server_helpers import Frame, RawClient
    from conftest import Connect, StartServer

    from trio_realtime.server import RealtimeServer

TOPIC = "realtime:lobby"


async def _reply_skipping_diffs(client: RawClient, ref: str | None) -> Frame:
    """The reply to ``ref``, skipping diffs of earlier changes that are still in flight."""
    while True:
        frame = await client.recv()
        if frame.event != "presence_diff":
            assert frame.event == "phx_reply", frame
            assert frame.ref == ref, frame
            return frame


async def _track(client: RawClient, meta: Any, join_ref: str = "1", event: str = "track") -> Frame:
    ref = await client.push(TOPIC, "presence", {"type": "presence", "event": event, "payload": meta},
                            join_ref=join_ref)
    return await _reply_skipping_diffs(client, ref)


async def _untrack(client: RawClient, join_ref: str = "1") -> Frame:
    ref = await client.push(TOPIC, "presence", {"type": "presence", "event": "untrack"}, join_ref=join_ref)
    return await client.reply_to(ref)


def _only_diff(frames: list[Frame]) -> dict[str, Any]:
    assert [f.event for f in frames] == ["presence_diff"], frames
    frame = frames[0]
    assert frame.ref is None
    assert frame.join_ref in (None, "<absent>")
    payload: dict[str, Any] = frame.payload
    return payload


async def test_presence_state_on_join(server: RealtimeServer, connect: Connect, vsn: str) -> None:
    with trio.fail_after(10):
        async with connect(server, vsn) as client:
            reply = await client.join(TOPIC, {"presence": {"enabled": True, "key": "u1"}})
            assert reply.reply[0] == "ok"
            state = await client.expect("presence_state", TOPIC)
            assert state.payload == {}
            assert state.ref is None
            if vsn == "2.0.0":
                assert json.loads(state.raw) == ["1", None, TOPIC, "presence_state", {}]
            # not enabled: no presence_state
            await client.join("realtime:quiet", {"presence": {"enabled": False}})
            assert await client.sync() == []


async def test_track_diff_state_untrack(server: RealtimeServer, connect: Connect) -> None:
    with trio.fail_after(10):
        async with connect(server, "2.0.0") as alice, connect(server, "1.0.0") as bob:
            await alice.join(TOPIC, {"presence": {"enabled": True, "key": "alice"}})
            await alice.expect("presence_state")
            await bob.join(TOPIC, {"presence": {"enabled": False, "key": "bob"}})
            assert (await _track(alice, {"online_at": "t0"})).reply == ("ok", {})
            # the tracker sees its own join, and so does every subscriber (enabled or not)
            diff = _only_diff(await alice.sync())
            assert _only_diff(await bob.sync()) == diff
            assert diff["leaves"] == {}
            [meta] = diff["joins"]["alice"]["metas"]
            assert set(meta) == {"online_at", "phx_ref"}
            assert meta["online_at"] == "t0"
            assert isinstance(meta["phx_ref"], str)
            assert meta["phx_ref"]
            # a later joiner gets the state
            async with connect(server, "1.0.0") as carol:
                await carol.join(TOPIC, {"presence": {"enabled": True}})
                state = await carol.expect("presence_state")
                assert state.payload == {"alice": {"metas": [meta]}}
            # carol's socket closed without tracking: no diff
            assert await alice.sync() == []
            assert (await _untrack(alice)).reply == ("ok", {})
            diff = _only_diff(await alice.sync())
            assert diff == {"joins": {}, "leaves": {"alice": {"metas": [meta]}}}
            assert _only_diff(await bob.sync()) == diff
            # untracking again is a no-op
            assert (await _untrack(alice)).reply == ("ok", {})
            assert await alice.sync() == []


async def test_identical_retrack_is_a_noop(server: RealtimeServer, connect: Connect) -> None:
    with trio.fail_after(10):
        async with connect(server, "2.0.0") as client:
            await client.join(TOPIC, {"presence": {"key": "k"}})
            await _track(client, {"a": 1, "b": [1, 2]})
            _only_diff(await client.sync())
            assert (await _track(client, {"b": [1, 2], "a": 1})).reply == ("ok", {})
            assert await client.sync() == []


async def test_update_diff_carries_phx_ref_prev(server: RealtimeServer, connect: Connect) -> None:
    with trio.fail_after(10):
        async with connect(server, "1.0.0") as client:
            await client.join(TOPIC, {"presence": {"key": "k"}})
            await _track(client, {"status": "online"})
            [old] = _only_diff(await client.sync())["joins"]["k"]["metas"]
            await _track(client, {"status": "away"})
            diff = _only_diff(await client.sync())
            [new] = diff["joins"]["k"]["metas"]
            assert diff["leaves"] == {"k": {"metas": [old]}}
            assert new["status"] == "away"
            assert new["phx_ref_prev"] == old["phx_ref"]
            assert new["phx_ref"] != old["phx_ref"]


async def test_event_is_case_insensitive_and_keys_group(server: RealtimeServer, connect: Connect) -> None:
    with trio.fail_after(10):
        async with connect(server, "2.0.0") as a, connect(server, "2.0.0") as b:
            await a.join(TOPIC, {"presence": {"key": "same"}})
            await b.join(TOPIC, {"presence": {"key": "same", "enabled": "TRUE"}})
            await b.expect("presence_state")
            await _track(a, {"who": "a"}, event="TRACK")
            await _track(b, {"who": "b"})
            await a.sync()
            async with connect(server, "2.0.0") as c:
                await c.join(TOPIC, {"presence": {"enabled": True}})
                state = (await c.expect("presence_state")).payload
                assert [m["who"] for m in state["same"]["metas"]] == ["a", "b"]


async def test_generated_keys_are_uuids_per_join(server: RealtimeServer, connect: Connect) -> None:
    with trio.fail_after(10):
        async with connect(server, "1.0.0") as client:
            await client.join(TOPIC, {"presence": {"key": ""}})
            await _track(client, {})
            [key1] = _only_diff(await client.sync())["joins"]
            assert uuid.UUID(key1).version == 1
            rejoin = await client.join(TOPIC, {"presence": {}})  # rejoin: the old presence leaves
            await client.expect("phx_close")
            assert rejoin.ref is not None
            await _track(client, {}, join_ref=rejoin.ref)
            [key2] = _only_diff(await client.sync())["joins"]
            assert key2 != key1


async def test_numeric_presence_key_is_stringified(server: RealtimeServer, connect: Connect) -> None:
    with trio.fail_after(10):
        async with connect(server, "1.0.0") as client:
            await client.join(TOPIC, {"presence": {"key": 42}})
            await _track(client, {})
            assert list(_only_diff(await client.sync())["joins"]) == ["42"]


async def test_leave_and_close_send_leaves(server: RealtimeServer, connect: Connect) -> None:
    with trio.fail_after(10):
        async with connect(server, "2.0.0") as watcher:
            await watcher.join(TOPIC)
            async with connect(server, "1.0.0") as leaver:
                await leaver.join(TOPIC, {"presence": {"key": "leaver"}})
                await _track(leaver, {"x": 1})
                await leaver.sync()
                _only_diff(await watcher.sync())
                ref = await leaver.push(TOPIC, "phx_leave", {}, join_ref="1")
                await leaver.reply_to(ref)
                await leaver.expect("phx_close")
                assert list(_only_diff(await watcher.sync())["leaves"]) == ["leaver"]
            async with connect(server, "1.0.0") as closer:
                await closer.join(TOPIC, {"presence": {"key": "closer"}})
                await _track(closer, {"x": 2})
                await closer.sync()
                assert list(_only_diff(await watcher.sync())["joins"]) == ["closer"]
            # closer's socket is gone: its presence leaves (no sync possible on it, so wait for it)
            frame = await watcher.expect("presence_diff")
            assert list(frame.payload["leaves"]) == ["closer"]
            assert frame.payload["joins"] == {}


async def test_track_auto_enables_without_state(server: RealtimeServer, connect: Connect) -> None:
    with trio.fail_after(10):
        async with connect(server, "2.0.0") as client:
            await client.join(TOPIC)  # presence not enabled
            assert (await _track(client, {"a": 1})).reply == ("ok", {})
            frames = await client.sync()
            assert [f.event for f in frames] == ["presence_diff"]


@pytest.mark.parametrize("meta", [[1, 2], "text", 3, None])
async def test_track_payload_must_be_a_map(server: RealtimeServer, connect: Connect, meta: Any) -> None:
    with trio.fail_after(10):
        async with connect(server, "1.0.0") as client:
            await client.join(TOPIC)
            reply = await _track(client, meta)
            # an explicit null is not a map either (only a missing "payload" defaults to {})
            assert reply.reply == ("error", {"reason": "Presence track payload must be a map"})
            assert await client.sync() == []


async def test_track_without_payload_tracks_empty_map(server: RealtimeServer, connect: Connect) -> None:
    with trio.fail_after(10):
        async with connect(server, "1.0.0") as client:
            await client.join(TOPIC, {"presence": {"key": "k"}})
            ref = await client.push(TOPIC, "presence", {"event": "track"}, join_ref="1")  # py: no "type"
            assert (await client.reply_to(ref)).reply == ("ok", {})
            [meta] = _only_diff(await client.sync())["joins"]["k"]["metas"]
            assert set(meta) == {"phx_ref"}


async def test_unknown_or_missing_presence_event(server: RealtimeServer, connect: Connect) -> None:
    with trio.fail_after(10):
        async with connect(server, "2.0.0") as client:
            await client.join(TOPIC)
            assert (await _track(client, {}, event="wave")).reply == ("error", {})
            ref = await client.push(TOPIC, "presence", {"type": "presence"}, join_ref="1")
            assert (await client.reply_to(ref)).reply == ("ok", {})
            assert await client.sync() == []


async def test_presence_rate_limit(start_server: StartServer, connect: Connect, vsn: str) -> None:
    with trio.fail_after(10):
        server = await start_server(presence_rate_limit=3)
        async with connect(server, vsn) as client, connect(server, "1.0.0") as watcher:
            await watcher.join(TOPIC)
            await client.join(TOPIC, {"presence": {"key": "spammer"}})
            for i in range(3):
                assert (await _track(client, {"i": i})).reply == ("ok", {})
            ref = await client.push(TOPIC, "presence", {"event": "track", "payload": {"i": 3}}, join_ref="1")
            frames = [f for f in await client.sync() if f.event != "presence_diff"]
            # no reply to the push over the limit: a system error, then phx_close
            assert [f.event for f in frames] == ["system", "phx_close"]
            system, close = frames
            assert system.topic == close.topic == TOPIC
            assert system.payload == {"extension": "system", "status": "error",
                                      "message": "Client presence rate limit exceeded", "channel": "lobby"}
            assert system.ref is None
            if vsn == "2.0.0":
                assert system.join_ref == "1"
            assert close.ref == "1"
            assert ref != "1"
            assert server.statistics().channels == 1
            # the watcher saw the joins, then the leave
            events = [list(f.payload["leaves"]) for f in await watcher.sync()]
            assert events[-1] == ["spammer"]


async def test_presence_oversized_track_closes_channel(start_server: StartServer, connect: Connect) -> None:
    with trio.fail_after(10):
        server = await start_server(max_payload_bytes=100)
        async with connect(server, "1.0.0") as client:
            await client.join(TOPIC)
            big = {"event": "track", "payload": {"pad": "x" * 200}}
            await client.push(TOPIC, "presence", big, join_ref="1")
            system = await client.expect("system")
            assert system.payload["message"] == "Track message size exceeded"
            await client.expect("phx_close")
