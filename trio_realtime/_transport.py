"""The WebSocket transport: the seam between the client and the network.

Theory of operation
-------------------

The client runs one connection task that owns the socket and is its only reader. trio-websocket
would put a second reader task and a memory channel between that task and the socket, so every
message would cost a task hop (about 25 µs) and a full queue would also stop pong replies. We
drive wsproto directly over a :class:`trio.abc.Stream` instead, in the caller's own task:
:meth:`WsprotoTransport.receive_messages` does one large ``receive_some``, feeds the bytes to
wsproto and hands back *every* complete message that read produced. A burst of N small frames
costs one checkpoint, not N task switches. Pings are answered from inside that same call.

Writes can come from several tasks (heartbeats, pushes, and the reader's own pong and close
replies), so every write goes through one :class:`trio.StrictFIFOLock`, and wsproto frames the
message *under* that lock so frames reach the wire in the order they were framed. A send that is
cancelled part-way through may leave half a frame on the wire, so it marks the connection as
lost: the caller reconnects instead of sending garbage.

Errors are translated once, at this boundary: stream errors (:class:`trio.BrokenResourceError`,
:class:`OSError`, TLS errors) become :class:`~trio_realtime.ConnectionLost` (or
:class:`~trio_realtime.HandshakeFailed` during the upgrade) with the original in ``__cause__``.
The first reason the connection died is remembered, so every later call reports the same one.

The URL carries ``apikey=<secret>`` in its query string, so no message built here ever
contains the query: handshake errors name ``host:port`` or the URL with every query value
redacted.
"""

from __future__ import annotations

import ssl
from typing import TYPE_CHECKING, Final, Protocol, final
from urllib.parse import parse_qsl, urlsplit, urlunsplit

import trio
from wsproto import ConnectionType, WSConnection
from wsproto.connection import ConnectionState
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Ping,
    RejectConnection,
    RejectData,
    Request,
    TextMessage,
)
from wsproto.utilities import ProtocolError as _WsprotoProtocolError

from ._errors import ConnectionLost, HandshakeFailed
from ._util import NoPublicConstructor

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = ["Transport", "WsprotoTransport", "connect_websocket"]

#: How long :meth:`WsprotoTransport.aclose` waits for the peer's close frame.
_CLOSE_TIMEOUT: Final = 1.0
#: How much of a refused upgrade's response body we keep.
_MAX_REJECT_BODY: Final = 64 * 1024
#: How much of that body goes into the exception message (the rest is in ``.body``).
_MAX_REJECT_BODY_IN_MESSAGE: Final = 500
#: RFC 6455 close code "Message Too Big".
_MESSAGE_TOO_BIG: Final = 1009
#: Everything a trio stream may raise when the connection under it fails.
_STREAM_ERRORS: Final = (trio.BrokenResourceError, trio.ClosedResourceError, OSError)
#: Everything aclose() swallows (it never raises transport errors).
_CLOSE_ERRORS: Final = (ConnectionLost, _WsprotoProtocolError, *_STREAM_ERRORS)


class Transport(Protocol):
    """A message-level, bidirectional connection to a Realtime server.

    The client depends only on this protocol. :class:`WsprotoTransport` implements it over a
    real WebSocket, and :func:`trio_realtime.testing.memory_transport_pair` implements it in
    memory for tests.
    """

    @property
    def subprotocol(self) -> str | None:
        """The WebSocket subprotocol the server accepted, or None."""

    async def send_message(self, data: str | bytes) -> None:
        """Send one message: a text frame for :class:`str`, a binary frame for :class:`bytes`.

        Safe to call from several tasks at once; messages are sent whole and in order. This is
        a checkpoint.

        Raises:
            ConnectionLost: the connection is closed or broken.
        """

    async def receive_messages(self) -> list[str | bytes]:
        """Wait for at least one message, then return every message that is ready.

        This is a checkpoint. Only one task may receive at a time.

        Raises:
            ConnectionLost: the peer closed the connection (the reason names the close code
                and reason) or the connection broke. Messages that arrived before the close
                are returned first.
            trio.BusyResourceError: another task is already receiving.
        """

    async def aclose(self, code: int = 1000, reason: str = "") -> None:
        """Close the connection with a close code and reason.

        Idempotent, bounded in time, and never raises transport errors. Messages that have not
        been received yet are discarded. This is a checkpoint.
        """


@final
class WsprotoTransport(metaclass=NoPublicConstructor):
    """A :class:`Transport` over a :class:`trio.abc.Stream`, driven by wsproto.

    There is no public constructor: use :func:`connect_websocket`.
    """

    __slots__ = (
        "_backlog",
        "_bytes_parts",
        "_closed",
        "_closer_wakeup",
        "_fast",
        "_handshake_leftovers",
        "_lost_cause",
        "_lost_reason",
        "_max_message_size",
        "_partial_size",
        "_peer_finished",
        "_receive_size",
        "_receiving",
        "_send_lock",
        "_stream",
        "_subprotocol",
        "_text_parts",
        "_write_broken",
        "_ws",
    )

    _stream: trio.abc.Stream
    _ws: WSConnection
    _subprotocol: str | None
    _receive_size: int
    _max_message_size: int
    _send_lock: trio.StrictFIFOLock
    # Reassembly of a message that arrived in several pieces (only one list is in use).
    _text_parts: list[str]
    _bytes_parts: list[bytes]
    _partial_size: int
    # Set once, to the first reason the connection stopped being usable.
    _lost_reason: str | None
    _lost_cause: BaseException | None
    # Messages a cancelled receive_messages() already took out of wsproto.
    _backlog: list[str | bytes] | None
    _handshake_leftovers: bool
    _fast: bytes | None
    _receiving: bool
    _closed: bool
    # The peer's close frame arrived, or the stream hit EOF or an error.
    _peer_finished: bool
    # A cancelled send may have left part of a frame on the wire: write nothing more.
    _write_broken: bool
    # aclose() waits on this while another task is inside receive_messages().
    _closer_wakeup: trio.Event | None

    def __init__(
        self,
        stream: trio.abc.Stream,
        ws: WSConnection,
        subprotocol: str | None,
        *,
        receive_size: int,
        max_message_size: int,
        clean_handshake: bool = False,
    ) -> None:
        self._stream = stream
        self._ws = ws
        self._subprotocol = subprotocol
        self._receive_size = receive_size
        self._max_message_size = max_message_size
        self._send_lock = trio.StrictFIFOLock()
        self._text_parts = []
        self._bytes_parts = []
        self._partial_size = 0
        self._lost_reason = None
        self._lost_cause = None
        self._backlog = None
        # The server's first frames may have arrived in the same read as its 101 response.
        self._handshake_leftovers = True
        # The fast receive path (see _fast_receive): the bytes of a partial frame, or None
        # once wsproto parses everything. It is used only if nothing followed the 101
        # response in the handshake read, so no frame starts inside wsproto's buffer.
        self._fast = b"" if clean_handshake else None
        self._receiving = False
        self._closed = False
        self._peer_finished = False
        self._write_broken = False
        self._closer_wakeup = None

    def __repr__(self) -> str:
        state = "open" if self._lost_reason is None else f"lost ({self._lost_reason})"
        return f"<WsprotoTransport {state}>"

    @property
    def subprotocol(self) -> str | None:
        """The WebSocket subprotocol the server accepted, or None."""
        return self._subprotocol

    async def send_message(self, data: str | bytes) -> None:
        """Send one message: a text frame for :class:`str`, a binary frame for :class:`bytes`.

        Safe to call from several tasks at once: sends are serialised by a FIFO lock. This is a
        checkpoint. If it is cancelled while the frame is being written, the connection is
        marked lost (part of a frame may be on the wire).

        Raises:
            ConnectionLost: the connection is closed, closing, or broken.
        """
        async with self._send_lock:
            if self._lost_reason is not None:
                raise self._lost()
            if isinstance(data, str):
                frame = self._ws.send(TextMessage(data=data))
            else:
                frame = self._ws.send(BytesMessage(data=data))
            await self._write(frame)

    async def receive_messages(self) -> list[str | bytes]:
        """Wait for at least one message, then return every message that one read produced.

        Reads up to ``receive_size`` bytes at a time and does not read again once a message is
        complete, so a burst of small messages comes back as one list. Pings are answered
        inside this call. This is a checkpoint. Cancelling it loses no messages.

        Raises:
            ConnectionLost: the server closed the connection (the reason names the close code
                and reason), sent a message larger than ``max_message_size`` (the connection is
                closed with code 1009), sent an invalid frame, or the stream broke. Messages
                that arrived before that are returned first; every later call raises again.
            trio.BusyResourceError: another task is already inside this method.
        """
        if self._receiving:
            raise trio.BusyResourceError("another task is already receiving from this transport")
        self._receiving = True
        try:
            if (
                self._backlog is not None
                or self._lost_reason is not None
                or self._handshake_leftovers
            ):
                ready = await self._receive_without_reading()
                if ready:
                    return ready
            messages: list[str | bytes] = []
            while True:
                try:
                    data = await self._stream.receive_some(self._receive_size)
                except _STREAM_ERRORS as exc:
                    self._peer_finished = True
                    self._fail(f"lost the connection to the server: {_describe(exc)}", exc)
                    raise self._lost() from exc
                if not data:
                    self._peer_finished = True
                    self._fail(
                        "server closed the TCP connection without a WebSocket close frame "
                        "(code 1006)"
                    )
                    raise self._lost()
                if self._fast is None:
                    self._ws.receive_data(bytes(data))
                    control = self._process_events(messages)
                elif self._fast_receive(data, messages):
                    control = b""
                else:  # the fast path handed everything from here on to wsproto
                    control = self._process_events(messages)
                if control:
                    await self._send_control(control, messages)
                if messages:
                    return messages
                if self._lost_reason is not None:
                    raise self._lost()
        finally:
            self._receiving = False
            if self._closer_wakeup is not None:
                self._closer_wakeup.set()

    async def aclose(self, code: int = 1000, reason: str = "") -> None:
        """Close the connection: send a close frame, wait briefly for the reply, close the stream.

        Idempotent. Waits at most one second for the server's close frame; messages that
        arrive meanwhile are discarded (a task already inside :meth:`receive_messages` may
        still get some). Never raises transport errors. This is a checkpoint; if it is
        cancelled, the stream is still closed.

        Args:
            code: the WebSocket close code to send.
            reason: a short reason to send with it (truncated to 123 bytes by the protocol).
        """
        if self._closed:
            await trio.lowlevel.checkpoint()
            return
        self._closed = True
        self._fail("the connection was closed locally")
        try:
            with trio.move_on_after(_CLOSE_TIMEOUT):
                async with self._send_lock:
                    if not self._write_broken and self._ws.state in (
                        ConnectionState.OPEN,
                        ConnectionState.REMOTE_CLOSING,
                    ):
                        close = CloseConnection(code=code, reason=reason or None)
                        await self._write(self._ws.send(close))
                await self._wait_for_peer_close()
        except _CLOSE_ERRORS:
            pass
        finally:
            await trio.aclose_forcefully(self._stream)

    # -- internals -------------------------------------------------------------------------

    def _fail(self, reason: str, cause: BaseException | None = None) -> None:
        """Remember why the connection stopped being usable (the first reason wins)."""
        if self._lost_reason is None:
            self._lost_reason = reason
            self._lost_cause = cause

    def _lost(self) -> ConnectionLost:
        exc = ConnectionLost(self._lost_reason or "the connection was closed")
        exc.__cause__ = self._lost_cause
        return exc

    async def _write(self, data: bytes) -> None:
        """Write already-framed bytes. The caller holds the send lock."""
        try:
            await self._stream.send_all(data)
        except _STREAM_ERRORS as exc:
            self._peer_finished = True
            self._fail(f"lost the connection to the server: {_describe(exc)}", exc)
            raise self._lost() from exc
        except trio.Cancelled:
            self._write_broken = True
            self._fail("a send was cancelled part-way through a frame; the connection is unusable")
            raise

    async def _send_control(self, data: bytes, messages: list[str | bytes]) -> None:
        """Send pongs and close replies produced while receiving.

        ``messages`` were already taken out of wsproto; park them in the backlog while we wait
        for the send lock, so a cancellation here does not lose them.
        """
        self._backlog = messages or None
        try:
            async with self._send_lock:
                if not self._write_broken:
                    await self._write(data)
        except ConnectionLost:
            pass  # the reason is recorded; the caller reports it after the messages
        self._backlog = None

    async def _receive_without_reading(self) -> list[str | bytes] | None:
        """The slow start of receive_messages: a backlog, a recorded loss, or handshake leftovers.

        Returns the ready messages, or None if the caller should read from the stream.
        """
        await trio.lowlevel.checkpoint()
        if self._backlog is not None:
            messages, self._backlog = self._backlog, None
            return messages
        if self._lost_reason is not None:
            raise self._lost()
        self._handshake_leftovers = False
        messages = []
        control = self._process_events(messages)
        if control:
            await self._send_control(control, messages)
        if messages:
            return messages
        if self._lost_reason is not None:
            raise self._lost()
        return None

    def _fast_receive(self, data: bytes | bytearray, messages: list[str | bytes]) -> bool:
        """Parse whole, unfragmented, unmasked text/binary frames without wsproto.

        The hot path of a realtime connection is a stream of small data frames; wsproto's
        general parser costs ~5 µs each, this loop well under 1 µs. On the first frame it does
        not handle (a control frame, a fragment, RSV bits, a masked or oversized frame, text
        that is not UTF-8) the bytes from that frame on go to wsproto, which handles the rest
        of the connection exactly as before (pongs, close codes, 1007/1009). wsproto has seen
        only whole messages before that point, so its state is "between messages".

        Returns True if every byte was handled here; False once wsproto took over (the caller
        then collects wsproto's events).
        """
        assert self._fast is not None
        buf = self._fast + data if self._fast else bytes(data)
        end = len(buf)
        pos = 0
        limit = self._max_message_size
        append = messages.append
        while end - pos >= 2:
            b0 = buf[pos]
            b1 = buf[pos + 1]
            length = b1 & 0x7F
            header = 2
            if length == 126:
                if end - pos < 4:
                    break
                length = int.from_bytes(buf[pos + 2 : pos + 4], "big")
                header = 4
            elif length == 127:
                if end - pos < 10:
                    break
                length = int.from_bytes(buf[pos + 2 : pos + 10], "big")
                header = 10
            opcode = b0 & 0x0F
            if b0 & 0xF0 != 0x80 or b1 & 0x80 or opcode not in (1, 2) or length > limit:
                self._fast = None
                self._ws.receive_data(buf[pos:])
                return False
            if end - pos < header + length:
                break
            start = pos + header
            stop = start + length
            if opcode == 1:
                try:
                    append(buf[start:stop].decode("utf-8"))
                except UnicodeDecodeError:
                    self._fast = None
                    self._ws.receive_data(buf[pos:])
                    return False
            else:
                append(buf[start:stop])
            pos = stop
        self._fast = buf[pos:] if pos < end else b""
        return True

    def _process_events(self, messages: list[str | bytes]) -> bytes:
        """Move every event wsproto has ready into ``messages``.

        Stops at anything that ends the connection, after recording it with :meth:`_fail`.

        Returns:
            Control frames (pongs, close replies) to send back, or ``b""``.
        """
        control = b""
        ws = self._ws
        limit = self._max_message_size
        for event in ws.events():
            if isinstance(event, TextMessage):
                if event.message_finished and not self._text_parts:
                    if len(event.data) > limit:
                        control += self._message_too_big()
                        break
                    messages.append(event.data)
                    continue
                self._text_parts.append(event.data)
                self._partial_size += len(event.data)
                if self._partial_size > limit:
                    control += self._message_too_big()
                    break
                if event.message_finished:
                    messages.append("".join(self._text_parts))
                    self._text_parts.clear()
                    self._partial_size = 0
            elif isinstance(event, BytesMessage):
                chunk = bytes(event.data)
                if event.message_finished and not self._bytes_parts:
                    if len(chunk) > limit:
                        control += self._message_too_big()
                        break
                    messages.append(chunk)
                    continue
                self._bytes_parts.append(chunk)
                self._partial_size += len(chunk)
                if self._partial_size > limit:
                    control += self._message_too_big()
                    break
                if event.message_finished:
                    messages.append(b"".join(self._bytes_parts))
                    self._bytes_parts.clear()
                    self._partial_size = 0
            elif isinstance(event, Ping):
                if ws.state is ConnectionState.OPEN:
                    control += ws.send(event.response())
            elif isinstance(event, CloseConnection):
                self._peer_finished = True
                state = ws.state
                if state is ConnectionState.REMOTE_CLOSING:
                    # The server started the closing handshake: finish it.
                    control += ws.send(event.response())
                    self._fail(_closed_by_server(event.code, event.reason))
                elif state is ConnectionState.CLOSED:
                    # The reply to our own close frame.
                    self._fail(_closed_by_server(event.code, event.reason))
                else:
                    # wsproto could not parse the server's frames and suggests a close code.
                    if state is ConnectionState.OPEN:
                        control += ws.send(CloseConnection(code=event.code))
                    self._fail(
                        f"server sent an invalid WebSocket frame ({event.reason}); "
                        f"closed the connection with code {int(event.code)}"
                    )
                break
            # Pongs need no answer; wsproto emits no other events once the connection is open.
        return control

    def _message_too_big(self) -> bytes:
        self._text_parts.clear()
        self._bytes_parts.clear()
        self._partial_size = 0
        self._fail(
            f"server sent a message larger than max_message_size ({self._max_message_size}); "
            f"closed the connection with code {_MESSAGE_TOO_BIG}"
        )
        if self._ws.state is not ConnectionState.OPEN:
            return b""
        return self._ws.send(CloseConnection(code=_MESSAGE_TOO_BIG, reason="message too big"))

    async def _wait_for_peer_close(self) -> None:
        """Wait for the reply to our close frame (or EOF), discarding anything else.

        Returns at once if no close frame of ours is awaiting a reply.
        """
        while not self._peer_finished and self._ws.state is ConnectionState.LOCAL_CLOSING:
            if self._receiving:
                # The reader task will see the close frame; let it, and look again when it
                # returns (it may return messages without having seen the close).
                self._closer_wakeup = trio.Event()
                await self._closer_wakeup.wait()
                continue
            data = await self._stream.receive_some(self._receive_size)
            if not data:
                return
            self._ws.receive_data(bytes(data))
            for event in self._ws.events():
                if isinstance(event, CloseConnection):
                    self._peer_finished = True
                    break


async def connect_websocket(
    url: str,
    *,
    headers: Sequence[tuple[str, str]] = (),
    subprotocols: Sequence[str] = (),
    receive_size: int = 65536,
    max_message_size: int = 5_000_000,
    ssl_context: ssl.SSLContext | None = None,
) -> WsprotoTransport:
    """Open a TCP (or TLS) connection to ``url`` and perform the WebSocket upgrade.

    The caller owns the returned transport and must :meth:`~WsprotoTransport.aclose` it. There
    is no timeout argument: wrap the call in a cancel scope.

    Args:
        url: ``ws://host:port/path?query`` or ``wss://...``.
        headers: extra HTTP headers for the upgrade request.
        subprotocols: WebSocket subprotocols to offer, in order of preference.
        receive_size: how many bytes each read asks the stream for.
        max_message_size: the largest message accepted, in characters for text messages and
            bytes for binary ones; a larger one closes the connection with code 1009.
        ssl_context: for ``wss://``; defaults to :func:`ssl.create_default_context`.

    Returns:
        An open :class:`WsprotoTransport`.

    Raises:
        HandshakeFailed: the TCP/TLS connection could not be made (``status`` is None), or the
            server refused the upgrade (``status`` and ``body`` hold its HTTP response).
        ValueError: ``url`` is not a ``ws://`` or ``wss://`` URL.
    """
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in ("ws", "wss"):
        raise ValueError(
            f"cannot open a WebSocket to {_redact_url(url)}: the scheme must be ws or wss"
        )
    host = parts.hostname
    if not host:
        raise ValueError(f"cannot open a WebSocket to {_redact_url(url)}: the URL has no host")
    port = parts.port or (443 if scheme == "wss" else 80)
    where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    request = Request(
        host=parts.netloc.rpartition("@")[2],
        target=target,
        extra_headers=[(name.encode("latin-1"), value.encode("latin-1")) for name, value in headers],
        subprotocols=list(subprotocols),
    )
    stream: trio.abc.Stream
    try:
        if scheme == "wss":
            stream = await trio.open_ssl_over_tcp_stream(
                host,
                port,
                ssl_context=ssl_context or ssl.create_default_context(),
                https_compatible=True,
            )
        else:
            stream = await trio.open_tcp_stream(host, port)
    except OSError as exc:
        raise HandshakeFailed(f"could not connect to {where}: {_describe(exc)}") from exc
    try:
        ws, subprotocol, clean = await _handshake(stream, request, where, url, receive_size)
    except BaseException:
        await trio.aclose_forcefully(stream)
        raise
    return WsprotoTransport._create(
        stream,
        ws,
        subprotocol,
        receive_size=receive_size,
        max_message_size=max_message_size,
        clean_handshake=clean,
    )


async def _handshake(
    stream: trio.abc.Stream, request: Request, where: str, url: str, receive_size: int
) -> tuple[WSConnection, str | None, bool]:
    """Send the upgrade request and read the response; translate every failure.

    Returns the connection, the accepted subprotocol, and whether the response ended exactly
    where the read did (nothing of the first frames arrived with it).
    """
    ws = WSConnection(ConnectionType.CLIENT)
    status: int | None = None
    body = bytearray()
    received = bytearray()
    try:
        await stream.send_all(ws.send(request))
        while True:
            data = await stream.receive_some(receive_size)
            received += data
            if not data and status is None:
                raise HandshakeFailed(
                    f"{where} closed the connection before answering the WebSocket upgrade"
                )
            ws.receive_data(bytes(data))  # b"" tells h11 about EOF, which may end a refusal's body
            for event in ws.events():
                if isinstance(event, AcceptConnection):
                    head_end = received.find(b"\r\n\r\n")
                    clean = head_end >= 0 and head_end + 4 == len(received)
                    return ws, event.subprotocol, clean
                if isinstance(event, RejectConnection):
                    status = event.status_code
                    if not event.has_body:
                        raise _refused(status, body)
                elif isinstance(event, RejectData):
                    body += event.data[: _MAX_REJECT_BODY - len(body)]
                    if event.body_finished:
                        raise _refused(status, body)
            if not data:
                raise _refused(status, body)  # EOF in the middle of the refusal's body
    except _STREAM_ERRORS as exc:
        if status is not None:
            raise _refused(status, body) from exc
        raise HandshakeFailed(f"could not connect to {where}: {_describe(exc)}") from exc
    except _WsprotoProtocolError as exc:
        if status is not None:
            raise _refused(status, body) from exc
        raise HandshakeFailed(
            f"invalid WebSocket upgrade response from {_redact_url(url)}: {exc}"
        ) from exc


def _refused(status: int | None, body: bytes | bytearray) -> HandshakeFailed:
    text = bytes(body).decode("utf-8", "replace")
    shown = text
    if len(shown) > _MAX_REJECT_BODY_IN_MESSAGE:
        shown = shown[:_MAX_REJECT_BODY_IN_MESSAGE] + "…"
    msg = f"server refused the WebSocket upgrade with HTTP {status}"
    msg += f": {shown}" if shown else " (empty body)"
    return HandshakeFailed(msg, status=status, body=text)


def _closed_by_server(code: int, reason: str | None) -> str:
    if reason:
        return f"server closed the connection (code {int(code)}: {reason})"
    return f"server closed the connection (code {int(code)})"


def _describe(exc: BaseException) -> str:
    """A one-line description of a stream or connect error.

    Digs into ``__cause__`` when it says more: trio wraps TLS errors in a blank
    :class:`trio.BrokenResourceError`, and a failed ``open_tcp_stream`` says only "all attempts
    failed", with one error per address attempted in an exception group.
    """
    cause = exc.__cause__
    if isinstance(cause, BaseExceptionGroup):
        return "; ".join(dict.fromkeys(_describe(leaf) for leaf in cause.exceptions))
    text = str(exc)
    if not text and cause is not None:
        return _describe(cause)
    return text or type(exc).__name__


def _redact_url(url: str) -> str:
    """``url`` with user info dropped and every query value replaced (it carries the apikey)."""
    parts = urlsplit(url)
    netloc = parts.netloc.rpartition("@")[2]
    query = "&".join(
        f"{name}=<redacted>" for name, _ in parse_qsl(parts.query, keep_blank_values=True)
    )
    if parts.query and not query:
        query = "<redacted>"
    return urlunsplit((parts.scheme, netloc, parts.path, query, ""))
