"""``open_embedded_postgres`` and ``serve --embedded-postgres`` / ``--database-url``."""

from __future__ import annotations

import functools
import json
import os
import re
import signal
import socket
import subprocess
import sys
from typing import TYPE_CHECKING

import psycopg
import pytest
import trio
import trio_websocket

from trio_realtime.server import EmbeddedPostgres, open_embedded_postgres
from trio_realtime.server._cli import main

if TYPE_CHECKING:
    from pathlib import Path


def _query(dsn: str, sql: str) -> list[tuple[object, ...]]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        cur = conn.execute(sql)  # type: ignore[arg-type]
        return cur.fetchall() if cur.description is not None else []


def _accepts(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


async def test_pg_embedded_cluster_lifecycle() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with trio.fail_after(60):
        async with open_embedded_postgres(port=port) as pg:
            assert pg.port == port
            assert pg.dsn == f"postgresql://postgres@127.0.0.1:{port}/postgres"
            assert pg.data_dir.is_dir()
            settings = await trio.to_thread.run_sync(
                _query, pg.dsn, "select current_setting('wal_level'), current_setting('listen_addresses'), "
                "current_setting('max_replication_slots')::int, current_user"
            )
            assert settings == [("logical", "127.0.0.1", 32, "postgres")]
            if os.geteuid() == 0:  # PostgreSQL never runs as root
                assert pg.data_dir.stat().st_uid != 0
            base = pg.data_dir.parent
        assert not base.exists()
        assert not _accepts(port)
    with pytest.raises(ValueError, match=r"^port must be in 0\.\.65535, got -1$"):
        async with open_embedded_postgres(port=-1):
            pass  # pragma: no cover


async def test_pg_embedded_clusters_run_in_parallel_and_clean_up_on_cancel() -> None:
    with trio.fail_after(60):
        clusters: list[EmbeddedPostgres] = []
        ready = trio.Semaphore(0)

        async def run() -> None:
            async with open_embedded_postgres() as pg:
                clusters.append(pg)
                ready.release()
                await trio.sleep_forever()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(run)
            nursery.start_soon(run)
            await ready.acquire()
            await ready.acquire()
            a, b = clusters
            assert a.port != b.port
            for pg in clusters:
                assert await trio.to_thread.run_sync(_query, pg.dsn, "select 1") == [(1,)]
            nursery.cancel_scope.cancel()
        for pg in clusters:
            assert not pg.data_dir.parent.exists()
            assert not _accepts(pg.port)


async def _read_line(stream: trio.abc.ReceiveStream) -> str:
    line = b""
    while not line.endswith(b"\n"):
        chunk = await stream.receive_some(1)
        assert chunk, "the server exited early"
        line += chunk
    return line.decode()


async def test_pg_cli_embedded_postgres_end_to_end() -> None:
    """``serve --embedded-postgres`` prints the database URL, then the listening line; a row
    written there reaches a subscriber; SIGINT stops both (exit status 0)."""
    argv = [sys.executable, "-m", "trio_realtime.server", "--port", "0", "--embedded-postgres",
            "--log-level", "WARNING"]
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            run = functools.partial(trio.run_process, argv, stdout=subprocess.PIPE, check=False)
            proc: trio.Process = await nursery.start(run)
            assert proc.stdout is not None
            dsn_line = await _read_line(proc.stdout)
            m = re.fullmatch(r"trio_realtime embedded PostgreSQL at (postgresql://postgres@127\.0\.0\.1:(\d+)"
                             r"/postgres)\n", dsn_line)
            assert m is not None, dsn_line
            dsn, pg_port = m.group(1), int(m.group(2))
            listening = await _read_line(proc.stdout)
            m = re.fullmatch(r"trio_realtime server listening on (ws://127\.0\.0\.1:\d+/realtime/v1) .*\n",
                             listening)
            assert m is not None, listening
            url = m.group(1)
            await trio.to_thread.run_sync(_query, dsn, "create table notes (id int primary key, body text)")
            async with trio_websocket.open_websocket_url(f"{url}/websocket?vsn=2.0.0&apikey=k") as ws:
                binding = {"event": "*", "schema": "public", "table": "notes"}
                join = {"config": {"postgres_changes": [binding]}}
                await ws.send_message(json.dumps(["1", "1", "realtime:n", "phx_join", join]))
                assert json.loads(await ws.get_message())[3] == "phx_reply"
                assert json.loads(await ws.get_message())[4]["message"] == "Subscribed to PostgreSQL"
                await trio.to_thread.run_sync(_query, dsn, "insert into notes values (1, 'hi')")
                change = json.loads(await ws.get_message())
                assert change[3] == "postgres_changes"
                assert change[4]["data"]["record"] == {"id": 1, "body": "hi"}
            proc.send_signal(signal.SIGINT)
            assert await proc.wait() == 0
        assert not _accepts(pg_port)


def test_pg_cli_bad_database_url(capsys: pytest.CaptureFixture[str]) -> None:
    """Exit status 1 and a message that names the database but not its password."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # nothing listens there once closed
    url = f"postgresql://alice:s3cret-pw@127.0.0.1:{port}/app"
    assert main(["serve", "--port", "0", "--database-url", url, "--log-level", "ERROR"]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: cannot connect to the database alice@127.0.0.1:{port}/app: "), err
    assert "s3cret" not in err


def test_pg_embedded_missing_binaries_message(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Without PostgreSQL the error names the Debian packages and the bootstrap script."""
    from trio_realtime import _embedded_postgres as ep

    monkeypatch.setenv("PATH", str(tmp_path))  # no pg_config
    with pytest.raises(ep.EmbeddedPostgresError) as info:
        ep.find_postgres(tmp_path / "nothing")
    message = str(info.value)
    assert "`postgresql`" in message
    assert "`postgresql-<version>-wal2json`" in message
    assert "bash scripts/bootstrap" in message
    (tmp_path / "nothing" / "15" / "bin").mkdir(parents=True)
    for name in ("initdb", "postgres"):
        (tmp_path / "nothing" / "15" / "bin" / name).write_text("")
    with pytest.raises(ep.EmbeddedPostgresError) as info:
        ep.find_postgres(tmp_path / "nothing")
    assert "`postgresql-15-wal2json`" in str(info.value)
