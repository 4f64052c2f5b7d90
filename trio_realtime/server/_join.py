"""Parsing a ``phx_join`` payload on the server side (PROTOCOL.md §3.2, §3.4), sans-IO.

Theory of operation
-------------------
The official server is forgiving: an invalid part of the join payload never fails the join. It
logs ``InvalidJoinPayload`` and carries on with the parts it could parse, using the defaults
for the rest. :func:`parse_join` does the same: it always returns :class:`JoinParams`, and
everything it had to ignore is listed in :attr:`JoinParams.problems` for the caller to log.

Booleans are "flexible": JSON ``true``/``false`` or the strings ``"true"``/``"false"`` in any
case. ``postgres_changes`` bindings are echoed back in the join reply with an integer ``id``
(:func:`binding_id`): a stable hash of the binding's canonical JSON, never 0 (both official
clients ignore a binding whose id is 0), and with ``event`` upper-cased (the PyPI client
compares it in upper case).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any, Final

import attrs

__all__ = ["JoinParams", "binding_id", "echo_binding", "parse_join", "presence_key_string"]

_canonical = json.JSONEncoder(
    sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=True, default=repr
).encode
#: What the join reply will need: a binding that fails this cannot be echoed back.
_strict = json.JSONEncoder(ensure_ascii=False, allow_nan=False).encode

#: Ids are kept below 2**31 so every client language holds them in a plain int.
_ID_MASK: Final = 0x7FFF_FFFF


@attrs.frozen(kw_only=True)
class JoinParams:
    """What a ``phx_join`` asked for, after forgiving parsing.

    Attributes:
        broadcast_self: deliver the channel's own broadcasts back to it.
        broadcast_ack: reply to each broadcast push.
        presence_enabled: push ``presence_state`` after the join.
        presence_key: the presence key, or None to let the server pick a UUID for this join.
        private: the private namespace (never mixes with the public one).
        postgres_changes: the bindings as echoed in the join reply (with ``id``).
        access_token: the token given in the payload (None: use the socket's token).
        replay: ``config.broadcast.replay`` if present.
        replication_ready: ``config.broadcast.replication_ready``.
        legacy: the payload had no ``config`` (the legacy postgres API).
        problems: the parts that were ignored, for the log. Never contains a token.
    """

    broadcast_self: bool = False
    broadcast_ack: bool = False
    presence_enabled: bool = False
    presence_key: str | None = None
    private: bool = False
    postgres_changes: tuple[dict[str, Any], ...] = ()
    access_token: str | None = attrs.field(default=None, repr=False)
    replay: Any = None
    replication_ready: bool = False
    legacy: bool = False
    problems: tuple[str, ...] = ()

    def replay_error(self) -> str | None:
        """The join error ``reason`` for a bad replay request, if any (§4.7)."""
        if self.replay is None:
            return None
        if not self.private:
            return "UnableToReplayMessages: Replay is not allowed for public channels"
        replay = self.replay
        if not isinstance(replay, Mapping) or not _is_int(replay.get("since")):
            return "UnableToReplayMessages: Replay params are not valid"
        if "limit" in replay and replay["limit"] is not None and not _is_int(replay["limit"]):
            return "UnableToReplayMessages: Replay params are not valid"
        return None


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def binding_id(binding: Mapping[str, Any]) -> int:
    """A deterministic, non-zero, positive id for a postgres_changes binding.

    Identical binding maps (whatever their key order) get identical ids, in every process:
    this is a BLAKE2b hash of canonical JSON, not Python's salted ``hash()``.
    """
    text = _canonical(dict(binding)).encode("utf-8", "surrogatepass")
    digest = hashlib.blake2b(text, digest_size=8).digest()
    return (int.from_bytes(digest, "big") & _ID_MASK) or 1


def echo_binding(binding: Mapping[str, Any]) -> dict[str, Any]:
    """The binding as echoed in the join reply: verbatim, ``event`` upper-cased, plus ``id``."""
    echoed = {k: v for k, v in binding.items() if k != "id"}
    event = echoed.get("event")
    if isinstance(event, str):
        echoed["event"] = event.upper()
    echoed["id"] = binding_id(echoed)
    return echoed


def presence_key_string(value: object) -> str | None:
    """``config.presence.key`` as the string used in presence state; None if empty/absent."""
    if value is None or value == "":
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return _canonical(value)


def _flex_bool(value: object, where: str, default: bool, problems: list[str]) -> bool:
    if value is None:
        return default
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    problems.append(f"{where}: unable to parse, expected boolean")
    return default


def _section(config: Mapping[str, Any], name: str, problems: list[str]) -> Mapping[str, Any]:
    value = config.get(name)
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        problems.append(f"config.{name}: expected a map, got {type(value).__name__}")
        return {}
    return value


def _token(payload: Mapping[str, Any]) -> str | None:
    for name in ("access_token", "user_token"):
        value = payload.get(name)
        if isinstance(value, str):
            # Publishable/secret API keys ("sb_...") are not JWTs: use the socket's token.
            return None if value.startswith("sb_") else value
    return None


def parse_join(payload: object) -> JoinParams:
    """Parse a ``phx_join`` payload; never fails (see the module docstring)."""
    problems: list[str] = []
    if not isinstance(payload, Mapping):
        problems.append(f"payload: expected a map, got {type(payload).__name__}")
        return JoinParams(legacy=True, problems=tuple(problems))
    if "config" not in payload:
        return JoinParams(legacy=True, access_token=_token(payload))
    config = payload["config"]
    if not isinstance(config, Mapping):
        problems.append(f"config: expected a map, got {type(config).__name__}")
        config = {}
    broadcast = _section(config, "broadcast", problems)
    presence = _section(config, "presence", problems)
    bindings: list[dict[str, Any]] = []
    raw_changes = config.get("postgres_changes")
    if raw_changes is not None and not isinstance(raw_changes, list):
        problems.append("config.postgres_changes: expected a list")
        raw_changes = None
    for i, binding in enumerate(raw_changes or ()):
        if binding is None:
            continue
        if not isinstance(binding, Mapping):
            problems.append(f"config.postgres_changes[{i}]: expected a map, got {type(binding).__name__}")
            continue
        try:
            _strict(binding)
        except (ValueError, RecursionError):
            problems.append(f"config.postgres_changes[{i}]: not JSON-encodable (NaN, Infinity or too deep)")
            continue
        bindings.append(echo_binding(binding))
    return JoinParams(
        broadcast_self=_flex_bool(broadcast.get("self"), "config.broadcast.self", False, problems),
        broadcast_ack=_flex_bool(broadcast.get("ack"), "config.broadcast.ack", False, problems),
        presence_enabled=_flex_bool(presence.get("enabled"), "config.presence.enabled", False, problems),
        presence_key=presence_key_string(presence.get("key")),
        private=_flex_bool(config.get("private"), "config.private", False, problems),
        postgres_changes=tuple(bindings),
        access_token=_token(payload),
        replay=broadcast.get("replay"),
        replication_ready=_flex_bool(
            broadcast.get("replication_ready"), "config.broadcast.replication_ready", False, problems
        ),
        problems=tuple(problems),
    )
