"""Tokens: set_auth, the token callable, and secrets never leaking into reprs, errors or logs."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import pytest
import trio
from _client_helpers import URL, make_config, open_client
from trio.testing import wait_all_tasks_blocked

from trio_realtime import (
    ChannelErrored,
    HandshakeFailed,
    JoinRejected,
    LocalProtocolError,
    Rejoined,
    open_realtime,
)
from trio_realtime.testing import open_scripted_server

if TYPE_CHECKING:
    from trio.testing import MockClock

API_KEY = "sb-apikey-SECRET-1b2c3d"
TOKEN = "eyJ-user-token-SECRET-4e5f6a"
NEW_TOKEN = "eyJ-rotated-token-SECRET-7b8c9d"
SECRETS = ("SECRET", API_KEY, TOKEN, NEW_TOKEN)


def _assert_no_secret(text: str) -> None:
    for secret in SECRETS:
        assert secret not in text, f"secret {secret!r} leaked into {text!r}"


async def test_set_auth_pushes_token_and_rejoins_use_it(autojump_clock: MockClock) -> None:
    with trio.fail_after(10):
        async with (
            open_scripted_server() as server,
            open_client(server, access_token=TOKEN) as client,
            client.channel("a") as a,
            client.channel("b"),
        ):
            assert [m.payload["access_token"] for m in server.messages("phx_join")] == [TOKEN, TOKEN]
            await client.set_auth(NEW_TOKEN)
            await wait_all_tasks_blocked()
            pushes = server.messages("access_token")
            assert sorted(m.topic for m in pushes) == ["realtime:a", "realtime:b"]
            assert all(m.payload == {"access_token": NEW_TOKEN} for m in pushes)
            assert all(m.join_ref == server.join_ref(m.topic) for m in pushes)

            server.drop_connection()
            assert isinstance(await a.receive(), ChannelErrored)
            assert isinstance(await a.receive(), Rejoined)
            await server.wait_frame("phx_join", count=4)
            rejoins = server.messages("phx_join")[2:]
            assert [m.payload["access_token"] for m in rejoins] == [NEW_TOKEN, NEW_TOKEN]


async def test_set_auth_replaces_the_token_callable(autojump_clock: MockClock) -> None:
    calls = 0

    async def token() -> str:
        nonlocal calls
        calls += 1
        await trio.lowlevel.checkpoint()
        return f"callable-token-{calls}"

    with trio.fail_after(10):
        async with (
            open_scripted_server() as server,
            open_client(server, access_token=token) as client,
            client.channel("a") as a,
        ):
            assert calls == 1
            await client.set_auth(NEW_TOKEN)
            await server.error_channel("a")
            assert isinstance(await a.receive(), ChannelErrored)
            assert isinstance(await a.receive(), Rejoined)
            assert calls == 1
            assert [m.payload["access_token"] for m in server.messages("phx_join")] == [
                "callable-token-1",
                NEW_TOKEN,
            ]


async def test_set_auth_skips_channels_not_joined(autojump_clock: MockClock) -> None:
    with trio.fail_after(10):
        async with (
            open_scripted_server() as server,
            open_client(server, access_token=TOKEN) as client,
            client.channel("a") as a,
        ):
            server.refuse_connections(1)
            server.drop_connection()
            assert isinstance(await a.receive(), ChannelErrored)
            await client.set_auth(NEW_TOKEN)
            assert server.messages("access_token") == []
            assert isinstance(await a.receive(), Rejoined)
            assert server.messages("phx_join")[-1].payload["access_token"] == NEW_TOKEN


async def test_secrets_do_not_leak(autojump_clock: MockClock, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="trio_realtime")
    texts: list[str] = []
    with trio.fail_after(100):
        async with open_scripted_server() as server:
            # A refused first connection.
            server.refuse_connections(1, status=401, body='{"error":"Token has expired"}')
            with pytest.raises(HandshakeFailed) as refused:
                async with open_client(server, api_key=API_KEY, access_token=TOKEN):
                    pass  # pragma: no cover
            texts += [str(refused.value), repr(refused.value)]

            async with (
                open_client(server, api_key=API_KEY, access_token=TOKEN) as client,
                client.channel("room") as sub,
            ):
                texts += [repr(client), str(client), repr(sub), repr(client.statistics())]
                texts += [repr(sub.statistics()), repr(client.config)]
                # Reconnects, refusals and a rejected join all log and raise.
                server.refuse_connections(2, status=503)
                server.drop_connection()
                assert isinstance(await sub.receive(), ChannelErrored)
                assert isinstance(await sub.receive(), Rejoined)
                await client.set_auth(NEW_TOKEN)
                server.reject_join("other", "InvalidJWTToken: Token has expired 5 seconds ago")
                with pytest.raises(JoinRejected) as rejected:
                    async with client.channel("other"):
                        pass  # pragma: no cover
                texts += [str(rejected.value), repr(rejected.value), repr(client)]
                server.answer_heartbeats = False
                assert isinstance(await sub.receive(), ChannelErrored)
                server.answer_heartbeats = True
                assert isinstance(await sub.receive(), Rejoined)
            texts.append(repr(client))

        # A URL with a bad scheme is reported without its query string.
        with pytest.raises(LocalProtocolError) as bad_url:
            async with open_realtime(f"ftp://host/realtime/v1?apikey={API_KEY}", config=make_config()):
                pass  # pragma: no cover
        texts.append(str(bad_url.value))
        assert URL not in texts

    messages = [record.getMessage() for record in caplog.records]
    assert any("connection lost" in m for m in messages)  # the logs were captured
    for text in texts + messages:
        _assert_no_secret(text)
