"""``python -m trio_realtime demo chat``: the seed-001 chat, with its messages in PostgreSQL.

Everything runs in this process, on loopback: an embedded PostgreSQL (a throwaway cluster made
from the machine's PostgreSQL binaries, see :func:`trio_realtime.server.open_embedded_postgres`)
with a ``messages`` table, and the reference server streaming that table's changes. Three
people join the room ``lobby``; each of their channels carries all three Realtime features:

* **messages** are rows. Sending one is an ``INSERT`` (persistence first: a message exists
  once it is committed, whoever is online), and everyone, the author included, sees it arrive
  through the postgres_changes binding ``INSERT on public.messages where room=eq.lobby``.
  A message posted in another room is filtered out by the server.
* **typing indicators** are broadcasts, rate-limited by a debounced sender (many keystrokes,
  few frames); **reactions** are plain broadcasts;
* **the member list** is presence.

Then Carol's network drops. While she is away Bob posts a message she cannot receive: the
official server cannot replay missed row changes, so when her channel is back the client says
so (``Rejoined(recovered=False)``) and she refetches what she missed from the table.

Every step waits for the events it needs (no sleeps to order things; ``pace`` only slows the
narration down for a reader), and the whole run is bounded by a deadline. The cluster and the
server are stopped and removed when the demo ends, however it ends.
"""

from __future__ import annotations

import functools
import sys
from typing import TYPE_CHECKING, Any, TextIO

import attrs
import trio

from ._client import open_realtime
from ._config import RealtimeConfig
from ._debounce import open_debounced_sender
from ._demo import _Person, _Transcript
from ._embedded_postgres import EmbeddedPostgresError, open_embedded_postgres
from ._groups import collapse
from ._transport import Transport, connect_websocket
from .protocol import (
    BackoffPolicy,
    Broadcast,
    BroadcastConfig,
    ChannelErrored,
    Filter,
    PostgresChange,
    PostgresChanges,
    PresenceConfig,
    PresenceJoin,
    PresenceLeave,
    PresenceSync,
    RealtimeEvent,
    Rejoined,
    SystemMessage,
)
from .server import DatabaseUnavailable, serve_realtime

if TYPE_CHECKING:
    from collections.abc import Callable

    import psycopg


__all__ = ["ChatDemoUnavailable", "run_chat_demo"]

ROOM = "lobby"
OTHER_ROOM = "random"
PEOPLE = ("alice", "bob", "carol")
#: At most one typing broadcast per person per this many seconds.
TYPING_INTERVAL = 0.15

_CREATE_TABLE = """
create table public.messages (
    id bigint generated always as identity primary key,
    room text not null,
    author text not null,
    body text not null,
    created_at timestamptz not null default now()
)
"""

_BOOTSTRAP = "bash scripts/bootstrap"


class ChatDemoUnavailable(RuntimeError):
    """The chat demo cannot run here: PostgreSQL (with wal2json) or psycopg is missing.

    The message says what is missing and to run ``bash scripts/bootstrap``.
    """


def _unavailable(problem: str) -> ChatDemoUnavailable:
    hint = "" if "scripts/bootstrap" in problem else f"\nRun `{_BOOTSTRAP}` to install it."
    return ChatDemoUnavailable(
        "the chat demo keeps its messages in PostgreSQL, which is not available: "
        f"{problem}{hint}\n(`python -m trio_realtime demo` runs a chat without a database.)"
    )


def _import_psycopg() -> Any:
    try:
        import psycopg
    except ImportError as exc:
        raise _unavailable(
            f"the psycopg package is not installed ({exc}); it comes with the [postgres] extra"
        ) from None
    return psycopg


@attrs.define(eq=False)
class _Database:
    """One autocommit connection, used from Trio through worker threads (psycopg blocks)."""

    conn: psycopg.Connection[Any]

    @classmethod
    async def connect(cls, dsn: str) -> _Database:
        psycopg = _import_psycopg()
        conn = await trio.to_thread.run_sync(functools.partial(psycopg.connect, dsn, autocommit=True))
        return cls(conn)

    async def execute(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        def run() -> list[tuple[Any, ...]]:
            cursor = self.conn.execute(sql, params)
            return cursor.fetchall() if cursor.description is not None else []

        return await trio.to_thread.run_sync(run)

    async def post(self, room: str, author: str, body: str) -> int:
        """INSERT a message; returns its id once it is committed."""
        [(message_id,)] = await self.execute(
            "insert into public.messages (room, author, body) values (%s, %s, %s) returning id",
            (room, author, body),
        )
        return int(message_id)

    async def since(self, room: str, after_id: int) -> list[tuple[int, str, str]]:
        rows = await self.execute(
            "select id, author, body from public.messages where room = %s and id > %s order by id",
            (room, after_id),
        )
        return [(int(i), str(a), str(b)) for i, a, b in rows]

    async def aclose(self) -> None:
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(self.conn.close)


@attrs.define(eq=False)
class _Member(_Person):
    """One participant: what they saw, their database connection and their (flaky) network."""

    #: Set while the network is up; connection attempts wait for it.
    network_up: trio.Event = attrs.field(factory=trio.Event)
    db: _Database | None = None
    #: The messages this member has, by id: received live or refetched.
    messages: dict[int, tuple[str, str]] = attrs.field(factory=dict)
    #: Row changes from other rooms (the server's filter should keep this empty).
    strays: list[PostgresChange] = attrs.field(factory=list)
    members: frozenset[str] = frozenset()
    #: Who is typing, as far as this member knows (until their message arrives).
    typing: set[str] = attrs.field(factory=set)

    def __attrs_post_init__(self) -> None:
        self.network_up.set()

    @property
    def database(self) -> _Database:
        assert self.db is not None, f"{self.name} has no database connection yet"
        return self.db

    def say(self, text: str) -> None:
        self.transcript.say(self.name, text)

    def _narrate(self, event: RealtimeEvent) -> None:
        match event:
            case PostgresChange(type="INSERT", record=row):
                if row.get("room") != ROOM:
                    self.strays.append(event)
                    self.say(f"!! received a message from #{row.get('room')}: {dict(row)}")
                    return
                message_id = int(row["id"])
                self.messages[message_id] = (str(row["author"]), str(row["body"]))
                self.typing.discard(row["author"])
                self.say(f"receives #{message_id} {row['author']}: {row['body']!r}")
            case Broadcast(event="typing", payload=p):
                # Only the first typing broadcast of a burst is worth a line.
                if p.get("name") not in self.typing:
                    self.typing.add(p.get("name"))
                    self.say(f"sees {p.get('name')} typing…")
            case Broadcast(event="reaction", payload=p):
                self.say(f"sees {p.get('name')} react {p.get('emoji')} to #{p.get('message_id')}")
            case PresenceJoin(key=key) if key != self.name:
                self.say(f"sees {key} come online")
            case PresenceLeave(key=key, current=()) if key != self.name:
                self.say(f"sees {key} go offline")
            case PresenceSync(state=state) if frozenset(state) != self.members:
                self.members = frozenset(state)
                self.say(f"member list: {', '.join(sorted(state)) or '(nobody yet)'}")
            case SystemMessage(extension="postgres_changes", message=message):
                self.say(f"messages feed: {message}")
            case ChannelErrored(reason=reason):
                self.say(f"lost the room: {reason}")
            case Rejoined(recovered=recovered):
                self.say(f"rejoined the room (recovered={recovered}: messages sent meanwhile may be missing)")
            case _:
                pass

    async def transport_factory(self, url: str) -> Transport:
        await self.network_up.wait()
        transport = await connect_websocket(url)
        self.transports.append(transport)
        return transport

    async def type_and_post(self, body: str, keystroke: float) -> int:
        """Type ``body`` (a typing broadcast per keystroke, debounced), then INSERT it.

        ``keystroke`` is the pause between keystrokes (it orders nothing).
        """
        room = self.joined_room
        async with open_debounced_sender(room, "typing", interval=TYPING_INTERVAL) as typing:
            for length in range(1, len(body) + 1):
                typing.send({"name": self.name, "length": length})
                await trio.sleep(keystroke)
        # Leaving the block flushed the last keystroke: every typing broadcast is acknowledged.
        stats = typing.statistics()
        self.say(
            f"typed {len(body)} keystrokes: {stats.sent} typing broadcasts went out, "
            f"{stats.coalesced} were coalesced"
        )
        self.say(f"posts {body!r} (INSERT INTO messages)")
        return await self.database.post(ROOM, self.name, body)

    async def react(self, message_id: int, emoji: str) -> None:
        self.say(f"reacts {emoji} to #{message_id}")
        payload = {"name": self.name, "message_id": message_id, "emoji": emoji}
        await self.joined_room.send_broadcast("reaction", payload)


def _members(names: set[str]) -> Callable[[RealtimeEvent], bool]:
    return lambda e: isinstance(e, PresenceSync) and set(e.state) == names


def _message(message_id: int) -> Callable[[RealtimeEvent], bool]:
    return lambda e: isinstance(e, PostgresChange) and int(e.record.get("id", -1)) == message_id


def _typing(name: str, length: int) -> Callable[[RealtimeEvent], bool]:
    return lambda e: (
        isinstance(e, Broadcast) and e.event == "typing" and e.payload == {"name": name, "length": length}
    )


def _reaction(name: str, message_id: int) -> Callable[[RealtimeEvent], bool]:
    return lambda e: (
        isinstance(e, Broadcast)
        and e.event == "reaction"
        and e.payload.get("name") == name
        and e.payload.get("message_id") == message_id
    )


def _is_subscribed(e: RealtimeEvent) -> bool:
    return isinstance(e, SystemMessage) and e.extension == "postgres_changes" and e.status == "ok"


async def run_chat_demo(out: TextIO = sys.stdout, *, deadline: float = 15.0, pace: float = 0.4) -> None:
    """Run the chat demo, printing the transcript to ``out``.

    ``pace`` is a pause between the script's steps so a person can follow along; it orders
    nothing (every step waits for the events it needs) and can be 0.

    Raises:
        ChatDemoUnavailable: PostgreSQL (with wal2json) or psycopg is not installed, or the
            cluster could not be started; the message says to run ``bash scripts/bootstrap``.
        trio.TooSlowError: it did not finish within ``deadline`` seconds.
    """
    _import_psycopg()
    transcript = _Transcript(out=out, start=trio.current_time())
    with trio.fail_after(deadline):
        try:
            async with open_embedded_postgres() as pg:
                transcript.say("pg", f"embedded PostgreSQL {pg.version} on 127.0.0.1:{pg.port}")
                await _run(pg.dsn, transcript, pace)
        except EmbeddedPostgresError as exc:
            raise _unavailable(str(exc)) from exc
        except BaseExceptionGroup as group:
            raise collapse(group, "the chat demo") from None
        transcript.say("pg", "stopped and removed")
    transcript.say("demo", "done")


async def _run(dsn: str, transcript: _Transcript, pace: float) -> None:
    narrator = await _Database.connect(dsn)
    try:
        await narrator.execute(_CREATE_TABLE)
        transcript.say("pg", "created table messages (id, room, author, body, created_at)")
        async with trio.open_nursery() as nursery:
            try:
                server = await nursery.start(
                    functools.partial(serve_realtime, "127.0.0.1", 0, database_url=dsn)
                )
            except DatabaseUnavailable as exc:
                raise _unavailable(str(exc)) from exc
            transcript.say("server", f"listening on {server.url}, streaming changes from PostgreSQL")
            await _chat(server.url, dsn, narrator, transcript, pace)
            nursery.cancel_scope.cancel()
    finally:
        await narrator.aclose()


async def _chat(url: str, dsn: str, narrator: _Database, transcript: _Transcript, pace: float) -> None:
    people = {name: _Member(name, transcript) for name in PEOPLE}
    config = RealtimeConfig(reconnect_backoff=BackoffPolicy(base=0.2, cap=1.0), heartbeat_interval=5.0)
    ready = {name: trio.Event() for name in PEOPLE}
    done = trio.Event()
    messages = PostgresChanges(
        event="INSERT", schema="public", table="messages", filter=Filter.eq("room", ROOM)
    )

    async def participant(member: _Member) -> None:
        name = member.name
        member.db = await _Database.connect(dsn)
        try:
            async with (
                open_realtime(
                    url, api_key="demo-anon-key", config=config, transport_factory=member.transport_factory
                ) as client,
                client.channel(
                    ROOM,
                    broadcast=BroadcastConfig(ack=True),
                    presence=PresenceConfig(key=name),
                    postgres_changes=[messages],
                ) as room,
            ):
                member.say(
                    f"joined {room.topic}: messages where {messages.filter}, typing, reactions, members"
                )
                await room.track({"name": name})
                member.room = room
                async with trio.open_nursery() as inner:

                    async def listen() -> None:
                        async for event in room:
                            member.record(event)

                    inner.start_soon(listen)
                    ready[name].set()
                    await done.wait()
                    inner.cancel_scope.cancel()
            member.say(f"leaves with {len(member.messages)} messages")
        finally:
            await member.database.aclose()

    async with trio.open_nursery() as crowd:
        for member in people.values():
            crowd.start_soon(participant, member)
        await _script(people, ready, narrator, transcript, pace)
        done.set()


async def _script(
    people: dict[str, _Member],
    ready: dict[str, trio.Event],
    narrator: _Database,
    transcript: _Transcript,
    pace: float,
) -> None:
    """The story: each step waits for the events it needs."""
    alice, bob, carol = (people[n] for n in PEOPLE)
    everyone = (alice, bob, carol)
    keystroke = pace / 10

    for event in ready.values():
        await event.wait()
    for member in everyone:
        await member.wait_for(_is_subscribed)
        await member.wait_for(_members(set(PEOPLE)))
    transcript.say("demo", "— everyone is online; alice types and posts —")

    await trio.sleep(pace)
    hello = await alice.type_and_post("hello, room!", keystroke)
    for member in (bob, carol):
        await member.wait_for(_typing("alice", len("hello, room!")))
    for member in everyone:
        await member.wait_for(_message(hello))

    await trio.sleep(pace)
    await bob.react(hello, "👋")
    for member in (alice, carol):
        await member.wait_for(_reaction("bob", hello))

    await trio.sleep(pace)
    transcript.say("dave", f"posts 'anyone here?' in #{OTHER_ROOM} (INSERT INTO messages)")
    await narrator.post(OTHER_ROOM, "dave", "anyone here?")
    reply = await bob.type_and_post("hi alice", keystroke)
    for member in (alice, carol):
        await member.wait_for(_typing("bob", len("hi alice")))
    for member in everyone:
        await member.wait_for(_message(reply))
    # Changes reach a socket in commit order: dave's row would have arrived before bob's.
    if any(member.strays for member in everyone):
        raise RuntimeError("a message from another room got through the room filter")
    transcript.say("demo", f"— nobody in #{ROOM} got dave's message: the server filters room=eq.{ROOM} —")

    await trio.sleep(pace)
    transcript.say("demo", "— carol's network drops —")
    last_seen = max(carol.messages)
    carol.network_up = trio.Event()
    await carol.transports[-1].aclose(1001, "demo: network drop")
    await carol.wait_for(lambda e: isinstance(e, ChannelErrored))
    for member in (alice, bob):
        await member.wait_for(lambda e: isinstance(e, PresenceLeave) and e.key == "carol")
        await member.wait_for(_members({"alice", "bob"}))

    await trio.sleep(pace)
    missed = await bob.type_and_post("carol, are you still there?", keystroke)
    await alice.wait_for(_typing("bob", len("carol, are you still there?")))
    for member in (alice, bob):
        await member.wait_for(_message(missed))

    await trio.sleep(pace)
    transcript.say("demo", "— carol's network is back —")
    carol.network_up.set()
    await carol.wait_for(lambda e: isinstance(e, Rejoined))
    rows = await carol.database.since(ROOM, last_seen)
    carol.say(f"refetches messages after #{last_seen} from the table: {len(rows)} found")
    for message_id, author, body in rows:
        if message_id not in carol.messages:
            carol.messages[message_id] = (author, body)
            carol.say(f"catches up on #{message_id} {author}: {body!r}")
    if missed not in carol.messages:
        raise RuntimeError(f"carol did not get message #{missed} back")
    await carol.wait_for(_is_subscribed)
    for member in (alice, bob):
        await member.wait_for(_members(set(PEOPLE)))

    await trio.sleep(pace)
    back = await carol.type_and_post("yes! I was offline, caught up now", keystroke)
    for member in everyone:
        await member.wait_for(_message(back))
    await alice.react(back, "❤️")
    for member in (bob, carol):
        await member.wait_for(_reaction("alice", back))

    [(count,)] = await narrator.execute("select count(*) from public.messages")
    transcript.say("demo", f"— the messages table holds {count} rows; everyone leaves —")
