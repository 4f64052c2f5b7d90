"""``python -m trio_realtime serve``: run the reference server from a shell.

``add_serve_parser`` adds the ``serve`` sub-command to an ``argparse`` parser (the package's
``__main__`` owns the top-level parser); ``run_serve`` runs it; ``main`` is a stand-alone entry
point with only that sub-command.

On start the server prints one line to stdout, ``trio_realtime server listening on
ws://HOST:PORT/realtime/v1 (vsn 1.0.0 and 2.0.0)``, so scripts can wait for it and read the
port. With ``--embedded-postgres`` it is preceded by ``trio_realtime embedded PostgreSQL at
postgresql://postgres@127.0.0.1:PORT/postgres`` (the database to write to). Logs go to
stderr. SIGINT (Ctrl-C) or SIGTERM stops it with exit status 0.

postgres_changes need a database: ``--database-url URL`` (or ``$TRIO_REALTIME_DATABASE_URL``)
names one with ``wal_level=logical`` and wal2json; ``--embedded-postgres`` starts a
throwaway one with the machine's PostgreSQL for the lifetime of the server (its data is
deleted on exit).
"""

from __future__ import annotations

import argparse
import functools
import logging
import os
import signal
import sys
from typing import TYPE_CHECKING, Any

import trio

from .._embedded_postgres import EmbeddedPostgresError, open_embedded_postgres
from ..protocol import SUPPORTED_VSNS
from ._config import ServerConfig
from ._postgres import DatabaseUnavailable
from ._serve import RealtimeServer, serve_realtime

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Sequence

__all__ = ["add_serve_parser", "main", "run_serve"]

logger = logging.getLogger("trio_realtime.server")

_SECRET_ENV = "TRIO_REALTIME_JWT_SECRET"
_DATABASE_ENV = "TRIO_REALTIME_DATABASE_URL"


def add_serve_parser(subparsers: argparse._SubParsersAction[Any]) -> argparse.ArgumentParser:
    """Add the ``serve`` sub-command to ``subparsers``; it sets ``func=run_serve``."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "serve",
        help="run the reference Supabase Realtime server",
        description="Run a Supabase Realtime-compatible WebSocket server (vsn 1.0.0 and 2.0.0).",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: %(default)s)")
    parser.add_argument("--port", type=int, default=4000,
                        help="port to bind, 0 for any (default: %(default)s)")
    parser.add_argument(
        "--jwt-secret",
        default=None,
        help=f"HMAC secret that API keys and access tokens must be signed with (default: ${_SECRET_ENV}). "
        "Without one the server runs in development mode and accepts any API key.",
    )
    parser.add_argument(
        "--vsn-default",
        default="1.0.0",
        choices=SUPPORTED_VSNS,
        help="serializer for clients that send no vsn (default: %(default)s, like Phoenix)",
    )
    parser.add_argument("--idle-timeout", type=float, default=60.0, help="seconds (default: %(default)s)")
    parser.add_argument(
        "--join-error-backoff", type=float, default=0.0,
        help="delay before join error replies, seconds (official: 5; default: %(default)s)",
    )
    parser.add_argument(
        "--connect-error-backoff", type=float, default=0.0,
        help="delay before refusing a bad API key, seconds (official: 2; default: %(default)s)",
    )
    database = parser.add_mutually_exclusive_group()
    database.add_argument(
        "--database-url", default=None, metavar="URL",
        help=f"PostgreSQL (wal_level=logical, with wal2json) whose row changes are streamed as "
        f"postgres_changes (default: ${_DATABASE_ENV}). Without a database, postgres_changes "
        "bindings get an error.",
    )
    database.add_argument(
        "--embedded-postgres", action="store_true",
        help="start a throwaway PostgreSQL with this machine's PostgreSQL binaries for the lifetime "
        "of the server, and stream its changes; prints its URL",
    )
    parser.add_argument(
        "--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="(default: %(default)s)",
    )
    parser.set_defaults(func=run_serve)
    return parser


async def _serve(args: argparse.Namespace, config: ServerConfig, secret: str | None) -> None:
    # SIGINT/SIGTERM end the server cleanly (exit status 0) instead of unwinding a
    # KeyboardInterrupt through the nurseries.
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        if args.embedded_postgres:
            async with open_embedded_postgres() as pg:
                print(f"trio_realtime embedded PostgreSQL at {pg.dsn}", flush=True)
                await _run_server(args, config, secret, pg.dsn, signals)
        else:
            database_url = args.database_url or os.environ.get(_DATABASE_ENV) or None
            await _run_server(args, config, secret, database_url, signals)


async def _run_server(args: argparse.Namespace, config: ServerConfig, secret: str | None,
                      database_url: str | None, signals: AsyncIterator[int]) -> None:
    async with trio.open_nursery() as nursery:
        server: RealtimeServer = await nursery.start(
            functools.partial(serve_realtime, args.host, args.port, jwt_secret=secret, config=config,
                              database_url=database_url)
        )
        print(f"trio_realtime server listening on {server.url} (vsn {' and '.join(SUPPORTED_VSNS)})",
              flush=True)
        async for signum in signals:  # pragma: no branch
            logger.info("received %s; stopping", signal.Signals(signum).name)
            nursery.cancel_scope.cancel()
            break


def _first_leaf(group: BaseExceptionGroup[BaseException]) -> BaseException:
    first = group.exceptions[0]
    return _first_leaf(first) if isinstance(first, BaseExceptionGroup) else first


def run_serve(args: argparse.Namespace) -> int:
    """Run the server described by parsed ``serve`` arguments until SIGINT/SIGTERM.

    Returns:
        The exit status: 0 after a signal, 1 if the server could not listen or its database
        is unusable, 2 for bad options.
    """
    logging.basicConfig(level=args.log_level, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    secret = args.jwt_secret if args.jwt_secret is not None else os.environ.get(_SECRET_ENV) or None
    try:
        config = ServerConfig(
            default_vsn=args.vsn_default,
            idle_timeout=args.idle_timeout,
            join_error_backoff=args.join_error_backoff,
            connect_error_backoff=args.connect_error_backoff,
        )
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    status = 0
    try:
        trio.run(_serve, args, config, secret)
    except* (DatabaseUnavailable, EmbeddedPostgresError) as group:
        print(f"error: {_first_leaf(group)}", file=sys.stderr)
        status = 1
    except* OSError as group:
        print(f"error: cannot listen on {args.host}:{args.port}: {group.exceptions[0]}", file=sys.stderr)
        status = 1
    return status


def main(argv: Sequence[str] | None = None) -> int:
    """Stand-alone entry point: ``main(["serve", "--port", "4000"])``."""
    parser = argparse.ArgumentParser(prog="python -m trio_realtime")
    subparsers = parser.add_subparsers(dest="command", required=True)
    add_serve_parser(subparsers)
    args = parser.parse_args(argv)
    result: int = args.func(args)
    return result
