"""The demos as a user runs them: ``python -m trio_realtime demo`` and ``demo chat``.

Each runs as a subprocess with ``--pace 0`` under a bounded timeout, and must exit 0 on its own
with the transcript's key lines. ``demo chat`` needs PostgreSQL with wal2json (``bash
scripts/bootstrap`` installs it); without it that test fails, it is never skipped. Its
"PostgreSQL unavailable" path is checked in-process with a cluster that fails to start.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

from trio_realtime import __main__ as cli
from trio_realtime._embedded_postgres import EmbeddedPostgresError

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    import pytest

    from trio_realtime._embedded_postgres import EmbeddedPostgres

#: Seconds a demo may take, as a subprocess, before the test gives up (its own deadline is 15).
TIMEOUT = 30


def run_demo(*args: str) -> tuple[list[str], float]:
    """Run ``python -m trio_realtime demo ARGS``; return its stdout lines (timestamps cut off)
    and the wall-clock time it took. Fails with its output unless it exits 0."""
    env = {**os.environ, "PYTHONUTF8": "1"}
    start = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "trio_realtime", "demo", *args],
        capture_output=True, encoding="utf-8", timeout=TIMEOUT, env=env, check=False,
    )
    elapsed = time.monotonic() - start
    output = f"--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"
    assert proc.returncode == 0, f"exit {proc.returncode}\n{output}"
    # "[ 0.123s] alice  receives ..." -> "alice  receives ..."
    lines = [line.split("] ", 1)[1] for line in proc.stdout.splitlines()]
    return lines, elapsed


def assert_in_order(lines: list[str], expected: list[str]) -> None:
    """Each of ``expected`` is (a prefix of) some line, after the line matching the previous one."""
    position = 0
    for wanted in expected:
        for index in range(position, len(lines)):
            if lines[index].startswith(wanted):
                position = index + 1
                break
        else:
            raise AssertionError(f"{wanted!r} not found after line {position}:\n" + "\n".join(lines))


def test_demo_runs_and_exits_by_itself() -> None:
    lines, elapsed = run_demo("--pace", "0")
    assert elapsed < 15
    assert_in_order(lines, [
        "server listening on ws://127.0.0.1:",
        "demo   — everyone is online; alice types and says hello —",
        "demo   — carol's network drops —",
        "carol  rejoined the room (recovered=False",
        "demo   — everyone leaves —",
        "demo   done",
    ])
    for name in ("bob", "carol"):
        assert f"{name:<6} receives alice: 'hello, room!'" in lines
    for name in ("alice", "bob"):
        assert f"{name:<6} sees carol go offline" in lines
        assert f"{name:<6} receives carol: \"sorry, I'm back\"" in lines
    assert lines[-1] == "demo   done"


def test_demo_chat_runs_on_postgres_and_exits_by_itself() -> None:
    lines, elapsed = run_demo("chat", "--pace", "0")
    assert elapsed < 15
    assert_in_order(lines, [
        "pg     embedded PostgreSQL",
        "pg     created table messages",
        "server listening on ws://127.0.0.1:",
        "demo   — everyone is online; alice types and posts —",
        "alice  posts 'hello, room!' (INSERT INTO messages)",
        "bob    reacts 👋 to #1",
        "dave   posts 'anyone here?' in #random",
        "bob    posts 'hi alice' (INSERT INTO messages)",
        "demo   — nobody in #lobby got dave's message",
        "demo   — carol's network drops —",
        "carol  lost the room",
        "bob    posts 'carol, are you still there?'",
        "demo   — carol's network is back —",
        "carol  rejoined the room (recovered=False",
        "carol  refetches messages after #3 from the table: 1 found",
        "carol  catches up on #4 bob: 'carol, are you still there?'",
        "carol  posts 'yes! I was offline, caught up now'",
        "alice  reacts ❤️ to #5",
        "demo   — the messages table holds 5 rows; everyone leaves —",
        "pg     stopped and removed",
        "demo   done",
    ])
    # Messages arrive through postgres_changes, for everyone including the author...
    for name in ("alice", "bob", "carol"):
        assert f"{name:<6} receives #1 alice: 'hello, room!'" in lines
        assert f"{name:<6} receives #3 bob: 'hi alice'" in lines
        assert f"{name:<6} receives #5 carol: 'yes! I was offline, caught up now'" in lines
        assert f"{name:<6} leaves with 4 messages" in lines
    # ... except while offline (carol refetched #4 instead), and never from another room.
    assert "carol  receives #4 bob: 'carol, are you still there?'" not in lines
    assert not [line for line in lines if "!!" in line or "#2" in line]
    # The feed is live before each (re)join completes: 3 joins and carol's rejoin.
    assert sum(line.endswith("messages feed: Subscribed to PostgreSQL") for line in lines) == 4
    # Typing indicators (debounced broadcasts), reactions (broadcasts), members (presence).
    for name in ("bob", "carol"):
        assert f"{name:<6} sees alice typing…" in lines
    assert any(line.startswith("alice  typed 12 keystrokes: ") and "coalesced" in line for line in lines)
    for name in ("alice", "carol"):
        assert f"{name:<6} sees bob react 👋 to #1" in lines
    for name in ("alice", "bob"):
        assert f"{name:<6} sees carol go offline" in lines
        assert f"{name:<6} member list: alice, bob" in lines
    assert sum(line.endswith("member list: alice, bob, carol") for line in lines) >= 5
    assert lines[-1] == "demo   done"


def test_demo_chat_without_postgres_fails_with_bootstrap_hint(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    @asynccontextmanager
    async def no_postgres(**_: object) -> AsyncIterator[EmbeddedPostgres]:
        raise EmbeddedPostgresError("no PostgreSQL server binaries found (looked in /usr/lib/postgresql)")
        yield  # pragma: no cover

    monkeypatch.setattr("trio_realtime._demo_chat.open_embedded_postgres", no_postgres)
    assert cli.main(["demo", "chat", "--pace", "0"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("trio-realtime demo chat: "), err
    assert "no PostgreSQL server binaries found" in err
    assert "`bash scripts/bootstrap`" in err
    assert "Traceback" not in err
