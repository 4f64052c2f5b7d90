"""Channel access tokens with a JWT secret: join checks, refresh, expiry (PROTOCOL.md §3.3, §3.7-§3.9)."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

import pytest
import trio
from _server_helpers import SECRET, make_token

if TYPE_CHECKING:
    from _server_helpers import Frame, RawClient
    from conftest import Connect, StartServer

    from trio_realtime.server import RealtimeServer


@pytest.fixture
async def secure(start_server: StartServer) -> RealtimeServer:
    return await start_server(jwt_secret=SECRET)


@pytest.mark.parametrize(
    ("token", "reason"),
    [
        (make_token(exp_in=-5), r"^InvalidJWTToken: Token has expired [0-9]+ seconds ago$"),
        (make_token(role=None), r"^InvalidJWTToken: Fields `role` and `exp` are required in JWT$"),
        ("nope", r"^MalformedJWT: The token provided is not a valid JWT$"),
        ("", r"^MalformedJWT: The token provided is not a valid JWT$"),
        (make_token("a-different-secret-which-is-long-enough-for-hs256"),
         r"^JwtSignatureError: Failed to validate JWT signature$"),
    ],
    ids=["expired", "missing-claims", "malformed", "empty", "signature"],
)
async def test_join_token_errors(secure: RealtimeServer, connect: Connect, token: str, reason: str) -> None:
    with trio.fail_after(10):
        async with connect(secure, "2.0.0", apikey=make_token()) as client:
            reply = await client.join("realtime:room", {}, access_token=token)
            status, response = reply.reply
            assert status == "error"
            assert re.match(reason, response["reason"])
            assert secure.statistics().channels == 0
            assert await client.sync() == []


async def test_join_token_choice(secure: RealtimeServer, connect: Connect) -> None:
    with trio.fail_after(10):
        async with connect(secure, "1.0.0", apikey=make_token()) as client:
            # no token in the payload: the socket's token is used
            assert (await client.join("realtime:a")).reply[0] == "ok"
            # an "sb_" key is not a JWT and falls back to the socket's token
            assert (await client.join("realtime:b", {}, access_token="sb_publishable_x")).reply[0] == "ok"
            # user_token is the legacy name
            bad = await client.join("realtime:c", {}, user_token="garbage")
            assert bad.reply[1]["reason"].startswith("MalformedJWT")
            good = await client.join("realtime:d", {}, access_token=make_token(), user_token="garbage")
            assert good.reply[0] == "ok"


async def test_socket_token_is_rechecked_at_join(start_server: StartServer, connect: Connect) -> None:
    with trio.fail_after(10):
        server = await start_server(jwt_secret=SECRET)
        async with connect(server, "1.0.0", apikey=make_token(exp_in=0.3)) as client:
            assert (await client.join("realtime:a")).reply[0] == "ok"
            # the channel closes when the token expires (§3.9) ...
            system = await client.expect("system", "realtime:a")
            assert re.match(r"^Token has expired [0-9]+ seconds ago$", system.payload["message"])
            assert system.payload["status"] == "error"
            assert system.payload["extension"] == "system"
            assert system.payload["channel"] == "a"
            assert (await client.expect("phx_close", "realtime:a")).ref == "1"
            # ... and a later join with the same (now expired) socket token fails
            reply = await client.join("realtime:b")
            expected = r"^InvalidJWTToken: Token has expired [0-9]+ seconds ago$"
            assert re.match(expected, reply.reply[1]["reason"])


async def _refresh(client: RawClient, token: object, topic: str = "realtime:room") -> None:
    await client.push(topic, "access_token", {"access_token": token}, join_ref="1")


async def _closed_with(client: RawClient, message_re: str) -> Frame:
    frames = await client.sync()
    assert [f.event for f in frames] == ["system", "phx_close"], frames
    system, close = frames
    assert system.payload["extension"] == "system"
    assert system.payload["status"] == "error"
    assert system.payload["channel"] == "room"
    assert re.match(message_re, system.payload["message"]), system.payload
    assert close.ref == "1"
    return system


async def test_access_token_is_never_replied(secure: RealtimeServer, connect: Connect, vsn: str) -> None:
    with trio.fail_after(10):
        async with connect(secure, vsn, apikey=make_token()) as client:
            await client.join("realtime:room")
            await _refresh(client, make_token(exp_in=7200))
            await _refresh(client, None)  # ignored
            await _refresh(client, 12)  # ignored
            await _refresh(client, "sb_secret_123")  # ignored
            assert await client.sync() == []
            assert secure.statistics().channels == 1


@pytest.mark.parametrize(
    ("token", "message"),
    [
        (make_token(exp_in=-60), r"^Token has expired [0-9]+ seconds ago$"),
        (make_token(exp_in=None), r"^Fields `role` and `exp` are required in JWT$"),
        ("", r"^The token provided is not a valid JWT$"),
        (make_token("a-different-secret-which-is-long-enough-for-hs256"),
         r"^Failed to validate JWT signature$"),
    ],
    ids=["expired", "missing-claims", "empty", "signature"],
)
async def test_bad_access_token_closes_channel(secure: RealtimeServer, connect: Connect, token: str,
                                               message: str) -> None:
    with trio.fail_after(10):
        async with connect(secure, "2.0.0", apikey=make_token()) as client:
            await client.join("realtime:room")
            await _refresh(client, token)
            system = await _closed_with(client, message)
            assert system.join_ref == "1"
            assert secure.statistics().channels == 0


async def test_refresh_reschedules_expiry(secure: RealtimeServer, connect: Connect) -> None:
    with trio.fail_after(10):
        async with connect(secure, "1.0.0", apikey=make_token()) as client:
            await client.join("realtime:room", {}, access_token=make_token(exp_in=3600))
            await _refresh(client, make_token(exp_in=0.2))
            # the refreshed token governs: the channel closes when it expires
            system = await client.expect("system", "realtime:room")
            assert re.match(r"^Token has expired [0-9]+ seconds ago$", system.payload["message"])
            assert (await client.expect("phx_close", "realtime:room")).ref == "1"
            assert secure.statistics().channels == 0


async def test_dev_mode_checks_no_tokens(server: RealtimeServer, connect: Connect) -> None:
    with trio.fail_after(10):
        async with connect(server, "1.0.0", apikey="whatever") as client:
            assert (await client.join("realtime:room", {}, access_token="not-a-jwt")).reply[0] == "ok"
            await _refresh(client, make_token(exp_in=-100))
            assert await client.sync() == []
