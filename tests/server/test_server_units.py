"""Unit tests of the server's sans-IO modules: no event loop, no sockets, explicit ``now``."""

from __future__ import annotations

import ast
import json
import random
from pathlib import Path

import attrs
import jwt
import pytest
from _server_helpers import SECRET

import trio_realtime.server
from trio_realtime.server import _auth, _handshake, _join, _presence
from trio_realtime.server._auth import Failure, TokenRejected, TokenVerifier, VerifiedToken, check_claims
from trio_realtime.server._handshake import Accept, Refuse, evaluate_upgrade, negotiate_vsn, redact_target
from trio_realtime.server._join import binding_id, echo_binding, parse_join, presence_key_string
from trio_realtime.server._presence import CallWindow, PresenceDiff, PresenceTopic, RefFactory

NOW = 1_700_000_000.0


def _token(secret: str = SECRET, **claims: object) -> str:
    return jwt.encode(claims, secret, algorithm="HS256")


# -- module hygiene ----------------------------------------------------------------------------

SANS_IO = [_auth, _handshake, _join, _presence]
BANNED = {"trio", "trio_websocket", "wsproto", "socket", "time", "asyncio", "anyio", "select", "ssl"}


@pytest.mark.parametrize("module", SANS_IO, ids=lambda m: m.__name__.rsplit(".", 1)[-1])
def test_sans_io_modules_import_no_io(module: object) -> None:
    tree = ast.parse(Path(module.__file__).read_text())  # type: ignore[attr-defined]
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        for name in names:
            assert name.split(".")[0] not in BANNED, f"{module} imports {name}"


def test_exports() -> None:
    public = {name for name in dir(trio_realtime.server) if not name.startswith("_")}
    assert public == {"RealtimeServer", "ServerConfig", "ServerStatistics", "serve_realtime",
                      "DatabaseUnavailable", "EmbeddedPostgres", "EmbeddedPostgresError",
                      "open_embedded_postgres", "AuthorizationRequest", "default_authorize"}
    for name in public:
        assert getattr(trio_realtime.server, name).__module__ == "trio_realtime.server"


# -- _auth ---------------------------------------------------------------------------------------


def test_verify_valid_token() -> None:
    result = TokenVerifier(secret=SECRET).verify(_token(role="anon", exp=NOW + 10, sub="u"), NOW)
    assert isinstance(result, VerifiedToken)
    assert result.exp == NOW + 10
    assert result.role == "anon"
    assert result.claims["sub"] == "u"


@pytest.mark.parametrize(
    ("token", "failure"),
    [
        (_token(role="anon", exp=NOW - 12.5), Failure.EXPIRED),
        (_token(role="anon", exp=NOW), Failure.EXPIRED),
        (_token(role="anon"), Failure.MISSING_CLAIMS),
        (_token(exp=NOW + 10), Failure.MISSING_CLAIMS),
        (_token(role="anon", exp="tomorrow"), Failure.INVALID_EXP),
        (_token(role="anon", exp=NOW + 10, iat="x"), Failure.INVALID_EXP),
        ("abc", Failure.MALFORMED),
        ("a.b.c", Failure.MALFORMED),
        ("", Failure.MALFORMED),
        (_token("the-wrong-secret-but-long-enough-for-sha256!!", role="a", exp=NOW + 9), Failure.SIGNATURE),
        (jwt.encode({"role": "a", "exp": NOW + 9}, None, algorithm="none"), Failure.SIGNER),
    ],
)
def test_verify_failures(token: str, failure: Failure) -> None:
    result = TokenVerifier(secret=SECRET).verify(token, NOW)
    assert isinstance(result, TokenRejected)
    assert result.failure is failure


def test_expired_wording() -> None:
    result = check_claims({"role": "a", "exp": NOW - 12.5}, NOW)
    assert result == TokenRejected(failure=Failure.EXPIRED, expired_seconds=12)
    assert (result.http_status, result.http_error) == (401, "Token has expired")
    assert result.join_reason == "InvalidJWTToken: Token has expired 12 seconds ago"
    assert result.system_message == "Token has expired 12 seconds ago"


@pytest.mark.parametrize(
    ("failure", "http", "join", "system"),
    [
        (Failure.MISSING_CLAIMS, (401, "Fields `role` and `exp` are required in JWT"),
         "InvalidJWTToken: Fields `role` and `exp` are required in JWT",
         "Fields `role` and `exp` are required in JWT"),
        (Failure.MALFORMED, (401, "The token provided is not a valid JWT"),
         "MalformedJWT: The token provided is not a valid JWT", "The token provided is not a valid JWT"),
        (Failure.SIGNATURE, (401, "Failed to validate JWT signature"),
         "JwtSignatureError: Failed to validate JWT signature", "Failed to validate JWT signature"),
        (Failure.INVALID_EXP, (500, "Error connecting to Realtime"),
         "InvalidJWTToken: Token expiration time is invalid", "Token expiration time is invalid"),
        (Failure.MISSING_API_KEY, (401, "API key is missing"), None, None),
    ],
)
def test_wordings(failure: Failure, http: tuple[int, str], join: str | None, system: str | None) -> None:
    rejected = TokenRejected(failure=failure)
    assert (rejected.http_status, rejected.http_error) == http
    if join is not None:
        assert rejected.join_reason == join
        assert rejected.system_message == system


def test_token_is_uri_decoded_and_stripped() -> None:
    token = _token(role="a", exp=NOW + 5)
    assert isinstance(_auth.verify_token(f"  {token}\n", SECRET, NOW), VerifiedToken)
    assert isinstance(_auth.verify_token(token.replace(".", "%2E"), SECRET, NOW), VerifiedToken)


def test_short_secret_does_not_warn() -> None:
    # pyjwt warns about HMAC keys shorter than the digest; with filterwarnings = error this would
    # raise, and a server must not turn an operator's choice of secret into per-token errors.
    token = _token("x" * 40, role="a", exp=NOW + 5)
    assert isinstance(TokenVerifier(secret="short").verify(token, NOW), TokenRejected)
    assert isinstance(TokenVerifier(secret="x" * 40).verify(token, NOW), VerifiedToken)


# -- _handshake ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [(None, "1.0.0"), ("1.0.0", "1.0.0"), ("1.0.7", "1.0.0"), ("2.0.0", "2.0.0"), ("2.0.1", "2.0.0"),
     ("1.1.0", None), ("3.0.0", None), ("2", None), ("2.0", None), ("", None), ("v2.0.0", None)],
)
def test_negotiate_vsn(value: str | None, expected: str | None) -> None:
    assert negotiate_vsn(value, "1.0.0") == expected


def test_upgrade_routes_and_keys() -> None:
    ok = evaluate_upgrade("/socket/websocket?apikey=k&vsn=2.0.0", [], verifier=None, now=NOW)
    assert ok == Accept(vsn="2.0.0", token="k")
    ok = evaluate_upgrade("/realtime/v1/websocket?apikey=a%20b", [], verifier=None, now=NOW)
    assert ok == Accept(vsn="1.0.0", token="a b")
    header = evaluate_upgrade("/socket/websocket?apikey=q", [(b"X-API-Key", b"h")], verifier=None, now=NOW)
    assert header == Accept(vsn="1.0.0", token="h")
    assert evaluate_upgrade("/socket/websocket?apikey=a&apikey=b", [], verifier=None, now=NOW) == Accept(
        vsn="1.0.0", token="b")
    assert evaluate_upgrade("/socket/websocket?apikey=", [], verifier=None, now=NOW) == Accept(
        vsn="1.0.0", token="")
    v2 = evaluate_upgrade("/socket/websocket?apikey=k", [], verifier=None, now=NOW, default_vsn="2.0.0")
    assert v2 == Accept(vsn="2.0.0", token="k")


@pytest.mark.parametrize(
    ("target", "status", "body", "backoff"),
    [
        ("/websocket?apikey=k", 404, b'{"error":"Not Found"}', False),
        ("/socket/websocket/?apikey=k", 404, b'{"error":"Not Found"}', False),
        ("/socket/websocket?apikey=k&vsn=9.0.0", 403, b"", False),
        ("/socket/websocket?vsn=2.0.0", 401, b'{"error":"API key is missing"}', True),
    ],
)
def test_upgrade_refusals(target: str, status: int, body: bytes, backoff: bool) -> None:
    result = evaluate_upgrade(target, [], verifier=None, now=NOW)
    assert isinstance(result, Refuse)
    assert (result.status, result.body, result.backoff) == (status, body, backoff)


def test_upgrade_with_verifier() -> None:
    verifier = TokenVerifier(secret=SECRET)
    good = _token(role="anon", exp=NOW + 60)
    assert evaluate_upgrade(f"/socket/websocket?apikey={good}", [], verifier=verifier, now=NOW) == Accept(
        vsn="1.0.0", token=good)
    expired = evaluate_upgrade(f"/socket/websocket?apikey={good}", [], verifier=verifier, now=NOW + 61)
    assert isinstance(expired, Refuse)
    assert (expired.status, json.loads(expired.body)) == (401, {"error": "Token has expired"})
    assert good not in repr(expired)


def test_redact_target() -> None:
    redacted = redact_target("/socket/websocket?apikey=SECRET&vsn=2.0.0")
    assert redacted == "/socket/websocket?apikey=...&vsn=..."
    assert redact_target("/socket/websocket") == "/socket/websocket"
    assert redact_target("/x?SECRET&a.b.c=1") == "/x??&?"


# -- _join ---------------------------------------------------------------------------------------------


def test_parse_join_defaults_and_values() -> None:
    assert parse_join({"config": {}}) == _join.JoinParams()
    params = parse_join({
        "config": {
            "broadcast": {"self": "TRUE", "ack": True, "replication_ready": "false"},
            "presence": {"key": "u1", "enabled": "true"},
            "private": "True",
            "postgres_changes": [{"event": "update", "schema": "public"}, None],
        },
        "access_token": "tok",
        "version": "realtime-js/2.0",
    })
    assert params.broadcast_self
    assert params.broadcast_ack
    assert not params.replication_ready
    assert params.presence_enabled
    assert params.presence_key == "u1"
    assert params.private
    assert params.access_token == "tok"
    assert params.postgres_changes == (echo_binding({"event": "update", "schema": "public"}),)
    assert params.problems == ()
    assert "tok" not in repr(params)


def test_parse_join_is_forgiving() -> None:
    params = parse_join({"config": {"broadcast": {"ack": "yes", "self": 1}, "presence": [],
                                    "private": None, "postgres_changes": [3, {"schema": "s"}]}})
    assert params.broadcast_ack is False
    assert params.broadcast_self is False
    assert [p.split(":")[0] for p in params.problems] == [
        "config.presence", "config.postgres_changes[0]", "config.broadcast.self", "config.broadcast.ack"
    ]
    assert [b["schema"] for b in params.postgres_changes] == ["s"]
    assert parse_join({"config": {"postgres_changes": None}}).postgres_changes == ()
    assert parse_join({"config": {"postgres_changes": {"x": 1}}}).problems == (
        "config.postgres_changes: expected a list",)
    assert parse_join({"config": "nope"}).problems == ("config: expected a map, got str",)
    legacy = parse_join({"access_token": "t"})
    assert legacy.legacy
    assert legacy.access_token == "t"
    assert parse_join(None).legacy
    assert parse_join([1]).problems == ("payload: expected a map, got list",)


@pytest.mark.parametrize(
    ("payload", "token"),
    [
        ({"access_token": "a", "user_token": "u"}, "a"),
        ({"user_token": "u"}, "u"),
        ({"access_token": "sb_publishable_1", "user_token": "u"}, None),
        ({"user_token": "sb_x"}, None),
        ({"access_token": 5, "user_token": "u"}, "u"),
        ({}, None),
    ],
)
def test_join_token_choice(payload: dict[str, object], token: str | None) -> None:
    assert parse_join({"config": {}, **payload}).access_token == token


def test_replay_errors() -> None:
    def err(config: dict[str, object]) -> str | None:
        return parse_join({"config": config}).replay_error()

    assert err({}) is None
    assert err({"broadcast": {"replay": {"since": 1}}}) == (
        "UnableToReplayMessages: Replay is not allowed for public channels")
    assert err({"private": True, "broadcast": {"replay": {"since": 1, "limit": 5}}}) is None
    bad = "UnableToReplayMessages: Replay params are not valid"
    assert err({"private": True, "broadcast": {"replay": {"since": "1"}}}) == bad
    assert err({"private": True, "broadcast": {"replay": {"since": 1, "limit": 2.5}}}) == bad
    assert err({"private": True, "broadcast": {"replay": []}}) == bad


def test_binding_ids() -> None:
    a = {"event": "INSERT", "schema": "public", "table": "t"}
    b = {"table": "t", "schema": "public", "event": "INSERT"}
    assert binding_id(a) == binding_id(b)  # key order does not matter
    assert binding_id(a) != binding_id({**a, "table": "u"})
    assert 0 < binding_id(a) < 2**31
    echoed = echo_binding({"event": "delete", "schema": "public", "id": 99})
    assert echoed["event"] == "DELETE"
    assert echoed["id"] == binding_id({"event": "DELETE", "schema": "public"})
    assert echo_binding({"schema": "public"}) == {"schema": "public", "id": binding_id({"schema": "public"})}
    assert echo_binding({"events": "insert", "table": "t"})["events"] == "insert"  # py 2.7.0: verbatim


def test_binding_ids_are_stable_across_processes() -> None:
    import subprocess
    import sys

    code = ("from trio_realtime.server._join import binding_id;"
            "print(binding_id({'event': '*', 'schema': 'public', 'filter': 'id=eq.1'}))")
    runs = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
            for _ in range(2)}
    assert runs == {f"{binding_id({'event': '*', 'schema': 'public', 'filter': 'id=eq.1'})}\n"}


@pytest.mark.parametrize(
    ("value", "key"),
    [(None, None), ("", None), ("k", "k"), (42, "42"), (1.5, "1.5"), (True, "true"), ({"a": 1}, '{"a":1}')],
)
def test_presence_key_string(value: object, key: str | None) -> None:
    assert presence_key_string(value) == key


# -- _presence ---------------------------------------------------------------------------------------


def _refs() -> RefFactory:
    return RefFactory(rng=random.Random(0))


def test_ref_factory_unique_and_reproducible() -> None:
    factory, again = _refs(), _refs()
    many = [factory() for _ in range(1000)]
    assert len(set(many)) == 1000
    assert [again() for _ in range(3)] == many[:3]  # same seed, same refs
    assert all(r.startswith("F") for r in many)


def test_presence_track_update_untrack() -> None:
    topic, refs = PresenceTopic(), _refs()
    a, b = object(), object()
    d1 = topic.track(a, "k", {"s": 1}, refs)
    assert d1 is not None
    [m1] = d1.joins["k"]["metas"]
    assert d1 == PresenceDiff(joins={"k": {"metas": [{"s": 1, "phx_ref": m1["phx_ref"]}]}}, leaves={})
    assert topic.track(a, "k", {"s": 1}, refs) is None  # identical: no-op
    d2 = topic.track(a, "k", {"s": 2}, refs)
    assert d2 is not None
    [m2] = d2.joins["k"]["metas"]
    assert m2 == {"s": 2, "phx_ref": m2["phx_ref"], "phx_ref_prev": m1["phx_ref"]}
    assert d2.leaves == {"k": {"metas": [m1]}}
    db = topic.track(b, "k", {"s": 3}, refs)
    assert db is not None
    assert topic.state() == {"k": {"metas": [m2, db.joins["k"]["metas"][0]]}}
    assert len(topic) == 2
    assert topic.tracked(a)
    assert topic.untrack(a) == PresenceDiff(joins={}, leaves={"k": {"metas": [m2]}})
    assert topic.untrack(a) is None
    assert not topic.tracked(a)
    assert len(topic) == 1
    assert d2.to_payload() == {"joins": d2.joins, "leaves": d2.leaves}


def test_payload_mutation_does_not_leak_into_state() -> None:
    topic, refs = PresenceTopic(), _refs()
    meta = {"x": 1}
    topic.track("o", "k", meta, refs)
    meta["x"] = 2
    assert topic.state()["k"]["metas"][0]["x"] == 1
    assert topic.track("o", "k", {"x": 1}, refs) is None


def test_server_phx_ref_wins_over_client_key() -> None:
    diff = PresenceTopic().track("o", "k", {"phx_ref": "mine"}, _refs())
    assert diff is not None
    assert diff.joins["k"]["metas"][0]["phx_ref"] != "mine"


def test_call_window() -> None:
    window = CallWindow(limit=3, window=30.0)
    assert [window.hit(t) for t in (0.0, 1.0, 2.0, 3.0)] == [True, True, True, False]
    assert window.hit(29.9) is False
    assert window.hit(30.0) is True  # the call at 0.0 has left the window
    assert window.hit(30.5) is False
    assert window.hit(31.0) is True


# -- config ---------------------------------------------------------------------------------------------


def test_config_defaults_match_the_official_server() -> None:
    config = trio_realtime.server.ServerConfig()
    assert (config.max_frame_size, config.idle_timeout, config.max_channels_per_client,
            config.max_payload_bytes) == (5_000_000, 60.0, 100, 3_000_500)
    assert (config.presence_rate_limit, config.presence_rate_window) == (5, 30.0)
    assert (config.join_error_backoff, config.connect_error_backoff) == (0.0, 0.0)
    assert config.default_vsn == "1.0.0"
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        config.idle_timeout = 1.0  # type: ignore[misc]


@pytest.mark.parametrize(
    "kwargs",
    [{"send_queue_size": 0}, {"idle_timeout": 0}, {"join_error_backoff": -1}, {"max_frame_size": 1.5},
     {"default_vsn": "3.0.0"}, {"close_timeout": float("inf")}, {"max_channels_per_client": True}],
)
def test_config_validation(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError, match=r"^ServerConfig\."):
        trio_realtime.server.ServerConfig(**kwargs)  # type: ignore[arg-type]
