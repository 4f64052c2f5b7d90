"""Entity channels and tenants (SPEC M1-M5): naming, sharing, presence cache, statistics.

Most tests run on real loopback sockets against the reference server (``serve_realtime``),
ordering by *sentinels*: a server delivers one socket's frames in order, so a test sends the
message that must not leak first, then a sentinel, and reads until the sentinel. The
subscription (postgres_changes) tests run against the ScriptedServer (exact join payloads,
mock clock) and, end to end, against an embedded PostgreSQL.
"""

from __future__ import annotations

import functools
import json
import zlib
from typing import TYPE_CHECKING, Any

import psycopg
import pytest
import trio
from trio.testing import wait_all_tasks_blocked

from trio_realtime import (
    Broadcast,
    BroadcastConfig,
    Dropped,
    LocalProtocolError,
    PostgresChange,
    PresenceJoin,
    PresenceSync,
    RealtimeConfig,
    SubscriptionClosed,
    open_realtime,
)
from trio_realtime._entities import (
    EntityChannel,
    EntityChannelInfo,
    entity_channel_name,
    open_entity_channels,
)
from trio_realtime.server import RealtimeServer, ServerConfig, open_embedded_postgres, serve_realtime
from trio_realtime.testing import ScriptedServer, open_scripted_server

if TYPE_CHECKING:
    from collections.abc import Callable

    from trio.testing import MockClock

    from trio_realtime import RealtimeEvent

GUARD = 10
ACK = BroadcastConfig(ack=True)


async def start_server(nursery: trio.Nursery, **kwargs: Any) -> RealtimeServer:
    server: RealtimeServer = await nursery.start(functools.partial(serve_realtime, "127.0.0.1", 0, **kwargs))
    return server


async def until(ch: EntityChannel, predicate: Callable[[RealtimeEvent], bool]) -> list[RealtimeEvent]:
    """Every event up to and including the first that ``predicate`` accepts."""
    seen: list[RealtimeEvent] = []
    async for event in ch:
        seen.append(event)
        if predicate(event):
            return seen
    raise AssertionError(f"{ch!r} ended before the expected event; got {seen!r}")


async def broadcasts_until_end(ch: EntityChannel) -> list[tuple[str, Any]]:
    """The broadcasts received before the ``end`` sentinel."""
    events = await until(ch, lambda e: isinstance(e, Broadcast) and e.event == "end")
    return [(e.event, e.payload) for e in events[:-1] if isinstance(e, Broadcast)]


def has_key(key: str) -> Callable[[RealtimeEvent], bool]:
    return lambda e: isinstance(e, PresenceSync) and key in e.state


# -- naming (M3) ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "tenant", "expected"),
    [
        (("presence", "contact", "123"), None, "presence:contact:123"),
        (("subscription", "project", 456), None, "subscription:project:456"),
        (("broadcast", "document", "789"), None, "broadcast:document:789"),
        (("presence", "contact", "123"), "abc", "tenant:abc:presence:contact:123"),
        (("broadcast", "doc", "x-1"), 42, "tenant:42:broadcast:doc:x-1"),
    ],
)
def test_channel_names_follow_the_seed_convention(args: tuple[Any, ...], tenant: Any, expected: str) -> None:
    assert entity_channel_name(*args, tenant_id=tenant) == expected


@pytest.mark.parametrize(
    ("args", "tenant", "match"),
    [
        (("presence", "contact", "1:2"), None, r"^entity_id must not contain ':' .*got '1:2'$"),
        (("presence", "con:tact", "1"), None, r"^entity_type must not contain ':'"),
        (("presence", "contact", "1"), "a:b", r"^tenant_id must not contain ':'"),
        (("presence", "contact", ""), None, r"^entity_id must not be empty$"),
        (("presence", "", "1"), None, r"^entity_type must not be empty$"),
        (("presence", "contact", True), None, r"^entity_id must be a string or an int, got bool$"),
        (
            ("presences", "contact", "1"),
            None,
            r"^channel kind must be one of subscription, presence, broadcast",
        ),
    ],
)
def test_bad_name_parts_are_refused(args: tuple[Any, ...], tenant: Any, match: str) -> None:
    with pytest.raises(LocalProtocolError, match=match):
        entity_channel_name(*args, tenant_id=tenant)


# -- tenant isolation (M3), on real sockets ----------------------------------------------------------


async def test_tenants_with_same_entity_ids_never_see_each_others_broadcasts(nursery: trio.Nursery) -> None:
    with trio.fail_after(GUARD):
        server = await start_server(nursery)
        async with (
            open_realtime(server.url, api_key="k") as receiver,
            open_realtime(server.url, api_key="k") as sender,
            open_entity_channels(receiver, tenant_id="acme") as acme_rx,
            open_entity_channels(receiver, tenant_id="globex") as globex_rx,
            open_entity_channels(receiver) as plain_rx,
            open_entity_channels(sender, tenant_id="acme", broadcast=ACK) as acme_tx,
            open_entity_channels(sender, tenant_id="globex", broadcast=ACK) as globex_tx,
            open_entity_channels(sender, broadcast=ACK) as plain_tx,
            acme_rx.subscribe_to_broadcasts("document", 1) as acme_doc,
            globex_rx.subscribe_to_broadcasts("document", 1) as globex_doc,
            plain_rx.subscribe_to_broadcasts("document", 1) as plain_doc,
        ):
            assert acme_doc.topic == "realtime:tenant:acme:broadcast:document:1"
            assert globex_doc.topic == "realtime:tenant:globex:broadcast:document:1"
            assert plain_doc.topic == "realtime:broadcast:document:1"
            # globex's message first: if it leaked, it would reach the receiver's socket
            # before anything acme or the untenanted channel sends afterwards.
            await globex_tx.broadcast("document", 1, "edit", {"tenant": "globex"})
            await globex_tx.broadcast("document", 1, "end")
            assert await broadcasts_until_end(globex_doc) == [("edit", {"tenant": "globex"})]
            await acme_tx.broadcast("document", 1, "edit", {"tenant": "acme"})
            await acme_tx.broadcast("document", 1, "end")
            assert await broadcasts_until_end(acme_doc) == [("edit", {"tenant": "acme"})]
            await plain_tx.broadcast("document", 1, "end")
            assert await broadcasts_until_end(plain_doc) == []


async def test_tenants_with_same_entity_ids_never_see_each_others_presence(nursery: trio.Nursery) -> None:
    with trio.fail_after(GUARD):
        server = await start_server(nursery)
        async with (
            open_realtime(server.url, api_key="k") as alice,
            open_realtime(server.url, api_key="k") as bob,
            open_entity_channels(alice, tenant_id="acme") as acme,
            open_entity_channels(bob, tenant_id="globex") as globex,
            # The same entity *and* the same user id in both tenants.
            acme.join_presence("project", 456, {"id": "u1", "name": "Alice"}, {"role": "editor"}) as acme_p,
            globex.join_presence("project", 456, {"id": "u1", "name": "Bob"}, {"role": "viewer"}) as globex_p,
        ):
            acme_seen = await until(acme_p, has_key("u1"))
            globex_seen = await until(globex_p, has_key("u1"))
            # Carol joins acme; then Dave joins globex as the sentinel globex waits for.
            async with (
                open_realtime(server.url, api_key="k") as carol,
                open_entity_channels(carol, tenant_id="acme") as acme_c,
                acme_c.join_presence("project", 456, {"id": "u2", "name": "Carol"}),
            ):
                acme_seen += await until(acme_p, has_key("u2"))
                async with (
                    open_realtime(server.url, api_key="k") as dave,
                    open_entity_channels(dave, tenant_id="globex") as globex_d,
                    globex_d.join_presence("project", 456, {"id": "u3", "name": "Dave"}),
                ):
                    globex_seen += await until(globex_p, has_key("u3"))
                    acme_state = acme.presence_state("project", 456)
                    globex_state = globex.presence_state("project", 456)
            assert sorted(acme_state) == ["u1", "u2"]
            assert sorted(globex_state) == ["u1", "u3"]
            assert [p["user"]["name"] for p in acme_state["u1"]] == ["Alice"]
            assert [p["user"]["name"] for p in globex_state["u1"]] == ["Bob"]
            names = {
                p["user"]["name"]
                for event in globex_seen
                if isinstance(event, PresenceSync)
                for presences in event.state.values()
                for p in presences
            }
            assert names == {"Bob", "Dave"}  # never Alice or Carol
            acme_names = {
                p["user"]["name"]
                for event in acme_seen
                if isinstance(event, PresenceSync)
                for presences in event.state.values()
                for p in presences
            }
            assert acme_names == {"Alice", "Carol"}


# -- sharing (M1) -------------------------------------------------------------------------------------


async def test_same_entity_channel_is_shared_and_left_by_the_last_holder(nursery: trio.Nursery) -> None:
    with trio.fail_after(GUARD):
        server = await start_server(nursery)
        async with (
            open_realtime(server.url, api_key="k") as client,
            open_realtime(server.url, api_key="k") as other,
            open_entity_channels(client) as entities,
            open_entity_channels(other, broadcast=ACK) as sender,
        ):
            async with entities.subscribe_to_broadcasts("room", 7) as first:
                async with entities.subscribe_to_broadcasts("room", 7) as second:
                    assert client.statistics().channels == 1  # one server join
                    assert entities.has_channel("broadcast", "room", 7)
                    (info,) = entities.active_channels()
                    assert (info.name, info.holders, info.status) == ("broadcast:room:7", 2, "joined")
                    await sender.broadcast("room", 7, "end", {"n": 1})
                    for holder in (first, second):  # each holder gets every event
                        assert await broadcasts_until_end(holder) == []
                assert entities.active_channels()[0].holders == 1
                assert client.statistics().channels == 1  # still joined for `first`
                await sender.broadcast("room", 7, "hello")
                await sender.broadcast("room", 7, "end")
                assert await broadcasts_until_end(first) == [("hello", {})]
            # The last holder's exit returned after the channel was left.
            assert entities.active_channels() == ()
            assert not entities.has_channel("broadcast", "room", 7)
            assert client.statistics().channels == 0
            with pytest.raises(trio.ClosedResourceError):
                await first.send_broadcast("late")


async def test_concurrent_first_holders_share_one_join(autojump_clock: MockClock) -> None:
    """Two blocks entering the same channel while its join is in flight: one server join."""
    with trio.fail_after(GUARD):
        async with (
            open_scripted_server() as server,
            open_realtime("ws://test/realtime/v1", transport_factory=server.transport_factory) as client,
            open_entity_channels(client) as entities,
        ):
            server.join_reply_delay = 1.0
            entered: list[float] = []
            both_in, done = trio.Event(), trio.Event()

            async def hold() -> None:
                async with entities.subscribe_to_broadcasts("doc", 1):
                    entered.append(trio.current_time())
                    if len(entered) == 2:
                        both_in.set()
                    await done.wait()

            t0 = trio.current_time()
            async with trio.open_nursery() as holders:
                holders.start_soon(hold)
                holders.start_soon(hold)
                await wait_all_tasks_blocked()
                assert entities.statistics().by_status["joining"] == 1
                await both_in.wait()
                assert entered == [t0 + 1, t0 + 1]
                assert [topic for topic, _ in server.join_times] == ["realtime:broadcast:doc:1"]
                assert entities.statistics().holders == 2
                done.set()
            assert entities.active_channels() == ()


async def test_slow_holder_drops_and_counts_without_stalling_the_others(nursery: trio.Nursery) -> None:
    with trio.fail_after(GUARD):
        server = await start_server(nursery)
        async with (
            open_realtime(server.url, api_key="k") as client,
            open_realtime(server.url, api_key="k") as other,
            open_entity_channels(client, buffer=2) as entities,
            open_entity_channels(other, broadcast=ACK) as sender,
            entities.subscribe_to_broadcasts("feed", 1) as slow,
            entities.subscribe_to_broadcasts("feed", 1) as fast,
        ):
            for i in range(5):  # `fast` keeps up while `slow` does not read at all
                await sender.broadcast("feed", 1, "n", {"i": i})
                assert (await fast.receive()).payload == {"i": i}  # type: ignore[union-attr]
            assert [(await slow.receive()).payload["i"] for _ in range(2)] == [0, 1]  # type: ignore[union-attr]
            await sender.broadcast("feed", 1, "n", {"i": 5})
            assert (await fast.receive()).payload == {"i": 5}  # type: ignore[union-attr]
            assert await slow.receive() == Dropped(topic=slow.topic, count=3)
            assert (await slow.receive()).payload == {"i": 5}  # type: ignore[union-attr]
            assert slow.dropped == 3
            assert entities.statistics().dropped == 3


async def test_broadcast_without_a_holder_joins_sends_and_leaves(nursery: trio.Nursery) -> None:
    with trio.fail_after(GUARD):
        server = await start_server(nursery)
        async with (
            open_realtime(server.url, api_key="k") as client,
            open_realtime(server.url, api_key="k") as other,
            open_entity_channels(client, tenant_id="t1") as listener,
            open_entity_channels(other, tenant_id="t1") as sender,
            listener.subscribe_to_broadcasts("document", "789") as doc,
        ):
            await sender.broadcast("document", "789", "cursor-move", {"x": 100, "y": 200})
            assert sender.active_channels() == ()
            assert other.statistics().channels == 0
            await sender.broadcast("document", "789", "end")
            assert await broadcasts_until_end(doc) == [("cursor-move", {"x": 100, "y": 200})]


async def test_incompatible_requests_for_one_channel_are_refused(autojump_clock: MockClock) -> None:
    with trio.fail_after(GUARD):
        async with (
            open_scripted_server() as server,
            open_realtime("ws://test/realtime/v1", transport_factory=server.transport_factory) as client,
            open_entity_channels(client) as entities,
            entities.join_presence("contact", 1, {"id": "u1"}),
        ):
            with pytest.raises(
                LocalProtocolError,
                match=r"^'presence:contact:1' already tracks user 'u1' on this client; one client "
                r"tracks one user per channel, so user 'u2' needs a client of its own$",
            ):
                async with entities.join_presence("contact", 1, {"id": "u2"}):
                    pass  # pragma: no cover
            with pytest.raises(LocalProtocolError, match=r"^user must have a non-empty 'id'"):
                async with entities.join_presence("contact", 2, {"name": "no id"}):
                    pass  # pragma: no cover
            with pytest.raises(LocalProtocolError, match=r"^entity_id must not contain ':'"):
                async with entities.subscribe_to_broadcasts("contact", "1:2"):
                    pass  # pragma: no cover
            assert [info.name for info in entities.active_channels()] == ["presence:contact:1"]


async def test_channel_closed_by_server_ends_every_holder_then_can_be_joined_again(
    autojump_clock: MockClock,
) -> None:
    with trio.fail_after(GUARD):
        async with (
            open_scripted_server() as server,
            open_realtime("ws://test/realtime/v1", transport_factory=server.transport_factory) as client,
            open_entity_channels(client, tenant_id="t") as entities,
        ):
            async with (
                entities.subscribe_to_broadcasts("doc", 1) as first,
                entities.subscribe_to_broadcasts("doc", 1) as second,
            ):
                await server.close_channel("tenant:t:broadcast:doc:1", "Token has expired 0 seconds ago")
                for holder in (first, second):
                    with pytest.raises(SubscriptionClosed, match="Token has expired"):
                        async for _ in holder:
                            pass
                assert entities.statistics().by_status["closed"] == 1
                with pytest.raises(SubscriptionClosed):
                    async with entities.subscribe_to_broadcasts("doc", 1):
                        pass  # pragma: no cover
            assert entities.active_channels() == ()
            async with entities.subscribe_to_broadcasts("doc", 1) as again:
                assert again.status == "joined"
            assert [topic for topic, _ in server.join_times] == ["realtime:tenant:t:broadcast:doc:1"] * 2


# -- presence cache and update (M4) ------------------------------------------------------------------


async def test_presence_state_and_update_presence(nursery: trio.Nursery) -> None:
    with trio.fail_after(GUARD):
        server = await start_server(nursery)
        async with (
            open_realtime(server.url, api_key="k") as alice,
            open_realtime(server.url, api_key="k") as bob,
            open_entity_channels(alice, tenant_id="t") as a,
            open_entity_channels(bob, tenant_id="t") as b,
        ):
            with pytest.raises(
                LocalProtocolError, match=r"^presence_state: not present on 'tenant:t:presence"
            ):
                a.presence_state("contact", 123)
            with pytest.raises(LocalProtocolError, match=r"^update_presence: not present on"):
                await a.update_presence("contact", 123, {"status": "editing"})
            user = {"id": "user-1", "name": "John"}
            async with (
                a.join_presence("contact", 123, user, {"color": "#3b82f6", "status": "viewing"}) as pa,
                b.join_presence("contact", 123, {"id": "user-2", "name": "Jane"}) as pb,
            ):
                assert pa.kind == "presence"
                assert pa.name == "tenant:t:presence:contact:123"
                await until(pa, has_key("user-2"))
                state = a.presence_state("contact", 123)
                assert sorted(state) == ["user-1", "user-2"]
                (mine,) = state["user-1"]
                assert mine["user"] == user
                assert mine["meta"] == {"color": "#3b82f6", "status": "viewing"}
                await a.update_presence("contact", 123, {"status": "editing"})

                def editing(e: RealtimeEvent) -> bool:
                    return isinstance(e, PresenceSync) and any(
                        p["meta"].get("status") == "editing" for p in e.state.get("user-1", ())
                    )

                await until(pb, editing)
                (seen,) = b.presence_state("contact", 123)["user-1"]
                assert seen["meta"] == {"color": "#3b82f6", "status": "editing"}  # merged
                # A second block of the same user shares the channel and starts from the state.
                async with a.join_presence("contact", 123, user, {"status": "typing"}) as pa2:
                    first = await pa2.receive()
                    assert isinstance(first, PresenceSync)
                    assert sorted(first.state) == ["user-1", "user-2"]
                    assert alice.statistics().channels == 1
                    await until(pb, lambda e: isinstance(e, PresenceJoin) and e.key == "user-1")
                (seen,) = b.presence_state("contact", 123)["user-1"]
                assert seen["meta"] == {"status": "typing"}  # the latest join_presence wins
            # Both blocks left: user-1 is gone for everyone.
            async with b.join_presence("contact", 123, {"id": "user-2"}) as pb:
                await until(pb, lambda e: isinstance(e, PresenceSync) and "user-1" not in e.state)


# -- statistics and active channels (M5) -----------------------------------------------------------


async def test_statistics_by_type_and_status_and_active_channels(nursery: trio.Nursery) -> None:
    with trio.fail_after(GUARD):
        server = await start_server(nursery)
        async with (
            open_realtime(server.url, api_key="k") as client,
            open_entity_channels(client, tenant_id="abc") as entities,
        ):
            empty = entities.statistics()
            assert (empty.total, empty.holders, empty.dropped) == (0, 0, 0)
            assert empty.by_type == {"subscription": 0, "presence": 0, "broadcast": 0}
            t0 = trio.current_time()
            async with (
                entities.join_presence("contact", 123, {"id": "u"}),
                entities.subscribe_to_broadcasts("document", 789),
                entities.subscribe_to_broadcasts("document", 789),
            ):
                stats = entities.statistics()
                assert stats.total == 2
                assert stats.holders == 3
                assert stats.by_type == {"subscription": 0, "presence": 1, "broadcast": 1}
                assert stats.by_status == {"joining": 0, "joined": 2, "errored": 0, "leaving": 0, "closed": 0}
                doc, contact = entities.active_channels()
                assert doc == EntityChannelInfo(
                    name="tenant:abc:broadcast:document:789",
                    topic="realtime:tenant:abc:broadcast:document:789",
                    kind="broadcast",
                    entity_type="document",
                    entity_id="789",
                    tenant_id="abc",
                    status="joined",
                    holders=2,
                    created_at=doc.created_at,
                    dropped=0,
                )
                assert contact.name == "tenant:abc:presence:contact:123"
                assert t0 <= contact.created_at <= doc.created_at <= trio.current_time()
            assert entities.statistics().total == 0


async def test_exception_in_helper_block_propagates_unchanged(nursery: trio.Nursery) -> None:
    with trio.fail_after(GUARD):
        server = await start_server(nursery)
        async with open_realtime(server.url, api_key="k") as client:
            with pytest.raises(KeyError, match="mine"):
                async with (
                    open_entity_channels(client) as entities,
                    entities.subscribe_to_broadcasts("doc", 1),
                ):
                    raise KeyError("mine")
            assert client.statistics().channels == 0


# -- row changes (M2): the join payload, and end to end with PostgreSQL ---------------------------------


def binding_id(binding: dict[str, Any]) -> int:
    """The id the ScriptedServer gives a binding (crc32 of its JSON)."""
    return zlib.crc32(json.dumps(binding, sort_keys=True, default=str).encode("utf-8"))


async def confirm_postgres(server: ScriptedServer, name: str) -> None:
    """Answer a join with bindings the way the official server does: "Subscribed to PostgreSQL"."""
    await server.wait_frame("phx_join", topic=name)
    await wait_all_tasks_blocked()  # the join reply went out; the client waits for this
    payload = {"extension": "postgres_changes", "status": "ok", "message": "Subscribed to PostgreSQL"}
    await server.push(name, "system", {**payload, "channel": name})


@pytest.mark.parametrize(
    ("kwargs", "bindings"),
    [
        ({}, [{"event": "*", "schema": "public", "table": "contacts", "filter": "id=eq.123"}]),
        (
            {"table": "people", "events": ("INSERT", "update"), "schema": "crm"},
            [
                {"event": "INSERT", "schema": "crm", "table": "people", "filter": "id=eq.123"},
                {"event": "UPDATE", "schema": "crm", "table": "people", "filter": "id=eq.123"},
            ],
        ),
    ],
)
async def test_subscribe_to_entity_joins_with_filtered_bindings(
    kwargs: dict[str, Any], bindings: list[dict[str, Any]], autojump_clock: MockClock
) -> None:
    name = "tenant:abc:subscription:contact:123"
    with trio.fail_after(GUARD):
        async with (
            open_scripted_server() as server,
            open_realtime("ws://test/realtime/v1", transport_factory=server.transport_factory) as client,
            open_entity_channels(client, tenant_id="abc") as entities,
            trio.open_nursery() as nursery,
        ):
            nursery.start_soon(confirm_postgres, server, name)
            async with entities.subscribe_to_entity("contact", 123, **kwargs) as contact:
                assert contact.kind == "subscription"
                (join,) = server.messages("phx_join", topic=name)
                assert join.payload["config"]["postgres_changes"] == bindings
                data = {
                    "type": "UPDATE",
                    "schema": bindings[0]["schema"],
                    "table": bindings[0]["table"],
                    "record": {"id": 123, "name": "New"},
                    "old_record": {"id": 123},
                }
                ids = [binding_id(b) for b in bindings]
                await server.push(name, "postgres_changes", {"ids": ids, "data": data})
                *before, change = await until(contact, lambda e: isinstance(e, PostgresChange))
                assert [type(e).__name__ for e in before] == ["SystemMessage"]  # "Subscribed to ..."
                assert isinstance(change, PostgresChange)
                assert (change.type, change.new, change.old) == (
                    "UPDATE",
                    {"id": 123, "name": "New"},
                    {"id": 123},
                )
                with pytest.raises(
                    LocalProtocolError, match=r"already held through this helper with another"
                ):
                    async with entities.subscribe_to_entity("contact", 123, table="other"):
                        pass  # pragma: no cover


async def test_subscribe_to_entity_end_to_end_with_postgres(nursery: trio.Nursery) -> None:
    """Only the entity's own row changes arrive; the table defaults to entity type + "s"."""
    async with open_embedded_postgres() as pg:
        with psycopg.connect(pg.dsn, autocommit=True) as db:

            async def sql(statement: str) -> None:
                await trio.to_thread.run_sync(db.execute, statement)

            with trio.fail_after(GUARD):
                await sql("create table contacts (id int primary key, name text)")
                await sql("insert into contacts values (123, 'Ann'), (124, 'Bob')")
                server = await start_server(
                    nursery, database_url=pg.dsn, config=ServerConfig(postgres_poll_interval=0.02)
                )
                async with (
                    open_realtime(server.url, api_key="k", config=RealtimeConfig()) as client,
                    open_entity_channels(client, tenant_id="acme") as entities,
                    entities.subscribe_to_entity("contact", 123) as contact,
                    entities.subscribe_to_entity("contact", 123) as shared,
                    entities.subscribe_to_broadcasts("contact", 123),
                ):
                    stats = entities.statistics()
                    assert stats.by_type == {"subscription": 1, "presence": 0, "broadcast": 1}
                    assert stats.by_status["joined"] == 2
                    await sql("update contacts set name = 'Bobby' where id = 124")  # another entity
                    await sql("insert into contacts values (125, 'Cy')")
                    await sql("update contacts set name = 'Anna' where id = 123")  # the sentinel
                    for holder in (contact, shared):
                        *before, change = await until(holder, lambda e: isinstance(e, PostgresChange))
                        assert not any(isinstance(e, PostgresChange) for e in before)
                        assert isinstance(change, PostgresChange)
                        assert (change.type, change.table, change.new) == (
                            "UPDATE",
                            "contacts",
                            {"id": 123, "name": "Anna"},
                        )
                    nursery.cancel_scope.cancel()
