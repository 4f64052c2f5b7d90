"""Private channels and the pluggable authorization policy (PROTOCOL.md §4.4, §5.6, §3.8, §3.9).

Raw frames over real sockets. A recording policy shows exactly which questions the server
asks and when; the default policy is checked in JWT and development mode. Ordering comes from
``RawClient.sync()`` (see ``_server_helpers``); the expiry test waits for the server's own
timer under ``fail_after``.
"""

from __future__ import annotations

import functools
import logging
import re
from typing import TYPE_CHECKING, Any

import attrs
import pytest
import trio
from _server_helpers import SECRET, make_token

from trio_realtime.server import AuthorizationRequest, ServerConfig, default_authorize, serve_realtime

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from _server_helpers import RawClient
    from conftest import Connect

    from trio_realtime.server import RealtimeServer

    Start = Callable[..., Awaitable[RealtimeServer]]

TOPIC = "realtime:room"
UNAUTHORIZED = "Unauthorized: You do not have permissions to read from this Channel topic: room"
REVOKED = "You no longer have permission to read from this Channel topic: room"


@attrs.define
class Policy:
    """Allows what ``allow`` says per (extension, action), optionally per claim; records calls."""

    allow: dict[tuple[str, str], bool] = attrs.field(factory=dict)
    #: if set, also require ``claims[claim]`` to be truthy for every request
    claim: str | None = None
    requests: list[AuthorizationRequest] = attrs.field(factory=list)

    def __call__(self, request: AuthorizationRequest) -> bool:
        self.requests.append(request)
        if self.claim is not None and not request.claims.get(self.claim):
            return False
        return self.allow.get((request.extension, request.action), True)

    def asked(self) -> list[tuple[str, str]]:
        return [(r.extension, r.action) for r in self.requests]


@pytest.fixture
def start(nursery: trio.Nursery) -> Start:
    async def start(*, jwt_secret: str | None = SECRET, authorize: Any = None,
                    **config: Any) -> RealtimeServer:
        server: RealtimeServer = await nursery.start(functools.partial(
            serve_realtime, "127.0.0.1", 0, jwt_secret=jwt_secret, authorize=authorize,
            config=ServerConfig(**config)))
        return server

    return start


def bcast(event: str, payload: Any) -> dict[str, Any]:
    return {"type": "broadcast", "event": event, "payload": payload}


def private(**broadcast: Any) -> dict[str, Any]:
    return {"private": True, "broadcast": broadcast}


TRACK = {"type": "presence", "event": "track", "payload": {}}
ANON = make_token(role="anon")
USER = make_token(role="authenticated", sub="user-1")


# -- the default policy -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("role", "allowed"),
    [("authenticated", True), ("service_role", True), ("anon", False), ("supabase_admin", False)],
)
async def test_default_policy_with_jwt(start: Start, connect: Connect, vsn: str, role: str,
                                       allowed: bool) -> None:
    with trio.fail_after(10):
        server = await start()
        async with connect(server, vsn, apikey=ANON) as client:
            reply = await client.join(TOPIC, private(), access_token=make_token(role=role))
            expected = ("ok", {"postgres_changes": []}) if allowed else ("error", {"reason": UNAUTHORIZED})
            assert reply.reply == expected
            # public channels are never authorized: anon may join them
            public = await client.join("realtime:public", {}, access_token=make_token(role=role))
            assert public.reply[0] == "ok"
            assert server.statistics().unauthorized == (0 if allowed else 1)


async def test_default_policy_in_development_mode_allows(start: Start, connect: Connect) -> None:
    with trio.fail_after(10):
        server = await start(jwt_secret=None)
        async with connect(server, "2.0.0") as a, connect(server, "2.0.0") as b:
            await a.join(TOPIC, {**private(ack=True), "presence": {"enabled": True, "key": "a"}})
            await b.join(TOPIC, private())
            await a.push(TOPIC, "broadcast", bcast("e", {}), join_ref="1")
            await a.push(TOPIC, "presence", TRACK, join_ref="1")
            assert [f.reply[0] for f in await a.sync() if f.event == "phx_reply"] == ["ok", "ok"]
            assert [f.event for f in await b.sync()] == ["broadcast", "presence_diff"]


def test_default_authorize_function() -> None:
    def ask(claims: dict[str, Any]) -> bool:
        return default_authorize(AuthorizationRequest(claims=claims, topic="t", extension="broadcast",
                                                      action="write"))

    assert ask({})  # development mode: nothing verified
    assert ask({"role": "authenticated"})
    assert ask({"role": "service_role"})
    assert not ask({"role": "anon"})
    assert not ask({"role": None, "exp": 1})


# -- what is asked, and when ---------------------------------------------------------------------


async def test_join_asks_read_and_presence_read(start: Start, connect: Connect) -> None:
    policy = Policy()
    with trio.fail_after(10):
        server = await start(authorize=policy)
        async with connect(server, "2.0.0", apikey=ANON) as client:
            await client.join(TOPIC, private(), access_token=USER)
            await client.join("realtime:other", {**private(), "presence": {"enabled": True}},
                              access_token=USER)
            assert [f.event for f in await client.sync()] == ["presence_state"]
            await client.join("realtime:public", {"presence": {"enabled": True}}, access_token=USER)
    assert policy.asked() == [("broadcast", "read"), ("broadcast", "read"), ("presence", "read")]
    first = policy.requests[0]
    assert (first.topic, first.claims["role"], first.claims["sub"]) == ("room", "authenticated", "user-1")
    assert policy.requests[1].topic == "other"


async def test_read_denied_refuses_the_join(start: Start, connect: Connect, vsn: str) -> None:
    policy = Policy(allow={("broadcast", "read"): False})
    with trio.fail_after(10):
        server = await start(authorize=policy)
        async with connect(server, vsn, apikey=ANON) as client:
            reply = await client.join(TOPIC, private(), access_token=USER)
            assert reply.reply == ("error", {"reason": UNAUTHORIZED})
            assert await client.sync() == []
            assert server.statistics().channels == 0


async def test_presence_read_alone_admits_without_broadcasts(start: Start, connect: Connect) -> None:
    """Join needs broadcast read *or* presence read; broadcasts reach only broadcast readers."""
    policy = Policy(claim="reader")
    reader, watcher = make_token(reader=True), make_token(reader=False)
    policy_for_watcher = Policy(allow={("broadcast", "read"): False})
    with trio.fail_after(10):
        server = await start(
            authorize=lambda r: policy(r) if r.claims.get("reader") else policy_for_watcher(r))
        async with connect(server, "1.0.0", apikey=ANON) as a, connect(server, "1.0.0", apikey=ANON) as b:
            await a.join(TOPIC, private(ack=True), access_token=reader)
            joined = await b.join(TOPIC, {**private(), "presence": {"enabled": True}}, access_token=watcher)
            assert joined.reply[0] == "ok"
            assert [f.event for f in await b.sync()] == ["presence_state"]
            await a.push(TOPIC, "broadcast", bcast("e", {}), join_ref="1")
            await a.sync()
            assert await b.sync() == []  # no broadcast read: not delivered
            # and a replay needs broadcast read
            config = {**private(replay={"since": 0}), "presence": {"enabled": True}}
            reply = await b.join("realtime:room", config, access_token=watcher)
            assert reply.reply == ("error", {"reason": UNAUTHORIZED})


async def test_write_denied_drops_without_reply(start: Start, connect: Connect, vsn: str) -> None:
    policy = Policy(allow={("broadcast", "write"): False})
    with trio.fail_after(10):
        server = await start(authorize=policy)
        async with connect(server, vsn, apikey=ANON) as sender, connect(server, vsn, apikey=ANON) as other:
            await sender.join(TOPIC, private(ack=True, self=True), access_token=USER)
            await other.join(TOPIC, private(), access_token=USER)
            for _ in range(2):
                await sender.push(TOPIC, "broadcast", bcast("e", {}), join_ref="1")
            assert await sender.sync() == []  # no reply even though ack is on, no echo
            assert await other.sync() == []
            stats = server.statistics()
            assert (stats.stored_messages, stats.unauthorized) == (0, 2)
    assert policy.asked().count(("broadcast", "write")) == 1  # cached per channel


async def test_presence_write_denied_replies_error(start: Start, connect: Connect) -> None:
    policy = Policy(allow={("presence", "write"): False})
    with trio.fail_after(10):
        server = await start(authorize=policy)
        async with connect(server, "2.0.0", apikey=ANON) as a, connect(server, "2.0.0", apikey=ANON) as b:
            presence = {"presence": {"enabled": True}}
            await a.join(TOPIC, {**private(), **presence}, access_token=USER)
            await b.join(TOPIC, {**private(), **presence}, access_token=USER)
            await a.sync()
            await b.sync()
            ref = await a.push(TOPIC, "presence", {"type": "presence", "event": "track", "payload": {"x": 1}},
                               join_ref="1")
            [reply] = await a.sync()
            assert (reply.ref, reply.reply) == (ref, ("error", {}))
            assert await b.sync() == []  # nothing tracked, no diff


async def test_presence_read_denied_withholds_state_and_diffs(start: Start, connect: Connect) -> None:
    watcher = make_token(role="authenticated", watcher=True)

    def authorize(request: AuthorizationRequest) -> bool:
        presence_read = (request.extension, request.action) == ("presence", "read")
        return not (request.claims.get("watcher") and presence_read)

    with trio.fail_after(10):
        server = await start(authorize=authorize)
        async with connect(server, "2.0.0", apikey=ANON) as a, connect(server, "2.0.0", apikey=ANON) as b:
            presence = {"presence": {"enabled": True, "key": "k"}}
            await a.join(TOPIC, {**private(), **presence}, access_token=USER)
            assert [f.event for f in await a.sync()] == ["presence_state"]
            await b.join(TOPIC, {**private(), **presence}, access_token=watcher)
            assert await b.sync() == []  # no presence_state
            await a.push(TOPIC, "presence", TRACK, join_ref="1")
            assert [f.event for f in await a.sync()] == ["phx_reply", "presence_diff"]
            assert await b.sync() == []  # presence_diff withheld


async def test_a_raising_policy_denies_and_logs(start: Start, connect: Connect,
                                                caplog: pytest.LogCaptureFixture) -> None:
    def authorize(request: AuthorizationRequest) -> bool:
        raise RuntimeError("policy bug")

    with trio.fail_after(10):
        server = await start(authorize=authorize)
        async with connect(server, "1.0.0", apikey=ANON) as client:
            reply = await client.join(TOPIC, private(), access_token=USER)
            assert reply.reply == ("error", {"reason": UNAUTHORIZED})
            assert (await client.join("realtime:public", {}, access_token=USER)).reply[0] == "ok"
    [record] = [r for r in caplog.records if "authorization policy raised" in r.getMessage()]
    assert record.levelno == logging.ERROR
    assert record.exc_info is not None


# -- token refresh and expiry -------------------------------------------------------------------


async def _refresh(client: RawClient, token: str) -> None:
    await client.push(TOPIC, "access_token", {"access_token": token}, join_ref="1")


async def test_refresh_that_revokes_read_closes_the_channel(start: Start, connect: Connect, vsn: str) -> None:
    policy = Policy(claim="member")
    with trio.fail_after(10):
        server = await start(authorize=policy)
        async with connect(server, vsn, apikey=ANON) as client:
            joined = await client.join(TOPIC, private(), access_token=make_token(member=True))
            assert joined.reply[0] == "ok"
            await _refresh(client, make_token(member=False))
            system, close = await client.sync()
            assert (system.event, system.payload) == ("system", {
                "extension": "system", "status": "error", "message": REVOKED, "channel": "room"})
            assert (close.event, close.ref) == ("phx_close", "1")
            if vsn == "2.0.0":
                assert system.join_ref == "1"
            assert server.statistics().channels == 0


async def test_refresh_that_keeps_read_re_asks_write(start: Start, connect: Connect) -> None:
    def authorize(request: AuthorizationRequest) -> bool:
        return request.action == "read" or bool(request.claims.get("writer"))

    with trio.fail_after(10):
        server = await start(authorize=authorize)
        async with connect(server, "1.0.0", apikey=ANON) as client:
            await client.join(TOPIC, private(ack=True), access_token=make_token(writer=False))
            await client.push(TOPIC, "broadcast", bcast("e", {}), join_ref="1")
            assert await client.sync() == []  # write denied: dropped, no reply
            await _refresh(client, make_token(writer=True))
            await client.push(TOPIC, "broadcast", bcast("e", {}), join_ref="1")
            [reply] = await client.sync()
            assert reply.reply == ("ok", {})
            assert server.statistics().channels == 1


async def test_token_expiry_while_joined_closes_a_private_channel(start: Start, connect: Connect,
                                                                  vsn: str) -> None:
    with trio.fail_after(10):
        server = await start()
        async with connect(server, vsn, apikey=ANON) as client:
            await client.join(TOPIC, private(), access_token=make_token(exp_in=0.3))
            system = await client.expect("system", TOPIC)
            assert re.match(r"^Token has expired [0-9]+ seconds ago$", system.payload["message"])
            assert {k: v for k, v in system.payload.items() if k != "message"} == {
                "extension": "system", "status": "error", "channel": "room"}
            close = await client.expect("phx_close", TOPIC)
            assert close.ref == "1"
            assert server.statistics().channels == 0
