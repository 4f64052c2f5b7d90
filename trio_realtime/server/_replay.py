"""Broadcast storage and replay (PROTOCOL.md §4.7), sans-IO parts.

Theory of operation
-------------------
Every broadcast accepted on a **private** channel becomes a :class:`StoredMessage`: a random
UUID ``id``, the ``inserted_at`` time in Unix milliseconds (never decreasing within a server),
and the broadcast as the client sent it. It is stored *before* it is fanned out and before
an acked push is answered, so an ``ok`` ack means "replayable". Live delivery carries
``meta: {"id": ..., "inserted_at": ...}`` (JSON payloads: ``payload.meta``; vsn 2.0.0
binary user broadcasts: the kind-4 metadata), as the official server's stored messages carry
``meta.id``.

A join with ``config.broadcast.replay = {"since": ms, "limit": n}`` (private channels only,
validated as officially: see :meth:`~._join.JoinParams.replay_error`) gets, after its join
reply, the newest ``n`` stored messages of its topic with ``inserted_at >= since`` (and before
now + 1 minute), oldest first, each marked ``meta: {"id": ..., "replayed": true}`` (plus
``inserted_at``). ``n`` is
clamped to ``1..ServerConfig.replay_max_limit`` (officially 25) and defaults to 25 (or the
maximum, if lower). The channel remembers the replayed ids and never gets those messages
again through live fan-out.

**Our extension: a replay that says whether it is complete.** The official server replays
silently, so a client cannot tell "these are all the messages since ``since``" from "these are
the newest ``limit`` of more", nor know exactly where to resume. The reference server
adds two things, which official clients ignore:

* every stored message's ``meta`` also carries ``"inserted_at"`` (Unix ms, as stored), so a
  client can ask to resume at exactly the last message it delivered (``since`` = that
  message's ``inserted_at``) instead of guessing from its own clock;
* the join reply's response of a join that asked for a replay gets::

    {"postgres_changes": [...], "replay": {"count": 3, "complete": true}}

``count`` is the number of messages selected for replay (binary ones included even on vsn
1.0.0, which cannot carry them). ``complete`` is true only if ``count < limit`` **and** no
message stored at or after ``since`` has been evicted from storage since (each topic keeps
the ``inserted_at`` of the newest message it ever evicted: its eviction high-water mark). So
``complete: true`` proves the client received every message this server accepted for the
topic from ``since`` on. The key is only added to joins that asked for a replay; official
clients ignore unknown keys of the join response (realtime-js passes the response to
``subscribe``'s callback untouched; the PyPI client reads only ``postgres_changes``).

Storage is :class:`MemoryMessageStore` here (bounded per topic, the oldest evicted first), or
PostgreSQL when the server has a database (``_replay_postgres``), which survives restarts.
"""

from __future__ import annotations

import json
from collections import deque
from typing import TYPE_CHECKING, Any, Final

import attrs

if TYPE_CHECKING:
    from collections.abc import Mapping

__all__ = [
    "DEFAULT_REPLAY_LIMIT",
    "MemoryMessageStore",
    "ReplayRequest",
    "ReplayResult",
    "StoredMessage",
    "replay_request",
]

#: ``limit`` when the join gives none (the official default).
DEFAULT_REPLAY_LIMIT: Final = 25
_SINCE_BOUND: Final = 2**62
#: Messages stored in the future (clock steps) are replayed only up to now + this.
FUTURE_MS: Final = 60_000

_storage_json = json.JSONEncoder(ensure_ascii=True, separators=(",", ":"), allow_nan=False).encode

#: (private, sub_topic): the namespace and topic a message was sent on.
TopicKey = tuple[bool, str]


@attrs.frozen(kw_only=True)
class ReplayRequest:
    """A validated ``config.broadcast.replay``: Unix ms ``since`` and the clamped ``limit``."""

    since: int
    limit: int


def replay_request(raw: Mapping[str, Any], max_limit: int) -> ReplayRequest:
    """The request of a replay config that passed ``JoinParams.replay_error()``."""
    limit = raw.get("limit")
    if limit is None:
        limit = DEFAULT_REPLAY_LIMIT
    # Any integer is valid; beyond +-2**62 ms (146 million years) all mean the same thing,
    # and a database column is 64 bits wide.
    since = max(-_SINCE_BOUND, min(int(raw["since"]), _SINCE_BOUND))
    return ReplayRequest(since=since, limit=max(1, min(int(limit), max_limit)))


@attrs.frozen(kw_only=True)
class StoredMessage:
    """One stored broadcast.

    Attributes:
        id: a UUID string, the ``meta.id`` clients deduplicate by.
        key: ``(private, sub_topic)``.
        inserted_at: Unix milliseconds.
        payload: the broadcast map as the client sent it (``{"type", "event", "payload"}``
            usually), without ``meta``; ``payload["payload"]`` is ``bytes`` for a binary one.
        user_broadcast: it came as a binary user-broadcast frame (vsn 2.0.0 kind 3), so vsn
            2.0.0 subscribers get it as kind 4.
    """

    id: str
    key: TopicKey
    inserted_at: int
    payload: Mapping[str, Any] = attrs.field(repr=False)
    user_broadcast: bool = False

    @property
    def binary(self) -> bool:
        """The user payload is raw bytes (never delivered to vsn 1.0.0)."""
        return isinstance(self.payload.get("payload"), bytes | bytearray)

    @property
    def event(self) -> str | None:
        event = self.payload.get("event")
        return event if isinstance(event, str) else None

    def with_meta(self, *, replayed: bool) -> dict[str, Any]:
        """The payload to deliver: the client's map plus ``meta`` (replacing any it had)."""
        meta: dict[str, Any] = {"id": self.id, "inserted_at": self.inserted_at}
        if replayed:
            meta["replayed"] = True
        out = {k: v for k, v in self.payload.items() if k != "meta"}
        out["meta"] = meta
        return out

    def storage_json(self) -> tuple[str, bytes | None]:
        """(the map as strict ASCII JSON without a binary payload, the binary payload or None).

        Raises:
            ValueError: the payload cannot be written as JSON (NaN/Infinity, too deep).
        """
        payload = {k: v for k, v in self.payload.items() if k != "meta"}
        data = payload.get("payload")
        binary: bytes | None = None
        if isinstance(data, bytes | bytearray):
            binary = bytes(data)
            del payload["payload"]
        try:
            return _storage_json(payload), binary
        except (TypeError, ValueError, RecursionError) as exc:
            raise ValueError(f"the broadcast payload cannot be stored as JSON: {exc}") from exc


@attrs.frozen(kw_only=True)
class ReplayResult:
    """What a join's replay found (oldest first) and whether that is provably all of it."""

    messages: tuple[StoredMessage, ...]
    complete: bool

    @property
    def extension(self) -> dict[str, Any]:
        """The join reply's ``replay`` value (see the module docstring)."""
        return {"count": len(self.messages), "complete": self.complete}


def select_replay(newest_first: list[StoredMessage], limit: int, evicted_until: int | None,
                  since: int) -> ReplayResult:
    """Build the result from up to ``limit`` eligible messages, newest first."""
    chosen = newest_first[:limit]
    chosen.reverse()
    complete = len(chosen) < limit and (evicted_until is None or evicted_until < since)
    return ReplayResult(messages=tuple(chosen), complete=complete)


@attrs.define(eq=False)
class MemoryMessageStore:
    """Stored messages in memory: at most ``per_topic`` per topic, the oldest evicted first.

    Args:
        per_topic: messages kept per ``(private, sub_topic)``.
    """

    per_topic: int
    _topics: dict[TopicKey, deque[StoredMessage]] = attrs.field(factory=dict, init=False)
    _evicted_until: dict[TopicKey, int] = attrs.field(factory=dict, init=False)
    stored: int = attrs.field(default=0, init=False)
    evicted: int = attrs.field(default=0, init=False)

    def add(self, message: StoredMessage) -> None:
        """Store ``message`` (its ``inserted_at`` must not be older than the topic's last)."""
        queue = self._topics.setdefault(message.key, deque())
        queue.append(message)
        self.stored += 1
        while len(queue) > self.per_topic:
            old = queue.popleft()
            self.evicted += 1
            previous = self._evicted_until.get(message.key)
            if previous is None or old.inserted_at > previous:
                self._evicted_until[message.key] = old.inserted_at

    def replay(self, key: TopicKey, request: ReplayRequest, now_ms: int) -> ReplayResult:
        """The newest ``request.limit`` messages with ``inserted_at >= since``, oldest first."""
        newest_first: list[StoredMessage] = []
        until = now_ms + FUTURE_MS
        for message in reversed(self._topics.get(key, ())):
            if message.inserted_at < request.since:
                break
            if message.inserted_at < until:
                newest_first.append(message)
                if len(newest_first) >= request.limit:
                    break
        return select_replay(newest_first, request.limit, self._evicted_until.get(key), request.since)

    def evicted_until(self, key: TopicKey) -> int | None:
        """The eviction high-water mark of ``key`` (None: nothing evicted yet)."""
        return self._evicted_until.get(key)
