"""The exception hierarchy of trio_realtime.

Organised by what the caller can do about it (httpx style)::

    RealtimeError                    base; never raised directly
    ├── ProtocolError                abstract
    │   ├── LocalProtocolError       you asked for something illegal in the current state
    │   └── RemoteProtocolError      the peer sent a malformed or out-of-order frame
    ├── TransportError               connection-level; ``__cause__`` holds the OSError/wsproto error
    │   ├── HandshakeFailed          HTTP upgrade refused (status, body) or TCP connect failure
    │   └── ConnectionLost           the socket died or a heartbeat went unanswered (``reason``)
    ├── JoinError
    │   ├── JoinRejected             the server answered ``phx_join`` with status "error" (``reason``)
    │   └── JoinTimedOut             no join reply within ``RealtimeConfig.join_timeout``
    ├── PushError
    │   ├── PushRejected             the server answered a push with status "error" (``response``)
    │   └── PushTimedOut             no reply to an acknowledged push within ``push_timeout``
    ├── SubscriptionClosed           the server closed the channel (``reason``): system error,
    │                                ``phx_close``, or the subscription overflowed its queue
    └── InternalError                a bug in trio_realtime; please report it

Trio's own exceptions are reused where the meaning is the same:
:class:`trio.ClosedResourceError` (you used a subscription or client after its block exited),
:class:`trio.EndOfChannel` (the subscription ended cleanly; ``async for`` just stops),
:class:`trio.BusyResourceError` (two tasks receive from one subscription) and
:class:`trio.WouldBlock` (a ``*_nowait`` call found a bounded buffer full).

Every exception keeps its constructor arguments in ``args`` so it survives ``copy`` and
``pickle``.
"""

from __future__ import annotations

from typing import Any


class RealtimeError(Exception):
    """Base class of every error raised by trio_realtime. Never raised directly."""


class ProtocolError(RealtimeError):
    """A violation of the Phoenix/Realtime protocol. Abstract: catch a subclass."""

    def __init__(self, msg: str) -> None:
        if type(self) is ProtocolError:
            raise TypeError("ProtocolError is abstract; raise LocalProtocolError or RemoteProtocolError")
        super().__init__(msg)


class LocalProtocolError(ProtocolError):
    """You asked for something that is illegal in the current state (your bug).

    The state of the object that raised it is unchanged.
    """


class RemoteProtocolError(ProtocolError):
    """The peer sent something malformed or out of order (the peer's bug).

    The connection is still usable: the offending frame was dropped.
    """


class TransportError(RealtimeError):
    """The connection itself failed. ``__cause__`` holds the underlying error, if any."""


class HandshakeFailed(TransportError):
    """The WebSocket upgrade was refused, or the TCP/TLS connection could not be made.

    Attributes:
        status: the HTTP status of a refused upgrade (None for a network failure).
        body: the response body of a refused upgrade, decoded as text ("" if none).
    """

    def __init__(self, msg: str, status: int | None = None, body: str = "") -> None:
        super().__init__(msg, status, body)
        self.status = status
        self.body = body

    def __str__(self) -> str:
        return str(self.args[0])


class ConnectionLost(TransportError):
    """The socket died, the server closed it, or a heartbeat went unanswered.

    Attributes:
        reason: a short human-readable reason, e.g. ``"heartbeat timeout"``.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class JoinError(RealtimeError):
    """Joining a channel failed."""


class JoinRejected(JoinError):
    """The server answered ``phx_join`` with ``status: "error"``.

    Attributes:
        topic: the channel topic (``realtime:...``).
        reason: the server's ``reason`` string, e.g. ``"Unauthorized: ..."``.
        response: the whole ``response`` object of the reply.
    """

    def __init__(self, topic: str, reason: str, response: Any = None) -> None:
        super().__init__(topic, reason, response)
        self.topic = topic
        self.reason = reason
        self.response = response

    def __str__(self) -> str:
        return f"server rejected the join of {self.topic!r}: {self.reason}"


class JoinTimedOut(JoinError):
    """No reply to ``phx_join`` arrived within ``RealtimeConfig.join_timeout``."""

    def __init__(self, topic: str, timeout: float) -> None:
        super().__init__(topic, timeout)
        self.topic = topic
        self.timeout = timeout

    def __str__(self) -> str:
        return (
            f"no reply to the join of {self.topic!r} within {self.timeout:g} s; "
            "the server may be overloaded or still applying its join error backoff "
            "(raise RealtimeConfig.join_timeout if this is expected)"
        )


class PushError(RealtimeError):
    """An acknowledged push (broadcast with ``ack``, presence track/untrack) failed."""


class PushRejected(PushError):
    """The server answered a push with ``status: "error"``.

    Attributes:
        topic, event: what was pushed.
        response: the ``response`` object of the reply.
    """

    def __init__(self, topic: str, event: str, response: Any = None) -> None:
        super().__init__(topic, event, response)
        self.topic = topic
        self.event = event
        self.response = response

    def __str__(self) -> str:
        return f"server rejected {self.event!r} on {self.topic!r}: {self.response!r}"


class PushTimedOut(PushError):
    """No reply to an acknowledged push within ``RealtimeConfig.push_timeout``.

    The push may or may not have been applied by the server.
    """

    def __init__(self, topic: str, event: str, timeout: float) -> None:
        super().__init__(topic, event, timeout)
        self.topic = topic
        self.event = event
        self.timeout = timeout

    def __str__(self) -> str:
        return (
            f"no reply to {self.event!r} on {self.topic!r} within {self.timeout:g} s; "
            "it may or may not have been applied"
        )


class SubscriptionClosed(RealtimeError):
    """The channel was closed from the other side, or the subscription overflowed.

    Raised by ``receive()`` once the events queued before the close are consumed.

    Attributes:
        topic: the channel topic.
        reason: why, e.g. the server's ``system`` message or ``"overflow"``.
    """

    def __init__(self, topic: str, reason: str) -> None:
        super().__init__(topic, reason)
        self.topic = topic
        self.reason = reason

    def __str__(self) -> str:
        return f"subscription to {self.topic!r} closed: {self.reason}"


class InternalError(RealtimeError):
    """A bug in trio_realtime: an exception escaped where none was expected.

    Please report it with the ``__cause__`` traceback.
    """
