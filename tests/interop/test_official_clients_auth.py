"""The official clients against our server with JWT verification on (``jwt_secret`` set).

Supabase API keys are HS256 JWTs with ``role`` and ``exp`` claims; the clients send the key as
the ``apikey`` query parameter (and the PyPI client also as the join's ``access_token``). These
tests check that such keys are accepted, that token refreshes pushed by the clients are
honoured, and that a bad key is refused in a way realtime-js reports at once.

The PyPI client is not part of the bad-key test: against a refused upgrade it retries for about
15 s (backoff 1, 2, 4, 8 s) before giving up, which says nothing about our server and would
dominate the run time.
"""

from __future__ import annotations

import re
import time
from typing import TYPE_CHECKING, Any

import jwt
import pytest
import trio
from _peers import Peer, PeerKind, matches, open_peer

from trio_realtime import (
    Broadcast,
    PresenceConfig,
    PresenceLeave,
    PresenceSync,
    RealtimeEvent,
    Subscription,
    open_realtime,
)

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from trio_realtime.server import RealtimeServer

    StartServer = Callable[..., Awaitable[RealtimeServer]]

pytestmark = pytest.mark.interop

GUARD = 30
KINDS: list[PeerKind] = ["js-v2", "js-v1", "py"]
#: Long enough for pyjwt not to warn about a short HMAC key (warnings are errors here).
SECRET = "interop-test-secret-0123456789-abcdefghijklmnopqrstuvwxyz"


def make_token(*, secret: str = SECRET, exp_in: float = 3600, **claims: Any) -> str:
    """An HS256 JWT like a Supabase API key: ``role`` (default ``anon``) and ``exp``."""
    claims.setdefault("role", "anon")
    claims["exp"] = int(time.time() + exp_in)
    return jwt.encode(claims, secret, algorithm="HS256")


async def next_matching(sub: Subscription, predicate: Callable[[RealtimeEvent], bool]) -> RealtimeEvent:
    async for event in sub:
        if predicate(event):
            return event
    raise AssertionError("the subscription ended before the expected event")


async def first_status(peer: Peer) -> str:
    event = await peer.expect(matches("status"), f"{peer.kind} to report its join status")
    status: str = event["status"]
    return status


async def send_ok(peer: Peer, event: str, payload: dict[str, Any]) -> None:
    await peer.command({"cmd": "send", "event": event, "payload": payload})
    result = await peer.expect(matches("send_result", event=event), f"{peer.kind} to send {event!r}")
    assert result["result"] == "ok", result


@pytest.mark.parametrize("kind", KINDS)
async def test_valid_jwt_apikey(start_server: StartServer, kind: PeerKind) -> None:
    server = await start_server(jwt_secret=SECRET)
    with trio.fail_after(GUARD):
        async with (
            open_realtime(server.url, api_key=make_token(role="authenticated")) as client,
            client.channel("secure", presence=PresenceConfig(key="trio")) as sub,
            open_peer(kind, server.url, topic="secure", key="official", apikey=make_token()) as peer,
        ):
            assert await first_status(peer) == "SUBSCRIBED"

            await send_ok(peer, "hello", {"n": 1})
            event = await next_matching(sub, lambda e: isinstance(e, Broadcast) and e.event == "hello")
            assert isinstance(event, Broadcast)
            assert event.payload == {"n": 1}

            await peer.command({"cmd": "track", "meta": {"who": kind}})
            assert (await peer.expect(matches("track_result"), "the track"))["result"] == "ok"
            await next_matching(sub, lambda e: isinstance(e, PresenceSync) and "official" in e.state)

            # A refreshed (valid) token keeps the channel working.
            await peer.command({"cmd": "set_auth", "token": make_token(exp_in=7200)})
            await peer.expect(matches("set_auth_result"), "set_auth to return")
            await send_ok(peer, "after-refresh", {"n": 2})
            await next_matching(sub, lambda e: isinstance(e, Broadcast) and e.event == "after-refresh")

            # An expired one makes the server close the peer's channel with the official
            # system error (PROTOCOL.md §3.7); its presence leaves.
            await peer.command({"cmd": "set_auth", "token": make_token(exp_in=-100)})
            await peer.expect(matches("set_auth_result"), "set_auth to return")
            expired = re.compile(r"^Token has expired \d+ seconds ago$")
            if kind == "py":
                # The PyPI client turns a system error into CHANNEL_ERROR (message as JSON text)
                # and never calls its on_system callback for it.
                status = await peer.expect(matches("status"), "the channel error")
                assert status["status"] == "CHANNEL_ERROR", status
                assert "Token has expired" in status["error"]["message"]
            else:
                system = await peer.expect(matches("system"), "the system error")
                assert system["payload"]["status"] == "error"
                assert system["payload"]["extension"] == "system"
                assert system["payload"]["channel"] == "secure"
                assert expired.match(system["payload"]["message"]), system
            closed = await peer.expect(matches("status"), "the channel to close")
            assert closed["status"] == "CLOSED", closed
            leave = await next_matching(sub, lambda e: isinstance(e, PresenceLeave) and e.key == "official")
            assert isinstance(leave, PresenceLeave)

            # Our own channel was not affected.
            assert server.statistics().channels == 1
        assert server.statistics().rejected_upgrades == 0


@pytest.mark.parametrize(
    "apikey",
    [
        pytest.param(
            make_token(secret="not-the-server-secret-0123456789-abcdefghijklmn"), id="bad-signature"
        ),
        pytest.param(make_token(exp_in=-60), id="expired"),
        pytest.param(jwt.encode({"exp": 4102444800}, SECRET, algorithm="HS256"), id="no-role"),
        pytest.param("not-a-jwt", id="malformed"),
    ],
)
async def test_invalid_apikey_js_reports_channel_error(start_server: StartServer, apikey: str) -> None:
    server = await start_server(jwt_secret=SECRET)
    with trio.fail_after(GUARD):
        async with open_peer("js-v2", server.url, topic="secure", key="official", apikey=apikey) as peer:
            # The upgrade is refused with an HTTP error; realtime-js reports the transport
            # failure as CHANNEL_ERROR right away (well before its 10 s join timeout).
            status = await peer.expect(matches("status"), "the join status")
            assert status["status"] == "CHANNEL_ERROR", status
        stats = server.statistics()
        assert stats.rejected_upgrades >= 1
        assert stats.channels == 0
        assert stats.messages_in == 0
