"""postgres_changes end to end: a real PostgreSQL, the reference server, raw WebSocket frames.

Each test gets its own schema; ordering is established with a sentinel row written last (see
``_pg_helpers``), never with sleeps.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Any

import trio
from _pg_helpers import (
    COMMIT_TIMESTAMP,
    Database,
    create_sentinel,
    join_sentinel,
    records,
    until_sentinel,
    write_sentinel,
)

if TYPE_CHECKING:
    from conftest import Connect, StartServer

    from trio_realtime._embedded_postgres import EmbeddedPostgres
    from trio_realtime.server import RealtimeServer


async def test_pg_insert_update_delete(server: RealtimeServer, connect: Connect, db: Database, schema: str,
                                       vsn: str) -> None:
    with trio.fail_after(10):
        await db.execute(f"create table {schema}.todos (id int primary key, title text, done bool)")
        async with connect(server, vsn) as client:
            [bid] = await client.subscribed("room", [{"event": "*", "schema": schema, "table": "todos"}])
            await db.execute(f"insert into {schema}.todos values (1, 'milk', false)")
            await db.execute(f"update {schema}.todos set done = true where id = 1")
            await db.execute(f"delete from {schema}.todos where id = 1")
            insert, update, delete = [await client.change("room") for _ in range(3)]
    columns = [{"name": "id", "type": "int4"}, {"name": "title", "type": "text"},
               {"name": "done", "type": "bool"}]
    assert insert == {"ids": [bid], "data": {
        "schema": schema, "table": "todos", "commit_timestamp": COMMIT_TIMESTAMP, "type": "INSERT",
        "columns": columns, "record": {"id": 1, "title": "milk", "done": False}, "errors": None,
    }}
    assert update == {"ids": [bid], "data": {
        "schema": schema, "table": "todos", "commit_timestamp": COMMIT_TIMESTAMP, "type": "UPDATE",
        "columns": columns, "record": {"id": 1, "title": "milk", "done": True}, "old_record": {"id": 1},
        "errors": None,
    }}
    assert delete == {"ids": [bid], "data": {
        "schema": schema, "table": "todos", "commit_timestamp": COMMIT_TIMESTAMP, "type": "DELETE",
        "columns": columns, "old_record": {"id": 1}, "errors": None,
    }}


async def test_pg_event_filter(server: RealtimeServer, connect: Connect, db: Database, schema: str) -> None:
    with trio.fail_after(10):
        await create_sentinel(db, schema)
        await db.execute(f"create table {schema}.t (id int primary key, v text)")
        table = {"schema": schema, "table": "t"}
        async with connect(server) as client:
            await join_sentinel(client, schema)
            [ins] = await client.subscribed("ins", [{"event": "INSERT", **table}])
            [upd] = await client.subscribed("upd", [{"event": "update", **table}])  # case-insensitive
            [dele] = await client.subscribed("del", [{"event": "DELETE", **table}])
            [unknown] = await client.subscribed("unknown", [{"event": "TRUNCATE", **table}])  # means *
            await db.execute(f"insert into {schema}.t values (1, 'a')")
            await db.execute(f"update {schema}.t set v = 'b'")
            await db.execute(f"delete from {schema}.t")
            await db.execute(f"truncate {schema}.t")  # never a change
            await write_sentinel(db, schema)
            got = await until_sentinel(client)
    assert {topic: [(p["ids"], p["data"]["type"]) for p in payloads] for topic, payloads in got.items()} == {
        "ins": [([ins], "INSERT")],
        "upd": [([upd], "UPDATE")],
        "del": [([dele], "DELETE")],
        "unknown": [([unknown], "INSERT"), ([unknown], "UPDATE"), ([unknown], "DELETE")],
    }


async def test_pg_schema_and_table_wildcards(server: RealtimeServer, connect: Connect, db: Database,
                                             schema: str) -> None:
    other = f"{schema}x"
    name = f"{schema}_a"
    with trio.fail_after(10):
        await create_sentinel(db, schema)
        await db.execute(f"create schema {other}")
        for table in (f"{schema}.{name}", f"{schema}.b", f"{other}.{name}", f"public.{name}"):
            await db.execute(f"create table {table} (id int primary key)")
        async with connect(server) as client:
            await join_sentinel(client, schema)
            await client.subscribed("schema", [{"event": "*", "schema": schema}])  # table defaults to *
            await client.subscribed("table", [{"event": "*", "schema": "*", "table": name}])
            await client.subscribed("public", [{"event": "*", "table": name}])  # schema defaults to public
            await client.subscribed("explicit", [{"event": "*", "schema": schema, "table": "*"}])
            await db.execute(f"insert into {schema}.{name} values (1)")
            await db.execute(f"insert into {schema}.b values (2)")
            await db.execute(f"insert into {other}.{name} values (3)")
            await db.execute(f"insert into public.{name} values (4)")
            await write_sentinel(db, schema)
            got = await until_sentinel(client)
    where = {topic: [(p["data"]["schema"], p["data"]["table"], p["data"]["record"]["id"]) for p in payloads]
             for topic, payloads in got.items()}
    assert where == {
        "schema": [(schema, name, 1), (schema, "b", 2)],
        "table": [(schema, name, 1), (other, name, 3), ("public", name, 4)],
        "public": [("public", name, 4)],
        "explicit": [(schema, name, 1), (schema, "b", 2)],
    }


async def test_pg_replica_identity_default_and_full(server: RealtimeServer, connect: Connect, db: Database,
                                                    schema: str) -> None:
    with trio.fail_after(10):
        await db.execute(f"create table {schema}.t (id int primary key, name text, n int)")
        await db.execute(f"insert into {schema}.t values (1, 'a', 1), (2, 'b', 2)")
        async with connect(server) as client:
            await client.subscribed("room", [{"event": "*", "schema": schema, "table": "t"}])
            await db.execute(f"update {schema}.t set n = 10 where id = 1")
            await db.execute(f"update {schema}.t set id = 3 where id = 2")  # the key itself changes
            await db.execute(f"delete from {schema}.t where id = 1")
            await db.execute(f"alter table {schema}.t replica identity full")
            await db.execute(f"update {schema}.t set n = 30 where id = 3")
            await db.execute(f"delete from {schema}.t where id = 3")
            got = [await client.change("room") for _ in range(5)]
    assert [(p["data"]["type"], p["data"].get("record"), p["data"]["old_record"]) for p in got] == [
        ("UPDATE", {"id": 1, "name": "a", "n": 10}, {"id": 1}),
        ("UPDATE", {"id": 3, "name": "b", "n": 2}, {"id": 2}),
        ("DELETE", None, {"id": 1}),
        ("UPDATE", {"id": 3, "name": "b", "n": 30}, {"id": 3, "name": "b", "n": 2}),
        ("DELETE", None, {"id": 3, "name": "b", "n": 30}),
    ]


async def test_pg_value_types(server: RealtimeServer, connect: Connect, db: Database, schema: str) -> None:
    with trio.fail_after(10):
        await db.execute(f"""
            create table {schema}.types (
                id int primary key, i8 int8, i2 int2, t text, vc varchar(10), b bool, n numeric,
                f float8, r float4, ts timestamptz, tsn timestamp, d date, j jsonb, js json,
                ia int[], ta text[], ia2 int[][], ba bytea, u uuid, nul text, nf float8
            )""")
        async with connect(server) as client:
            await client.subscribed("room", [{"event": "INSERT", "schema": schema, "table": "types"}])
            await db.execute(
                f"""insert into {schema}.types values (
                    1, 1234567890123, -7, 'héllo "q"', 'short', true, 12.50, 2.5, 0.25,
                    '2024-01-02 03:04:05.678+02', '2024-01-02 03:04:05', '2024-01-02',
                    '{{"a": [1, {{"b": null}}], "c": "d"}}', '[1, "x"]',
                    '{{1,NULL,3}}', '{{"a b","c,d",NULL,"e\\"f",""}}', '{{{{1,2}},{{3,4}}}}',
                    '\\x0102ff'::bytea, 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', NULL, 'NaN'
                )"""
            )
            payload = await client.change("room")
    data = payload["data"]
    assert data["columns"] == [
        {"name": "id", "type": "int4"}, {"name": "i8", "type": "int8"}, {"name": "i2", "type": "int2"},
        {"name": "t", "type": "text"}, {"name": "vc", "type": "varchar"}, {"name": "b", "type": "bool"},
        {"name": "n", "type": "numeric"}, {"name": "f", "type": "float8"}, {"name": "r", "type": "float4"},
        {"name": "ts", "type": "timestamptz"}, {"name": "tsn", "type": "timestamp"},
        {"name": "d", "type": "date"}, {"name": "j", "type": "jsonb"}, {"name": "js", "type": "json"},
        {"name": "ia", "type": "_int4"}, {"name": "ta", "type": "_text"}, {"name": "ia2", "type": "_int4"},
        {"name": "ba", "type": "bytea"}, {"name": "u", "type": "uuid"}, {"name": "nul", "type": "text"},
        {"name": "nf", "type": "float8"},
    ]
    assert data["record"] == {
        "id": 1, "i8": 1234567890123, "i2": -7, "t": 'héllo "q"', "vc": "short", "b": True, "n": 12.5,
        "f": 2.5, "r": 0.25,
        "ts": "2024-01-02T01:04:05.678+00:00",  # what to_jsonb(timestamptz) prints, in UTC
        "tsn": "2024-01-02T03:04:05",
        "d": "2024-01-02",
        "j": {"a": [1, {"b": None}], "c": "d"},
        "js": [1, "x"],
        "ia": [1, None, 3],
        "ta": ["a b", "c,d", None, 'e"f', ""],
        "ia2": [[1, 2], [3, 4]],
        "ba": "0102ff",  # hex, without \x
        "u": "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
        "nul": None,
        "nf": None,  # NaN is not JSON; wal2json (and so the official server) sends null
    }
    assert data["errors"] is None


def _md5s(n: int) -> str:
    """SQL for a long, poorly compressible text: md5(1) || md5(2) || ... || md5(n)."""
    return f"(select string_agg(md5(i::text), '' order by i) from generate_series(1, {n}) i)"


async def test_pg_large_rows(server: RealtimeServer, connect: Connect, db: Database, schema: str) -> None:
    """Up to 1 MiB a row is delivered whole; above, the official Error 413 shape keeps only the
    values of at most 64 bytes."""
    with trio.fail_after(20):
        await db.execute(f"create table {schema}.big (id int primary key, note text, body text)")
        async with connect(server) as client:
            await client.subscribed("room", [{"event": "*", "schema": schema, "table": "big"}])
            await db.execute(f"insert into {schema}.big values (1, 'fits', {_md5s(28125)})")  # 900000 chars
            await db.execute(f"insert into {schema}.big values (2, 'too big', {_md5s(34375)})")  # 1.1 MB
            await db.execute(f"update {schema}.big set note = 'still too big' where id = 2")
            fits, too_big, update = [(await client.change("room"))["data"] for _ in range(3)]
    body = "".join(hashlib.md5(str(i).encode()).hexdigest() for i in range(1, 28126))
    assert fits["record"] == {"id": 1, "note": "fits", "body": body}
    assert fits["errors"] is None
    assert too_big["record"] == {"id": 2, "note": "too big"}
    assert too_big["errors"] == ["Error 413: Payload Too Large"]
    assert too_big["columns"] == [{"name": "id", "type": "int4"}, {"name": "note", "type": "text"},
                                  {"name": "body", "type": "text"}]
    # body is TOASTed and unchanged: wal2json leaves it out, so the row is small again
    assert update["record"] == {"id": 2, "note": "still too big"}
    assert update["errors"] is None


async def test_pg_commit_order_and_big_transactions(start_server: StartServer, connect: Connect, db: Database,
                                                    schema: str, postgres: EmbeddedPostgres) -> None:
    """Changes arrive in commit order: a transaction's rows in statement order, a transaction
    that started first but committed last after the other one; polls smaller than a
    transaction still return whole transactions."""
    server = await start_server(postgres_batch_size=50)
    other = Database(postgres.dsn)
    try:
        with trio.fail_after(20):
            await db.execute(f"create table {schema}.t (id int primary key)")
            async with connect(server) as client:
                await client.subscribed("room", [{"event": "*", "schema": schema, "table": "t"}])
                await db.transaction([(f"insert into {schema}.t values (%s)", (i,)) for i in range(1, 301)])
                await db.execute("begin")
                await db.execute(f"insert into {schema}.t values (1000)")
                await other.execute(f"insert into {schema}.t values (2000)")  # commits first
                await db.execute("commit")
                await db.execute(f"update {schema}.t set id = id + 10000 where id <= 3")
                got = [await client.change("room") for _ in range(305)]
    finally:
        other.close()
    ids = [(p["data"]["type"], (p["data"].get("record") or {}).get("id")) for p in got]
    assert ids == [("INSERT", i) for i in range(1, 301)] + [("INSERT", 2000), ("INSERT", 1000)] + [
        ("UPDATE", 10001), ("UPDATE", 10002), ("UPDATE", 10003)
    ]


async def test_pg_two_tables_two_schemas_one_channel(server: RealtimeServer, connect: Connect, db: Database,
                                                     schema: str) -> None:
    other = f"{schema}x"
    with trio.fail_after(10):
        await create_sentinel(db, schema)
        await db.execute(f"create schema {other}")
        for table in (f"{schema}.a", f"{schema}.b", f"{other}.a"):
            await db.execute(f"create table {table} (id int primary key)")
        async with connect(server) as client:
            await join_sentinel(client, schema)
            id_a, id_b, id_other = await client.subscribed("room", [
                {"event": "*", "schema": schema, "table": "a"},
                {"event": "*", "schema": schema, "table": "b"},
                {"event": "*", "schema": other, "table": "a"},
            ])
            await db.execute(f"insert into {schema}.a values (1)")
            await db.execute(f"insert into {schema}.b values (2)")
            await db.execute(f"insert into {other}.a values (3)")
            await write_sentinel(db, schema)
            got = await until_sentinel(client)
    got_rows = [(p["ids"], p["data"]["schema"], p["data"]["table"], p["data"]["record"]) for p in got["room"]]
    assert got_rows == [
        ([id_a], schema, "a", {"id": 1}),
        ([id_b], schema, "b", {"id": 2}),
        ([id_other], other, "a", {"id": 3}),
    ]


async def test_pg_several_bindings_one_message(server: RealtimeServer, connect: Connect, db: Database,
                                               schema: str) -> None:
    """Every matching binding of a channel is listed in one message; identical bindings share
    an id; a binding with ``select`` gets its own, narrowed message."""
    table = {"schema": schema, "table": "t"}
    with trio.fail_after(10):
        await create_sentinel(db, schema)
        await db.execute(f"create table {schema}.t (id int primary key, title text, body text)")
        async with connect(server) as client:
            await join_sentinel(client, schema)
            b_all, b_ins, b_x, b_upd, b_all_again, b_select = await client.subscribed("room", [
                {"event": "*", **table},
                {"event": "INSERT", **table},
                {"event": "INSERT", **table, "filter": "title=eq.x"},
                {"event": "UPDATE", **table},
                {"event": "*", **table},
                {"event": "INSERT", **table, "select": ["title"]},
            ])
            assert b_all_again == b_all
            await db.execute(f"insert into {schema}.t values (1, 'x', 'body')")
            await db.execute(f"insert into {schema}.t values (2, 'y', 'body')")
            await db.execute(f"update {schema}.t set title = 'z' where id = 1")
            await write_sentinel(db, schema)
            got = await until_sentinel(client)
    assert [(p["ids"], p["data"]["type"], p["data"]["record"]) for p in got["room"]] == [
        ([b_all, b_ins, b_x], "INSERT", {"id": 1, "title": "x", "body": "body"}),
        ([b_select], "INSERT", {"id": 1, "title": "x"}),
        ([b_all, b_ins], "INSERT", {"id": 2, "title": "y", "body": "body"}),
        ([b_select], "INSERT", {"id": 2, "title": "y"}),
        ([b_all, b_upd], "UPDATE", {"id": 1, "title": "z", "body": "body"}),
    ]
    assert got["room"][1]["data"]["columns"] == [{"name": "id", "type": "int4"},
                                                 {"name": "title", "type": "text"}]


async def test_pg_many_subscribers_with_filters(server: RealtimeServer, connect: Connect, db: Database,
                                                schema: str) -> None:
    """Each subscriber gets exactly the rows its filter selects, in commit order, whatever
    its serializer; subscribers with the same binding share one encoded frame."""
    filters = [f"owner=eq.{i}" for i in range(6)] + [
        "owner=in.(1,3,5)", "owner=gt.3", "owner=not.eq.0,title=like.row 1%", "title=eq.\"row 7, late\"",
        None,
    ]
    subscribers = len(filters)
    rows = [(i, i % 6, f"row {i}") for i in range(1, 25)] + [(25, 2, "row 7, late")]
    with trio.fail_after(20):
        await create_sentinel(db, schema)
        await db.execute(f"create table {schema}.t (id int primary key, owner int, title text)")
        async with trio.open_nursery() as nursery:
            results: dict[int, list[int]] = {}
            ready = trio.Semaphore(0)
            written = trio.Event()

            async def subscriber(i: int, text: str | None) -> None:
                binding: dict[str, Any] = {"event": "INSERT", "schema": schema, "table": "t"}
                if text is not None:
                    binding["filter"] = text
                async with connect(server, "1.0.0" if i % 2 else "2.0.0") as client:
                    await join_sentinel(client, schema)
                    [bid] = await client.subscribed("rows", [binding])
                    ready.release()
                    await written.wait()
                    got = (await until_sentinel(client)).get("rows", [])
                    assert all(p["ids"] == [bid] for p in got)
                    results[i] = [r["id"] for r in records(got)]

            for i, text in enumerate(filters):
                nursery.start_soon(subscriber, i, text)
            for _ in range(subscribers):
                await ready.acquire()
            for row in rows:
                await db.execute(f"insert into {schema}.t values (%s, %s, %s)", row)
            await write_sentinel(db, schema)
            written.set()
    expected = {
        **{i: [r[0] for r in rows if r[1] == i] for i in range(6)},
        6: [r[0] for r in rows if r[1] in (1, 3, 5)],
        7: [r[0] for r in rows if r[1] > 3],
        8: [r[0] for r in rows if r[1] != 0 and r[2].startswith("row 1")],
        9: [25],
        10: [r[0] for r in rows],
    }
    assert results == expected


async def test_pg_delete_filtered_on_old_record(server: RealtimeServer, connect: Connect, db: Database,
                                                schema: str) -> None:
    with trio.fail_after(10):
        await create_sentinel(db, schema)
        await db.execute(f"create table {schema}.t (id int primary key, owner int)")
        await db.execute(f"alter table {schema}.t replica identity full")
        await db.execute(f"insert into {schema}.t values (1, 1), (2, 2), (3, 1)")
        async with connect(server) as client:
            await join_sentinel(client, schema)
            await client.subscribed("owner", [{"event": "DELETE", "schema": schema, "table": "t",
                                              "filter": "owner=eq.1"}])
            await client.subscribed("pk", [{"event": "DELETE", "schema": schema, "table": "t",
                                           "filter": "id=in.(2,3)"}])
            await db.execute(f"delete from {schema}.t")
            await write_sentinel(db, schema)
            got = await until_sentinel(client)
    assert {topic: records(payloads, "old_record") for topic, payloads in got.items()} == {
        "owner": [{"id": 1, "owner": 1}, {"id": 3, "owner": 1}],
        "pk": [{"id": 2, "owner": 2}, {"id": 3, "owner": 1}],
    }


async def test_pg_table_without_primary_key(server: RealtimeServer, connect: Connect, db: Database,
                                            schema: str) -> None:
    """The official ``Error 400`` shape, for every binding of the table (filters not applied)."""
    with trio.fail_after(10):
        await db.execute(f"create table {schema}.nopk (a int, b text)")
        async with connect(server) as client:
            [bid] = await client.subscribed("room", [{"event": "*", "schema": schema, "table": "nopk",
                                                     "filter": "a=eq.99"}])
            await db.execute(f"insert into {schema}.nopk values (1, 'x')")
            payload = await client.change("room")
    assert payload == {"ids": [bid], "data": {
        "schema": schema, "table": "nopk", "commit_timestamp": None, "type": "INSERT", "columns": [],
        "record": {}, "errors": ["Error 400: Bad Request, no primary key"],
    }}


async def test_pg_leave_unsubscribes(server: RealtimeServer, connect: Connect, db: Database,
                                     schema: str) -> None:
    with trio.fail_after(10):
        await create_sentinel(db, schema)
        await db.execute(f"create table {schema}.t (id int primary key)")
        async with connect(server) as client:
            await join_sentinel(client, schema)
            join_ref, _ = await client.join("gone", [{"event": "*", "schema": schema, "table": "t"}])
            await client.expect("system", "gone")
            await client.push("realtime:gone", "phx_leave", {}, join_ref=join_ref)
            await client.expect("phx_reply", "gone")
            await client.expect("phx_close", "gone")
            await client.subscribed("stays", [{"event": "*", "schema": schema, "table": "t"}])
            await db.execute(f"insert into {schema}.t values (1)")
            await write_sentinel(db, schema)
            got = await until_sentinel(client)
    assert list(got) == ["stays"]


async def test_pg_transaction_larger_than_the_send_queue(start_server: StartServer, connect: Connect,
                                                         db: Database, schema: str) -> None:
    """A transaction of many rows reaches a reading subscriber whole, even when it is far
    larger than the socket's send queue: delivery waits for the queue to drain."""
    server = await start_server(send_queue_size=16)
    with trio.fail_after(20):
        await db.execute(f"create table {schema}.t (id int primary key)")
        async with connect(server) as client:
            await client.subscribed("room", [{"event": "INSERT", "schema": schema, "table": "t"}])
            await db.execute(f"insert into {schema}.t select generate_series(1, 500)")
            got = [await client.change("room") for _ in range(500)]
    assert [r["id"] for r in records(got)] == list(range(1, 501))
    stats = server.statistics()
    assert (stats.send_queue_overflows, stats.postgres_changes, stats.postgres_messages) == (0, 500, 500)


async def test_pg_stuck_subscriber_does_not_stall_the_others(start_server: StartServer, connect: Connect,
                                                             db: Database, schema: str) -> None:
    """A subscriber that stops reading delays the others by at most the backpressure timeout,
    then its socket overflows and is closed (1008) while the others get everything."""
    server = await start_server(send_queue_size=8, postgres_backpressure_timeout=0.2)
    rows = 120
    with trio.fail_after(30):
        await db.execute(f"create table {schema}.t (id int primary key, body text)")
        binding = [{"event": "INSERT", "schema": schema, "table": "t"}]
        async with connect(server) as stuck, connect(server) as reader:
            await stuck.subscribed("room", binding)
            await reader.subscribed("room", binding)
            # ~12 MB in all: more than the kernel buffers of the stuck socket hold
            await db.execute(f"insert into {schema}.t select i, repeat(md5(i::text), 3200) "
                             f"from generate_series(1, {rows}) i")
            got = [await reader.change("room") for _ in range(rows)]
            assert [r["id"] for r in records(got)] == list(range(1, rows + 1))
    assert server.statistics().send_queue_overflows == 1
