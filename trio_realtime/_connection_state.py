"""The connection state the app can watch."""

from __future__ import annotations

import enum

__all__ = ["ConnectionState"]


class ConnectionState(enum.Enum):
    """Where the client's connection is (``RealtimeClient.state`` / ``watch_state()``)."""

    #: The first connection is being opened.
    CONNECTING = "connecting"
    #: A connection is open.
    CONNECTED = "connected"
    #: The connection was lost; waiting for the backoff or opening a new one.
    RECONNECTING = "reconnecting"
    #: Lazy mode: no channel wants a connection, so there is none (it opens on demand).
    IDLE = "idle"
    #: The app is hidden (``set_visible(False)``): no connection until it is visible again.
    PAUSED = "paused"
    #: The client is closed (its block exited, or reconnecting gave up).
    CLOSED = "closed"
