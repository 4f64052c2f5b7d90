"""Hostile input to the server: every frame is handled or dropped, no connection task crashes.

Two layers:

* **sans-IO** (many examples, fast): the server-side decoders of vsn 1.0.0, 2.0.0 and
  seed002 plus the Unicode check either return a message or raise ``RemoteProtocolError``;
  ``parse_join`` and the replay validation accept anything; the token verifier refuses
  anything that is not a valid JWT without raising.
* **real sockets** (fewer examples, each on a fresh server in its own ``trio.run``): a client
  with joined channels of every kind (public with presence, private with replay, one with
  postgres_changes bindings) sends a list of hostile frames, then a heartbeat. The heartbeat
  must be answered (the socket survived), nothing may be logged at ERROR level (the server
  logs every crash of a connection, join or channel at ERROR with its traceback), and every
  frame that is certainly malformed must be counted in ``statistics().malformed_frames``.
"""

from __future__ import annotations

import functools
import json
import logging
from typing import TYPE_CHECKING, Any

import pytest
import trio
from hypothesis import HealthCheck, given, settings, strategies as st
from trio_websocket import wrap_client_stream

from trio_realtime._embedded_postgres import _Cluster
from trio_realtime.protocol import Message, RemoteProtocolError, serializer_for
from trio_realtime.server import ServerConfig, serve_realtime
from trio_realtime.server._auth import TokenRejected, TokenVerifier
from trio_realtime.server._join import parse_join
from trio_realtime.server._serve import _check_unicode

if TYPE_CHECKING:
    from collections.abc import Iterator

    from trio_realtime._embedded_postgres import EmbeddedPostgres

SECRET = "fuzz-secret-0123456789-abcdefghijklmnopqrstuvwxyz-0123456789"

#: Serialised as the number literal ``1e999`` (a float overflow: Python decodes it to inf).
INF = "__inf__"
scalars = (st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70)
           | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=12)
           | st.sampled_from([INF, 10**4000, -(10**4000), 2**63, 1e308]))


def dumps(value: Any, *, ensure_ascii: bool = True) -> str:
    return json.dumps(value, ensure_ascii=ensure_ascii).replace(f'"{INF}"', "1e999")


def decoded(value: Any) -> Any:
    """``value`` as a JSON decoder would hand it over (``INF`` is the float it decodes to)."""
    if value == INF:
        return float("inf")
    if isinstance(value, list):
        return [decoded(v) for v in value]
    if isinstance(value, dict):
        return {k: decoded(v) for k, v in value.items()}
    return value
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)

TOPICS = ["realtime:pub", "realtime:priv", "realtime:pg", "realtime:", "realtime:new", "phoenix", "nope", ""]
EVENTS = ["phx_join", "phx_leave", "broadcast", "presence", "access_token", "heartbeat", "phx_reply", "x", ""]
#: Frames that are malformed whatever the state: invalid JSON, deep nesting, huge numbers,
#: NaN, lone surrogates, and the wrong top-level shape for either JSON framing.
CERTAINLY_MALFORMED = [
    "", "{", "[", "nul", "NaN", "[NaN]", "[1,2,3", '{"a":}', "1" * 5000, "[" * 50_000 + "]" * 50_000,
    '{"topic":' * 3000 + "1" + "}" * 3000, '"text"', "42", "null", "[null,null,null,null]",
    '[null,null,"realtime:pub","broadcast",{"type":"broadcast","event":"\\ud800","payload":{}}]',
    '{"topic":"realtime:\\udfff","event":"phx_join","payload":{},"ref":null}',
]


@st.composite
def join_payloads(draw: st.DrawFn) -> Any:
    junk = draw(json_values)
    replay = draw(st.sampled_from([None, junk, {"since": draw(scalars), "limit": draw(scalars)}]))
    bindings = draw(st.sampled_from([junk, [junk], [{"event": draw(scalars), "schema": draw(scalars),
                                                     "table": draw(scalars), "filter": draw(scalars)}]]))
    config = {"broadcast": draw(st.sampled_from([junk, {"self": draw(scalars), "ack": draw(scalars),
                                                        "replay": replay}])),
              "presence": draw(st.sampled_from([junk, {"enabled": draw(scalars), "key": draw(json_values)}])),
              "postgres_changes": bindings, "private": draw(scalars)}
    payload = {"config": draw(st.sampled_from([config, junk])), "access_token": draw(scalars)}
    return draw(st.sampled_from([payload, junk, {k: v for k, v in payload.items() if k != "config"}]))


@st.composite
def payloads(draw: st.DrawFn, event: str) -> Any:
    junk = draw(json_values)
    if event == "phx_join":
        return draw(join_payloads())
    if event == "broadcast":
        return draw(st.sampled_from([junk, {"type": "broadcast", "event": draw(scalars), "payload": junk,
                                            "meta": draw(json_values)}]))
    if event == "presence":
        return draw(st.sampled_from([junk, {"type": "presence", "event": draw(st.sampled_from(
            ["track", "TRACK", "untrack", junk])), "payload": junk}]))
    if event == "access_token":
        return {"access_token": draw(st.sampled_from([draw(scalars), "a.b.c", "sb_x", "é.\u0000.x"]))}
    return junk


@st.composite
def framed(draw: st.DrawFn, vsn: str) -> str:
    event = draw(st.sampled_from(EVENTS))
    topic = draw(st.sampled_from(TOPICS) | st.text(max_size=300))
    ref = draw(st.sampled_from([None, "1", "2", "99"]) | scalars)
    join_ref = draw(st.sampled_from([None, "1", "2", "3"]) | scalars)
    payload = draw(payloads(event))
    if vsn == "1.0.0":
        obj: Any = {"topic": topic, "event": event, "payload": payload, "ref": ref, "join_ref": join_ref}
        if draw(st.booleans()):
            obj = {k: v for k, v in obj.items() if draw(st.booleans())}
    else:
        obj = [join_ref, ref, topic, event, payload, *draw(st.lists(json_values, max_size=2))]
    return dumps(obj, ensure_ascii=draw(st.booleans()))


@st.composite
def binary_frames(draw: st.DrawFn) -> bytes:
    """Client binary frames (kinds 0 and 3, and others), intact, truncated or corrupted."""
    kind = draw(st.sampled_from([0, 3, 3, 3, 1, 2, 4, 9]))
    topic = draw(st.sampled_from([b"realtime:pub", b"realtime:priv", b"realtime:zz", b"\xff\xfe"]))
    event = draw(st.sampled_from([b"e", b"broadcast", b"", b"\xc3"]))
    meta = draw(st.sampled_from([b"", b"{}", b'{"x":1}', b"[", b"[1]", b'"s"']))
    data = draw(st.sampled_from([b'{"a":1}', b"\x00\x01", b"", b"{", b"1e999", b"[" * 5000 + b"]" * 5000,
                                 b'{"x":"\\ud800"}']))
    join_ref, ref = draw(st.sampled_from([b"1", b"2", b""])), draw(st.sampled_from([b"5", b""]))
    if kind == 3:
        encoding = draw(st.integers(min_value=0, max_value=3))
        header = bytes((3, len(join_ref), len(ref), len(topic), len(event), len(meta), encoding))
        frame = header + join_ref + ref + topic + event + meta + data
    elif kind == 0:
        header = bytes((0, len(join_ref), len(ref), len(topic), len(event)))
        frame = header + join_ref + ref + topic + event + data
    else:
        frame = bytes((kind,)) + draw(st.binary(max_size=30))
    cut = draw(st.sampled_from([None, 0, 1, 3, 7, 12]))
    if cut is not None:
        frame = frame[:cut]
    return frame


def frames_for(vsn: str) -> st.SearchStrategy[tuple[str | bytes, bool]]:
    """(frame, certainly malformed) pairs."""
    options: list[st.SearchStrategy[tuple[str | bytes, bool]]] = [
        st.sampled_from(CERTAINLY_MALFORMED).map(lambda f: (f, True)),
        st.text(max_size=100).map(lambda f: (f, False)),
        json_values.map(lambda v: (dumps(v), False)),
        framed(vsn).map(lambda f: (f, False)),
        framed(vsn).map(lambda f: (f, False)),
    ]
    if vsn == "1.0.0":
        options.append(st.binary(max_size=50).map(lambda f: (f, True)))  # no binary on vsn 1.0.0
    else:
        options.append(binary_frames().map(lambda f: (f, f[:1] not in (b"\x00", b"\x03"))))
    return st.one_of(options)


# -- sans-IO ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("vsn", ["1.0.0", "2.0.0", "seed002"])
@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_server_decoders_raise_only_remote_protocol_error(vsn: str, data: st.DataObject) -> None:
    serializer = serializer_for(vsn, "server")
    for frame, certain in data.draw(st.lists(frames_for("2.0.0" if vsn == "seed002" else vsn), max_size=8)):
        try:
            msg = serializer.decode(frame)
            _check_unicode(frame, msg)
        except RemoteProtocolError:
            continue
        assert not certain, frame
        assert isinstance(msg, Message)


@settings(max_examples=500, deadline=None)
@given(payload=join_payloads() | json_values)
def test_parse_join_accepts_anything(payload: Any) -> None:
    params = parse_join(decoded(payload))
    error = params.replay_error()
    assert error is None or error.startswith("UnableToReplayMessages: ")


@settings(max_examples=300, deadline=None)
@given(token=st.text(max_size=200) | st.sampled_from(["a.b.c", "..", "e30.e30.", "eyJhbGciOiJub25lIn0.e30."]))
def test_token_verifier_refuses_without_raising(token: str) -> None:
    assert isinstance(TokenVerifier(secret=SECRET).verify(token, 0.0), TokenRejected)


# -- real sockets -------------------------------------------------------------------------------------


class _Errors(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


async def _session(vsn: str, frames: list[tuple[str | bytes, bool]], database_url: str | None = None) -> None:
    config = ServerConfig(presence_rate_limit=1000, replay_max_limit=5)
    async with trio.open_nursery() as nursery:
        server = await nursery.start(functools.partial(serve_realtime, "127.0.0.1", 0, config=config,
                                                       database_url=database_url))
        stream = await trio.open_tcp_stream("127.0.0.1", server.port)
        async with stream:
            ws = await wrap_client_stream(nursery, stream, f"127.0.0.1:{server.port}",
                                          f"/realtime/v1/websocket?vsn={vsn}&apikey=k")
            encode = serializer_for(vsn, "client").encode

            async def push(join_ref: str | None, ref: str, topic: str, event: str, payload: Any) -> None:
                await ws.send_message(encode(Message(join_ref=join_ref, ref=ref, topic=topic, event=event,
                                                     payload=payload)))

            await push("1", "1", "realtime:pub", "phx_join", {"config": {
                "broadcast": {"self": True, "ack": True}, "presence": {"enabled": True, "key": "me"}}})
            await push("2", "2", "realtime:priv", "phx_join", {"config": {
                "private": True, "broadcast": {"self": True, "replay": {"since": 0, "limit": 3}}}})
            await push("3", "3", "realtime:pg", "phx_join", {"config": {
                "postgres_changes": [{"event": "*", "schema": "public", "table": "t", "filter": "id=eq.1"}]}})
            await push("2", "4", "realtime:priv", "broadcast",
                       {"type": "broadcast", "event": "e", "payload": {}})
            for frame, _ in frames:
                await ws.send_message(frame)
            await push(None, "fuzz-sync", "phoenix", "heartbeat", {})
            while True:
                raw = await ws.get_message()
                if isinstance(raw, str) and "fuzz-sync" in raw:
                    reply = json.loads(raw)
                    ref = reply["ref"] if isinstance(reply, dict) else reply[1]
                    if ref == "fuzz-sync":
                        break
            stats = server.statistics()
            assert stats.connections == 1
            assert stats.malformed_frames >= sum(certain for _, certain in frames)
            assert stats.malformed_frames <= len(frames)
            await ws.aclose()
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize("vsn", ["1.0.0", "2.0.0"])
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_server_survives_hostile_frames_on_a_socket(vsn: str, data: st.DataObject) -> None:
    frames = data.draw(st.lists(frames_for(vsn), min_size=1, max_size=10))
    errors = _Errors()
    logger = logging.getLogger("trio_realtime.server")
    logger.addHandler(errors)
    try:
        trio.run(_guarded, vsn, frames)
    finally:
        logger.removeHandler(errors)
    assert [r.getMessage() for r in errors.records] == []


async def _guarded(vsn: str, frames: list[tuple[str | bytes, bool]], database_url: str | None = None) -> None:
    with trio.fail_after(20):
        await _session(vsn, frames, database_url)


def _nasty_but_well_framed(vsn: str) -> list[str | bytes]:
    """Frames that decode, with values no encoder can send on: 1e999, huge ints, odd keys."""
    def frame(join_ref: str | None, ref: str, topic: str, event: str, payload: str) -> str:
        if vsn == "1.0.0":
            return (f'{{"topic":"{topic}","event":"{event}","payload":{payload},"ref":"{ref}",'
                    f'"join_ref":{json.dumps(join_ref)}}}')
        return f'[{json.dumps(join_ref)},"{ref}","{topic}","{event}",{payload}]'

    big = "9" * 4000
    out: list[str | bytes] = [
        frame("9", "9", "realtime:a", "phx_join", '{"config":{"postgres_changes":[{"table":1e999}]}}'),
        frame("10", "10", "realtime:b", "phx_join",
              '{"config":{"presence":{"enabled":true,"key":{"k":1e999}}}}'),
        frame("11", "11", "realtime:c", "phx_join",
              '{"config":{"private":true,"broadcast":{"replay":{"since":1e999,"limit":' + big + "}}}}"),
        frame("12", "12", "realtime:d", "phx_join",
              '{"config":{"private":true,"broadcast":{"replay":{"since":' + big + ',"limit":1e999}}}}'),
        frame("1", "13", "realtime:pub", "broadcast", '{"type":"broadcast","event":"e","payload":1e999}'),
        frame("2", "14", "realtime:priv", "broadcast", '{"type":"broadcast","event":"e","payload":1e999}'),
        frame("2", "15", "realtime:priv", "broadcast",
              '{"type":"broadcast","event":"e","payload":' + big + "}"),
        frame("1", "16", "realtime:pub", "presence", '{"event":"track","payload":{"x":1e999}}'),
        frame("1", "17", "realtime:pub", "access_token", '{"access_token":"' + "x" * 10_000 + '"}'),
        frame(big, big, "realtime:pub", "broadcast", "{}"),
        frame("20", "20", "realtime:n\\u0000ul", "phx_join",
              '{"config":{"private":true,"broadcast":{"ack":true,"replay":{"since":0}}}}'),
        frame("20", "21", "realtime:n\\u0000ul", "broadcast", '{"type":"broadcast","event":"e\\u0000"}'),
        frame("2", "18", "realtime:priv", "broadcast", '{"type":"broadcast","event":"' + "é" * 300 + '"}'),
    ]
    if vsn == "2.0.0":
        def kind3(topic: bytes, data: bytes, encoding: int = 1) -> bytes:
            return bytes((3, 1, 2, len(topic), 1, 0, encoding)) + b"2" + b"19" + topic + b"e" + data
        out += [kind3(b"realtime:priv", b"1e999"), kind3(b"realtime:pub", b"1e999"),
                kind3(b"realtime:priv", big.encode()), kind3(b"realtime:priv", b'"\\ud800"'),
                kind3(b"realtime:priv", b"\xff" * 10, encoding=0)]
    return out


@pytest.fixture(scope="module")
def postgres() -> Iterator[EmbeddedPostgres]:
    cluster = _Cluster()
    try:
        yield cluster.start()
    finally:
        cluster.stop()


@pytest.mark.parametrize("vsn", ["1.0.0", "2.0.0"])
@pytest.mark.parametrize("store", ["memory", "postgres"])
def test_hand_written_nasties_on_a_socket(vsn: str, store: str, request: pytest.FixtureRequest) -> None:
    """Each frame decodes; what it carries cannot be sent on, stored or replayed."""
    dsn = request.getfixturevalue("postgres").dsn if store == "postgres" else None
    errors = _Errors()
    logger = logging.getLogger("trio_realtime.server")
    logger.addHandler(errors)
    try:
        frames = [(frame, True) for frame in CERTAINLY_MALFORMED]
        frames += [(frame, False) for frame in _nasty_but_well_framed(vsn)]
        trio.run(_guarded, vsn, frames, dsn)
    finally:
        logger.removeHandler(errors)
    assert [r.getMessage() for r in errors.records] == []
