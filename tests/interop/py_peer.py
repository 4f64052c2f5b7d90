"""Interop peer: the official PyPI ``realtime`` client, remote-controlled over stdio.

Usage::

    python py_peer.py --url ws://127.0.0.1:PORT/realtime/v1 --apikey KEY --vsn 1.0.0 \\
        --topic room --key alice [--self] [--ack] \\
        [--heartbeat-ms N] [--timeout-ms N] [--lifetime-s N] [--pg-bindings JSON]

This speaks the same line protocol as ``js/peer.mjs`` (see the header there), so that the tests
in this directory can drive either official client through ``_peers.open_peer``. Differences
that come from the client library itself:

* The PyPI client speaks vsn 1.0.0 only; ``--vsn 2.0.0`` is refused and ``send_binary`` answers
  with an ``error`` line.
* ``send_broadcast``/``track``/``untrack`` return ``None`` in this library, so to report a
  result comparable with realtime-js the peer issues the very same push those methods build
  (``channel.push("broadcast", {"type": "broadcast", "event": E, "payload": P})`` and
  ``channel.push("presence", {"event": "track"|"untrack", "payload": ...})``) and waits for the
  reply: ``"ok"``, ``"error"`` or ``"timed out"``. A broadcast without ``--ack`` gets no reply
  from the server, so, like realtime-js, it reports ``"ok"`` as soon as it is sent.
* ``--pg-bindings`` (a JSON list of ``{"event", "schema", "table", "filter"}`` objects) registers
  each with ``channel.on_postgres_changes`` before the join; the callbacks receive the *raw*
  payload ``{"ids": [...], "data": {"type", "record", "old_record", "columns", ...}}`` (this
  library does not convert it the way realtime-js does), printed as
  ``{"type": "postgres_changes", "binding": I, "payload": ...}``.
* ``--heartbeat-ms`` is rounded to seconds and the library clamps it to at least 15 s.

It is an asyncio program (the library is asyncio-only); stdin is read through an
``asyncio.StreamReader`` so that commands never block the client's own tasks. The process exits
by itself (status 3) after ``--lifetime-s`` seconds (default 60), and EOF on stdin acts as
``quit``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
#: Longest command line accepted on stdin, in bytes.
STDIN_LINE_LIMIT = 16 * 1024 * 1024


def emit(obj: Mapping[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj, default=_json_default) + "\n")
    sys.stdout.flush()


def _json_default(value: Any) -> Any:
    if isinstance(value, bytes | bytearray | memoryview):
        return {"$binary_hex": bytes(value).hex()}
    if isinstance(value, BaseException):
        return {"name": type(value).__name__, "message": str(value)}
    if hasattr(value, "model_dump"):
        return value.model_dump(mode="json")
    return repr(value)


def hard_exit(code: int) -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--apikey", required=True)
    parser.add_argument("--vsn", default="1.0.0")
    parser.add_argument("--topic", required=True)
    parser.add_argument("--key", default="")
    parser.add_argument("--self", dest="self_", action="store_true")
    parser.add_argument("--ack", action="store_true")
    parser.add_argument("--heartbeat-ms", type=float, default=None)
    parser.add_argument("--timeout-ms", type=float, default=None)
    parser.add_argument("--lifetime-s", type=float, default=60.0)
    parser.add_argument("--pg-bindings", type=json.loads, default=[])
    args = parser.parse_args(argv)
    if not isinstance(args.pg_bindings, list) or not all(isinstance(b, dict) for b in args.pg_bindings):
        parser.error("--pg-bindings must be a JSON list of objects")
    if args.vsn != "1.0.0":
        parser.error(f"the PyPI realtime client only speaks vsn 1.0.0, not {args.vsn}")
    host = urlsplit(args.url).hostname
    if host not in LOOPBACK_HOSTS:
        parser.error(f"refusing non-loopback URL {args.url}: this peer is for local tests only")
    return args


class Peer:
    def __init__(self, args: argparse.Namespace) -> None:
        from realtime import AsyncRealtimeClient

        self.args = args
        client_kwargs: dict[str, Any] = {}
        if args.heartbeat_ms is not None:
            client_kwargs["hb_interval"] = max(1, round(args.heartbeat_ms / 1000))
        if args.timeout_ms is not None:
            client_kwargs["timeout"] = args.timeout_ms / 1000
        self.client = AsyncRealtimeClient(args.url, token=args.apikey, **client_kwargs)
        self.channel = self.client.channel(
            args.topic,
            {
                "config": {
                    "broadcast": {"self": args.self_, "ack": args.ack},
                    "presence": {"key": args.key, "enabled": True},
                    "private": False,
                }
            },
        )
        self.channel.on_broadcast("*", self._on_broadcast)
        self.channel.on_presence_sync(lambda: emit({"type": "presence", "event": "sync"}))
        self.channel.on_presence_join(self._on_presence_join)
        self.channel.on_presence_leave(self._on_presence_leave)
        self.channel.on_system(lambda payload: emit({"type": "system", "payload": payload}))
        for index, binding in enumerate(args.pg_bindings):
            self.channel.on_postgres_changes(
                binding.get("event", "*"),
                self._on_postgres_change(index),
                table=binding.get("table"),
                schema=binding.get("schema"),
                filter=binding.get("filter"),
            )
        self.exiting = False
        self.closed = asyncio.Event()

    # --- events ---------------------------------------------------------------------------

    def _on_broadcast(self, message: Mapping[str, Any]) -> None:
        emit(
            {
                "type": "broadcast",
                "event": message.get("event"),
                "payload": message.get("payload"),
                "binary_hex": None,
                "raw": message,
            }
        )

    @staticmethod
    def _on_postgres_change(index: int) -> Callable[[Mapping[str, Any]], None]:
        def callback(payload: Mapping[str, Any]) -> None:
            emit({"type": "postgres_changes", "binding": index, "payload": payload})

        return callback

    def _on_presence_join(self, key: str, current: list[Any], new: list[Any]) -> None:
        emit(
            {
                "type": "presence",
                "event": "join",
                "key": key,
                "currentPresences": current,
                "newPresences": new,
            }
        )

    def _on_presence_leave(self, key: str, current: list[Any], left: list[Any]) -> None:
        emit(
            {
                "type": "presence",
                "event": "leave",
                "key": key,
                "currentPresences": current,
                "leftPresences": left,
            }
        )

    def _on_status(self, status: Any, error: Exception | None) -> None:
        name = str(getattr(status, "value", status))
        emit({"type": "status", "status": name, "error": error})
        if name == "CLOSED":
            self.closed.set()

    # --- commands -------------------------------------------------------------------------

    async def _push_and_wait(self, event: str, payload: dict[str, Any], *, expect_reply: bool) -> str:
        from realtime import RealtimeAcknowledgementStatus

        loop = asyncio.get_running_loop()
        outcome: asyncio.Future[str] = loop.create_future()

        def settle(result: str) -> None:
            if not outcome.done():
                outcome.set_result(result)

        push = await self.channel.push(event, payload)
        if not expect_reply:
            # No reply will ever come; the library's push timer then fires into the void.
            return "ok"
        push.receive(RealtimeAcknowledgementStatus.Ok, lambda _response: settle("ok"))
        push.receive(RealtimeAcknowledgementStatus.Error, lambda _response: settle("error"))
        push.receive(RealtimeAcknowledgementStatus.Timeout, lambda: settle("timed out"))
        return await outcome

    async def handle(self, command: Mapping[str, Any]) -> None:
        cmd = command.get("cmd")
        if cmd == "send":
            result = await self._push_and_wait(
                "broadcast",
                {"type": "broadcast", "event": command["event"], "payload": command.get("payload")},
                expect_reply=self.args.ack,
            )
            emit({"type": "send_result", "event": command["event"], "result": result})
        elif cmd == "send_binary":
            emit({"type": "error", "cmd": cmd, "message": "the PyPI client cannot send binary"})
        elif cmd == "track":
            result = await self._push_and_wait(
                "presence",
                {"event": "track", "payload": command.get("meta") or {}},
                expect_reply=True,
            )
            emit({"type": "track_result", "result": result})
        elif cmd == "untrack":
            result = await self._push_and_wait(
                "presence", {"event": "untrack", "payload": {}}, expect_reply=True
            )
            emit({"type": "untrack_result", "result": result})
        elif cmd == "presence_state":
            emit({"type": "presence_state", "state": self.channel.presence_state()})
        elif cmd == "set_auth":
            # Pushes `access_token` on joined channels, unconditionally (never replied to).
            await self.client.set_auth(command.get("token"))
            emit({"type": "set_auth_result", "result": "ok"})
        elif cmd == "ping":
            emit({"type": "pong"})
        elif cmd == "quit":
            await self.quit()
        else:
            emit({"type": "error", "cmd": cmd, "message": "unknown command"})

    async def quit(self) -> None:
        if self.exiting:
            return
        self.exiting = True
        connected = self.client.is_connected
        await self.channel.unsubscribe()
        # unsubscribe() only sends phx_leave; the CLOSED status marks the server's reply.
        # Without a connection the leave is merely buffered, so don't wait for a reply.
        try:
            if connected:
                await asyncio.wait_for(self.closed.wait(), timeout=self.channel.timeout)
        except TimeoutError:
            result = "timed out"
        else:
            result = "ok" if connected else "not connected"
        emit({"type": "unsubscribe_result", "result": result})
        await self.client.close()
        emit({"type": "bye"})

    # --- main loop ------------------------------------------------------------------------

    async def run(self) -> None:
        emit(
            {
                "type": "hello",
                "client": "realtime (PyPI)",
                "version": _realtime_version(),
                "vsn": self.args.vsn,
                "pid": os.getpid(),
            }
        )
        await self.channel.subscribe(self._on_status)
        reader = await _stdin_reader()
        while not self.exiting:
            line = await reader.readline()
            if not line:
                await self.quit()  # EOF: the controlling test went away
                break
            if not line.strip():
                continue
            try:
                command = json.loads(line)
            except ValueError as exc:
                message = f"invalid JSON command: {exc}"
                emit({"type": "error", "message": message, "line": line.decode()})
                continue
            try:
                await self.handle(command)
            except Exception as exc:
                emit({"type": "error", "cmd": command.get("cmd"), "message": repr(exc)})


async def _stdin_reader() -> asyncio.StreamReader:
    loop = asyncio.get_running_loop()
    # The default 64 KiB line limit would make a large "send" command fatal.
    reader = asyncio.StreamReader(limit=STDIN_LINE_LIMIT)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    return reader


def _realtime_version() -> str | None:
    try:
        from realtime import __version__
    except ImportError:
        return None
    return str(__version__)


async def amain(args: argparse.Namespace) -> None:
    loop = asyncio.get_running_loop()

    def lifetime_exceeded() -> None:
        emit({"type": "fatal", "message": f"lifetime of {args.lifetime_s} s exceeded; exiting"})
        hard_exit(3)

    loop.call_later(args.lifetime_s, lifetime_exceeded)
    await Peer(args).run()


def main() -> None:
    logging.basicConfig(
        stream=sys.stderr,
        level=logging.DEBUG if os.environ.get("PEER_DEBUG") else logging.INFO,
        format="[realtime-py %(levelname)s %(name)s] %(message)s",
    )
    try:
        args = parse_args(sys.argv[1:])
    except SystemExit as exc:
        if exc.code:
            emit({"type": "fatal", "message": "bad arguments (see stderr)"})
        raise
    try:
        asyncio.run(amain(args))
    except BaseException as exc:
        emit({"type": "fatal", "message": f"uncaught exception: {exc!r}"})
        logging.getLogger("py_peer").exception("uncaught exception")
        hard_exit(1)
    hard_exit(0)


if __name__ == "__main__":
    main()
