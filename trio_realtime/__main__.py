"""The ``trio-realtime`` / ``python -m trio_realtime`` command line.

Commands: ``serve`` (the reference server), ``demo`` (a narrated chat on the embedded server;
``demo chat`` keeps the messages in an embedded PostgreSQL),
``listen`` (print a channel's events as JSON lines), ``send`` (one broadcast) and ``presence``
(track yourself and print who is online).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import TYPE_CHECKING, Any

import trio

from ._client import RealtimeClient, open_realtime
from ._config import RealtimeConfig
from ._errors import RealtimeError
from .protocol import (
    Broadcast,
    BroadcastConfig,
    PresenceConfig,
    PresenceJoin,
    PresenceLeave,
    PresenceSync,
    RealtimeEvent,
)

if TYPE_CHECKING:
    from collections.abc import Sequence
    from contextlib import AbstractAsyncContextManager

__all__ = ["main"]


def _event_json(event: RealtimeEvent) -> str:
    record: dict[str, Any] = {"type": type(event).__name__}
    for field in getattr(type(event), "__attrs_attrs__", ()):
        value = getattr(event, field.name)
        record[field.name] = value.hex() if isinstance(value, bytes) else value
    return json.dumps(record, default=str)


def _open(args: argparse.Namespace) -> AbstractAsyncContextManager[RealtimeClient]:
    config = RealtimeConfig(vsn=args.vsn)
    return open_realtime(args.url, api_key=args.api_key, access_token=args.token, config=config)


def _client_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("url", help="realtime endpoint, e.g. ws://127.0.0.1:4000/realtime/v1")
    parser.add_argument("topic", help="channel name (without the realtime: prefix)")
    parser.add_argument("--api-key", default="anon", help="API key (sent as the apikey query parameter)")
    parser.add_argument("--token", default=None, help="user access token (JWT) for the channel")
    parser.add_argument("--vsn", default="2.0.0", choices=["1.0.0", "2.0.0"])
    parser.add_argument("--private", action="store_true", help="join as a private channel")


async def _listen(args: argparse.Namespace) -> None:
    async with _open(args) as client:
        presence = PresenceConfig(enabled=True) if args.presence else None
        async with client.channel(
            args.topic,
            presence=presence,
            private=args.private,
            broadcast=BroadcastConfig(receive_own=True),
        ) as sub:
            print(json.dumps({"type": "joined", "topic": sub.topic}), flush=True)
            count = 0
            async for event in sub:
                print(_event_json(event), flush=True)
                count += 1
                if args.count and count >= args.count:
                    return


async def _send(args: argparse.Namespace) -> None:
    try:
        payload = json.loads(args.payload)
    except ValueError as exc:
        raise SystemExit(f"payload must be JSON: {exc}") from None
    async with _open(args) as client:
        async with client.channel(
            args.topic, private=args.private, broadcast=BroadcastConfig(ack=args.ack)
        ) as sub:
            await sub.send_broadcast(args.event, payload)
            print(json.dumps({"type": "sent", "topic": sub.topic, "event": args.event, "acked": args.ack}))


async def _presence(args: argparse.Namespace) -> None:
    try:
        meta = json.loads(args.meta)
    except ValueError as exc:
        raise SystemExit(f"--meta must be a JSON object: {exc}") from None
    async with _open(args) as client:
        async with client.channel(
            args.topic, private=args.private, presence=PresenceConfig(key=args.key)
        ) as sub:
            await sub.track(meta)
            with trio.move_on_after(args.duration):
                async for event in sub:
                    if isinstance(event, PresenceSync | PresenceJoin | PresenceLeave | Broadcast):
                        print(_event_json(event), flush=True)


def _build_parser() -> argparse.ArgumentParser:
    from .server._cli import add_serve_parser

    parser = argparse.ArgumentParser(prog="trio-realtime", description=__doc__.splitlines()[0])
    parser.add_argument(
        "-v", "--verbose", action="count", default=0, help="more logging (-v info, -vv debug)"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    add_serve_parser(sub)

    sub.add_parser("bench", add_help=False, help="run the benchmark harness (python -m benchmarks)")
    demo = sub.add_parser("demo", help="a narrated chat between three clients on the embedded server")
    demo.add_argument(
        "variant",
        nargs="?",
        choices=["chat"],
        help="chat: messages are PostgreSQL rows delivered by postgres_changes (needs PostgreSQL)",
    )
    demo.add_argument("--deadline", type=float, default=15.0, help="give up after this many seconds")
    demo.add_argument("--pace", type=float, default=0.4, help="pause between steps, for reading")

    listen = sub.add_parser("listen", help="print a channel's events as JSON lines")
    _client_args(listen)
    listen.add_argument("--presence", action="store_true", help="also receive presence")
    listen.add_argument("--count", type=int, default=0, help="exit after this many events (0: never)")

    send = sub.add_parser("send", help="send one broadcast")
    _client_args(send)
    send.add_argument("event")
    send.add_argument("payload", help="JSON payload")
    send.add_argument("--ack", action="store_true", help="wait for the server's acknowledgement")

    presence = sub.add_parser("presence", help="track yourself on a channel and print who is online")
    _client_args(presence)
    presence.add_argument("--key", required=True, help="your presence key")
    presence.add_argument("--meta", default="{}", help="JSON metadata to track")
    presence.add_argument("--duration", type=float, default=30.0, help="seconds to stay")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    arguments = list(sys.argv[1:] if argv is None else argv)
    if arguments[:1] == ["bench"]:
        # The harness has its own options (argparse would mangle its leading --flags).
        from ._bench import run_bench

        return run_bench(arguments[1:])
    parser = _build_parser()
    args = parser.parse_args(arguments)
    # The demo narrates connection losses itself; its log would only repeat them.
    quiet = logging.ERROR if args.command == "demo" else logging.WARNING
    level = [quiet, logging.INFO, logging.DEBUG][min(args.verbose, 2)]
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        if args.command == "serve":
            from .server._cli import run_serve

            return run_serve(args)
        if args.command == "demo" and args.variant == "chat":
            from ._demo_chat import ChatDemoUnavailable, run_chat_demo

            try:
                trio.run(lambda: run_chat_demo(deadline=args.deadline, pace=args.pace))
            except ChatDemoUnavailable as exc:
                print(f"trio-realtime demo chat: {exc}", file=sys.stderr)
                return 1
        elif args.command == "demo":
            from ._demo import run_demo

            trio.run(lambda: run_demo(deadline=args.deadline, pace=args.pace))
        elif args.command == "listen":
            trio.run(_listen, args)
        elif args.command == "send":
            trio.run(_send, args)
        elif args.command == "presence":
            trio.run(_presence, args)
    except RealtimeError as exc:
        print(f"trio-realtime {args.command}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    except trio.TooSlowError:
        if args.command != "demo":
            raise
        print(f"trio-realtime demo: did not finish within {args.deadline:g} s (--deadline)", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
