"""The library's own client against the reference server and a real PostgreSQL."""

from __future__ import annotations

from typing import TYPE_CHECKING

import trio

from trio_realtime import PostgresChange, PostgresChanges, SystemMessage, open_realtime

if TYPE_CHECKING:
    from _pg_helpers import Database

    from trio_realtime.server import RealtimeServer


async def test_pg_client_receives_a_row_committed_right_after_entering_the_channel(
    server: RealtimeServer, db: Database, schema: str
) -> None:
    """``async with client.channel(..., postgres_changes=...)`` returns once the bindings are
    live: a row committed right after is delivered, one committed before is not."""
    with trio.fail_after(20):
        await db.execute(f"create table {schema}.t (id int primary key, title text)")
        async with open_realtime(server.url, api_key="anon-key") as client:
            for i in range(20):
                await db.execute(f"insert into {schema}.t values (%s, 'before')", (1000 + i,))
                bindings = [PostgresChanges(event="INSERT", schema=schema, table="t")]
                async with client.channel(f"c{i}", postgres_changes=bindings) as sub:
                    await db.execute(f"insert into {schema}.t values (%s, 'after')", (i,))
                    event = await sub.receive()
                    while isinstance(event, SystemMessage):  # "Subscribed to PostgreSQL"
                        event = await sub.receive()
                    assert isinstance(event, PostgresChange), event
                    assert (event.type, event.schema, event.table) == ("INSERT", schema, "t")
                    assert dict(event.record) == {"id": i, "title": "after"}
                    assert event.bindings == (0,)
