"""An in-memory :class:`~trio_realtime._transport.Transport` pair for tests.

The pair works at the message level (no framing, no bytes), on two bounded trio memory
channels, so client tests can run under the autojump clock with no sockets at all. It
reproduces the behaviour the client relies on from :class:`WsprotoTransport`:

- ``receive_messages`` returns every queued message (at least one) in one call;
- a graceful ``aclose(code, reason)`` lets the other end drain what was already queued, then
  raise :class:`~trio_realtime.ConnectionLost` naming the code and reason;
- :meth:`MemoryTransport.abort` drops the connection abruptly: queued messages are lost and
  both ends raise ``ConnectionLost`` on their next receive or send;
- sends block when the peer's queue is full, like a socket whose peer stops reading.
"""

from __future__ import annotations

from typing import Literal, final

import trio

from .._errors import ConnectionLost
from .._util import NoPublicConstructor

__all__ = ["MemoryTransport", "memory_transport_pair"]

_Role = Literal["client", "server"]

#: Everything a memory channel raises once either end of the link is closed.
_CHANNEL_CLOSED = (trio.EndOfChannel, trio.ClosedResourceError, trio.BrokenResourceError)


@final
class MemoryTransport(metaclass=NoPublicConstructor):
    """One end of an in-memory transport pair; see :func:`memory_transport_pair`.

    There is no public constructor.
    """

    __slots__ = (
        "_closed",
        "_lost_reason",
        "_peer",
        "_receive_channel",
        "_receiving",
        "_role",
        "_send_channel",
    )

    _role: _Role
    _send_channel: trio.MemorySendChannel[str | bytes]
    _receive_channel: trio.MemoryReceiveChannel[str | bytes]
    _peer: MemoryTransport
    _lost_reason: str | None
    _closed: bool
    _receiving: bool

    def __init__(
        self,
        role: _Role,
        send_channel: trio.MemorySendChannel[str | bytes],
        receive_channel: trio.MemoryReceiveChannel[str | bytes],
    ) -> None:
        self._role = role
        self._send_channel = send_channel
        self._receive_channel = receive_channel
        self._lost_reason = None
        self._closed = False
        self._receiving = False

    def __repr__(self) -> str:
        state = "open" if self._lost_reason is None else f"lost ({self._lost_reason})"
        return f"<MemoryTransport {self._role} end, {state}>"

    @property
    def subprotocol(self) -> str | None:
        """Always None: there is no handshake."""
        return None

    async def send_message(self, data: str | bytes) -> None:
        """Queue one message for the other end.

        Blocks while the other end's queue is full. This is a checkpoint.

        Raises:
            ConnectionLost: either end closed the connection, or it was aborted.
        """
        try:
            await self._send_channel.send(data)
        except _CHANNEL_CLOSED:
            raise self._lost() from None

    async def receive_messages(self) -> list[str | bytes]:
        """Wait for at least one message, then return every message that is queued.

        This is a checkpoint.

        Raises:
            ConnectionLost: the other end closed the connection (after everything it sent
                before closing has been returned; the reason names the close code and
                reason), this end was closed, or the connection was aborted.
            trio.BusyResourceError: another task is already inside this method.
        """
        if self._receiving:
            raise trio.BusyResourceError("another task is already receiving from this transport")
        self._receiving = True
        try:
            try:
                messages = [await self._receive_channel.receive()]
            except _CHANNEL_CLOSED:
                raise self._lost() from None
            while True:
                try:
                    messages.append(self._receive_channel.receive_nowait())
                except (trio.WouldBlock, *_CHANNEL_CLOSED):
                    # Closed or aborted while we were being woken with the first message:
                    # return what we have; the next call raises ConnectionLost.
                    return messages
        finally:
            self._receiving = False

    async def aclose(self, code: int = 1000, reason: str = "") -> None:
        """Close this end gracefully, as if with a WebSocket close frame.

        The other end still receives what was queued for it, then ``ConnectionLost`` naming
        ``code`` and ``reason``; its sends fail at once. Messages queued for *this* end are
        discarded. Idempotent. This is a checkpoint.
        """
        if not self._closed:
            self._closed = True
            if self._lost_reason is None:
                self._lost_reason = "the connection was closed locally"
            peer = self._peer
            if peer._lost_reason is None:
                peer._lost_reason = _closed_by(self._role, code, reason)
            self._send_channel.close()
            self._receive_channel.close()
        await trio.lowlevel.checkpoint()

    def abort(self, reason: str = "connection lost (aborted by the test)") -> None:
        """Simulate an abrupt loss of the connection, as if the network failed.

        Messages in flight in either direction are lost. Both ends, including tasks already
        blocked in a receive or send, raise ``ConnectionLost(reason)``.
        """
        for end in (self, self._peer):
            end._lost_reason = reason
            end._send_channel.close()
            end._receive_channel.close()

    def _lost(self) -> ConnectionLost:
        return ConnectionLost(self._lost_reason or "the connection was closed")


def memory_transport_pair(capacity: int = 1000) -> tuple[MemoryTransport, MemoryTransport]:
    """Make two connected in-memory transports: ``(client_end, server_end)``.

    Close reasons are worded as the real transport words them for a client: when the server
    end closes with code 1012, the client end's ``ConnectionLost`` says ``"server closed the
    connection (code 1012: ...)"``.

    Args:
        capacity: how many messages each direction buffers before ``send_message`` blocks.

    Returns:
        The client end and the server end.
    """
    to_server_send, to_server_receive = trio.open_memory_channel[str | bytes](capacity)
    to_client_send, to_client_receive = trio.open_memory_channel[str | bytes](capacity)
    client = MemoryTransport._create("client", to_server_send, to_client_receive)
    server = MemoryTransport._create("server", to_client_send, to_server_receive)
    client._peer = server
    server._peer = client
    return client, server


def _closed_by(role: _Role, code: int, reason: str) -> str:
    if reason:
        return f"{role} closed the connection (code {code}: {reason})"
    return f"{role} closed the connection (code {code})"
