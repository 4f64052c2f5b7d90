"""Server-side presence (PROTOCOL.md §5), sans-IO: Phoenix.Presence semantics per topic.

Theory of operation
-------------------
One :class:`PresenceTopic` holds the presences of one sub-topic in one namespace (public or
private). Each *owner* (a joined channel) tracks at most one presence, under the presence key
fixed at its join. Several owners may share a key; ``presence_state`` groups them as
``{key: {"metas": [meta, ...]}}``, where each meta is the tracked map plus a server-made,
unique, opaque ``phx_ref``.

Every change returns the :class:`PresenceDiff` to fan out as ``presence_diff``:

* first track: the new meta in ``joins``;
* re-track with a different map: the new meta (carrying ``phx_ref_prev``, the ref it replaces)
  in ``joins`` and the old meta in ``leaves``, as ``Phoenix.Tracker.update`` does;
* re-track with an identical map: nothing (no diff);
* untrack, or the owner leaving/closing: the old meta in ``leaves``.

``phx_ref`` values come from :class:`RefFactory`: a counter (unique) plus bits from an injected
RNG (not guessable across restarts), base64url-encoded. :class:`CallWindow` is the per-channel
client rate limit (5 presence pushes per 30 s in the official server). Nothing here reads a
clock: callers pass ``now``.
"""

from __future__ import annotations

import base64
from collections import deque
from typing import TYPE_CHECKING, Any

import attrs

if TYPE_CHECKING:
    import random
    from collections.abc import Mapping

__all__ = ["CallWindow", "PresenceDiff", "PresenceTopic", "RefFactory"]


@attrs.define(eq=False)
class RefFactory:
    """Makes unique, opaque ``phx_ref`` strings.

    Args:
        rng: the random source (injected: ``random.Random(seed)`` makes refs reproducible).
    """

    _rng: random.Random = attrs.field(alias="rng")
    _counter: int = attrs.field(default=0, init=False)

    def __call__(self) -> str:
        self._counter += 1
        raw = self._rng.getrandbits(48).to_bytes(6, "big") + self._counter.to_bytes(6, "big")
        return "F" + base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


@attrs.frozen(kw_only=True)
class PresenceDiff:
    """A ``presence_diff`` payload: ``{"joins": {...}, "leaves": {...}}`` (grouped by key)."""

    joins: dict[str, dict[str, list[dict[str, Any]]]]
    leaves: dict[str, dict[str, list[dict[str, Any]]]]

    def to_payload(self) -> dict[str, Any]:
        """The JSON payload of the ``presence_diff`` message."""
        return {"joins": self.joins, "leaves": self.leaves}


@attrs.define(eq=False)
class _Entry:
    key: str
    payload: dict[str, Any]  # the map as the client tracked it (to detect identical re-tracks)
    meta: dict[str, Any]  # what others see: payload + phx_ref (+ phx_ref_prev)


def _grouped(key: str, meta: dict[str, Any]) -> dict[str, dict[str, list[dict[str, Any]]]]:
    return {key: {"metas": [meta]}}


@attrs.define(eq=False)
class PresenceTopic:
    """The presences of one topic, one per owner (see the module docstring)."""

    _entries: dict[object, _Entry] = attrs.field(factory=dict, init=False)

    def __len__(self) -> int:
        return len(self._entries)

    def tracked(self, owner: object) -> bool:
        """Whether ``owner`` currently tracks a presence."""
        return owner in self._entries

    def track(
        self, owner: object, key: str, payload: Mapping[str, Any], new_ref: RefFactory
    ) -> PresenceDiff | None:
        """Track (or update) ``owner``'s presence under ``key``.

        Returns:
            The diff to fan out, or None when the payload is identical to the tracked one.
        """
        payload = dict(payload)
        old = self._entries.get(owner)
        if old is not None and old.key == key and old.payload == payload:
            return None
        meta = dict(payload)
        meta["phx_ref"] = new_ref()
        if old is None:
            self._entries[owner] = _Entry(key=key, payload=payload, meta=meta)
            return PresenceDiff(joins=_grouped(key, meta), leaves={})
        if old.key == key:
            meta["phx_ref_prev"] = old.meta["phx_ref"]
            leaves = _grouped(key, old.meta)
        else:  # pragma: no cover - the key is fixed per join; kept total for safety
            leaves = _grouped(old.key, old.meta)
        self._entries[owner] = _Entry(key=key, payload=payload, meta=meta)
        return PresenceDiff(joins=_grouped(key, meta), leaves=leaves)

    def untrack(self, owner: object) -> PresenceDiff | None:
        """Remove ``owner``'s presence. Returns the leave diff, or None if it tracked nothing."""
        old = self._entries.pop(owner, None)
        if old is None:
            return None
        return PresenceDiff(joins={}, leaves=_grouped(old.key, old.meta))

    def state(self) -> dict[str, dict[str, list[dict[str, Any]]]]:
        """The ``presence_state`` payload: ``{key: {"metas": [...]}}`` in tracking order."""
        out: dict[str, dict[str, list[dict[str, Any]]]] = {}
        for entry in self._entries.values():
            out.setdefault(entry.key, {"metas": []})["metas"].append(entry.meta)
        return out


@attrs.define(eq=False)
class CallWindow:
    """At most ``limit`` calls in any ``window`` seconds (a sliding log).

    Args:
        limit: calls allowed per window.
        window: the window length in seconds.
    """

    limit: int
    window: float
    _calls: deque[float] = attrs.field(factory=deque, init=False)

    def hit(self, now: float) -> bool:
        """Record a call at ``now``; False if it exceeds the limit (the call is not recorded)."""
        calls = self._calls
        while calls and calls[0] <= now - self.window:
            calls.popleft()
        if len(calls) >= self.limit:
            return False
        calls.append(now)
        return True
