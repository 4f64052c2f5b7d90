"""Channel configuration and the ``phx_join`` payload (PROTOCOL.md §3.2)."""

from __future__ import annotations

from typing import Any

import attrs

__all__ = ["BroadcastConfig", "ChannelConfig", "PresenceConfig", "topic_for"]


def topic_for(name: str) -> str:
    """``"room1"`` -> ``"realtime:room1"`` (names already prefixed are kept)."""
    return name if name.startswith("realtime:") else f"realtime:{name}"


@attrs.frozen(kw_only=True)
class BroadcastConfig:
    """Broadcast options of a channel.

    Attributes:
        ack: the server acknowledges each broadcast push; ``send_broadcast`` then waits for it.
        receive_own: deliver my own broadcasts back to me (the wire's ``self`` flag).
    """

    ack: bool = False
    receive_own: bool = False

    def to_json(self) -> dict[str, Any]:
        return {"ack": self.ack, "self": self.receive_own}


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


@attrs.frozen(kw_only=True)
class ChannelConfig:
    """Everything the server needs to join a channel; immutable, so every rejoin is identical."""

    broadcast: BroadcastConfig = BroadcastConfig()
    presence: PresenceConfig = PresenceConfig(enabled=False)
    private: bool = False
    postgres_changes: tuple[dict[str, Any], ...] = ()

    def join_payload(self, access_token: str | None) -> dict[str, Any]:
        """The ``phx_join`` payload, with the token fetched for this (re)join."""
        payload: dict[str, Any] = {
            "config": {
                "broadcast": self.broadcast.to_json(),
                "presence": self.presence.to_json(),
                "postgres_changes": [dict(b) for b in self.postgres_changes],
                "private": self.private,
            }
        }
        if access_token is not None:
            payload["access_token"] = access_token
        return payload
