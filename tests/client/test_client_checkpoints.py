"""Every blocking method is a checkpoint, even when it has nothing to wait for (Trio's rule)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import trio
from _client_helpers import open_client
from trio.testing import assert_checkpoints, wait_all_tasks_blocked

from trio_realtime import BroadcastConfig
from trio_realtime.testing import open_scripted_server

if TYPE_CHECKING:
    from trio.testing import MockClock


async def test_blocking_methods_are_checkpoints(autojump_clock: MockClock) -> None:
    with trio.fail_after(10):
        async with (
            open_scripted_server() as server,
            open_client(server) as client,
            client.channel("room", broadcast=BroadcastConfig(receive_own=True)) as sub,
        ):
            with assert_checkpoints():
                await client.wait_connected()
            with assert_checkpoints():
                await sub.send_broadcast("e", {})
            await wait_all_tasks_blocked()
            with assert_checkpoints():
                await sub.receive()  # already queued
            with assert_checkpoints():
                await client.set_auth("token")
            with assert_checkpoints():
                await client.set_auth(None)
            with assert_checkpoints():
                await server.push("room", "x", {})
            with assert_checkpoints():
                await sub.aclose()
