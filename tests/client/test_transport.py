"""WsprotoTransport against real loopback servers.

Most tests use a trio-websocket server, an independent WebSocket implementation. Tests that need
exact control of the bytes on the wire (fragmented messages, frames sent together with the 101
response, invalid frames, a rude EOF) use a raw TCP server that speaks wsproto by hand.
"""

from __future__ import annotations

import socket
from contextlib import asynccontextmanager
from functools import partial
from typing import TYPE_CHECKING

import pytest
import trio
from trio.testing import wait_all_tasks_blocked
from trio_websocket import ConnectionClosed, WebSocketRequest, serve_websocket
from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Request,
    TextMessage,
)

from trio_realtime._errors import ConnectionLost, HandshakeFailed
from trio_realtime._transport import Transport, WsprotoTransport, connect_websocket

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable

SECRET = "supersecretkey"
QUERY = f"?apikey={SECRET}&vsn=1.0.0"


@asynccontextmanager
async def websocket_server(
    handler: Callable[[WebSocketRequest], Awaitable[None]], *, max_message_size: int = 2**20
) -> AsyncIterator[str]:
    """Serve ``handler`` with trio-websocket on 127.0.0.1; yield a URL carrying a secret."""
    async with trio.open_nursery() as nursery:
        server = await nursery.start(
            partial(
                serve_websocket,
                handler,
                "127.0.0.1",
                0,
                ssl_context=None,
                handler_nursery=nursery,
                max_message_size=max_message_size,
            )
        )
        yield f"ws://127.0.0.1:{server.port}/realtime/v1/websocket{QUERY}"
        nursery.cancel_scope.cancel()


@asynccontextmanager
async def raw_server(
    handler: Callable[[trio.SocketStream], Awaitable[None]],
) -> AsyncIterator[str]:
    """Serve ``handler`` over plain TCP on 127.0.0.1; yield a ws:// URL carrying a secret."""
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(
            partial(trio.serve_tcp, handler, 0, host="127.0.0.1", handler_nursery=nursery)
        )
        port = listeners[0].socket.getsockname()[1]
        yield f"ws://127.0.0.1:{port}/socket{QUERY}"
        nursery.cancel_scope.cancel()


async def wsproto_accept(stream: trio.SocketStream) -> WSConnection:
    """Read the client's upgrade request on a raw stream (the caller sends the accept)."""
    ws = WSConnection(ConnectionType.SERVER)
    while True:
        ws.receive_data(await stream.receive_some(65536))
        for event in ws.events():
            if isinstance(event, Request):
                return ws


async def wsproto_reply_to_close(stream: trio.SocketStream, ws: WSConnection) -> None:
    """Discard what the client sends until its close frame, answer it, hang up."""
    while True:
        data = await stream.receive_some(65536)
        if not data:
            return
        ws.receive_data(data)
        for event in ws.events():
            if isinstance(event, CloseConnection):
                await stream.send_all(ws.send(event.response()))
                await stream.aclose()
                return


async def receive_n(transport: WsprotoTransport, n: int) -> list[list[str | bytes]]:
    """Call receive_messages until ``n`` messages arrived; return the batches."""
    batches: list[list[str | bytes]] = []
    while sum(map(len, batches)) < n:
        batches.append(await transport.receive_messages())
    return batches


async def receive_until_lost(
    transport: WsprotoTransport,
) -> tuple[list[str | bytes], ConnectionLost]:
    """Receive until ConnectionLost; return the messages before it and the exception."""
    received: list[str | bytes] = []
    while True:
        try:
            received.extend(await transport.receive_messages())
        except ConnectionLost as exc:
            return received, exc


def unused_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


async def echo(request: WebSocketRequest) -> None:
    offered = "phoenix" in request.proposed_subprotocols
    ws = await request.accept(subprotocol="phoenix" if offered else None)
    try:
        while True:
            await ws.send_message(await ws.get_message())
    except ConnectionClosed:
        pass


async def test_text_and_binary_round_trip() -> None:
    with trio.fail_after(10):
        async with websocket_server(echo) as url:
            transport = await connect_websocket(url, subprotocols=["phoenix"])
            checked: Transport = transport  # WsprotoTransport satisfies the protocol
            assert checked.subprotocol == "phoenix"
            await transport.send_message("hello")
            assert await transport.receive_messages() == ["hello"]
            await transport.send_message(b"\x00\x01\xff")
            assert await transport.receive_messages() == [b"\x00\x01\xff"]
            await transport.aclose()


async def test_no_subprotocol_and_extra_headers_reach_the_server() -> None:
    seen: list[tuple[bytes, bytes]] = []

    async def handler(request: WebSocketRequest) -> None:
        seen.extend(request.headers)
        ws = await request.accept()
        await ws.send_message("hi")
        await trio.sleep_forever()

    with trio.fail_after(10):
        async with websocket_server(handler) as url:
            transport = await connect_websocket(url, headers=[("X-Client-Info", "trio-rt/0.1")])
            assert transport.subprotocol is None
            assert await transport.receive_messages() == ["hi"]
            await transport.aclose()
    assert (b"x-client-info", b"trio-rt/0.1") in seen


@pytest.mark.parametrize("message", ["x" * 1_000_000, bytes(range(256)) * 4000])
async def test_one_megabyte_message(message: str | bytes) -> None:
    with trio.fail_after(10):
        async with websocket_server(echo, max_message_size=2_000_000) as url:
            transport = await connect_websocket(url, receive_size=16384)
            await transport.send_message(message)
            assert await receive_n(transport, 1) == [[message]]
            await transport.aclose()


async def test_a_burst_of_small_messages_comes_back_in_batches() -> None:
    sent = trio.Event()

    async def handler(request: WebSocketRequest) -> None:
        ws = await request.accept()
        for i in range(200):
            await ws.send_message(f"message {i}")
        sent.set()
        await trio.sleep_forever()

    with trio.fail_after(10):
        async with websocket_server(handler) as url:
            transport = await connect_websocket(url)
            await sent.wait()
            batches = await receive_n(transport, 200)
            await transport.aclose()
    assert [m for batch in batches for m in batch] == [f"message {i}" for i in range(200)]
    assert len(batches) < 200
    assert max(map(len, batches)) > 1


async def test_pings_are_answered_inside_receive_messages() -> None:
    async def handler(request: WebSocketRequest) -> None:
        ws = await request.accept()
        await ws.ping(b"are you there")  # returns once the pong arrives
        await ws.send_message("pong seen")
        await trio.sleep_forever()

    with trio.fail_after(10):
        async with websocket_server(handler) as url:
            transport = await connect_websocket(url)
            assert await transport.receive_messages() == ["pong seen"]
            await transport.aclose()


async def test_server_close_raises_connection_lost_after_the_messages_before_it() -> None:
    async def handler(request: WebSocketRequest) -> None:
        ws = await request.accept()
        await ws.send_message("first")
        await ws.send_message("second")
        await ws.aclose(code=1012, reason="service restart")

    with trio.fail_after(10):
        async with websocket_server(handler) as url:
            transport = await connect_websocket(url)
            received, lost = await receive_until_lost(transport)
            assert received == ["first", "second"]
            assert lost.reason == (
                "server closed the connection (code 1012: service restart)"
            )
            # Every later call reports the same reason.
            with pytest.raises(ConnectionLost, match=r"^server closed .*\(code 1012"):
                await transport.receive_messages()
            with pytest.raises(ConnectionLost, match=r"^server closed .*\(code 1012"):
                await transport.send_message("too late")
            await transport.aclose()


async def test_server_refuses_the_upgrade() -> None:
    async def handler(request: WebSocketRequest) -> None:
        await request.reject(401, body=b'{"error":"API key is missing"}')

    with trio.fail_after(10):
        async with websocket_server(handler) as url:
            with pytest.raises(HandshakeFailed) as exc_info:
                await connect_websocket(url)
    exc = exc_info.value
    assert exc.status == 401
    assert exc.body == '{"error":"API key is missing"}'
    assert str(exc) == (
        'server refused the WebSocket upgrade with HTTP 401: {"error":"API key is missing"}'
    )


async def test_connection_refused() -> None:
    port = unused_port()
    with trio.fail_after(10):
        with pytest.raises(HandshakeFailed) as exc_info:
            await connect_websocket(f"ws://127.0.0.1:{port}/socket{QUERY}")
    assert exc_info.value.status is None
    assert str(exc_info.value).startswith(f"could not connect to 127.0.0.1:{port}: ")
    assert isinstance(exc_info.value.__cause__, OSError)


async def test_server_hangs_up_before_answering_the_upgrade() -> None:
    async def handler(stream: trio.SocketStream) -> None:
        await stream.receive_some(65536)
        await stream.aclose()

    with trio.fail_after(10):
        async with raw_server(handler) as url:
            with pytest.raises(HandshakeFailed, match=r"^127\.0\.0\.1:\d+ closed the connection"):
                await connect_websocket(url)


async def test_invalid_upgrade_response() -> None:
    async def handler(stream: trio.SocketStream) -> None:
        await stream.receive_some(65536)
        await stream.send_all(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Accept: bogus\r\n\r\n"
        )
        await trio.sleep_forever()

    with trio.fail_after(10):
        async with raw_server(handler) as url:
            with pytest.raises(HandshakeFailed) as exc_info:
                await connect_websocket(url)
    assert exc_info.value.status is None
    assert str(exc_info.value) == (
        "invalid WebSocket upgrade response from ws://127.0.0.1:"
        f"{url.split(':')[2].split('/')[0]}/socket?apikey=<redacted>&vsn=<redacted>: "
        "Bad accept token"
    )


async def test_query_string_values_never_appear_in_handshake_errors() -> None:
    async def refuse(request: WebSocketRequest) -> None:
        await request.reject(403, body=b"forbidden")

    async def garbage(stream: trio.SocketStream) -> None:
        await stream.receive_some(65536)
        await stream.send_all(b"this is not HTTP\r\n\r\n")
        await trio.sleep_forever()

    failures: list[HandshakeFailed] = []
    with trio.fail_after(10):
        async with websocket_server(refuse) as url:
            with pytest.raises(HandshakeFailed) as exc_info:
                await connect_websocket(url)
            failures.append(exc_info.value)
        async with raw_server(garbage) as url:
            with pytest.raises(HandshakeFailed) as exc_info:
                await connect_websocket(url)
            failures.append(exc_info.value)
        with pytest.raises(HandshakeFailed) as exc_info:
            await connect_websocket(f"ws://127.0.0.1:{unused_port()}/socket{QUERY}")
        failures.append(exc_info.value)
    for exc in failures:
        for text in (str(exc), repr(exc), exc.body):
            assert SECRET not in text


def test_query_string_values_never_appear_in_url_errors() -> None:
    with pytest.raises(ValueError, match="the scheme must be ws or wss") as exc_info:
        trio.run(connect_websocket, f"https://example.com/socket{QUERY}")
    assert SECRET not in str(exc_info.value)
    assert "apikey=<redacted>" in str(exc_info.value)


@pytest.mark.parametrize(
    ("size", "max_message_size"),
    [(2_000, 1_000), (300_000, 100_000)],
    ids=["one-read", "many-reads"],
)
async def test_oversized_message_closes_with_1009(size: int, max_message_size: int) -> None:
    close_codes: list[int] = []
    server_done = trio.Event()

    async def handler(request: WebSocketRequest) -> None:
        ws = await request.accept()
        await ws.send_message("small")
        await ws.send_message("x" * size)
        try:
            await ws.get_message()
        except ConnectionClosed as exc:
            close_codes.append(exc.reason.code if exc.reason is not None else -1)
        server_done.set()

    with trio.fail_after(10):
        async with websocket_server(handler) as url:
            transport = await connect_websocket(
                url, max_message_size=max_message_size, receive_size=16384
            )
            received, lost = await receive_until_lost(transport)
            assert received == ["small"]
            assert lost.reason == (
                f"server sent a message larger than max_message_size ({max_message_size}); "
                "closed the connection with code 1009"
            )
            await transport.aclose()
            await server_done.wait()
    assert close_codes == [1009]


async def test_aclose_is_idempotent_and_sends_code_and_reason() -> None:
    close_reasons: list[tuple[int, str | None]] = []
    server_done = trio.Event()

    async def handler(request: WebSocketRequest) -> None:
        ws = await request.accept()
        try:
            await ws.get_message()
        except ConnectionClosed as exc:
            if exc.reason is not None:
                close_reasons.append((exc.reason.code, exc.reason.reason))
        server_done.set()

    with trio.fail_after(10):
        async with websocket_server(handler) as url:
            transport = await connect_websocket(url)
            await transport.aclose(4000, "bye")
            await transport.aclose(4000, "bye")
            await transport.aclose()
            with pytest.raises(ConnectionLost, match="closed locally"):
                await transport.send_message("after close")
            with pytest.raises(ConnectionLost, match="closed locally"):
                await transport.receive_messages()
            await server_done.wait()
    assert close_reasons == [(4000, "bye")]


async def test_aclose_while_another_task_is_receiving() -> None:
    async def handler(request: WebSocketRequest) -> None:
        ws = await request.accept()
        try:
            await ws.get_message()
        except ConnectionClosed:
            pass

    with trio.fail_after(10):
        async with websocket_server(handler) as url:
            transport = await connect_websocket(url)
            lost: list[ConnectionLost] = []

            async def reader() -> None:
                try:
                    await transport.receive_messages()
                except ConnectionLost as exc:
                    lost.append(exc)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(reader)
                await wait_all_tasks_blocked()
                await transport.aclose()
            assert [exc.reason for exc in lost] == ["the connection was closed locally"]


async def test_concurrent_receive_messages_is_busy() -> None:
    async def handler(request: WebSocketRequest) -> None:
        await request.accept()
        await trio.sleep_forever()

    with trio.fail_after(10):
        async with websocket_server(handler) as url:
            transport = await connect_websocket(url)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(transport.receive_messages)
                await wait_all_tasks_blocked()
                with pytest.raises(trio.BusyResourceError):
                    await transport.receive_messages()
                nursery.cancel_scope.cancel()
            await transport.aclose()


async def test_concurrent_sends_arrive_whole() -> None:
    received: list[str] = []
    all_received = trio.Event()

    async def handler(request: WebSocketRequest) -> None:
        ws = await request.accept()
        while len(received) < 40:
            message = await ws.get_message()
            assert isinstance(message, str)
            received.append(message)
        all_received.set()
        await trio.sleep_forever()

    with trio.fail_after(10):
        async with websocket_server(handler, max_message_size=2_000_000) as url:
            transport = await connect_websocket(url)
            async with trio.open_nursery() as nursery:
                for letter in "abcd":
                    for _ in range(10):
                        nursery.start_soon(transport.send_message, letter * 100_000)
            await all_received.wait()
            await transport.aclose()
    assert sorted(received) == sorted(letter * 100_000 for letter in "abcd" for _ in range(10))


async def test_frames_that_arrive_with_the_101_response_are_returned() -> None:
    async def handler(stream: trio.SocketStream) -> None:
        ws = await wsproto_accept(stream)
        await stream.send_all(ws.send(AcceptConnection()) + ws.send(TextMessage(data="early")))
        await wsproto_reply_to_close(stream, ws)

    with trio.fail_after(10):
        async with raw_server(handler) as url:
            transport = await connect_websocket(url)
            assert await transport.receive_messages() == ["early"]
            await transport.aclose()


async def test_fragmented_messages_are_reassembled() -> None:
    async def handler(stream: trio.SocketStream) -> None:
        ws = await wsproto_accept(stream)
        await stream.send_all(ws.send(AcceptConnection()))
        await stream.send_all(
            ws.send(TextMessage(data="ab", message_finished=False))
            + ws.send(TextMessage(data="cé", message_finished=False))
            + ws.send(TextMessage(data="d", message_finished=True))
            + ws.send(BytesMessage(data=b"\x01", message_finished=False))
            + ws.send(BytesMessage(data=b"\x02", message_finished=True))
            + ws.send(TextMessage(data="whole"))
        )
        await wsproto_reply_to_close(stream, ws)

    with trio.fail_after(10):
        async with raw_server(handler) as url:
            transport = await connect_websocket(url)
            batches = await receive_n(transport, 3)
            assert [m for batch in batches for m in batch] == ["abcéd", b"\x01\x02", "whole"]
            await transport.aclose()


async def test_invalid_frame_closes_with_protocol_error() -> None:
    close_codes: list[int] = []

    async def handler(stream: trio.SocketStream) -> None:
        ws = await wsproto_accept(stream)
        await stream.send_all(ws.send(AcceptConnection()) + b"\x8f\x00")  # opcode 0xF: invalid
        while not close_codes:
            data = await stream.receive_some(65536)
            if not data:
                break
            ws.receive_data(data)
            close_codes.extend(e.code for e in ws.events() if isinstance(e, CloseConnection))

    with trio.fail_after(10):
        async with raw_server(handler) as url:
            transport = await connect_websocket(url)
            with pytest.raises(ConnectionLost, match=r"^server sent an invalid WebSocket frame"):
                await transport.receive_messages()
            await transport.aclose()
    assert close_codes == [1002]


async def test_eof_without_close_frame() -> None:
    async def handler(stream: trio.SocketStream) -> None:
        ws = await wsproto_accept(stream)
        await stream.send_all(ws.send(AcceptConnection()) + ws.send(TextMessage(data="bye")))
        await stream.aclose()

    with trio.fail_after(10):
        async with raw_server(handler) as url:
            transport = await connect_websocket(url)
            received, lost = await receive_until_lost(transport)
            assert received == ["bye"]
            assert lost.reason == (
                "server closed the TCP connection without a WebSocket close frame (code 1006)"
            )
            await transport.aclose()


def test_no_public_constructor() -> None:
    with pytest.raises(TypeError, match="no public constructor"):
        WsprotoTransport()  # type: ignore[call-arg]


async def test_a_send_cancelled_mid_frame_marks_the_connection_lost() -> None:
    """Half a frame may be on the wire, so nothing more may be written after it."""

    async def handler(stream: trio.SocketStream) -> None:
        ws = await wsproto_accept(stream)
        await stream.send_all(ws.send(AcceptConnection()))
        await trio.sleep_forever()  # never reads: the client's big send blocks

    with trio.fail_after(10):
        async with raw_server(handler) as url:
            transport = await connect_websocket(url)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(transport.send_message, b"x" * 64_000_000)
                await wait_all_tasks_blocked()
                nursery.cancel_scope.cancel()
            with pytest.raises(ConnectionLost, match=r"^a send was cancelled part-way"):
                await transport.send_message("next")
            with pytest.raises(ConnectionLost, match=r"^a send was cancelled part-way"):
                await transport.receive_messages()
            await transport.aclose()  # must not try to write a close frame
