"""Channel configuration and the ``phx_join`` payload (PROTOCOL.md §3.2)."""

from __future__ import annotations

from typing import Any, Literal

import attrs

from .._errors import LocalProtocolError
from ._filters import FilterError, parse_filter

__all__ = [
    "BroadcastConfig",
    "ChannelConfig",
    "PostgresChanges",
    "PresenceConfig",
    "ReplayConfig",
    "topic_for",
]

#: The change events a binding can ask for.
ChangeEvent = Literal["*", "INSERT", "UPDATE", "DELETE"]
_CHANGE_EVENTS = ("*", "INSERT", "UPDATE", "DELETE")


def topic_for(name: str) -> str:
    """``"room1"`` -> ``"realtime:room1"`` (names already prefixed are kept)."""
    return name if name.startswith("realtime:") else f"realtime:{name}"


@attrs.frozen(kw_only=True)
class ReplayConfig:
    """Ask the server to replay broadcasts (private channels only, PROTOCOL.md §4.7).

    Attributes:
        since: on the first join, replay messages stored since this Unix time in milliseconds
            (None: from the moment of joining). Every rejoin asks for the messages since the
            last one this client delivered, whatever this says.
        limit: the most messages one join may replay (the official server clamps to 1..25).
    """

    since: int | None = None
    limit: int = 25

    def __attrs_post_init__(self) -> None:
        if self.limit < 1:
            raise LocalProtocolError(f"ReplayConfig.limit must be >= 1, got {self.limit}")


@attrs.frozen(kw_only=True)
class BroadcastConfig:
    """Broadcast options of a channel.

    Attributes:
        ack: the server acknowledges each broadcast push; ``send_broadcast`` then waits for it.
        receive_own: deliver my own broadcasts back to me (the wire's ``self`` flag).
        replay: replay stored broadcasts on join and rejoin (private channels), so a
            reconnect loses nothing the server kept; see :class:`ReplayConfig`.
    """

    ack: bool = False
    receive_own: bool = False
    replay: ReplayConfig | None = None

    def to_json(self, replay_since: int | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {"ack": self.ack, "self": self.receive_own}
        if self.replay is not None and replay_since is not None:
            out["replay"] = {"since": replay_since, "limit": self.replay.limit}
        return out


@attrs.frozen(kw_only=True)
class PresenceConfig:
    """Presence options of a channel.

    Attributes:
        key: this client's presence key ("" lets the server pick a UUID per join).
        enabled: ask the server for ``presence_state`` after each join.
    """

    key: str = ""
    enabled: bool = True

    def to_json(self) -> dict[str, Any]:
        return {"key": self.key, "enabled": self.enabled}


def _filter_text(value: object) -> str | None:
    if value is None:
        return None
    text = str(value).strip()  # a Filter renders as its wire string
    if not text:
        return None
    try:
        parse_filter(text)
    except FilterError as exc:
        raise LocalProtocolError(f"invalid postgres_changes filter {text!r}: {exc}") from None
    return text


def _event(value: str) -> str:
    upper = value.upper()
    if upper not in _CHANGE_EVENTS:
        raise LocalProtocolError(
            f"postgres_changes event must be one of {', '.join(_CHANGE_EVENTS)}, got {value!r}"
        )
    return upper


@attrs.frozen(kw_only=True)
class PostgresChanges:
    """One postgres_changes binding: which row changes this channel receives.

    Attributes:
        event: ``"INSERT"``, ``"UPDATE"``, ``"DELETE"`` or ``"*"`` (all three).
        schema: the schema (``"*"`` for all).
        table: the table (None or ``"*"`` for every table of the schema).
        filter: a :class:`Filter` or its wire string (``"id=eq.1"``); validated here, so an
            impossible filter fails before anything is sent.
    """

    event: str = attrs.field(default="*", converter=_event)
    schema: str = "public"
    table: str | None = None
    filter: str | None = attrs.field(default=None, converter=_filter_text)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"event": self.event, "schema": self.schema}
        if self.table is not None:
            out["table"] = self.table
        if self.filter is not None:
            out["filter"] = self.filter
        return out

    def matches_server(self, server: Any) -> bool:
        """Whether the server's echo of a binding (join reply) is this binding (§6.5)."""
        if not isinstance(server, dict):
            return False
        mine = self.to_json()
        for key in ("event", "schema", "table", "filter"):
            theirs = server.get(key)
            if key == "event" and isinstance(theirs, str):
                theirs = theirs.upper()
            if mine.get(key) != theirs:
                return False
        return True


@attrs.frozen(kw_only=True)
class ChannelConfig:
    """Everything the server needs to join a channel; immutable, so every rejoin is identical."""

    broadcast: BroadcastConfig = BroadcastConfig()
    presence: PresenceConfig = PresenceConfig(enabled=False)
    private: bool = False
    postgres_changes: tuple[PostgresChanges, ...] = ()

    def join_payload(self, access_token: str | None, *, replay_since: int | None = None) -> dict[str, Any]:
        """The ``phx_join`` payload, with the token fetched for this (re)join.

        ``replay_since`` (Unix ms) asks for a replay when ``broadcast.replay`` is set.
        """
        payload: dict[str, Any] = {
            "config": {
                "broadcast": self.broadcast.to_json(replay_since),
                "presence": self.presence.to_json(),
                "postgres_changes": [b.to_json() for b in self.postgres_changes],
                "private": self.private,
            }
        }
        if access_token is not None:
            payload["access_token"] = access_token
        return payload
