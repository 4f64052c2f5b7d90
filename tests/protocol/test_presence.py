"""Presence synchronisation: the test vectors of PROTOCOL.md §5.7 (from realtime-js's
``RealtimeChannel.presence.test.ts``), the transform, and a model-based property."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from hypothesis import given, settings, strategies as st

from trio_realtime.protocol import (
    PresenceJoin,
    PresenceLeave,
    PresenceSync,
    PresenceTracker,
    sync_diff,
    sync_state,
    transform,
)

State = dict[str, list[dict[str, Any]]]


def p(ref: str, id: int | None = None, **meta: Any) -> dict[str, Any]:
    out: dict[str, Any] = {} if id is None else {"id": id}
    out.update(meta)
    out["presence_ref"] = ref
    return out


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str, list[dict[str, Any]], list[dict[str, Any]]]] = []

    def on_join(self, key: str, current: list[dict[str, Any]], new: list[dict[str, Any]]) -> None:
        self.calls.append(("join", key, copy.deepcopy(current), copy.deepcopy(new)))

    def on_leave(self, key: str, current: list[dict[str, Any]], left: list[dict[str, Any]]) -> None:
        self.calls.append(("leave", key, copy.deepcopy(current), copy.deepcopy(left)))


# -- transform ---------------------------------------------------------------------------


def test_transform_js_vector() -> None:
    raw = {"u1": {"metas": [{"id": 1, "phx_ref": "1", "phx_ref_prev": "prev1", "name": "User 1"}]}}
    assert transform(raw) == {"u1": [{"id": 1, "presence_ref": "1", "name": "User 1"}]}


def test_transform_does_not_mutate_input() -> None:
    raw = {"u1": {"metas": [{"phx_ref": "1", "phx_ref_prev": "0"}]}}
    before = copy.deepcopy(raw)
    transform(raw)
    assert raw == before


def test_transform_accepts_transformed_state() -> None:
    state = {"u1": [{"id": 1, "presence_ref": "1"}]}
    assert transform(state) == state


def test_transform_stringifies_keys_and_skips_junk() -> None:
    raw: dict[Any, Any] = {1: {"metas": [{"phx_ref": "a"}, "junk", 3]}, "u2": {"metas": "nope"}, "u3": {}}
    assert transform(raw) == {"1": [{"presence_ref": "a"}], "u2": [], "u3": []}


def test_transform_two_metas_under_one_key() -> None:
    raw = {"shared": {"metas": [{"phx_ref": "A", "tab": 1}, {"phx_ref": "B", "tab": 2}]}}
    assert transform(raw) == {"shared": [p("A", tab=1), p("B", tab=2)]}


# -- syncState vectors -------------------------------------------------------------------


def test_sync_state_from_empty() -> None:
    rec = Recorder()
    new = {"u1": [p("1", id=1)]}
    assert sync_state({}, new, rec.on_join, rec.on_leave) == {"u1": [p("1", id=1)]}
    assert rec.calls == [("join", "u1", [], [p("1", id=1)])]


def test_sync_state_replaces_keys() -> None:
    rec = Recorder()
    current = {"u4": [p("4", id=4)]}
    new = {"u1": [p("1", id=1)], "u2": [p("2", id=2)], "u3": [p("3", id=3)]}
    assert sync_state(current, new, rec.on_join, rec.on_leave) == new
    assert rec.calls == [
        ("join", "u1", [], [p("1", id=1)]),
        ("join", "u2", [], [p("2", id=2)]),
        ("join", "u3", [], [p("3", id=3)]),
        ("leave", "u4", [], [p("4", id=4)]),
    ]


def test_sync_state_new_meta_under_existing_key() -> None:
    rec = Recorder()
    current = {"u3": [p("3", id=3)]}
    new = {"u3": [p("3", id=3), p("3.new", id=3)]}
    assert sync_state(current, new, rec.on_join, rec.on_leave) == {"u3": [p("3", id=3), p("3.new", id=3)]}
    assert rec.calls == [("join", "u3", [p("3", id=3)], [p("3.new", id=3)])]


def test_sync_state_identical_is_silent() -> None:
    rec = Recorder()
    state = {"u1": [p("1")], "u2": [p("2")]}
    assert sync_state(state, copy.deepcopy(state), rec.on_join, rec.on_leave) == state
    assert rec.calls == []


def test_sync_state_meta_left_under_kept_key() -> None:
    rec = Recorder()
    assert sync_state({"u1": [p("1"), p("1.b")]}, {"u1": [p("1.b")]}, rec.on_join, rec.on_leave) == {
        "u1": [p("1.b")]
    }
    assert rec.calls == [("leave", "u1", [p("1.b")], [p("1")])]


def test_sync_state_does_not_mutate_current() -> None:
    current = {"u1": [p("1")], "u4": [p("4")]}
    before = copy.deepcopy(current)
    sync_state(current, {"u1": [p("1"), p("2")]})
    assert current == before


# -- syncDiff vectors --------------------------------------------------------------------


def test_sync_diff_join_and_leave() -> None:
    rec = Recorder()
    state = {"u1": [p("1", id=1)], "u2": [p("2", id=2)], "u3": [p("3", id=3)]}
    joins = {"u1": [p("1.2", id=1)]}
    leaves = {"u2": [p("2", id=2)]}
    assert sync_diff(state, joins, leaves, rec.on_join, rec.on_leave) == {
        "u1": [p("1", id=1), p("1.2", id=1)],
        "u3": [p("3", id=3)],
    }
    assert rec.calls == [
        ("join", "u1", [p("1", id=1)], [p("1.2", id=1)]),
        ("leave", "u2", [], [p("2", id=2)]),
    ]


def test_sync_diff_leave_one_of_two_metas() -> None:
    rec = Recorder()
    state = {"u1": [p("1", id=1), p("1.2", id=1)]}
    assert sync_diff(state, {}, {"u1": [p("1", id=1)]}, rec.on_join, rec.on_leave) == {"u1": [p("1.2", id=1)]}
    assert rec.calls == [("leave", "u1", [p("1.2", id=1)], [p("1", id=1)])]


def test_sync_diff_update_semantics() -> None:
    """An update is a join of the new meta (with phx_ref_prev) plus a leave of the old one."""
    rec = Recorder()
    state = transform({"k": {"metas": [{"phx_ref": "R1", "status": "online"}]}})
    raw_joins = {"k": {"metas": [{"phx_ref": "R2", "phx_ref_prev": "R1", "status": "away"}]}}
    raw_leaves = {"k": {"metas": [{"phx_ref": "R1", "status": "online"}]}}
    result = sync_diff(state, transform(raw_joins), transform(raw_leaves), rec.on_join, rec.on_leave)
    assert result == {"k": [p("R2", status="away")]}
    assert rec.calls == [
        ("join", "k", [p("R1", status="online")], [p("R2", status="away")]),
        ("leave", "k", [p("R2", status="away")], [p("R1", status="online")]),
    ]


def test_sync_diff_key_with_two_metas() -> None:
    rec = Recorder()
    state: State = {}
    sync_diff(state, {"u1": [p("A", tab=1)]}, {}, rec.on_join, rec.on_leave)
    sync_diff(state, {"u1": [p("B", tab=2)]}, {}, rec.on_join, rec.on_leave)
    assert state == {"u1": [p("A", tab=1), p("B", tab=2)]}
    sync_diff(state, {}, {"u1": [p("A", tab=1)]}, rec.on_join, rec.on_leave)
    assert state == {"u1": [p("B", tab=2)]}
    sync_diff(state, {}, {"u1": [p("B", tab=2)]}, rec.on_join, rec.on_leave)
    assert state == {}
    assert rec.calls == [
        ("join", "u1", [], [p("A", tab=1)]),
        ("join", "u1", [p("A", tab=1)], [p("B", tab=2)]),
        ("leave", "u1", [p("B", tab=2)], [p("A", tab=1)]),
        ("leave", "u1", [], [p("B", tab=2)]),
    ]


def test_sync_diff_rejoin_of_same_ref_is_not_duplicated() -> None:
    state = {"u1": [p("A"), p("B")]}
    assert sync_diff(state, {"u1": [p("A", x=1)]}, {}) == {"u1": [p("B"), p("A", x=1)]}


def test_sync_diff_leave_of_unknown_key_continues() -> None:
    """Regression guard for realtime-py's bug: an unknown key in leaves must not stop the loop
    (``continue``, not ``break``), so the later ``u1`` leave is still applied."""
    rec = Recorder()
    state = {"u1": [p("1")], "u2": [p("2")]}
    leaves = {"ghost": [p("9")], "u1": [p("1")]}
    assert list(leaves) == ["ghost", "u1"]  # the unknown key really comes first
    assert sync_diff(state, {}, leaves, rec.on_join, rec.on_leave) == {"u2": [p("2")]}
    assert rec.calls == [("leave", "u1", [], [p("1")])]


def test_sync_diff_leave_of_unknown_ref_keeps_key() -> None:
    rec = Recorder()
    state = {"u1": [p("1")]}
    assert sync_diff(state, {}, {"u1": [p("nope")]}, rec.on_join, rec.on_leave) == {"u1": [p("1")]}
    assert rec.calls == [("leave", "u1", [p("1")], [p("nope")])]


def test_sync_diff_mutates_in_place_but_copies_joined_presences() -> None:
    state: State = {}
    joins = {"u1": [p("1", x=1)]}
    result = sync_diff(state, joins, {})
    assert result is state
    joins["u1"][0]["x"] = 2
    joins["u1"].append(p("2"))
    assert state == {"u1": [p("1", x=1)]}


def _deep(depth: int) -> Any:
    value: Any = []
    for _ in range(depth):
        value = [value]
    return value


def test_deeply_nested_meta_does_not_recurse() -> None:
    """Regression: sync_state/sync_diff/snapshot used copy.deepcopy, which raised RecursionError
    on a presence meta nested deeper than ~330 levels (json.loads accepts ~1000). Any client can
    track such a meta, so it crashed every other client's receive()."""
    deep = _deep(5_000)
    t = PresenceTracker("t")
    t.on_state({"u1": {"metas": [{"phx_ref": "A", "x": deep}]}}, "1")
    t.on_diff({"joins": {"u2": {"metas": [{"phx_ref": "B", "x": deep}]}}}, "1")
    t.on_diff(
        {
            "joins": {"u1": {"metas": [{"phx_ref": "C", "x": deep}]}},
            "leaves": {"u1": {"metas": [{"phx_ref": "A"}]}},
        },
        "1",
    )
    assert sorted(t.snapshot()) == ["u1", "u2"]
    assert [m["presence_ref"] for m in t.snapshot()["u1"]] == ["C"]
    assert sync_state(t.state, {}) == {}


# -- PresenceTracker ---------------------------------------------------------------------


def test_tracker_events_and_buffering() -> None:
    t = PresenceTracker("realtime:room")
    diff = {"joins": {"u2": {"metas": [{"phx_ref": "B"}]}}, "leaves": {}}
    assert t.on_diff(diff, "1") == []  # no state yet
    assert t.pending_diffs == [({"u2": [p("B")]}, {})]
    events = t.on_state({"u1": {"metas": [{"phx_ref": "A"}]}}, "1")
    assert events == [
        PresenceJoin(topic="realtime:room", key="u1", current=(), new=(p("A"),)),
        PresenceJoin(topic="realtime:room", key="u2", current=(), new=(p("B"),)),
        PresenceSync(topic="realtime:room", state={"u1": (p("A"),), "u2": (p("B"),)}),
    ]
    assert t.pending_diffs == []
    events = t.on_diff({"leaves": {"u1": {"metas": [{"phx_ref": "A"}]}}}, "1")
    assert events == [
        PresenceLeave(topic="realtime:room", key="u1", current=(), left=(p("A"),)),
        PresenceSync(topic="realtime:room", state={"u2": (p("B"),)}),
    ]
    # a new join_ref: diffs wait for that join's state
    assert t.on_diff({"joins": {"u3": {"metas": [{"phx_ref": "C"}]}}}, "2") == []
    assert t.snapshot() == {"u2": (p("B"),)}


def test_tracker_snapshot_is_a_copy() -> None:
    t = PresenceTracker("t")
    t.on_state({"u1": {"metas": [{"phx_ref": "A", "x": 1}]}}, "1")
    snap = t.snapshot()
    snap["u1"][0]["x"] = 2  # type: ignore[index]
    assert t.state == {"u1": [p("A", x=1)]}


# -- model-based property ----------------------------------------------------------------


class ServerModel:
    """What Phoenix.Presence would hold: key -> metas (in join order), plus the diffs it sent."""

    def __init__(self) -> None:
        self.metas: dict[str, list[dict[str, Any]]] = {}
        self.n = 0

    def _new_meta(self, prev: str | None = None) -> dict[str, Any]:
        self.n += 1
        meta: dict[str, Any] = {"phx_ref": f"R{self.n}", "n": self.n}
        if prev is not None:
            meta["phx_ref_prev"] = prev
        return meta

    def join(self, key: str) -> dict[str, Any]:
        meta = self._new_meta()
        self.metas.setdefault(key, []).append(meta)
        return {"joins": {key: {"metas": [meta]}}, "leaves": {}}

    def leave(self, key: str, index: int) -> dict[str, Any]:
        metas = self.metas[key]
        meta = metas.pop(index % len(metas))
        if not metas:
            del self.metas[key]
        return {"joins": {}, "leaves": {key: {"metas": [meta]}}}

    def update(self, key: str, index: int) -> dict[str, Any]:
        metas = self.metas[key]
        old = metas.pop(index % len(metas))
        new = self._new_meta(prev=old["phx_ref"])
        metas.append(new)
        return {"joins": {key: {"metas": [new]}}, "leaves": {key: {"metas": [old]}}}

    def state(self) -> dict[str, Any]:
        return {key: {"metas": copy.deepcopy(metas)} for key, metas in self.metas.items()}


def _sorted(state: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    return {k: sorted(v, key=lambda m: m["presence_ref"]) for k, v in state.items()}


ops = st.lists(
    st.tuples(
        st.sampled_from(["join", "leave", "update"]),
        st.sampled_from(["a", "b", "c"]),
        st.integers(min_value=0, max_value=3),
    ),
    max_size=25,
)


@settings(deadline=None, max_examples=200)
@given(ops=ops, data=st.data())
def test_diffs_through_tracker_equal_recomputed_state(
    ops: list[tuple[str, str, int]], data: st.DataObject
) -> None:
    server = ServerModel()
    diffs: list[dict[str, Any]] = []
    states: list[dict[str, Any]] = [server.state()]  # states[i] = after i diffs
    for op, key, index in ops:
        if op == "join" or key not in server.metas:
            diffs.append(server.join(key))
        elif op == "leave":
            diffs.append(server.leave(key, index))
        else:
            diffs.append(server.update(key, index))
        states.append(server.state())
    final = transform(server.state())

    # 1. State first, then every diff in order: exactly the server's state, order included.
    t = PresenceTracker("t")
    t.on_state(states[0], "1")
    last: list[Any] = []
    for diff in diffs:
        last = t.on_diff(diff, "1")
    assert t.state == final
    if last:
        assert last[-1] == PresenceSync(topic="t", state={k: tuple(v) for k, v in final.items()})

    # 2. The first k diffs arrive before the state that already includes them: buffered,
    #    re-applied after it, and the result is still the server's state (as sets of metas).
    k = data.draw(st.integers(min_value=0, max_value=len(diffs)), label="k")
    t2 = PresenceTracker("t")
    for diff in diffs[:k]:
        assert t2.on_diff(diff, "1") == []
    t2.on_state(states[k], "1")
    for diff in diffs[k:]:
        t2.on_diff(diff, "1")
    assert _sorted(t2.state) == _sorted(final)
    assert all(t2.state.values()), "no key may be left with an empty list"

    # 3. A resync (fresh presence_state of the final state) changes nothing.
    rec = Recorder()
    assert sync_state(t.state, final, rec.on_join, rec.on_leave) == final
    assert rec.calls == []


def test_tracker_rejects_bad_refs_without_changing_anything() -> None:
    from trio_realtime.protocol import RemoteProtocolError

    t = PresenceTracker("t")
    t.on_state({"u1": {"metas": [{"phx_ref": "A"}]}}, "1")
    t.on_diff({"joins": {"u2": {"metas": [{"phx_ref": "B"}]}}}, "9")  # buffered for a later join
    before = (copy.deepcopy(t.state), t.join_ref, copy.deepcopy(t.pending_diffs))
    with pytest.raises(
        RemoteProtocolError, match=r"^presence 'u1' has a phx_ref of type list; expected a string$"
    ):
        t.on_state({"u1": {"metas": [{"phx_ref": ["A"]}]}}, "2")
    with pytest.raises(
        RemoteProtocolError, match=r"^presence_diff on 't' needs objects under 'joins' and 'leaves'$"
    ):
        t.on_diff({"joins": {}, "leaves": ["u1"]}, "1")
    assert (t.state, t.join_ref, t.pending_diffs) == before
