"""The fault proxy itself, over raw loopback TCP: the test holds both ends of every connection.

Each test owns a tiny target server that hands every accepted stream to the test, so the test
can write on one side of the proxy and read on the other. No mock clock (real sockets); every
test runs under an absolute ``fail_after``, and ordering comes from reading bytes and waiting
on the proxy's statistics, never from sleeping. The few timed waits only check that nothing
arrives while a direction is stalled, and the timing asserts are lower bounds that cannot
flake ("took at least the injected latency").
"""

from __future__ import annotations

import functools
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

import pytest
import trio

from trio_realtime.testing import FaultProxy, FaultProxyStatistics, open_fault_proxy

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable

GUARD = 10
#: The RST a cut sends surfaces as BrokenResourceError on reads and writes.
RESET = (trio.BrokenResourceError, trio.ClosedResourceError)


@asynccontextmanager
async def tcp_target() -> AsyncIterator[tuple[int, trio.MemoryReceiveChannel[trio.SocketStream]]]:
    """A loopback server that hands each accepted stream to the test: ``(port, streams)``."""
    send, receive = trio.open_memory_channel[trio.SocketStream](16)

    async def handler(stream: trio.SocketStream) -> None:
        await send.send(stream)
        await trio.sleep_forever()  # the stream belongs to the test until the server stops

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(functools.partial(trio.serve_tcp, handler, 0, host="127.0.0.1"))
        port = listeners[0].socket.getsockname()[1]
        yield port, receive
        nursery.cancel_scope.cancel()


@asynccontextmanager
async def proxied() -> AsyncIterator[tuple[FaultProxy, trio.MemoryReceiveChannel[trio.SocketStream]]]:
    async with tcp_target() as (port, accepted), open_fault_proxy("127.0.0.1", port) as proxy:
        yield proxy, accepted


@asynccontextmanager
async def connection(
    proxy: FaultProxy, accepted: trio.MemoryReceiveChannel[trio.SocketStream]
) -> AsyncIterator[tuple[trio.SocketStream, trio.SocketStream]]:
    """One connection through ``proxy``: ``(client_end, server_end)``."""
    client = await trio.open_tcp_stream("127.0.0.1", proxy.port)
    async with client:
        server = await accepted.receive()
        async with server:
            yield client, server


async def receive_exactly(stream: trio.SocketStream, n: int) -> bytes:
    data = bytearray()
    while len(data) < n:
        chunk = await stream.receive_some(n - len(data))
        assert chunk, f"EOF after {len(data)} of {n} bytes"
        data += chunk
    return bytes(data)


async def receive_until_reset(stream: trio.SocketStream) -> bytes:
    """Everything readable before the connection ends (reset or EOF)."""
    data = bytearray()
    try:
        while chunk := await stream.receive_some():
            data += chunk
    except RESET:
        pass
    return bytes(data)


def cuts_reached(n: int) -> Callable[[FaultProxyStatistics], bool]:
    return lambda stats: stats.connections_cut == n


async def test_bytes_pass_both_ways_and_eof_is_forwarded() -> None:
    up = bytes(range(256)) * 400  # 100 KiB, more than one chunk
    down = b"reply" * 10_000
    with trio.fail_after(GUARD):
        async with proxied() as (proxy, accepted), connection(proxy, accepted) as (client, server):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(client.send_all, up)
                assert await receive_exactly(server, len(up)) == up
            async with trio.open_nursery() as nursery:
                nursery.start_soon(server.send_all, down)
                assert await receive_exactly(client, len(down)) == down
            # A half-close travels through, and the other direction keeps working.
            await client.send_eof()
            assert await server.receive_some() == b""
            await server.send_all(b"after eof")
            assert await receive_exactly(client, 9) == b"after eof"
            await server.send_eof()
            assert await client.receive_some() == b""
            # Both sides finished: the link closes by itself, gracefully.
            await proxy.wait_statistics(lambda s: s.active_connections == 0)
            assert proxy.statistics() == FaultProxyStatistics(
                connections_accepted=1,
                connections_refused=0,
                connections_failed=0,
                connections_cut=0,
                active_connections=0,
                bytes_client_to_server=len(up),
                bytes_server_to_client=len(down) + 9,
            )


async def test_cut_resets_both_sides_and_new_connections_still_work() -> None:
    with trio.fail_after(GUARD):
        async with proxied() as (proxy, accepted):
            async with connection(proxy, accepted) as (client, server):
                await client.send_all(b"x")
                assert await receive_exactly(server, 1) == b"x"
                await proxy.cut()
                # cut() returned: both sockets of the link are already closed with an RST.
                assert proxy.statistics().active_connections == 0
                with pytest.raises(RESET):
                    await client.receive_some()
                with pytest.raises(RESET):
                    await server.receive_some()
            async with connection(proxy, accepted) as (client, server):
                await client.send_all(b"again")
                assert await receive_exactly(server, 5) == b"again"
            stats = proxy.statistics()
            assert (stats.connections_accepted, stats.connections_cut) == (2, 1)


async def test_refused_connections_are_reset_until_allowed_again() -> None:
    with trio.fail_after(GUARD):
        async with proxied() as (proxy, accepted):
            proxy.refuse_new_connections(True)
            for _ in range(3):
                async with await trio.open_tcp_stream("127.0.0.1", proxy.port) as refused:
                    # The kernel completed the connect; the proxy resets it at once.
                    assert await receive_until_reset(refused) == b""
            await proxy.wait_statistics(lambda s: s.connections_refused == 3)
            proxy.refuse_new_connections(False)
            async with connection(proxy, accepted) as (client, server):
                await server.send_all(b"welcome")
                assert await receive_exactly(client, 7) == b"welcome"
            stats = proxy.statistics()
            assert (stats.connections_accepted, stats.connections_refused) == (4, 3)


async def test_stall_holds_bytes_in_order_until_resume() -> None:
    with trio.fail_after(GUARD):
        async with proxied() as (proxy, accepted), connection(proxy, accepted) as (client, server):
            proxy.stall("server_to_client")
            await server.send_all(b"held-1,")
            # The other direction still flows: this is a half-open link, not a dead one.
            await client.send_all(b"ping")
            assert await receive_exactly(server, 4) == b"ping"
            await server.send_all(b"held-2")
            with trio.move_on_after(0.2) as waited:
                await client.receive_some()
            assert waited.cancelled_caught, "bytes crossed a stalled direction"
            assert proxy.statistics().bytes_server_to_client == 0
            proxy.resume("server_to_client")
            assert await receive_exactly(client, 13) == b"held-1,held-2"
            # (counted once the proxy's write returned, which may be just after the read)
            await proxy.wait_statistics(lambda s: s.bytes_server_to_client == 13)


async def test_stall_affects_new_connections_only_when_asked() -> None:
    with trio.fail_after(GUARD):
        async with proxied() as (proxy, accepted):
            proxy.stall("both")  # no connection yet: nothing to stall
            async with connection(proxy, accepted) as (client, server):
                await client.send_all(b"free")
                assert await receive_exactly(server, 4) == b"free"
            proxy.stall("client_to_server", new_connections=True)
            async with connection(proxy, accepted) as (client, server):
                await client.send_all(b"stuck")
                await server.send_all(b"down is fine")
                assert await receive_exactly(client, 12) == b"down is fine"
                await proxy.wait_statistics(lambda s: s.bytes_client_to_server >= 4)
                assert proxy.statistics().bytes_client_to_server == 4  # not the 5 stuck ones
                proxy.resume()
                assert await receive_exactly(server, 5) == b"stuck"


async def test_cut_after_delivers_exactly_n_bytes_then_resets_everyone() -> None:
    data = bytes(range(256)) * 40  # 10240 bytes
    with trio.fail_after(GUARD):
        async with (
            proxied() as (proxy, accepted),
            connection(proxy, accepted) as (client, server),
            connection(proxy, accepted) as (bystander, _),
        ):
            proxy.cut_after(1000)  # server_to_client by default
            await client.send_all(b"client-to-server bytes do not count")
            await server.send_all(data)
            received = await receive_until_reset(client)
            await proxy.wait_statistics(lambda s: s.active_connections == 0)
            stats = proxy.statistics()
            assert stats.bytes_server_to_client == 1000
            assert stats.connections_cut == 2  # every connection, not only the one that counted
            # What the client could read before the reset is a prefix of those 1000 bytes.
            assert data[:1000].startswith(received)
            with pytest.raises(RESET):
                await bystander.receive_some()


async def test_cut_every_cuts_each_connection_after_its_own_bytes() -> None:
    with trio.fail_after(GUARD):
        async with proxied() as (proxy, accepted):
            proxy.cut_every(100, direction="both")
            for i in range(3):
                async with connection(proxy, accepted) as (client, server):
                    await client.send_all(b"u" * 60)
                    assert await receive_exactly(server, 60) == b"u" * 60
                    await server.send_all(b"d" * 60)  # 40 of these make 100 "both" ways
                    assert (await receive_until_reset(client)) in {b"d" * n for n in range(41)}
                    await proxy.wait_statistics(cuts_reached(i + 1))
            await proxy.wait_statistics(
                lambda s: (s.bytes_client_to_server, s.bytes_server_to_client) == (3 * 60, 3 * 40)
            )
            proxy.cut_every(None)
            async with connection(proxy, accepted) as (client, server):
                await server.send_all(b"d" * 200)
                assert await receive_exactly(client, 200) == b"d" * 200


async def test_latency_delays_each_chunk_and_keeps_order() -> None:
    latency = 0.15
    with trio.fail_after(GUARD):
        async with proxied() as (proxy, accepted), connection(proxy, accepted) as (client, server):
            proxy.set_latency(latency, direction="server_to_client")
            started = trio.current_time()
            for part in (b"one,", b"two,", b"three"):
                await server.send_all(part)
            first = await client.receive_some()
            assert trio.current_time() - started >= latency
            rest = await receive_exactly(client, 13 - len(first))
            assert first + rest == b"one,two,three"
            proxy.set_latency(0)
            await server.send_all(b"fast")
            assert await receive_exactly(client, 4) == b"fast"


async def test_bandwidth_throttles_and_data_arrives_intact() -> None:
    rate = 200_000  # bytes per second
    data = bytes(range(256)) * 200  # 51200 bytes: at least 0.256 s at that rate
    with trio.fail_after(GUARD):
        async with proxied() as (proxy, accepted), connection(proxy, accepted) as (client, server):
            proxy.set_bandwidth(rate, direction="client_to_server")
            started = trio.current_time()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(client.send_all, data)
                assert await receive_exactly(server, len(data)) == data
            assert trio.current_time() - started >= len(data) / rate
            proxy.set_bandwidth(None)
            await client.send_all(b"unthrottled")
            assert await receive_exactly(server, 11) == b"unthrottled"


async def test_target_down_resets_the_client_and_set_target_moves_on() -> None:
    with trio.fail_after(GUARD):
        async with tcp_target() as (port, accepted):
            # A port nobody listens on: bind one, note it, close it.
            probe = trio.socket.socket()
            await probe.bind(("127.0.0.1", 0))
            dead_port = probe.getsockname()[1]
            probe.close()
            async with open_fault_proxy("127.0.0.1", dead_port) as proxy:
                async with await trio.open_tcp_stream("127.0.0.1", proxy.port) as client:
                    assert await receive_until_reset(client) == b""
                await proxy.wait_statistics(lambda s: s.connections_failed == 1)
                proxy.set_target("127.0.0.1", port)
                assert proxy.target == ("127.0.0.1", port)
                async with connection(proxy, accepted) as (client, server):
                    await client.send_all(b"found you")
                    assert await receive_exactly(server, 9) == b"found you"


async def test_leaving_the_block_resets_open_connections() -> None:
    with trio.fail_after(GUARD):
        async with tcp_target() as (port, accepted):
            async with open_fault_proxy("127.0.0.1", port) as proxy:
                client = await trio.open_tcp_stream("127.0.0.1", proxy.port)
                server = await accepted.receive()
                await client.send_all(b"hi")
                assert await receive_exactly(server, 2) == b"hi"
            async with client, server:
                with pytest.raises(RESET):
                    await client.receive_some()
                with pytest.raises(RESET):
                    await server.receive_some()
            with pytest.raises(OSError):  # the listener is closed too
                async with await trio.open_tcp_stream("127.0.0.1", proxy.port):
                    pass  # pragma: no cover


def test_url_for_points_at_the_proxy() -> None:
    async def main() -> None:
        async with tcp_target() as (port, _), open_fault_proxy("127.0.0.1", port) as proxy:
            url = f"ws://127.0.0.1:{port}/realtime/v1?apikey=k"
            assert proxy.url_for(url) == f"ws://127.0.0.1:{proxy.port}/realtime/v1?apikey=k"
            assert proxy.url_for("http://user@localhost/x") == f"http://user@127.0.0.1:{proxy.port}/x"
            assert proxy.address == f"127.0.0.1:{proxy.port}"
            with pytest.raises(ValueError, match=r"has no host"):
                proxy.url_for("/relative/path")

    trio.run(main)


@pytest.mark.parametrize(
    ("target", "listen"),
    [("10.1.2.3", "127.0.0.1"), ("example.com", "127.0.0.1"), ("127.0.0.1", "0.0.0.0")],
)
async def test_only_loopback_addresses_are_allowed(target: str, listen: str) -> None:
    bad = target if target != "127.0.0.1" else listen
    with pytest.raises(ValueError, match=rf"only works on loopback addresses .* is {bad!r}"):
        async with open_fault_proxy(target, 4000, listen_host=listen):
            pass  # pragma: no cover


async def test_settings_are_validated() -> None:
    async with tcp_target() as (port, _), open_fault_proxy("127.0.0.1", port) as proxy:
        with pytest.raises(ValueError, match=r"^direction must be"):
            proxy.stall("sideways")  # type: ignore[arg-type]
        with pytest.raises(ValueError, match=r"^latency must be"):
            proxy.set_latency(-1)
        with pytest.raises(ValueError, match=r"^bytes_per_second must be"):
            proxy.set_bandwidth(0)
        with pytest.raises(ValueError, match=r"^nbytes must be >= 0"):
            proxy.cut_after(-1)
        with pytest.raises(ValueError, match=r"^nbytes must be > 0"):
            proxy.cut_every(0)
        with pytest.raises(ValueError, match=r"loopback"):
            proxy.set_target("192.168.0.1", 80)
