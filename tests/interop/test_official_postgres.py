"""The official clients receive postgres_changes from our server, streaming a real PostgreSQL.

Each test starts our reference server with ``database_url`` pointing at an embedded cluster
(one per module; a missing PostgreSQL or wal2json fails the tests with a message naming
``bash scripts/bootstrap``, never skips them), starts an official client (``js-v2``,
``js-v1``: ``@supabase/realtime-js`` on vsn 2.0.0 / 1.0.0; ``py``: the PyPI ``realtime``
package) whose channel has postgres_changes bindings (``--pg-bindings`` of the peers), and
writes rows with psycopg.

What each client hands its callback differs (PROTOCOL.md §6.5): realtime-js converts the
message to ``{schema, table, commit_timestamp, eventType, new, old, errors}``; the PyPI client
passes the raw ``{"ids": [...], "data": {"type", "record", "old_record", ...}}``. Both route a
message to a binding by the integer id the join reply gave it, and both drop the binding list
(CHANNEL_ERROR) unless the reply echoes every binding's event/schema/table/filter.

Ordering without sleeps: the server delivers row changes to a socket in commit order and the
clients run callbacks in arrival order, so the last binding of every channel watches a
*sentinel* table that the test writes to last. When the sentinel's INSERT is reported, every
change committed before it has been reported too, so "exactly these changes" can be checked.
"""

from __future__ import annotations

import functools
import itertools
import re
from typing import TYPE_CHECKING, Any

import psycopg
import pytest
import trio
from _peers import Event, Peer, PeerKind, matches, open_peer

from trio_realtime._embedded_postgres import EmbeddedPostgres, _Cluster
from trio_realtime.server import RealtimeServer, serve_realtime

if TYPE_CHECKING:
    from collections.abc import Iterator, Mapping, Sequence

pytestmark = pytest.mark.interop

GUARD = 30
KINDS: list[PeerKind] = ["js-v2", "js-v1", "py"]
TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z")

_names = itertools.count(1)

#: (type, new row, old row) of one change; None where the message has no such row.
Change = tuple[str, "dict[str, Any] | None", "dict[str, Any] | None"]


@pytest.fixture(scope="module")
def postgres() -> Iterator[EmbeddedPostgres]:
    """One embedded PostgreSQL for this module (about half a second to start)."""
    cluster = _Cluster()
    try:
        yield cluster.start()
    finally:
        cluster.stop()


class Database:
    """An autocommit psycopg connection, used from Trio through a worker thread."""

    def __init__(self, dsn: str) -> None:
        self.conn = psycopg.connect(dsn, autocommit=True)

    async def execute(self, sql: str, params: Sequence[Any] | None = None) -> None:
        await trio.to_thread.run_sync(functools.partial(self.conn.execute, sql, params))  # type: ignore[arg-type]


@pytest.fixture
def db(postgres: EmbeddedPostgres) -> Iterator[Database]:
    database = Database(postgres.dsn)
    try:
        yield database
    finally:
        database.conn.close()


@pytest.fixture
async def pg_server(nursery: trio.Nursery, postgres: EmbeddedPostgres) -> RealtimeServer:
    server: RealtimeServer = await nursery.start(
        functools.partial(serve_realtime, "127.0.0.1", 0, database_url=postgres.dsn)
    )
    return server


@pytest.fixture
async def tables(db: Database) -> tuple[str, str]:
    """Fresh ``public`` tables for this test: (todos, sentinel). ``todos`` has the default
    replica identity; tests that want ``FULL`` alter it."""
    n = next(_names)
    todos, sentinel = f"todos_{n}", f"sentinel_{n}"
    await db.execute(f"create table public.{todos} (id int primary key, title text, done bool, meta jsonb)")
    await db.execute(f"create table public.{sentinel} (id int primary key)")
    return todos, sentinel


def sentinel_binding(sentinel: str) -> dict[str, Any]:
    return {"event": "INSERT", "schema": "public", "table": sentinel}


async def subscribed_to_postgres(peer: Peer) -> None:
    """SUBSCRIBED (the join reply matched every binding), then "Subscribed to PostgreSQL"."""
    status = await peer.expect(matches("status"), f"{peer.kind} to report its join status")
    assert status["status"] == "SUBSCRIBED", status
    system = await peer.expect(matches("system"), f"{peer.kind} to see the postgres_changes system message")
    payload = system["payload"]
    assert payload["extension"] == "postgres_changes", system
    assert payload["status"] == "ok", system
    assert payload["message"] == "Subscribed to PostgreSQL", system


async def changes_until_sentinel(peer: Peer, sentinel_index: int) -> dict[int, list[Event]]:
    """Wait for the sentinel binding's INSERT; return every earlier change callback by binding."""
    await peer.expect(matches("postgres_changes", binding=sentinel_index), f"{peer.kind} to see the sentinel")
    out: dict[int, list[Event]] = {}
    for event in peer.events:
        if event.get("type") == "postgres_changes":
            if event["binding"] == sentinel_index:
                break
            out.setdefault(event["binding"], []).append(event["payload"])
    return out


def view(kind: PeerKind, payload: Mapping[str, Any], table: str) -> Change:
    """(type, new, old) of one callback argument, checking the fields around them."""
    if kind == "py":
        assert set(payload) == {"ids", "data"}, payload
        assert payload["ids"], payload
        assert all(isinstance(i, int) and i != 0 for i in payload["ids"]), payload
        data = payload["data"]
        assert (data["schema"], data["table"], data["errors"]) == ("public", table, None), data
        assert TIMESTAMP.fullmatch(data["commit_timestamp"]), data
        assert [c["name"] for c in data["columns"]] == ["id", "title", "done", "meta"], data
        return data["type"], data.get("record"), data.get("old_record")
    fields = {"schema", "table", "commit_timestamp", "eventType", "new", "old", "errors"}
    assert set(payload) == fields, payload
    assert (payload["schema"], payload["table"], payload["errors"]) == ("public", table, None), payload
    assert TIMESTAMP.fullmatch(payload["commit_timestamp"]), payload
    # realtime-js always has both `new` and `old`, empty when the message has no such row.
    return payload["eventType"], payload["new"] or None, payload["old"] or None


def row(id_: int, title: str, done: bool, meta: Any = None) -> dict[str, Any]:
    return {"id": id_, "title": title, "done": done, "meta": meta}


@pytest.mark.parametrize("kind", KINDS)
async def test_official_client_receives_filtered_insert_update_delete(
    pg_server: RealtimeServer, db: Database, tables: tuple[str, str], kind: PeerKind
) -> None:
    """``event: "*"`` with ``filter: "id=eq.1"`` on a ``REPLICA IDENTITY FULL`` table: exactly
    the INSERT, UPDATE and DELETE of row 1 arrive, with complete ``new``/``old`` rows."""
    todos, sentinel = tables
    bindings = [
        {"event": "*", "schema": "public", "table": todos, "filter": "id=eq.1"},
        sentinel_binding(sentinel),
    ]
    with trio.fail_after(GUARD):
        await db.execute(f"alter table public.{todos} replica identity full")
        async with open_peer(kind, pg_server.url, topic="pg-room", key="", pg_bindings=bindings) as peer:
            await subscribed_to_postgres(peer)
            t = f"public.{todos}"
            await db.execute(f"insert into {t} values (2, 'other', false, null)")
            await db.execute(f"insert into {t} values (1, 'milk', false, %s)", ('{"tags": ["a", 1]}',))
            await db.execute(f"update {t} set done = true where id = 2")
            await db.execute(f"update {t} set title = 'oat milk', done = true where id = 1")
            await db.execute(f"delete from {t} where id = 2")
            await db.execute(f"delete from {t} where id = 1")
            await db.execute(f"insert into public.{sentinel} values (1)")
            got = await changes_until_sentinel(peer, 1)
            statuses = [e["status"] for e in peer.events if e["type"] == "status"]
    meta = {"tags": ["a", 1]}
    assert [view(kind, p, todos) for p in got.pop(0)] == [
        ("INSERT", row(1, "milk", False, meta), None),
        ("UPDATE", row(1, "oat milk", True, meta), row(1, "milk", False, meta)),
        ("DELETE", None, row(1, "oat milk", True, meta)),
    ]
    assert got == {}
    assert statuses == ["SUBSCRIBED"]
    assert pg_server.statistics().malformed_frames == 0


@pytest.mark.parametrize("kind", ["js-v2", "py"])
async def test_official_client_default_replica_identity(
    pg_server: RealtimeServer, db: Database, tables: tuple[str, str], kind: PeerKind
) -> None:
    """With the default replica identity, UPDATE and DELETE carry only the primary key as the
    old row (and the ``id=eq.1`` filter still selects the DELETE by its old key)."""
    todos, sentinel = tables
    bindings = [
        {"event": "*", "schema": "public", "table": todos, "filter": "id=eq.1"},
        sentinel_binding(sentinel),
    ]
    with trio.fail_after(GUARD):
        async with open_peer(kind, pg_server.url, topic="pg-default", key="", pg_bindings=bindings) as peer:
            await subscribed_to_postgres(peer)
            t = f"public.{todos}"
            await db.execute(f"insert into {t} values (1, 'milk', false, null), (2, 'bread', false, null)")
            await db.execute(f"update {t} set done = true")
            await db.execute(f"delete from {t}")
            await db.execute(f"insert into public.{sentinel} values (1)")
            got = await changes_until_sentinel(peer, 1)
    assert [view(kind, p, todos) for p in got.pop(0)] == [
        ("INSERT", row(1, "milk", False), None),
        ("UPDATE", row(1, "milk", True), {"id": 1}),
        ("DELETE", None, {"id": 1}),
    ]
    assert got == {}


@pytest.mark.parametrize("kind", KINDS)
async def test_official_client_routes_by_binding_id(
    pg_server: RealtimeServer, db: Database, tables: tuple[str, str], kind: PeerKind
) -> None:
    """One binding per event type on one channel, filtered with ``in``: each callback gets only
    its own event type, for the rows the filter selects, in commit order (a multi-row
    statement's rows included)."""
    todos, sentinel = tables
    where = {"schema": "public", "table": todos, "filter": "id=in.(1,3)"}
    bindings = [
        {"event": "INSERT", **where},
        {"event": "UPDATE", **where},
        {"event": "DELETE", **where},
        sentinel_binding(sentinel),
    ]
    with trio.fail_after(GUARD):
        await db.execute(f"alter table public.{todos} replica identity full")
        async with open_peer(kind, pg_server.url, topic="pg-events", key="", pg_bindings=bindings) as peer:
            await subscribed_to_postgres(peer)
            t = f"public.{todos}"
            await db.execute(f"insert into {t} values (1, 'a', false, null), (2, 'b', false, null)")
            await db.execute(f"insert into {t} values (3, 'c', false, null)")
            await db.execute(f"update {t} set done = true")
            await db.execute(f"delete from {t} where id < 3")
            await db.execute(f"insert into public.{sentinel} values (1)")
            got = await changes_until_sentinel(peer, 3)
    assert {i: [view(kind, p, todos) for p in payloads] for i, payloads in got.items()} == {
        0: [("INSERT", row(1, "a", False), None), ("INSERT", row(3, "c", False), None)],
        1: [
            ("UPDATE", row(1, "a", True), row(1, "a", False)),
            ("UPDATE", row(3, "c", True), row(3, "c", False)),
        ],
        2: [("DELETE", None, row(1, "a", True))],
    }
    if kind == "py":
        # One message per change, naming only the binding it matched: three distinct ids.
        ids = {i: {tuple(p["ids"]) for p in payloads} for i, payloads in got.items()}
        assert all(len(v) == 1 for v in ids.values()), ids
        assert len({v for s in ids.values() for v in s}) == 3, ids
