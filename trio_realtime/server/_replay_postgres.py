"""Stored broadcasts in PostgreSQL, so replay survives a server restart (PROTOCOL.md §4.7).

When :func:`~._serve.serve_realtime` has a database, it keeps the private channels'
broadcasts there instead of in memory. On start it creates (if missing) two tables in the
database's default schema (``public``)::

    create table realtime_messages (
        seq            bigint generated always as identity,
        id             uuid primary key,          -- the meta.id clients deduplicate by
        topic          text not null,             -- the sub-topic ("room1")
        private        boolean not null,          -- the namespace (always true today)
        extension      text not null default 'broadcast',
        event          text,                      -- the user event name, if a string
        payload        json not null,             -- the broadcast map as sent, minus a
                                                  --   binary "payload" and any "meta"
        binary_payload bytea,                     -- the user payload of a binary broadcast
        user_broadcast boolean not null,          -- came as a binary user-broadcast frame
        inserted_at    bigint not null            -- Unix milliseconds
    );
    create index realtime_messages_replay_idx
        on realtime_messages (private, topic, inserted_at desc, seq desc);

    create table realtime_message_evictions (
        private       boolean not null,
        topic         text not null,
        evicted_until bigint not null,            -- inserted_at of the newest deleted row
        primary key (private, topic)
    );

``payload`` is ``json``, not ``jsonb``, so the map is replayed exactly as it was sent (key
order and number spelling kept). Names differ from the official ``realtime.messages`` on
purpose: this is the reference server's own store, not a copy of the official schema, and
must not collide with it in a Supabase database.

Each topic keeps at most ``ServerConfig.replay_database_per_topic`` rows (None: all). The
first insert of a topic after the server started, and every 100th after it, trims the topic
in the same transaction and raises the topic's eviction
high-water mark in ``realtime_message_evictions``, so a replay's ``complete`` stays truthful
across restarts (see ``_replay``).

One connection, used by one worker thread at a time (psycopg is blocking): an insert commits
before the broadcast is fanned out or acked. A failed connection is replaced on the next call;
a call that still fails raises :class:`StoreUnavailable` and the caller degrades (the
broadcast is refused, the replaying join gets ``UnableToReplayMessages: Realtime was unable to
replay messages``).
"""

from __future__ import annotations

import contextlib
import json
import logging
from typing import TYPE_CHECKING, Any, Final

import attrs
import trio

from ._postgres import DatabaseUnavailable, redact_dsn
from ._replay import FUTURE_MS, ReplayRequest, ReplayResult, StoredMessage, TopicKey, select_replay

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    import psycopg

__all__ = ["PostgresMessageStore", "StoreUnavailable", "open_postgres_store"]

logger = logging.getLogger("trio_realtime.server")

SCHEMA_SQL: Final = """
create table if not exists realtime_messages (
    seq            bigint generated always as identity,
    id             uuid primary key,
    topic          text not null,
    private        boolean not null,
    extension      text not null default 'broadcast',
    event          text,
    payload        json not null,
    binary_payload bytea,
    user_broadcast boolean not null,
    inserted_at    bigint not null
);
create index if not exists realtime_messages_replay_idx
    on realtime_messages (private, topic, inserted_at desc, seq desc);
create table if not exists realtime_message_evictions (
    private       boolean not null,
    topic         text not null,
    evicted_until bigint not null,
    primary key (private, topic)
);
"""
_INSERT_SQL: Final = """
insert into realtime_messages
    (id, topic, private, event, payload, binary_payload, user_broadcast, inserted_at)
values (%s, %s, %s, %s, %s::json, %s, %s, %s)
on conflict (id) do nothing
"""
_TRIM_SQL: Final = """
with doomed as (
    select id, inserted_at from realtime_messages
    where private = %(private)s and topic = %(topic)s
    order by inserted_at desc, seq desc offset %(keep)s
), deleted as (
    delete from realtime_messages m using doomed d where m.id = d.id returning d.inserted_at
)
insert into realtime_message_evictions (private, topic, evicted_until)
select %(private)s, %(topic)s, max(inserted_at) from deleted having count(*) > 0
on conflict (private, topic) do update
    set evicted_until = greatest(realtime_message_evictions.evicted_until, excluded.evicted_until)
"""
_SELECT_SQL: Final = """
select id::text, inserted_at, payload::text, binary_payload, user_broadcast from realtime_messages
where private = %s and topic = %s and extension = 'broadcast' and inserted_at >= %s and inserted_at < %s
order by inserted_at desc, seq desc
limit %s
"""
_EVICTED_SQL: Final = "select evicted_until from realtime_message_evictions where private = %s and topic = %s"
#: Inserts of one topic between two trims.
TRIM_EVERY: Final = 100


class StoreUnavailable(DatabaseUnavailable):
    """The database could not store or read messages (the message says why, never a password)."""


@attrs.define(eq=False)
class _Connection:
    """The store's connection; used by one worker thread at a time."""

    dsn: str = attrs.field(repr=False)
    per_topic: int | None
    conn: psycopg.Connection[Any] | None = attrs.field(default=None, repr=False)
    inserts: dict[TopicKey, int] = attrs.field(factory=dict, repr=False)

    def _connect(self) -> psycopg.Connection[Any]:
        import psycopg

        conn = psycopg.connect(self.dsn, autocommit=True, connect_timeout=10,
                               application_name="trio_realtime messages")
        conn.execute(SCHEMA_SQL)
        return conn

    def close(self) -> None:
        conn, self.conn = self.conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()

    def run(self, job: Any, *args: Any) -> Any:
        """Run ``job(conn, *args)``, reconnecting once if the connection went stale.

        (Retrying an insert is harmless: a message id that made it in is skipped.)
        """
        import psycopg

        for attempt in (1, 2):
            try:
                if self.conn is None or self.conn.closed:
                    self.conn = self._connect()
                return job(self.conn, *args)
            except psycopg.OperationalError as exc:
                self.close()
                if attempt == 2:
                    raise StoreUnavailable(f"cannot connect to the database {redact_dsn(self.dsn)} "
                                           f"(message store): {str(exc).strip()}") from None
            except (psycopg.DataError, ValueError) as exc:
                # The data, not the database: e.g. a NUL character in a topic.
                raise ValueError(f"the database refused the value: {str(exc).strip()}") from None
            except psycopg.Error as exc:
                raise StoreUnavailable(
                    f"the message store failed: {str(exc).strip()}"
                ) from None
        raise AssertionError("unreachable")  # pragma: no cover

    def add(self, conn: psycopg.Connection[Any], message: StoredMessage, payload_json: str,
            binary: bytes | None) -> None:
        private, topic = message.key
        # The first insert of a topic in this process trims it, then every TRIM_EVERY-th.
        count = self.inserts.get(message.key, TRIM_EVERY - 1) + 1
        with conn.transaction():
            conn.execute(_INSERT_SQL, (message.id, topic, private, message.event, payload_json, binary,
                                       message.user_broadcast, message.inserted_at))
            if self.per_topic is not None and count >= TRIM_EVERY:
                conn.execute(_TRIM_SQL, {"private": private, "topic": topic, "keep": self.per_topic})
                count = 0
        self.inserts[message.key] = count

    def replay(self, conn: psycopg.Connection[Any], key: TopicKey, request: ReplayRequest,
               now_ms: int) -> ReplayResult:
        private, topic = key
        # Rows first, then the mark: a trim committed in between only makes the answer more
        # cautious (complete=False), never wrongly complete.
        with conn.transaction():
            rows = conn.execute(_SELECT_SQL, (private, topic, request.since, now_ms + FUTURE_MS,
                                              request.limit)).fetchall()
            mark = conn.execute(_EVICTED_SQL, (private, topic)).fetchone()
        newest_first = []
        for message_id, inserted_at, payload_text, binary, user_broadcast in rows:
            payload: dict[str, Any] = json.loads(payload_text)
            if binary is not None:
                payload["payload"] = bytes(binary)
            newest_first.append(StoredMessage(id=message_id, key=key, inserted_at=int(inserted_at),
                                              payload=payload, user_broadcast=bool(user_broadcast)))
        return select_replay(newest_first, request.limit, None if mark is None else int(mark[0]),
                             request.since)


class PostgresMessageStore:
    """Stored broadcasts in PostgreSQL (see the module docstring); from :func:`open_postgres_store`."""

    def __init__(self, dsn: str, per_topic: int | None) -> None:
        self._conn = _Connection(dsn, per_topic)
        self._lock = trio.Lock()
        self.stored = 0

    async def add(self, message: StoredMessage) -> None:
        """Store ``message``; returns once it is committed. A checkpoint.

        Raises:
            ValueError: the payload cannot be stored (not JSON, or refused by the database,
                e.g. a NUL character in the topic): the sender's fault.
            StoreUnavailable: the database failed.
        """
        payload_json, binary = message.storage_json()
        async with self._lock:
            await trio.to_thread.run_sync(self._conn.run, self._conn.add, message, payload_json, binary)
        self.stored += 1

    async def replay(self, key: TopicKey, request: ReplayRequest, now_ms: int) -> ReplayResult:
        """The replay of ``request`` for ``key`` (see ``_replay``). A checkpoint.

        Raises:
            ValueError: the database refused the topic (nothing can be stored under it).
            StoreUnavailable: the database failed.
        """
        async with self._lock:
            result: ReplayResult = await trio.to_thread.run_sync(
                self._conn.run, self._conn.replay, key, request, now_ms
            )
        return result

    async def _open(self) -> None:
        async with self._lock:
            await trio.to_thread.run_sync(self._conn.run, lambda conn: None)

    async def _close(self) -> None:
        with trio.CancelScope(shield=True):
            async with self._lock:
                await trio.to_thread.run_sync(self._conn.close)


@contextlib.asynccontextmanager
async def open_postgres_store(
    database_url: str, *, per_topic: int | None
) -> AsyncIterator[PostgresMessageStore]:
    """Connect, create the tables if missing, and close the connection after the block.

    Raises:
        StoreUnavailable: the database cannot be reached or the tables cannot be created.
    """
    store = PostgresMessageStore(database_url, per_topic)
    try:
        await store._open()
        logger.info("replay: storing private broadcasts in the database (table realtime_messages)")
        yield store
    finally:
        await store._close()
