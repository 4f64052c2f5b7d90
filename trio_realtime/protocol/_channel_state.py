"""The channel state machine.

Theory of operation
-------------------
A channel is one server-side join of a topic on one connection. Its state is data: a table of
``(state, trigger) -> next state``. Anything not in the table is illegal and raises
:class:`LocalProtocolError` with the state left unchanged (h11 style), so a bug in the driver
surfaces at the transition that went wrong rather than as a confused server.

::

    CLOSED --join--> JOINING --join_ok--> JOINED --leave--> LEAVING --close--> CLOSED
                        |                   |                  ^
                        +--join_error/------+--error-----------|---> ERRORED --join--> JOINING
                           timeout/error                       |
    (close is legal from every state but CLOSED: the server or the user ended it;
     leave is legal from ERRORED too, to undo a join whose reply never came;
     reopen takes a server-closed channel back to ERRORED when the client can repair the
     cause, e.g. an expired token)

``ERRORED`` means "should be joined, is not": the driver rejoins it after a backoff. ``close``
from ``JOINING``/``JOINED``/``ERRORED`` is the server's ``phx_close`` or a fatal rejection.
"""

from __future__ import annotations

import enum
from typing import Final, Literal

from .._errors import LocalProtocolError

__all__ = ["ChannelState", "Trigger", "transition"]


class ChannelState(enum.Enum):
    """Where a channel is in its lifecycle (realtime-js ``CHANNEL_STATES``)."""

    #: Not joined and not trying to be.
    CLOSED = "closed"
    #: ``phx_join`` sent, reply pending.
    JOINING = "joining"
    #: The server accepted the join.
    JOINED = "joined"
    #: ``phx_leave`` sent, reply or ``phx_close`` pending.
    LEAVING = "leaving"
    #: The join was lost or refused; the client will rejoin.
    ERRORED = "errored"


Trigger = Literal["join", "join_ok", "join_error", "timeout", "error", "leave", "close", "reopen"]

_S = ChannelState
TRANSITIONS: Final[dict[tuple[ChannelState, str], ChannelState]] = {
    (_S.CLOSED, "join"): _S.JOINING,
    (_S.ERRORED, "join"): _S.JOINING,
    (_S.JOINING, "join_ok"): _S.JOINED,
    (_S.JOINING, "join_error"): _S.ERRORED,
    (_S.JOINING, "timeout"): _S.ERRORED,
    (_S.JOINING, "error"): _S.ERRORED,
    (_S.JOINED, "error"): _S.ERRORED,
    (_S.ERRORED, "error"): _S.ERRORED,
    (_S.JOINING, "leave"): _S.LEAVING,
    (_S.JOINED, "leave"): _S.LEAVING,
    # A join that timed out may still be applied by the server: leaving makes sure it is not.
    (_S.ERRORED, "leave"): _S.LEAVING,
    (_S.JOINING, "close"): _S.CLOSED,
    (_S.JOINED, "close"): _S.CLOSED,
    (_S.LEAVING, "close"): _S.CLOSED,
    (_S.ERRORED, "close"): _S.CLOSED,
    # A connection lost while leaving leaves nothing to leave on the server.
    (_S.LEAVING, "error"): _S.CLOSED,
    (_S.LEAVING, "timeout"): _S.CLOSED,
    # The server closed the channel for a reason the client can repair (an expired token:
    # fetch a fresh one and rejoin), so it should be joined again.
    (_S.CLOSED, "reopen"): _S.ERRORED,
}


def transition(topic: str, state: ChannelState, trigger: Trigger) -> ChannelState:
    """The state after ``trigger`` in ``state``; raises LocalProtocolError if illegal."""
    try:
        return TRANSITIONS[state, trigger]
    except KeyError:
        raise LocalProtocolError(
            f"cannot {trigger} channel {topic!r}: it is {state.name}"
        ) from None
