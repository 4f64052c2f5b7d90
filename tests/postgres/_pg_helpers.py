"""Helpers for the postgres_changes tests: a raw Phoenix client and SQL from Trio.

The raw client speaks frames (V1 objects or V2 arrays), not the library's client API, so
these tests pin the wire format. Ordering without sleeps: the server delivers row changes
in commit order on every socket, so a test writes a *sentinel* row last and reads until its
change arrives; everything a binding should (and should not) have received was queued
before it.
"""

from __future__ import annotations

import itertools
import json
import re
from typing import TYPE_CHECKING, Any

import attrs
import psycopg
import trio

if TYPE_CHECKING:
    from collections.abc import Sequence

    from trio_websocket import WebSocketConnection


@attrs.frozen
class Frame:
    """One server frame, normalised (``join_ref`` is None on V1, which never sends it)."""

    join_ref: str | None
    ref: str | None
    topic: str
    event: str
    payload: Any


def parse_frame(raw: str | bytes, vsn: str) -> Frame:
    assert isinstance(raw, str), f"unexpected binary frame {raw[:20]!r}"
    obj = json.loads(raw)
    if vsn == "1.0.0":
        assert isinstance(obj, dict), obj
        return Frame(None, obj["ref"], obj["topic"], obj["event"], obj["payload"])
    assert isinstance(obj, list), obj
    assert len(obj) == 5, obj
    return Frame(obj[0], obj[1], obj[2], obj[3], obj[4])


class RawClient:
    def __init__(self, ws: WebSocketConnection, vsn: str) -> None:
        self.ws = ws
        self.vsn = vsn
        self._refs = itertools.count(1)

    async def push(self, topic: str, event: str, payload: Any, *, join_ref: str | None = None) -> str:
        ref = str(next(self._refs))
        if self.vsn == "1.0.0":
            text = json.dumps({"topic": topic, "event": event, "payload": payload, "ref": ref,
                               "join_ref": join_ref})
        else:
            text = json.dumps([join_ref, ref, topic, event, payload])
        await self.ws.send_message(text)
        return ref

    async def recv(self) -> Frame:
        return parse_frame(await self.ws.get_message(), self.vsn)

    async def join(self, topic: str, bindings: Sequence[dict[str, Any]] | None = None,
                   **config: Any) -> tuple[str, list[dict[str, Any]]]:
        """Join ``realtime:<topic>``; returns (join_ref, the echoed bindings with ids).

        Asserts that the reply is the next frame on the topic and that it is ok.
        """
        full = f"realtime:{topic}"
        ref = str(next(self._refs))
        payload = {"config": {"postgres_changes": list(bindings or []), **config}}
        if self.vsn == "1.0.0":
            text = json.dumps({"topic": full, "event": "phx_join", "payload": payload, "ref": ref,
                               "join_ref": ref})
        else:
            text = json.dumps([ref, ref, full, "phx_join", payload])
        await self.ws.send_message(text)
        while True:
            frame = await self.recv()
            if frame.topic == full:
                break
        assert frame.event == "phx_reply", frame
        assert frame.ref == ref, frame
        assert frame.payload["status"] == "ok", frame
        return ref, frame.payload["response"]["postgres_changes"]

    async def expect(self, event: str, topic: str | None = None) -> Frame:
        frame = await self.recv()
        assert frame.event == event, frame
        if topic is not None:
            assert frame.topic == f"realtime:{topic}", frame
        return frame

    async def subscribed(self, topic: str, bindings: Sequence[dict[str, Any]], **config: Any) -> list[int]:
        """Join, then expect "Subscribed to PostgreSQL"; returns the binding ids."""
        _, echoed = await self.join(topic, bindings, **config)
        system = await self.expect("system", topic)
        assert system.payload == {"extension": "postgres_changes", "status": "ok",
                                  "message": "Subscribed to PostgreSQL", "channel": topic}, system
        return [b["id"] for b in echoed]

    async def change(self, topic: str | None = None) -> dict[str, Any]:
        """The next frame, which must be a postgres_changes push (on ``topic``): its payload."""
        frame = await self.expect("postgres_changes", topic)
        assert frame.ref is None, frame
        assert frame.join_ref is None, frame
        assert set(frame.payload) == {"ids", "data"}, frame
        payload: dict[str, Any] = frame.payload
        return payload

    async def changes_until(self, predicate: Any, topic: str | None = None) -> list[dict[str, Any]]:
        """postgres_changes payloads up to and including the first one ``predicate`` accepts."""
        out = []
        while True:
            payload = await self.change(topic)
            out.append(payload)
            if predicate(payload):
                return out


class Database:
    """One autocommit psycopg connection, used from Trio through a worker thread."""

    def __init__(self, dsn: str) -> None:
        self.conn = psycopg.connect(dsn, autocommit=True)

    def close(self) -> None:
        self.conn.close()

    async def execute(self, sql: str, params: Sequence[Any] | dict[str, Any] | None = None) -> list[Any]:
        def run() -> list[Any]:
            cur = self.conn.execute(sql, params)  # type: ignore[arg-type]
            return cur.fetchall() if cur.description is not None else []

        return await trio.to_thread.run_sync(run)

    async def transaction(self, statements: Sequence[tuple[str, Sequence[Any] | None]]) -> None:
        def run() -> None:
            with self.conn.transaction():
                for sql, params in statements:
                    self.conn.execute(sql, params)  # type: ignore[arg-type]

        await trio.to_thread.run_sync(run)


class _Timestamp:
    """Equal to any ``commit_timestamp`` string of the official shape."""

    def __eq__(self, other: object) -> bool:
        shape = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z"
        return isinstance(other, str) and re.fullmatch(shape, other) is not None

    def __hash__(self) -> int:
        return 0

    def __repr__(self) -> str:
        return "<commit_timestamp YYYY-MM-DDTHH:MM:SS.mmmZ>"


COMMIT_TIMESTAMP: Any = _Timestamp()


async def create_sentinel(db: Database, schema: str) -> None:
    await db.execute(f"create table {schema}.sentinel (id int primary key)")


async def join_sentinel(client: RawClient, schema: str) -> None:
    """Join ``realtime:sentinel`` (first, so its delivery of a change comes first)."""
    await client.subscribed("sentinel", [{"event": "INSERT", "schema": schema, "table": "sentinel"}])


async def write_sentinel(db: Database, schema: str, n: int = 1) -> None:
    await db.execute(f"insert into {schema}.sentinel values (%s)", (n,))


async def until_sentinel(client: RawClient) -> dict[str, list[dict[str, Any]]]:
    """Every postgres_changes payload before the sentinel's, by sub-topic (the sentinel excluded).

    Fails on any other kind of frame.
    """
    out: dict[str, list[dict[str, Any]]] = {}
    while True:
        frame = await client.expect("postgres_changes")
        topic = frame.topic.removeprefix("realtime:")
        if topic == "sentinel":
            return out
        out.setdefault(topic, []).append(frame.payload)


def records(payloads: Sequence[dict[str, Any]], key: str = "record") -> list[Any]:
    return [p["data"].get(key) for p in payloads]
