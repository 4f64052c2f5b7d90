"""The exception hierarchy: copy- and pickle-safe (trio-websocket's test_copy_exceptions), the
tree in ``_errors``'s docstring matches the classes, and ProtocolError is abstract."""

from __future__ import annotations

import copy
import inspect
import pickle
import re
from typing import Any

import pytest

import trio_realtime
from trio_realtime import _errors
from trio_realtime._errors import (
    ConnectionLost,
    HandshakeFailed,
    InternalError,
    JoinError,
    JoinRejected,
    JoinTimedOut,
    LocalProtocolError,
    ProtocolError,
    PushError,
    PushRejected,
    PushTimedOut,
    RealtimeError,
    RemoteProtocolError,
    SubscriptionClosed,
    TransportError,
)

#: One representative instance of every exception class, with the attributes it must keep.
SAMPLES: dict[type[BaseException], tuple[BaseException, dict[str, Any]]] = {
    RealtimeError: (RealtimeError("base"), {}),
    LocalProtocolError: (LocalProtocolError("cannot push 'x': channel is LEAVING"), {}),
    RemoteProtocolError: (RemoteProtocolError("frame is not valid JSON"), {}),
    TransportError: (TransportError("transport failed"), {}),
    HandshakeFailed: (
        HandshakeFailed("server refused the upgrade with HTTP 401", 401, '{"error":"API key is missing"}'),
        {"status": 401, "body": '{"error":"API key is missing"}'},
    ),
    ConnectionLost: (ConnectionLost("heartbeat timeout"), {"reason": "heartbeat timeout"}),
    JoinError: (JoinError("join failed"), {}),
    JoinRejected: (
        JoinRejected("realtime:room", "Unauthorized: no", {"reason": "Unauthorized: no"}),
        {"topic": "realtime:room", "reason": "Unauthorized: no", "response": {"reason": "Unauthorized: no"}},
    ),
    JoinTimedOut: (JoinTimedOut("realtime:room", 10.0), {"topic": "realtime:room", "timeout": 10.0}),
    PushError: (PushError("push failed"), {}),
    PushRejected: (
        PushRejected("realtime:room", "broadcast", "payload_size_exceeded"),
        {"topic": "realtime:room", "event": "broadcast", "response": "payload_size_exceeded"},
    ),
    PushTimedOut: (
        PushTimedOut("realtime:room", "presence", 2.5),
        {"topic": "realtime:room", "event": "presence", "timeout": 2.5},
    ),
    SubscriptionClosed: (
        SubscriptionClosed("realtime:room", "Token has expired 3 seconds ago"),
        {"topic": "realtime:room", "reason": "Token has expired 3 seconds ago"},
    ),
    InternalError: (InternalError("2 errors escaped the realtime client"), {}),
}


def _exception_classes() -> list[type[BaseException]]:
    return [
        value
        for _, value in inspect.getmembers(_errors, inspect.isclass)
        if issubclass(value, BaseException) and value.__module__ in ("trio_realtime._errors", "trio_realtime")
    ]


def test_samples_cover_every_exception() -> None:
    classes = _exception_classes()
    assert set(classes) - {ProtocolError} == set(SAMPLES)
    # ... and every one of them is public.
    for cls in classes:
        assert getattr(trio_realtime, cls.__name__) is cls


def _roundtrips(exc: BaseException) -> list[BaseException]:
    copies = [copy.copy(exc), copy.deepcopy(exc)]
    copies += [pickle.loads(pickle.dumps(exc, protocol)) for protocol in range(pickle.HIGHEST_PROTOCOL + 1)]
    return copies


@pytest.mark.parametrize("cls", list(SAMPLES), ids=lambda cls: cls.__name__)
def test_copy_and_pickle_keep_everything(cls: type[BaseException]) -> None:
    exc, attributes = SAMPLES[cls]
    assert type(exc) is cls
    for name, value in attributes.items():
        assert getattr(exc, name) == value
    for clone in _roundtrips(exc):
        assert type(clone) is cls
        assert clone is not exc
        assert clone.args == exc.args
        assert str(clone) == str(exc)
        assert repr(clone) == repr(exc)
        assert vars(clone) == vars(exc)
        for name, value in attributes.items():
            assert getattr(clone, name) == value


def test_optional_arguments_survive_pickle() -> None:
    for exc in (HandshakeFailed("could not connect to host:443: refused"), JoinRejected("realtime:r", "no")):
        for clone in _roundtrips(exc):
            assert vars(clone) == vars(exc)
            assert str(clone) == str(exc)


def test_protocol_error_is_abstract() -> None:
    with pytest.raises(
        TypeError, match=r"^ProtocolError is abstract; raise LocalProtocolError or RemoteProtocolError$"
    ):
        ProtocolError("x")
    for cls in (LocalProtocolError, RemoteProtocolError):
        exc = cls("x")
        assert isinstance(exc, ProtocolError)
        assert isinstance(exc, RealtimeError)


def test_messages_say_what_happened() -> None:
    assert str(SAMPLES[JoinRejected][0]) == "server rejected the join of 'realtime:room': Unauthorized: no"
    assert str(SAMPLES[SubscriptionClosed][0]) == (
        "subscription to 'realtime:room' closed: Token has expired 3 seconds ago"
    )
    assert str(SAMPLES[HandshakeFailed][0]) == "server refused the upgrade with HTTP 401"
    assert str(SAMPLES[ConnectionLost][0]) == "heartbeat timeout"
    assert str(SAMPLES[JoinTimedOut][0]).startswith("no reply to the join of 'realtime:room' within 10 s")
    assert str(SAMPLES[PushTimedOut][0]) == (
        "no reply to 'presence' on 'realtime:room' within 2.5 s; it may or may not have been applied"
    )


def test_docstring_tree_matches_the_classes() -> None:
    """The hierarchy drawn in ``_errors``'s docstring is the real one."""
    assert _errors.__doc__ is not None
    parents: dict[str, str | None] = {}
    stack: list[tuple[int, str]] = []
    for line in _errors.__doc__.splitlines():
        match = re.match(r"^(\s*)(?:([│ ]*)[├└]── )?([A-Z]\w+)(?:\s{2,}|$)", line)
        if match is None or not line.startswith("    "):
            continue
        depth = 0 if match.group(2) is None else len(match.group(1) + match.group(2)) // 4
        name = match.group(3)
        while stack and stack[-1][0] >= depth:
            stack.pop()
        parents[name] = stack[-1][1] if stack else None
        stack.append((depth, name))
    drawn = set(parents)
    assert drawn == {cls.__name__ for cls in _exception_classes()}
    for name, parent in parents.items():
        cls = getattr(_errors, name)
        expected = Exception if parent is None else getattr(_errors, parent)
        assert cls.__bases__ == (expected,), f"{name} is drawn under {parent}"
