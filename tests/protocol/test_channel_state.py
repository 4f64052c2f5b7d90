"""The channel state machine (h11 ``test_state.py`` style).

The expected table below is written out by hand from the diagram in
``trio_realtime/protocol/_channel_state.py`` and PROTOCOL.md §3.10; it is not imported from
the module under test, so a changed transition shows up here as a failure.
"""

from __future__ import annotations

import itertools
import re
from typing import TYPE_CHECKING

import pytest

from trio_realtime.protocol import ChannelState, ClientConnection, LocalProtocolError, transition
from trio_realtime.protocol._channel_state import TRANSITIONS

if TYPE_CHECKING:
    from collections.abc import Callable

S = ChannelState
TRIGGERS = ("join", "join_ok", "join_error", "timeout", "error", "leave", "close", "reopen")
TOPIC = "realtime:room"

EXPECTED: dict[tuple[ChannelState, str], ChannelState] = {
    (S.CLOSED, "join"): S.JOINING,
    (S.JOINING, "join_ok"): S.JOINED,
    (S.JOINING, "join_error"): S.ERRORED,
    (S.JOINING, "timeout"): S.ERRORED,
    (S.JOINING, "error"): S.ERRORED,
    (S.JOINING, "leave"): S.LEAVING,
    (S.JOINING, "close"): S.CLOSED,
    (S.JOINED, "error"): S.ERRORED,
    (S.JOINED, "leave"): S.LEAVING,
    (S.JOINED, "close"): S.CLOSED,
    (S.LEAVING, "close"): S.CLOSED,
    (S.LEAVING, "error"): S.CLOSED,
    (S.LEAVING, "timeout"): S.CLOSED,
    (S.ERRORED, "join"): S.JOINING,
    (S.ERRORED, "leave"): S.LEAVING,
    (S.ERRORED, "error"): S.ERRORED,
    (S.ERRORED, "close"): S.CLOSED,
    (S.CLOSED, "reopen"): S.ERRORED,
}

ALL_PAIRS = list(itertools.product(S, TRIGGERS))
LEGAL = [pair for pair in ALL_PAIRS if pair in EXPECTED]
ILLEGAL = [pair for pair in ALL_PAIRS if pair not in EXPECTED]


def test_table_is_exactly_the_documented_one() -> None:
    assert dict(TRANSITIONS) == EXPECTED


def test_every_trigger_and_state_is_covered() -> None:
    assert {t for _, t in EXPECTED} == set(TRIGGERS)
    assert {s for s, _ in EXPECTED} == set(S)
    assert len(LEGAL) == 18
    assert len(ILLEGAL) == len(S) * len(TRIGGERS) - 18


def test_close_is_legal_from_every_state_but_closed() -> None:
    for state in S:
        assert ((state, "close") in EXPECTED) is (state is not S.CLOSED)


@pytest.mark.parametrize(("state", "trigger"), LEGAL, ids=[f"{s.name}-{t}" for s, t in LEGAL])
def test_legal_transition(state: ChannelState, trigger: str) -> None:
    assert transition(TOPIC, state, trigger) is EXPECTED[state, trigger]  # type: ignore[arg-type]


@pytest.mark.parametrize(("state", "trigger"), ILLEGAL, ids=[f"{s.name}-{t}" for s, t in ILLEGAL])
def test_illegal_transition(state: ChannelState, trigger: str) -> None:
    expected = rf"^cannot {trigger} channel 'realtime:room': it is {state.name}$"
    with pytest.raises(LocalProtocolError, match=expected):
        transition(TOPIC, state, trigger)  # type: ignore[arg-type]


def test_illegal_transition_error_has_no_keyerror_context() -> None:
    with pytest.raises(LocalProtocolError) as info:
        transition(TOPIC, S.CLOSED, "leave")
    assert info.value.__suppress_context__


# -- through ClientConnection: illegal calls change nothing --------------------------------


def _reply(conn: ClientConnection, ref: str, status: str = "ok") -> None:
    conn.receive(f'["{ref}","{ref}","{TOPIC}","phx_reply",{{"status":"{status}","response":{{}}}}]', 0.0)


def make(state: ChannelState) -> ClientConnection:
    """A vsn 2.0.0 connection whose channel TOPIC was driven into ``state`` with real frames."""
    conn = ClientConnection("2.0.0")
    conn.add_channel(TOPIC)
    if state is S.CLOSED:
        return conn
    ref, _ = conn.join(TOPIC, {})
    if state is S.JOINING:
        pass
    elif state is S.JOINED:
        _reply(conn, ref)
    elif state is S.LEAVING:
        _reply(conn, ref)
        conn.leave(TOPIC)
    elif state is S.ERRORED:
        _reply(conn, ref, "error")
    assert conn.channels[TOPIC].state is state
    return conn


def _snapshot(conn: ClientConnection) -> tuple[object, ...]:
    ch = conn.channels[TOPIC]
    return (
        ch.state,
        ch.join_ref,
        ch.close_reason,
        ch.joined_once,
        conn.pending_refs,
        conn._ref,
        dict(conn._pending),
    )


ILLEGAL_CALLS: list[tuple[ChannelState, str, Callable[[ClientConnection], object], str]] = [
    (
        S.JOINING,
        "push",
        lambda c: c.push(TOPIC, "broadcast", {"event": "e"}),
        r"^cannot push 'broadcast' on 'realtime:room': channel is JOINING, not JOINED$",
    ),
    (
        S.CLOSED,
        "push",
        lambda c: c.push(TOPIC, "presence", {}),
        r"^cannot push 'presence' on 'realtime:room': channel is CLOSED, not JOINED$",
    ),
    (
        S.LEAVING,
        "push",
        lambda c: c.push(TOPIC, "x", {}),
        r"^cannot push 'x' on 'realtime:room': channel is LEAVING, not JOINED$",
    ),
    (
        S.ERRORED,
        "push",
        lambda c: c.push(TOPIC, "x", {}),
        r"^cannot push 'x' on 'realtime:room': channel is ERRORED, not JOINED$",
    ),
    (S.CLOSED, "leave", lambda c: c.leave(TOPIC), r"^cannot leave channel 'realtime:room': it is CLOSED$"),
    (S.LEAVING, "leave", lambda c: c.leave(TOPIC), r"^cannot leave channel 'realtime:room': it is LEAVING$"),
    (S.JOINED, "join", lambda c: c.join(TOPIC, {}), r"^cannot join channel 'realtime:room': it is JOINED$"),
    (S.JOINING, "join", lambda c: c.join(TOPIC, {}), r"^cannot join channel 'realtime:room': it is JOINING$"),
    (S.LEAVING, "join", lambda c: c.join(TOPIC, {}), r"^cannot join channel 'realtime:room': it is LEAVING$"),
    (
        S.JOINED,
        "join_timed_out",
        lambda c: c.join_timed_out(TOPIC),
        r"^cannot timeout channel 'realtime:room': it is JOINED$",
    ),
    (
        S.CLOSED,
        "join_timed_out",
        lambda c: c.join_timed_out(TOPIC),
        r"^cannot timeout channel 'realtime:room': it is CLOSED$",
    ),
    (
        S.ERRORED,
        "join_timed_out",
        lambda c: c.join_timed_out(TOPIC),
        r"^cannot timeout channel 'realtime:room': it is ERRORED$",
    ),
    (
        S.JOINING,
        "remove_channel",
        lambda c: c.remove_channel(TOPIC),
        r"^cannot remove channel 'realtime:room': it is JOINING$",
    ),
    (
        S.JOINED,
        "remove_channel",
        lambda c: c.remove_channel(TOPIC),
        r"^cannot remove channel 'realtime:room': it is JOINED$",
    ),
    (
        S.CLOSED,
        "add_channel",
        lambda c: c.add_channel(TOPIC),
        r"^channel 'realtime:room' already exists on this connection$",
    ),
]


@pytest.mark.parametrize(
    ("state", "call", "action", "pattern"),
    ILLEGAL_CALLS,
    ids=[f"{call}-on-{state.name}" for state, call, _, _ in ILLEGAL_CALLS],
)
def test_illegal_call_raises_and_changes_nothing(
    state: ChannelState, call: str, action: Callable[[ClientConnection], object], pattern: str
) -> None:
    conn = make(state)
    channel = conn.channels[TOPIC]
    before = _snapshot(conn)
    with pytest.raises(LocalProtocolError, match=pattern):
        action(conn)
    assert conn.channels[TOPIC] is channel
    assert _snapshot(conn) == before
    # no ref was consumed by the failed call
    assert conn.make_ref() == str(before[5] + 1)  # type: ignore[operator]


def test_join_timed_out_after_phx_error_keeps_pending_join() -> None:
    """Regression: join_timed_out on an ERRORED channel used to forget the join ref first.

    Bad ordering: join (ref 1 pending) -> phx_error -> ERRORED -> driver's join timer fires ->
    join_timed_out pops ref 1, *then* raises LocalProtocolError: an illegal call changed state.
    """
    conn = make(S.JOINING)
    conn.receive(f'["1","1","{TOPIC}","phx_error",{{}}]', 0.0)
    assert conn.channels[TOPIC].state is S.ERRORED
    assert conn.pending_refs == 1
    before = _snapshot(conn)
    with pytest.raises(LocalProtocolError, match=r"^cannot timeout channel 'realtime:room': it is ERRORED$"):
        conn.join_timed_out(TOPIC)
    assert _snapshot(conn) == before


@pytest.mark.parametrize(
    "action",
    [
        lambda c: c.join("realtime:nope", {}),
        lambda c: c.leave("realtime:nope"),
        lambda c: c.push("realtime:nope", "e", {}),
        lambda c: c.join_timed_out("realtime:nope"),
        lambda c: c.close_channel("realtime:nope"),
    ],
)
def test_unknown_topic_is_local_error(action: Callable[[ClientConnection], object]) -> None:
    conn = ClientConnection()
    with pytest.raises(LocalProtocolError, match=r"^no channel 'realtime:nope' on this connection$"):
        action(conn)
    assert conn.make_ref() == "1"


def test_remove_unknown_channel_is_a_no_op() -> None:
    conn = ClientConnection()
    conn.remove_channel("realtime:nope")
    assert conn.channels == {}


# -- legal calls through ClientConnection ----------------------------------------------------


def test_legal_walk_through_client_connection() -> None:
    conn = ClientConnection("2.0.0")
    ch = conn.add_channel(TOPIC)
    assert ch.state is S.CLOSED
    ref, _ = conn.join(TOPIC, {})
    assert (ch.state, ch.join_ref) == (S.JOINING, ref)
    conn.join_timed_out(TOPIC)
    assert ch.state is S.ERRORED
    assert conn.pending_refs == 0
    ref2, _ = conn.join(TOPIC, {})
    assert (ch.state, ch.join_ref) == (S.JOINING, ref2)
    _reply(conn, ref2)
    assert ch.state is S.JOINED
    assert ch.joined_once
    conn.leave(TOPIC)
    assert ch.state is S.LEAVING
    conn.join_timed_out(TOPIC)  # the leave timed out: nothing left to leave
    assert ch.state is S.CLOSED
    conn.close_channel(TOPIC)  # idempotent on CLOSED
    assert ch.state is S.CLOSED
    conn.remove_channel(TOPIC)
    assert TOPIC not in conn.channels


@pytest.mark.parametrize("state", [S.JOINING, S.JOINED, S.LEAVING, S.ERRORED])
def test_close_channel_from_any_live_state(state: ChannelState) -> None:
    conn = make(state)
    conn.close_channel(TOPIC)
    assert conn.channels[TOPIC].state is S.CLOSED


def test_leave_while_joining_is_allowed() -> None:
    conn = make(S.JOINING)
    ref, frame = conn.leave(TOPIC)
    assert conn.channels[TOPIC].state is S.LEAVING
    assert frame == f'["1","{ref}","{TOPIC}","phx_leave",{{}}]'
    # the join reply arriving now must not resurrect the channel
    _reply(conn, "1")
    assert conn.channels[TOPIC].state is S.LEAVING


def test_remove_channel_drops_its_pending_refs() -> None:
    conn = make(S.JOINED)
    conn.push(TOPIC, "x", {})
    _ref, _ = conn.leave(TOPIC)
    conn.close_channel(TOPIC)
    assert conn.pending_refs == 2
    conn.remove_channel(TOPIC)
    assert conn.pending_refs == 0


def test_error_messages_name_topic_trigger_and_state() -> None:
    """Spot check against the house style: the message names all three, verbatim."""
    conn = make(S.JOINED)
    with pytest.raises(LocalProtocolError) as info:
        conn.join(TOPIC, {})
    text = str(info.value)
    assert re.search(r"\bjoin\b", text)
    assert "'realtime:room'" in text
    assert "JOINED" in text


def test_leave_from_errored_undoes_a_timed_out_join() -> None:
    """A join whose reply never came may still be applied by the server: leave it."""
    conn = make(S.JOINING)
    conn.join_timed_out(TOPIC)
    assert conn.channels[TOPIC].state is S.ERRORED
    ref, frame = conn.leave(TOPIC)
    assert conn.channels[TOPIC].state is S.LEAVING
    assert frame == f'["1","{ref}","{TOPIC}","phx_leave",{{}}]'
    conn.receive(f'["1","{ref}","{TOPIC}","phx_reply",{{"status":"ok","response":{{}}}}]', 0.0)
    assert conn.channels[TOPIC].state is S.CLOSED
