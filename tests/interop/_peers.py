"""Run an official Supabase Realtime client as a remote-controlled subprocess.

``open_peer`` starts one of the stdio peers in this directory (``js/peer.mjs`` for
``@supabase/realtime-js`` on vsn 2.0.0 or 1.0.0, ``py_peer.py`` for the PyPI ``realtime``
package on vsn 1.0.0). The peer connects to ``url``, joins ``realtime:<topic>`` and then obeys
JSON commands; everything it observes comes back as JSON lines (the line protocol is documented
at the top of ``js/peer.mjs``)::

    async with open_peer("js-v2", server_url, topic="room", key="alice", apikey=jwt) as alice:
        await alice.expect(matches("status", status="SUBSCRIBED"), "alice to join")
        await alice.command({"cmd": "send", "event": "hi", "payload": {"n": 1}})
        await alice.expect(matches("send_result", result="ok"), "the broadcast to be acked")

``url`` is the client-side endpoint *without* ``/websocket`` (for example
``ws://127.0.0.1:4000/realtime/v1``); both clients append ``/websocket`` themselves.

Design notes:

* One nursery per peer, owned by ``open_peer``, with two reader tasks: stdout lines become
  events, stderr goes to a bounded buffer. Draining both pipes all the time matters: a peer
  blocked on a full pipe stops sending heartbeats, which would look like a protocol bug.
* ``expect`` takes no timeout (Trio style): wrap it in ``trio.fail_after``. If the body of
  ``open_peer`` raises an exception, the peer's recent stdout and stderr are attached to it as
  a note; if the body is cancelled (a ``fail_after`` expiring), they are printed to stderr,
  which pytest shows for the failing test. Either way a failure shows what the client saw.
* Leaving the block always ends the process: ``quit`` first (a clean ``phx_leave`` and socket
  close), then ``kill`` after a bounded wait. The peers also exit on their own after 60 s.
* A missing ``node``, missing ``node_modules`` or missing ``realtime`` package is an error that
  says to run ``scripts/bootstrap``; these tests are never skipped silently.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from collections import deque
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import trio

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Mapping, Sequence

PeerKind = Literal["js-v2", "js-v1", "py"]
Event = dict[str, Any]

INTEROP_DIR = Path(__file__).resolve().parent
JS_DIR = INTEROP_DIR / "js"
REPO_ROOT = INTEROP_DIR.parent.parent

#: Seconds a peer gets to leave and exit after ``quit`` before it is killed.
QUIT_GRACE = 5.0
#: Bytes of stderr kept for diagnostics (the newest ones).
STDERR_KEEP = 64 * 1024
#: How many of the most recent stdout events a diagnostic message shows.
EVENTS_SHOWN = 40

DEFAULT_APIKEY = "interop-test-apikey"


class PeerSetupError(RuntimeError):
    """The peer cannot be started because the test environment is incomplete."""


class PeerFailure(AssertionError):
    """The peer exited or stopped taking commands; the message carries its output."""


def matches(type_: str, /, **fields: Any) -> Callable[[Event], bool]:
    """Return a predicate that is true for events of ``type_`` whose ``fields`` are equal."""

    def predicate(event: Event) -> bool:
        return event.get("type") == type_ and all(event.get(name) == value for name, value in fields.items())

    predicate.__name__ = f"matches({type_!r}, {fields!r})"
    return predicate


def _bootstrap_hint(problem: str) -> PeerSetupError:
    return PeerSetupError(
        f"{problem}. The interop tests need the official clients installed: "
        f"run `bash scripts/bootstrap` from {REPO_ROOT} (it installs the PyPI `realtime` package "
        f"into .venv and runs `npm ci` in tests/interop/js)."
    )


def peer_argv(
    kind: PeerKind,
    url: str,
    *,
    topic: str,
    key: str,
    self_: bool,
    ack: bool,
    apikey: str,
    heartbeat_ms: int | None = None,
    timeout_ms: int | None = None,
    pg_bindings: Sequence[Mapping[str, Any]] | None = None,
) -> list[str]:
    """Build the command line for a peer, checking that its runtime is installed."""
    if kind in ("js-v2", "js-v1"):
        node = shutil.which("node")
        if node is None:
            raise _bootstrap_hint("`node` was not found on PATH (Node 20+ is required)")
        if not (JS_DIR / "node_modules" / "@supabase" / "realtime-js").is_dir():
            raise _bootstrap_hint(f"{JS_DIR / 'node_modules'} is missing @supabase/realtime-js")
        argv = [node, str(JS_DIR / "peer.mjs")]
        vsn = "2.0.0" if kind == "js-v2" else "1.0.0"
    elif kind == "py":
        if importlib.util.find_spec("realtime") is None:
            raise _bootstrap_hint(f"the PyPI `realtime` package is not importable by {sys.executable}")
        argv = [sys.executable, str(INTEROP_DIR / "py_peer.py")]
        vsn = "1.0.0"
    else:
        raise ValueError(f"unknown peer kind {kind!r}; expected 'js-v2', 'js-v1' or 'py'")
    argv += ["--url", url, "--apikey", apikey, "--vsn", vsn, "--topic", topic, "--key", key]
    if self_:
        argv.append("--self")
    if ack:
        argv.append("--ack")
    if heartbeat_ms is not None:
        argv += ["--heartbeat-ms", str(heartbeat_ms)]
    if timeout_ms is not None:
        argv += ["--timeout-ms", str(timeout_ms)]
    if pg_bindings:
        argv += ["--pg-bindings", json.dumps(list(pg_bindings))]
    return argv


class Peer:
    """A running peer process. Built by `open_peer`; use it only inside that block."""

    def __init__(self, kind: PeerKind, argv: list[str], process: trio.Process) -> None:
        self.kind = kind
        self.argv = argv
        self.process = process
        #: Every event the peer printed, in order (never trimmed).
        self.events: list[Event] = []
        self._unclaimed: list[Event] = []
        self._stderr: deque[bytes | bytearray] = deque()
        self._stderr_size = 0
        self._stdout_eof = False
        self._changed = trio.Event()

    # --- public API ---------------------------------------------------------------------------

    async def command(self, command: Mapping[str, Any]) -> None:
        """Send one command line to the peer.

        This is a checkpoint. Raises AssertionError (with the peer's output) if the peer has
        already exited and cannot take commands any more.
        """
        assert self.process.stdin is not None
        line = (json.dumps(command) + "\n").encode()
        try:
            await self.process.stdin.send_all(line)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise PeerFailure(
                f"{self.kind} peer cannot take command {command!r}: it has exited.\n" + self.diagnostics()
            ) from exc

    async def expect(self, predicate: Callable[[Event], bool], what: str) -> Event:
        """Wait for an event that satisfies ``predicate`` and return it.

        Events are matched in arrival order against every event not yet returned by an earlier
        ``expect``, so an event that arrived early (say, while waiting for something else) is
        still found; each event is returned at most once. No timeout: wrap the call in
        ``trio.fail_after``. This is a checkpoint.

        Raises:
            PeerFailure: (an AssertionError) the peer exited or closed stdout before a matching
                event arrived. The message names ``what`` and includes the recent output.
        """
        await trio.lowlevel.checkpoint()
        while True:
            for index, event in enumerate(self._unclaimed):
                if predicate(event):
                    del self._unclaimed[index]
                    return event
            if self._stdout_eof:
                with trio.move_on_after(QUIT_GRACE):
                    await self.process.wait()
                raise PeerFailure(
                    f"{self.kind} peer exited (returncode {self.process.returncode}) while "
                    f"waiting for {what}.\n" + self.diagnostics()
                )
            await self._changed.wait()

    def stderr_text(self) -> str:
        """The most recent stderr output of the peer (at most ``STDERR_KEEP`` bytes)."""
        return b"".join(self._stderr).decode("utf-8", "replace")

    def diagnostics(self) -> str:
        """A human-readable summary of the peer's recent stdout events and stderr."""
        shown = self.events[-EVENTS_SHOWN:]
        lines = [
            f"--- {self.kind} peer: {' '.join(self.argv)}",
            f"--- returncode: {self.process.returncode}",
            f"--- last {len(shown)} of {len(self.events)} stdout events:",
            *(json.dumps(event) for event in shown),
            "--- stderr (tail):",
            self.stderr_text()[-8000:].rstrip() or "(empty)",
        ]
        return "\n".join(lines)

    # --- internals ----------------------------------------------------------------------------

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    # The two readers must never raise: open_peer relies on the body being the only possible
    # source of an exception inside its nursery.

    async def _read_stdout(self) -> None:
        assert self.process.stdout is not None
        pending = b""
        try:
            async for chunk in self.process.stdout:
                pending += chunk
                *lines, pending = pending.split(b"\n")
                for raw in lines:
                    if raw.strip():
                        self._add_event(raw)
                self._notify()
            if pending.strip():
                self._add_event(pending)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            self._add_event(json.dumps({"type": "_stdout_error", "error": repr(exc)}).encode())
        finally:
            self._stdout_eof = True
            self._notify()

    def _add_event(self, raw: bytes) -> None:
        text = raw.decode("utf-8", "replace")
        try:
            event = json.loads(text)
        except ValueError:
            event = {"type": "_garbage", "line": text}
        if not isinstance(event, dict):
            event = {"type": "_garbage", "line": text}
        self.events.append(event)
        self._unclaimed.append(event)

    async def _read_stderr(self) -> None:
        assert self.process.stderr is not None
        try:
            async for chunk in self.process.stderr:
                self._keep_stderr(chunk)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            self._keep_stderr(f"\n[_peers: reading stderr failed: {exc!r}]\n".encode())

    def _keep_stderr(self, chunk: bytes | bytearray) -> None:
        self._stderr.append(chunk)
        self._stderr_size += len(chunk)
        while self._stderr_size > STDERR_KEEP and len(self._stderr) > 1:
            self._stderr_size -= len(self._stderr.popleft())

    async def _shutdown(self) -> None:
        """Ask the peer to quit, then kill it if it does not exit in time. Shielded by caller."""
        if self.process.returncode is None and not self._stdout_eof:
            try:
                await self.command({"cmd": "quit"})
            except PeerFailure:
                pass
        with trio.move_on_after(QUIT_GRACE):
            await self.process.wait()
        if self.process.returncode is None:
            self.process.kill()
            await self.process.wait()
        if self.process.stdin is not None:
            await self.process.stdin.aclose()


@asynccontextmanager
async def open_peer(
    kind: PeerKind,
    url: str,
    *,
    topic: str,
    key: str,
    self_: bool = True,
    ack: bool = True,
    apikey: str = DEFAULT_APIKEY,
    heartbeat_ms: int | None = None,
    timeout_ms: int | None = None,
    pg_bindings: Sequence[Mapping[str, Any]] | None = None,
) -> AsyncIterator[Peer]:
    """Start an official-client peer and yield a `Peer` to drive it.

    Args:
        kind: ``"js-v2"`` (realtime-js, vsn 2.0.0), ``"js-v1"`` (realtime-js, vsn 1.0.0) or
            ``"py"`` (PyPI ``realtime``, vsn 1.0.0).
        url: endpoint without ``/websocket``, e.g. ``ws://127.0.0.1:PORT/realtime/v1``;
            must be loopback (the peers refuse anything else).
        topic: sub-topic; the client joins ``realtime:<topic>``.
        key: presence key (``""`` lets the server pick one).
        self_: ``config.broadcast.self``.
        ack: ``config.broadcast.ack``.
        apikey: sent as the ``apikey`` query parameter (and as the join ``access_token`` by
            the PyPI client).
        heartbeat_ms: client heartbeat interval (the PyPI client rounds to seconds and uses at
            least 15 s); default: the library's own (25 s).
        timeout_ms: client push timeout; default: the library's own (10 s).
        pg_bindings: postgres_changes filters (``{"event", "schema", "table", "filter"}``)
            registered before the join; each change a binding's callback receives comes back
            as ``{"type": "postgres_changes", "binding": <index>, "payload": ...}``.

    Raises:
        PeerSetupError: node, the npm packages or the PyPI package are not installed.
    """
    argv = peer_argv(
        kind,
        url,
        topic=topic,
        key=key,
        self_=self_,
        ack=ack,
        apikey=apikey,
        heartbeat_ms=heartbeat_ms,
        timeout_ms=timeout_ms,
        pg_bindings=pg_bindings,
    )
    process = await trio.lowlevel.open_process(
        argv,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=str(INTEROP_DIR),
    )
    peer = Peer(kind, argv, process)
    body_exc: Exception | None = None
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(peer._read_stdout)
            nursery.start_soon(peer._read_stderr)
            try:
                yield peer
            except Exception as exc:
                body_exc = exc
                if not isinstance(exc, PeerFailure):  # those already include the output
                    exc.add_note(peer.diagnostics())
                raise
            except BaseException as exc:
                # Typically Cancelled from a fail_after around expect(): it cannot carry a note
                # (the TooSlowError is raised further out), so the output goes to stderr, which
                # pytest shows for a failing test.
                print(
                    f"[_peers] leaving open_peer by {type(exc).__name__}; peer output:\n"
                    + peer.diagnostics(),
                    file=sys.stderr,
                )
                raise
            finally:
                with trio.CancelScope(shield=True):
                    await peer._shutdown()
                # The readers end at EOF once the process is gone; don't wait on stray
                # grandchildren that might still hold the pipes open.
                nursery.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        # The nursery wraps the body's exception in a group. The readers never raise, so a
        # group holding exactly the body's exception is unwrapped; anything else is re-raised
        # unchanged rather than unwrapped blindly.
        if body_exc is not None and list(group.exceptions) == [body_exc]:
            context, suppress = body_exc.__context__, body_exc.__suppress_context__
            try:
                raise body_exc  # its own __cause__/__context__ are restored below
            finally:
                body_exc.__context__, body_exc.__suppress_context__ = context, suppress
                del body_exc
        raise
    finally:
        if process.returncode is None:
            process.kill()
            with trio.CancelScope(shield=True):
                await process.wait()
