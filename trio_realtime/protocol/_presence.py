"""Phoenix presence synchronisation (PROTOCOL.md §5.7), as pure functions.

The server sends the full ``presence_state`` once per join and ``presence_diff`` after that.
Clients keep ``{key: [presence, ...]}`` where each raw meta has ``phx_ref`` renamed to
``presence_ref`` and ``phx_ref_prev`` removed, exactly as realtime-js does, so states computed
here compare equal to the official clients'.

Diffs that arrive before the state of the current join are buffered and applied after it
(``PresenceTracker``), because a diff is relative to a state the client does not have yet.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, TypeAlias

import attrs

from .._errors import RemoteProtocolError
from ._events import PresenceJoin, PresenceLeave, PresenceSync

__all__ = ["PresenceTracker", "State", "sync_diff", "sync_state", "transform"]

#: ``{key: [presence, ...]}`` with ``presence_ref`` in each presence.
State: TypeAlias = dict[str, list[dict[str, Any]]]
OnJoin: TypeAlias = Callable[[str, list[dict[str, Any]], list[dict[str, Any]]], None]
OnLeave: TypeAlias = Callable[[str, list[dict[str, Any]], list[dict[str, Any]]], None]


def _noop(key: str, current: list[dict[str, Any]], changed: list[dict[str, Any]]) -> None:
    return None


def transform(raw: Mapping[str, Any]) -> State:
    """Raw ``{key: {"metas": [...]}}`` (or already-transformed ``{key: [...]}``) -> State."""
    out: State = {}
    for key, value in raw.items():
        metas = value.get("metas", []) if isinstance(value, Mapping) else value
        presences = []
        for meta in metas if isinstance(metas, list) else []:
            if not isinstance(meta, Mapping):
                continue
            p = dict(meta)
            if "phx_ref" in p:
                p["presence_ref"] = p.pop("phx_ref")
            p.pop("phx_ref_prev", None)
            if isinstance(p.get("presence_ref"), list | dict):
                # Refs are compared as set members; Phoenix always sends strings.
                raise RemoteProtocolError(
                    f"presence {key!r} has a phx_ref of type {type(p['presence_ref']).__name__}; "
                    "expected a string"
                )
            presences.append(p)
        out[str(key)] = presences
    return out


def _copy_presences(presences: list[dict[str, Any]]) -> list[dict[str, Any]]:
    # Copies each presence dict, not the values inside: those are only ever read, and a
    # recursive copy (copy.deepcopy) raised RecursionError on a deeply nested meta that any
    # peer can track, which crashed every other client's receive().
    return [dict(p) for p in presences]


def _copy_state(state: State) -> State:
    return {key: _copy_presences(presences) for key, presences in state.items()}


def _refs(presences: list[dict[str, Any]]) -> set[Any]:
    return {p.get("presence_ref") for p in presences}


def sync_state(
    current: State,
    new: State,
    on_join: OnJoin = _noop,
    on_leave: OnLeave = _noop,
) -> State:
    """Replace ``current`` by ``new``, calling on_join/on_leave for what changed."""
    state = _copy_state(current)
    joins: State = {}
    leaves: State = {}
    for key, presences in state.items():
        if key not in new:
            leaves[key] = presences
    for key, new_presences in new.items():
        if key in state:
            new_refs = _refs(new_presences)
            cur_refs = _refs(state[key])
            joined = [p for p in new_presences if p.get("presence_ref") not in cur_refs]
            left = [p for p in state[key] if p.get("presence_ref") not in new_refs]
            if joined:
                joins[key] = joined
            if left:
                leaves[key] = left
        else:
            joins[key] = new_presences
    return sync_diff(state, joins, leaves, on_join, on_leave)


def sync_diff(
    state: State,
    joins: State,
    leaves: State,
    on_join: OnJoin = _noop,
    on_leave: OnLeave = _noop,
) -> State:
    """Apply a diff to ``state`` in place (and return it)."""
    for key, new_presences in joins.items():
        current = state.get(key, [])
        state[key] = _copy_presences(new_presences)
        if current:
            joined_refs = _refs(state[key])
            state[key] = [p for p in current if p.get("presence_ref") not in joined_refs] + state[key]
        on_join(key, current, new_presences)
    for key, left_presences in leaves.items():
        current_or_none = state.get(key)
        if current_or_none is None:
            continue
        left_refs = _refs(left_presences)
        remaining = [p for p in current_or_none if p.get("presence_ref") not in left_refs]
        state[key] = remaining
        on_leave(key, remaining, left_presences)
        if not remaining:
            del state[key]
    return state


def _frozen(state: State) -> dict[str, tuple[dict[str, Any], ...]]:
    return {key: tuple(presences) for key, presences in state.items()}


@attrs.define(eq=False)
class PresenceTracker:
    """Presence state of one channel, fed with raw ``presence_state``/``presence_diff``.

    Each ``on_*`` method returns the events to deliver: a :class:`PresenceJoin` /
    :class:`PresenceLeave` per key that changed, then one :class:`PresenceSync`.
    """

    topic: str
    state: State = attrs.field(factory=dict)
    join_ref: str | None = None
    pending_diffs: list[tuple[State, State]] = attrs.field(factory=list)

    def on_state(
        self, raw: Mapping[str, Any], join_ref: str | None
    ) -> list[PresenceJoin | PresenceLeave | PresenceSync]:
        events: list[PresenceJoin | PresenceLeave | PresenceSync] = []
        on_join, on_leave = self._recorders(events)
        new = transform(raw)  # may raise RemoteProtocolError: before any change
        self.join_ref = join_ref
        self.state = sync_state(self.state, new, on_join, on_leave)
        for joins, leaves in self.pending_diffs:
            self.state = sync_diff(self.state, joins, leaves, on_join, on_leave)
        self.pending_diffs.clear()
        events.append(PresenceSync(topic=self.topic, state=_frozen(self.state)))
        return events

    def on_diff(
        self, raw: Mapping[str, Any], join_ref: str | None
    ) -> list[PresenceJoin | PresenceLeave | PresenceSync]:
        raw_joins = raw.get("joins") or {}
        raw_leaves = raw.get("leaves") or {}
        if not isinstance(raw_joins, Mapping) or not isinstance(raw_leaves, Mapping):
            raise RemoteProtocolError(
                f"presence_diff on {self.topic!r} needs objects under 'joins' and 'leaves'"
            )
        joins = transform(raw_joins)
        leaves = transform(raw_leaves)
        if self.join_ref is None or self.join_ref != join_ref:
            self.pending_diffs.append((joins, leaves))
            return []
        events: list[PresenceJoin | PresenceLeave | PresenceSync] = []
        on_join, on_leave = self._recorders(events)
        self.state = sync_diff(self.state, joins, leaves, on_join, on_leave)
        events.append(PresenceSync(topic=self.topic, state=_frozen(self.state)))
        return events

    def snapshot(self) -> dict[str, tuple[dict[str, Any], ...]]:
        """The current state, as immutable-by-convention tuples."""
        return _frozen(_copy_state(self.state))

    def _recorders(
        self, events: list[PresenceJoin | PresenceLeave | PresenceSync]
    ) -> tuple[OnJoin, OnLeave]:
        topic = self.topic

        def on_join(key: str, current: list[dict[str, Any]], new: list[dict[str, Any]]) -> None:
            events.append(PresenceJoin(topic=topic, key=key, current=tuple(current), new=tuple(new)))

        def on_leave(key: str, current: list[dict[str, Any]], left: list[dict[str, Any]]) -> None:
            events.append(
                PresenceLeave(topic=topic, key=key, current=tuple(current), left=tuple(left))
            )

        return on_join, on_leave
