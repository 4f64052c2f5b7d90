"""The WebSocket upgrade: routes, vsn negotiation, API keys and JWT refusals (PROTOCOL.md §1)."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import pytest
import trio
from _server_helpers import SECRET, attempt_upgrade, make_token
from trio_websocket import open_websocket_url

if TYPE_CHECKING:
    from conftest import Connect, StartServer

    from trio_realtime.server import RealtimeServer


async def test_port_zero_is_reported(server: RealtimeServer, connect: Connect) -> None:
    with trio.fail_after(10):
        assert server.port > 0
        assert server.host == "127.0.0.1"
        assert server.url == f"ws://127.0.0.1:{server.port}/realtime/v1"
        assert server.websocket_url() == f"ws://127.0.0.1:{server.port}/realtime/v1/websocket?vsn=1.0.0"
        assert server.websocket_url("2.0.0").endswith("/realtime/v1/websocket?vsn=2.0.0")
        assert repr(server) == f"<RealtimeServer {server.url}>"
        async with connect(server) as client:  # the reported port is the real one
            assert await client.sync() == []


def test_no_public_constructor() -> None:
    from trio_realtime.server import RealtimeServer

    with pytest.raises(TypeError, match=r"has no public constructor"):
        RealtimeServer()  # type: ignore[call-arg]


@pytest.mark.parametrize("path", ["/realtime/v1/websocket", "/socket/websocket"])
async def test_both_routes_accept(server: RealtimeServer, path: str) -> None:
    with trio.fail_after(10):
        base = f"ws://127.0.0.1:{server.port}{path}?apikey=k"
        async with open_websocket_url(base) as ws:
            await ws.send_message('{"topic":"phoenix","event":"heartbeat","payload":{},"ref":"1"}')
            reply = json.loads(await ws.get_message())
        assert reply == {"topic": "phoenix", "event": "phx_reply",
                         "payload": {"status": "ok", "response": {}}, "ref": "1"}


async def test_unknown_route_is_404_json(server: RealtimeServer) -> None:
    with trio.fail_after(10):
        refusal = await attempt_upgrade(server.port, "/nope/websocket?apikey=k")
        assert refusal is not None
        assert refusal.status == 404
        assert json.loads(refusal.body) == {"error": "Not Found"}
        assert server.statistics().rejected_upgrades == 1


@pytest.mark.parametrize("vsn", ["3.0.0", "1.1.0", "banana", "2"])
async def test_unsupported_vsn_is_403(server: RealtimeServer, vsn: str) -> None:
    with trio.fail_after(10):
        refusal = await attempt_upgrade(server.port, f"/socket/websocket?apikey=k&vsn={vsn}")
        assert refusal is not None
        assert refusal.status == 403
        assert refusal.body == b""


async def test_missing_vsn_defaults_to_v1(server: RealtimeServer) -> None:
    with trio.fail_after(10):
        async with open_websocket_url(f"{server.url}/websocket?apikey=k") as ws:
            await ws.send_message('{"topic":"phoenix","event":"heartbeat","payload":{},"ref":"7"}')
            assert json.loads(await ws.get_message())["ref"] == "7"


async def test_vsn_default_is_configurable(start_server: StartServer) -> None:
    with trio.fail_after(10):
        server = await start_server(default_vsn="2.0.0")
        async with open_websocket_url(f"{server.url}/websocket?apikey=k") as ws:
            await ws.send_message('[null,"7","phoenix","heartbeat",{}]')
            assert json.loads(await ws.get_message()) == [None, "7", "phoenix", "phx_reply",
                                                          {"status": "ok", "response": {}}]


async def test_dev_mode_accepts_any_key_but_requires_one(server: RealtimeServer, connect: Connect) -> None:
    with trio.fail_after(10):
        async with connect(server, apikey="not-a-jwt-at-all") as client:
            assert await client.sync() == []
        refusal = await attempt_upgrade(server.port, "/realtime/v1/websocket?vsn=1.0.0")
        assert refusal is not None
        assert refusal.status == 401
        assert json.loads(refusal.body) == {"error": "API key is missing"}


@pytest.mark.parametrize(
    ("apikey", "error"),
    [
        (None, "API key is missing"),
        (make_token(exp_in=-30), "Token has expired"),
        (make_token(role=None), "Fields `role` and `exp` are required in JWT"),
        (make_token(exp_in=None), "Fields `role` and `exp` are required in JWT"),
        ("not.a.jwt", "The token provided is not a valid JWT"),
        ("garbage", "The token provided is not a valid JWT"),
        (make_token("another-secret-of-sufficient-length-for-hmac-sha256!"),
         "Failed to validate JWT signature"),
    ],
    ids=["missing", "expired", "no-role", "no-exp", "malformed-3-parts", "malformed", "bad-signature"],
)
async def test_jwt_refusals(start_server: StartServer, apikey: str | None, error: str) -> None:
    with trio.fail_after(10):
        server = await start_server(jwt_secret=SECRET)
        target = "/realtime/v1/websocket?vsn=2.0.0" + (f"&apikey={apikey}" if apikey is not None else "")
        refusal = await attempt_upgrade(server.port, target)
        assert refusal is not None
        assert refusal.status == 401
        assert json.loads(refusal.body) == {"error": error}
        assert refusal.headers[b"content-type"] == b"application/json"


async def test_valid_jwt_accepted(start_server: StartServer, connect: Connect) -> None:
    with trio.fail_after(10):
        server = await start_server(jwt_secret=SECRET)
        for algorithm in ("HS256", "HS384", "HS512"):
            async with connect(server, apikey=make_token(algorithm=algorithm)) as client:
                assert await client.sync() == []


async def test_header_api_key_wins_over_query(start_server: StartServer) -> None:
    with trio.fail_after(10):
        server = await start_server(jwt_secret=SECRET)
        good, bad = make_token(), "garbage"
        url = f"{server.url}/websocket?vsn=1.0.0&apikey={bad}"
        async with open_websocket_url(url, extra_headers=[(b"x-api-key", good.encode())]) as ws:
            await ws.send_message('{"topic":"phoenix","event":"heartbeat","payload":{},"ref":"1"}')
            assert json.loads(await ws.get_message())["payload"]["status"] == "ok"
        refusal = await attempt_upgrade(server.port, f"/socket/websocket?apikey={good}",
                                        [(b"x-api-key", bad.encode())])
        assert refusal is not None
        assert refusal.status == 401
        headers = [(b"X-Api-Key", good.encode())]
        assert await attempt_upgrade(server.port, "/socket/websocket", headers) is None
