"""The transport's fast frame parser: whole data frames bypass wsproto; everything else (and
the rest of the connection after it) goes to wsproto, which behaves exactly as before.

Each server here waits for the client's first message before sending frames, so the 101
response arrives alone and the fast path is really in use (``transport._fast`` is checked).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest
import trio
from test_transport import raw_server, receive_n, wsproto_accept, wsproto_reply_to_close
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Message as WsMessage,
    Ping,
    Pong,
    TextMessage,
)

from trio_realtime._errors import ConnectionLost
from trio_realtime._transport import connect_websocket

if TYPE_CHECKING:
    from wsproto import WSConnection


async def _accept_and_wait_for_go(stream: trio.SocketStream) -> WSConnection:
    ws = await wsproto_accept(stream)
    await stream.send_all(ws.send(AcceptConnection()))
    while True:
        ws.receive_data(await stream.receive_some(65536))
        if any(isinstance(e, WsMessage) for e in ws.events()):
            return ws


async def test_sizes_across_the_length_encodings_and_split_reads() -> None:
    payloads: list[str | bytes] = ["a" * 10, "é" * 100, b"\x00" * 126, b"\xff" * 70_000, "z" * 65_535, "end"]

    async def handler(stream: trio.SocketStream) -> None:
        ws = await _accept_and_wait_for_go(stream)
        wire = b"".join(
            ws.send(TextMessage(data=p) if isinstance(p, str) else BytesMessage(data=p)) for p in payloads
        )
        for cut in (1, 3, 9, 200, 70_000):  # split frames (and headers) across writes
            await stream.send_all(wire[:cut])
            wire = wire[cut:]
        await stream.send_all(wire)
        await wsproto_reply_to_close(stream, ws)

    with trio.fail_after(10):
        async with raw_server(handler) as url:
            transport = await connect_websocket(url)
            await transport.send_message("go")
            batches = await receive_n(transport, len(payloads))
            assert [m for batch in batches for m in batch] == payloads
            assert transport._fast is not None  # never needed wsproto for these
            await transport.aclose()


async def test_a_ping_hands_over_to_wsproto_which_answers_it() -> None:
    pongs: list[bytes] = []

    async def handler(stream: trio.SocketStream) -> None:
        ws = await _accept_and_wait_for_go(stream)
        await stream.send_all(
            ws.send(TextMessage(data="one"))
            + ws.send(Ping(payload=b"hb"))
            + ws.send(TextMessage(data="two"))
            + ws.send(TextMessage(data="thr", message_finished=False))
            + ws.send(TextMessage(data="ee", message_finished=True))
        )
        while not pongs:
            ws.receive_data(await stream.receive_some(65536))
            pongs.extend(e.payload for e in ws.events() if isinstance(e, Pong))
        await wsproto_reply_to_close(stream, ws)

    with trio.fail_after(10):
        async with raw_server(handler) as url:
            transport = await connect_websocket(url)
            await transport.send_message("go")
            batches = await receive_n(transport, 3)
            assert [m for batch in batches for m in batch] == ["one", "two", "three"]
            assert transport._fast is None  # wsproto owns the rest of the connection
            await transport.aclose()
    assert pongs == [b"hb"]


async def test_invalid_utf8_still_closes_with_1007() -> None:
    close_codes: list[int] = []

    async def handler(stream: trio.SocketStream) -> None:
        ws = await _accept_and_wait_for_go(stream)
        await stream.send_all(ws.send(TextMessage(data="ok")) + b"\x81\x02\xc3\x28")  # bad UTF-8
        while not close_codes:
            data = await stream.receive_some(65536)
            if not data:
                break
            ws.receive_data(data)
            close_codes.extend(e.code for e in ws.events() if isinstance(e, CloseConnection))

    with trio.fail_after(10):
        async with raw_server(handler) as url:
            transport = await connect_websocket(url)
            await transport.send_message("go")
            messages = await transport.receive_messages()
            if messages == ["ok"]:  # the bad frame came in a later read
                with pytest.raises(ConnectionLost):
                    await transport.receive_messages()
            else:
                pytest.fail(f"expected ['ok'] first, got {messages!r}")
            await transport.aclose()
    assert close_codes == [1007]


async def test_oversized_frame_still_closes_with_1009() -> None:
    close_codes: list[int] = []

    async def handler(stream: trio.SocketStream) -> None:
        ws = await _accept_and_wait_for_go(stream)
        await stream.send_all(ws.send(BytesMessage(data=b"x" * 2000)))
        while not close_codes:
            data = await stream.receive_some(65536)
            if not data:
                break
            ws.receive_data(data)
            close_codes.extend(e.code for e in ws.events() if isinstance(e, CloseConnection))

    with trio.fail_after(10):
        async with raw_server(handler) as url:
            transport = await connect_websocket(url, max_message_size=1000)
            await transport.send_message("go")
            with pytest.raises(ConnectionLost):
                await transport.receive_messages()
            await transport.aclose()
    assert close_codes == [1009]
