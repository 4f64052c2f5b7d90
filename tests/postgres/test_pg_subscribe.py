"""Subscribing: nothing missed after the join reply, the subscription results and errors (§6.3),
and what happens when the database connection goes away."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest
import trio
from _pg_helpers import Database, create_sentinel, join_sentinel, records, until_sentinel, write_sentinel

from trio_realtime.server._postgres import CONNECTION_LOST, NO_DATABASE_MESSAGE

if TYPE_CHECKING:
    from conftest import Connect, StartServer

    from trio_realtime._embedded_postgres import EmbeddedPostgres
    from trio_realtime.server import RealtimeServer


async def test_pg_row_committed_right_after_the_join_reply_is_delivered(
    server: RealtimeServer, connect: Connect, db: Database, schema: str
) -> None:
    """Regression guard for the join race: the bindings must be live before the reply is sent.

    Bad ordering: reply queued -> client commits a row -> the server registers the bindings
    (or starts reading the slot from "now") -> the row is never delivered.
    """
    with trio.fail_after(20):
        await db.execute(f"create table {schema}.t (id int primary key)")
        for i in range(20):
            vsn = "1.0.0" if i % 2 else "2.0.0"
            async with connect(server, vsn) as client:
                await db.execute(f"insert into {schema}.t values (%s)", (1000 + i,))  # before: not sent
                [bid] = [b["id"] for b in (await client.join(f"r{i}", [
                    {"event": "INSERT", "schema": schema, "table": "t"}]))[1]]
                await db.execute(f"insert into {schema}.t values (%s)", (i,))  # right after the reply
                system = await client.expect("system", f"r{i}")
                assert system.payload["status"] == "ok", system
                payload = await client.change(f"r{i}")
                assert payload["ids"] == [bid]
                assert payload["data"]["record"] == {"id": i}


async def test_pg_no_gap_while_rows_stream_during_the_join(
    server: RealtimeServer, connect: Connect, db: Database, schema: str, postgres: EmbeddedPostgres
) -> None:
    """Rows are committed one by one, continuously, while clients join. Each client receives a
    gap-free run of ids up to the last one, which starts no later than the second row whose
    commit began after its join reply (the one in flight during the reply may go either way)."""
    writer = Database(postgres.dsn)
    committed = 0
    stop = trio.Event()
    seen: dict[int, tuple[int, list[int]]] = {}

    async def write_rows() -> None:
        nonlocal committed
        while not stop.is_set():
            await writer.execute(f"insert into {schema}.t values (%s)", (committed + 1,))
            committed += 1

    async def subscriber(i: int, *, task_status: trio.TaskStatus[None]) -> None:
        async with connect(server, "1.0.0" if i % 2 else "2.0.0") as client:
            await join_sentinel(client, schema)
            await client.join("t", [{"event": "INSERT", "schema": schema, "table": "t"}])
            after_reply = committed
            # queued together with the reply, so before any change
            assert (await client.expect("system", "t")).payload["status"] == "ok"
            task_status.started()
            got = await until_sentinel(client)
            seen[i] = (after_reply, [r["id"] for r in records(got.get("t", []))])

    try:
        with trio.fail_after(30):
            await create_sentinel(db, schema)
            await db.execute(f"create table {schema}.t (id int primary key)")
            async with trio.open_nursery() as readers:
                async with trio.open_nursery() as writers:
                    writers.start_soon(write_rows)
                    for i in range(6):
                        await readers.start(subscriber, i)
                    stop.set()
                # the last row is committed: the sentinel comes after it
                await write_sentinel(db, schema)
    finally:
        writer.close()
    assert len(seen) == 6
    for after_reply, ids in seen.values():
        assert ids, (after_reply, committed)
        assert ids == list(range(ids[0], committed + 1))
        assert ids[0] <= after_reply + 2


async def test_pg_invalid_filter_keeps_the_channel_joined(server: RealtimeServer, connect: Connect,
                                                          db: Database, schema: str) -> None:
    with trio.fail_after(10):
        await db.execute(f"create table {schema}.t (id int primary key, subject text)")
        async with connect(server) as client:
            join_ref, echoed = await client.join("room", [
                {"event": "*", "schema": schema, "table": "t", "filter": "subject=foo.hey"},
            ], broadcast={"self": True})
            assert echoed == [{"event": "*", "schema": schema, "table": "t", "filter": "subject=foo.hey",
                               "id": echoed[0]["id"]}]
            system = await client.expect("system", "room")
            assert system.payload == {"extension": "postgres_changes", "status": "error",
                                      "message": 'Error parsing `filter` params: ["foo", "hey"]',
                                      "channel": "room"}
            # still joined: its own broadcast comes back
            message = {"type": "broadcast", "event": "e", "payload": {}}
            await client.push("realtime:room", "broadcast", message, join_ref=join_ref)
            echo = await client.expect("broadcast", "room")
            assert echo.payload["event"] == "e"
            # and a row change is not delivered (nothing was subscribed)
            await create_sentinel(db, schema)
            await join_sentinel(client, schema)
            await db.execute(f"insert into {schema}.t values (1, 'hey')")
            await write_sentinel(db, schema)
            assert await until_sentinel(client) == {}


_NOT_FOUND = ("Unable to subscribe to changes with given parameters. Please check Realtime is enabled for "
              "the given connect parameters: ")
_EXCEPTION = ("Unable to subscribe to changes with given parameters. An exception happened so please check "
              "your connect parameters: ")


@pytest.mark.parametrize(
    ("binding", "message"),
    [
        ({"event": "INSERT", "schema": "public", "table": "no_such_table"},
         _NOT_FOUND + "[event: INSERT, schema: public, table: no_such_table, filters: [], select: nil]"),
        ({"event": "*", "schema": "no_such_schema"},
         _NOT_FOUND + "[event: *, schema: no_such_schema, table: *, filters: [], select: nil]"),
        ({"event": "*", "schema": "SCHEMA", "table": "t", "filter": "nope=eq.1"},
         _EXCEPTION + '[event: *, schema: SCHEMA, table: t, filters: [{"nope", "eq", "1", false}], '
         "select: nil]. Exception: ERROR P0001 (raise_exception) invalid column for filter nope"),
        ({"event": "UPDATE", "schema": "SCHEMA", "table": "t", "filter": "id=not.in.(1,x)"},
         _EXCEPTION + '[event: UPDATE, schema: SCHEMA, table: t, filters: [{"id", "in", "{1,x}", true}], '
         'select: nil]. Exception: ERROR 22P02 (invalid_text_representation) invalid input syntax for type '
         'integer: "x"'),
        ({"event": "*", "schema": "SCHEMA", "table": "t", "filter": "undefined"},
         'Error parsing `filter` params: ["undefined"]'),
        ({"event": "*"},
         'No subscription params provided. Please provide at least a `schema` or `table` to subscribe to: '
         '%{"event" => "*"}'),
        ({"event": "*", "schema": "SCHEMA", "table": "*", "select": ["id"]},
         "Column selection is not supported for wildcard subscriptions. Provide an explicit schema and table "
         "name."),
    ],
)
async def test_pg_subscription_errors(server: RealtimeServer, connect: Connect, db: Database, schema: str,
                                      binding: dict[str, Any], message: str) -> None:
    """The official error texts (§6.1-6.3); the join itself succeeds and echoes the ids."""
    binding = {k: (schema if v == "SCHEMA" else v) for k, v in binding.items()}
    message = message.replace("SCHEMA", schema)
    with trio.fail_after(10):
        await db.execute(f"create table {schema}.t (id int primary key)")
        async with connect(server) as client:
            _, echoed = await client.join("room", [
                {"event": "*", "schema": schema, "table": "t"},  # valid, but all-or-nothing
                binding,
            ])
            assert [isinstance(b["id"], int) for b in echoed] == [True, True]
            system = await client.expect("system", "room")
    assert system.payload == {"extension": "postgres_changes", "status": "error", "message": message,
                              "channel": "room"}


async def test_pg_without_a_database(start_server: StartServer, connect: Connect) -> None:
    server = await start_server(database_url=None)
    with trio.fail_after(10):
        async with connect(server, "1.0.0") as client:
            _, echoed = await client.join("room", [{"event": "*", "schema": "public", "table": "t"}])
            assert echoed == [{"event": "*", "schema": "public", "table": "t", "id": echoed[0]["id"]}]
            system = await client.expect("system", "room")
    assert system.payload == {"extension": "postgres_changes", "status": "error",
                              "message": NO_DATABASE_MESSAGE, "channel": "room"}
    assert "--database-url" in NO_DATABASE_MESSAGE
    assert "--embedded-postgres" in NO_DATABASE_MESSAGE


async def test_pg_lost_capture_connection(server: RealtimeServer, connect: Connect, db: Database,
                                          schema: str) -> None:
    """The slot dies with its session: subscribers are told, and after the server has
    reconnected a new join works again."""
    with trio.fail_after(20):
        await db.execute(f"create table {schema}.t (id int primary key)")
        binding = {"event": "*", "schema": schema, "table": "t"}
        async with connect(server) as client:
            await client.subscribed("room", [binding])
            await db.execute("select pg_terminate_backend(pid) from pg_stat_activity "
                             "where application_name = 'trio_realtime capture'")
            system = await client.expect("system", "room")
            assert system.payload == {"extension": "postgres_changes", "status": "error",
                                      "message": CONNECTION_LOST, "channel": "room"}
            for attempt in range(200):  # the first reconnect happens after 1 s
                await client.join(f"retry{attempt}", [binding])
                result = await client.expect("system", f"retry{attempt}")
                if result.payload["status"] == "ok":
                    break
                assert result.payload["message"] == "Realtime was unable to connect to the project database"
                await trio.sleep(0.05)
            await db.execute(f"insert into {schema}.t values (1)")
            payload = await client.change(f"retry{attempt}")
            assert payload["data"]["record"] == {"id": 1}


async def test_pg_control_connection_reconnects(server: RealtimeServer, connect: Connect, db: Database,
                                                schema: str) -> None:
    """A stale control connection costs no join: it is replaced on the spot."""
    with trio.fail_after(10):
        await db.execute(f"create table {schema}.t (id int primary key)")
        binding = {"event": "*", "schema": schema, "table": "t"}
        async with connect(server) as client:
            await client.subscribed("first", [binding])
            await db.execute("select pg_terminate_backend(pid) from pg_stat_activity "
                             "where application_name = 'trio_realtime control'")
            await client.subscribed("second", [binding])
