"""A connection attempt that never completes its upgrade is bounded by connect_timeout."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest
import trio
from _client_helpers import URL, make_config

from trio_realtime import ConnectionState, HandshakeFailed, open_realtime
from trio_realtime.testing import open_scripted_server

if TYPE_CHECKING:
    from trio.testing import MockClock

    from trio_realtime.testing import MemoryTransport


async def test_first_connect_that_hangs_fails_at_connect_timeout(autojump_clock: MockClock) -> None:
    async def black_hole(url: str) -> MemoryTransport:
        await trio.sleep_forever()
        raise AssertionError("unreachable")  # pragma: no cover

    with trio.fail_after(100):
        with pytest.raises(HandshakeFailed, match=r"no WebSocket upgrade response .* within 7 s"):
            async with open_realtime(
                URL, api_key="k", config=make_config(connect_timeout=7.0), transport_factory=black_hole
            ):
                pass  # pragma: no cover
        assert trio.current_time() == 7.0


async def test_reconnect_attempt_that_hangs_is_retried(autojump_clock: MockClock) -> None:
    with trio.fail_after(100):
        async with open_scripted_server() as server:
            hang_next = False

            async def factory(url: str) -> MemoryTransport:
                if hang_next:
                    await trio.sleep(1000)  # far beyond connect_timeout
                return await server.transport_factory(url)

            config = make_config(connect_timeout=5.0, vsn=server.vsn)
            async with open_realtime(URL, api_key="k", config=config, transport_factory=factory) as client:
                async with client.channel("room"):
                    hang_next = True
                    server.drop_connection()
                    # Lost at 0; attempt at 1 (backoff 1) hangs until 6; next at 6 + 2 = 8.
                    await trio.sleep(7.5)
                    assert client.state is ConnectionState.RECONNECTING
                    assert client.statistics().connection_attempts == 2
                    hang_next = False
                    await client.wait_connected()
                    assert trio.current_time() == 8.0
                    assert server.connect_times == [0.0, 8.0]
