"""A throwaway PostgreSQL cluster for tests and local development: ``open_embedded_postgres()``.

Theory of operation
-------------------
The reference server's postgres_changes need a real PostgreSQL with logical decoding and the
wal2json output plugin (see ``trio_realtime.server._postgres``). This module starts one
from the PostgreSQL server binaries already installed on the machine (Debian's
``postgresql-<ver>`` and ``postgresql-<ver>-wal2json`` packages, or any installation whose
``pg_config`` is on ``PATH``); nothing is downloaded.

A cluster lives in a fresh temporary directory::

    <tmp>/trio_realtime_pg_XXXX/
        data/            initdb's data directory (trust auth, UTF8, C locale, no fsync)
        run/             the unix socket directory (so parallel clusters never collide)
        postgres.log     the server's log, quoted in errors when it fails to start

and the ``postgres`` process runs with ``wal_level=logical``, enough replication slots,
``listen_addresses=127.0.0.1`` only and trust authentication (loopback and the private
socket directory only, so nothing outside this machine can reach it). PostgreSQL refuses to
run as root, so when this process *is* root the cluster runs as the unprivileged
``postgres`` system user, which owns the temporary directory.

Start-up waits (bounded) until the postmaster reports ``ready`` in ``postmaster.pid``. With
``port=0`` a free port is picked; if another process grabs it before PostgreSQL binds it,
the start is retried with another port. Shutdown is a *fast* shutdown (SIGINT: sessions are
rolled back, no checkpoint wait), escalating to immediate (SIGQUIT) and SIGKILL if it
hangs; then the directory is removed. Shutdown runs shielded, so it also happens when the
block is left by cancellation. (If this process is killed with SIGKILL, nothing can stop the
cluster: it keeps running, in its own process group, until stopped by hand.)

The blocking work (initdb, waiting for start and stop) lives in the synchronous
:class:`_Cluster`, which :func:`open_embedded_postgres` drives through
``trio.to_thread.run_sync``; a synchronous caller (a session-scoped pytest fixture, say)
can use :class:`_Cluster` directly.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Final, final

import attrs
import trio

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

__all__ = ["EmbeddedPostgres", "EmbeddedPostgresError", "open_embedded_postgres"]

_DEBIAN_ROOT: Final = Path("/usr/lib/postgresql")
_START_TIMEOUT: Final = 60.0
_STOP_TIMEOUT: Final = 15.0
_PORT_ATTEMPTS: Final = 5
_SERVER_SETTINGS: Final = {
    "listen_addresses": "127.0.0.1",
    "wal_level": "logical",
    "max_replication_slots": "32",
    "max_wal_senders": "32",
    "max_connections": "100",
    "shared_buffers": "16MB",
    # A throwaway cluster: durability buys nothing. (synchronous_commit stays on: logical
    # decoding only sees flushed WAL, so asynchronous commits would reach subscribers late.)
    "fsync": "off",
    "full_page_writes": "off",
    "logging_collector": "off",
    "log_min_messages": "warning",
    "timezone": "UTC",
}
_HINT: Final = "run `bash scripts/bootstrap` (it installs them with apt-get)"


class EmbeddedPostgresError(RuntimeError):
    """The embedded PostgreSQL could not be started: missing binaries, or a failed start.

    The message says what is missing and how to install it, or quotes the server's log.
    """


@final
@attrs.frozen(kw_only=True)
class EmbeddedPostgres:
    """A running embedded cluster, as handed out by :func:`open_embedded_postgres`.

    Attributes:
        dsn: a libpq connection URL for the superuser, e.g.
            ``postgresql://postgres@127.0.0.1:54321/postgres`` (no password: trust auth).
        host: always ``127.0.0.1``.
        port: the TCP port it listens on.
        user: the database superuser, ``postgres``.
        database: ``postgres``.
        data_dir: the cluster's data directory (removed when the block exits).
        socket_dir: the directory of its unix socket.
        version: the PostgreSQL major version, e.g. ``15``.
    """

    dsn: str
    host: str
    port: int
    user: str
    database: str
    data_dir: Path
    socket_dir: Path
    version: int


@attrs.frozen(kw_only=True)
class _Install:
    bindir: Path
    libdir: Path
    version: int


def _version_of(bindir: Path) -> int:
    try:
        out = subprocess.run([str(bindir / "postgres"), "--version"], capture_output=True, text=True,
                             check=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return 0
    match = re.search(r"(\d+)(?:\.\d+)?", out)
    return int(match.group(1)) if match else 0


def _candidates(root: Path) -> list[_Install]:
    found: list[_Install] = []
    if root.is_dir():
        for vdir in root.iterdir():
            if vdir.name.isdigit():
                found.append(_Install(bindir=vdir / "bin", libdir=vdir / "lib", version=int(vdir.name)))
    pg_config = shutil.which("pg_config")
    if pg_config is not None:
        try:
            out = subprocess.run([pg_config, "--bindir", "--pkglibdir"], capture_output=True, text=True,
                                 check=True, timeout=30).stdout.split("\n")
        except (OSError, subprocess.SubprocessError):
            out = []
        if len(out) >= 2 and out[0] and out[1]:
            bindir = Path(out[0])
            if all(c.bindir != bindir for c in found):
                found.append(_Install(bindir=bindir, libdir=Path(out[1]), version=_version_of(bindir)))
    found.sort(key=lambda c: c.version, reverse=True)
    return found


def find_postgres(root: Path = _DEBIAN_ROOT) -> _Install:
    """The newest local PostgreSQL with server binaries and wal2json.

    Looks in ``root/<version>/{bin,lib}`` (Debian's layout), then asks ``pg_config`` on PATH.

    Raises:
        EmbeddedPostgresError: none found; the message names the packages to install.
    """
    candidates = _candidates(root)
    servers = [c for c in candidates if (c.bindir / "initdb").is_file() and (c.bindir / "postgres").is_file()]
    if not servers:
        raise EmbeddedPostgresError(
            "PostgreSQL server binaries not found (looked for initdb and postgres under "
            f"{root}/*/bin and via pg_config on PATH). postgres_changes need a local "
            "PostgreSQL with the wal2json plugin: install the Debian packages `postgresql` and "
            f"`postgresql-<version>-wal2json`, or {_HINT}."
        )
    for install in servers:
        if (install.libdir / "wal2json.so").is_file():
            return install
    best = servers[0]
    raise EmbeddedPostgresError(
        f"the wal2json output plugin is not installed for PostgreSQL {best.version} (no wal2json.so "
        f"in {best.libdir}): install the Debian package `postgresql-{best.version}-wal2json`, "
        f"or {_HINT}."
    )


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _traversable_by_others(path: Path) -> bool:
    for part in [path, *path.parents]:
        try:
            if not part.stat().st_mode & stat.S_IXOTH:
                return False
        except OSError:
            return False
    return True


@attrs.define(eq=False)
class _RunAs:
    """Who runs the cluster: the current user, or ``postgres`` when we are root."""

    uid: int | None = None
    gid: int | None = None

    @classmethod
    def for_current_process(cls) -> _RunAs:
        if os.geteuid() != 0:
            return cls()
        import pwd

        try:
            entry = pwd.getpwnam("postgres")
        except KeyError:
            raise EmbeddedPostgresError(
                "running as root, and PostgreSQL refuses to run as root, but there is no `postgres` "
                "system user to run it as (the Debian `postgresql` package creates one): install "
                f"`postgresql`, or {_HINT}, or run as an unprivileged user."
            ) from None
        return cls(uid=entry.pw_uid, gid=entry.pw_gid)

    def popen_kwargs(self) -> dict[str, object]:
        if self.uid is None:
            return {}
        return {"user": self.uid, "group": self.gid, "extra_groups": []}

    def give(self, path: Path) -> None:
        if self.uid is not None and self.gid is not None:
            os.chown(path, self.uid, self.gid)


class _PortTaken(Exception):
    pass


@attrs.define(eq=False)
class _Cluster:
    """The synchronous core: ``start()`` blocks until ready, ``stop()`` until gone.

    ``stop()`` is safe to call at any point (also after a failed or partial ``start()``)
    and more than once.
    """

    port: int = 0
    base: Path | None = None
    process: subprocess.Popen[bytes] | None = attrs.field(default=None, repr=False)

    def start(self) -> EmbeddedPostgres:
        install = find_postgres()
        run_as = _RunAs.for_current_process()
        parent = Path(tempfile.gettempdir())
        if run_as.uid is not None and not _traversable_by_others(parent):
            parent = Path("/tmp")
        self.base = base = Path(tempfile.mkdtemp(prefix="trio_realtime_pg_", dir=parent))
        run_as.give(base)
        data, run = base / "data", base / "run"
        run.mkdir(mode=0o700)
        run_as.give(run)
        env = {**os.environ, "LC_ALL": "C", "LANG": "C", "TZ": "UTC"}
        try:
            subprocess.run(
                [str(install.bindir / "initdb"), "-D", str(data), "-U", "postgres", "-A", "trust",
                 "-E", "UTF8", "--no-locale", "--no-sync"],
                cwd=base, env=env, capture_output=True, check=True, timeout=_START_TIMEOUT,
                **run_as.popen_kwargs(),  # type: ignore[call-overload]
            )
        except subprocess.CalledProcessError as exc:
            output = (exc.stdout + exc.stderr).decode("utf-8", "replace").strip()
            raise EmbeddedPostgresError(f"initdb failed (exit status {exc.returncode}):\n{output}") from exc
        except subprocess.TimeoutExpired as exc:
            raise EmbeddedPostgresError(f"initdb did not finish within {_START_TIMEOUT:g} s") from exc
        for attempt in range(_PORT_ATTEMPTS):
            port = self.port or _free_port()
            try:
                self._start_server(install, run_as, env, port)
            except _PortTaken:
                if self.port or attempt == _PORT_ATTEMPTS - 1:
                    raise EmbeddedPostgresError(
                        f"PostgreSQL could not listen on 127.0.0.1:{port}: address already in use"
                    ) from None
                continue
            return EmbeddedPostgres(
                dsn=f"postgresql://postgres@127.0.0.1:{port}/postgres",
                host="127.0.0.1",
                port=port,
                user="postgres",
                database="postgres",
                data_dir=data,
                socket_dir=run,
                version=install.version,
            )
        raise AssertionError("unreachable")  # pragma: no cover

    def _start_server(self, install: _Install, run_as: _RunAs, env: dict[str, str], port: int) -> None:
        assert self.base is not None
        data, run, log_path = self.base / "data", self.base / "run", self.base / "postgres.log"
        args = [str(install.bindir / "postgres"), "-D", str(data), "-p", str(port), "-k", str(run)]
        for name, value in _SERVER_SETTINGS.items():
            args += ["-c", f"{name}={value}"]
        with open(log_path, "ab") as log:
            # Its own process group: a Ctrl-C in the terminal reaches only us, and we stop
            # PostgreSQL after the server that uses it (not while it still runs).
            self.process = subprocess.Popen(
                args, cwd=self.base, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                process_group=0, **run_as.popen_kwargs(),  # type: ignore[call-overload]
            )
        deadline = time.monotonic() + _START_TIMEOUT
        pid_file = data / "postmaster.pid"
        while True:
            if self.process.poll() is not None:
                self.process = None
                text = log_path.read_text("utf-8", "replace")
                if "already in use" in text:
                    log_path.unlink(missing_ok=True)
                    raise _PortTaken
                tail = "\n".join(text.strip().splitlines()[-20:])
                raise EmbeddedPostgresError(f"PostgreSQL exited during start-up; its log says:\n{tail}")
            with contextlib.suppress(OSError):
                lines = pid_file.read_text("utf-8", "replace").splitlines()
                # Line 8 of postmaster.pid is the postmaster status (PostgreSQL 10+).
                if len(lines) >= 8 and lines[7].strip() == "ready":
                    return
            if time.monotonic() > deadline:
                self._stop_process()
                raise EmbeddedPostgresError(
                    f"PostgreSQL did not accept connections within {_START_TIMEOUT:g} s (log: {log_path})"
                )
            time.sleep(0.02)

    def _stop_process(self) -> None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        # fast shutdown, then immediate, then the hammer
        for sig, wait in ((signal.SIGINT, _STOP_TIMEOUT), (signal.SIGQUIT, 5.0), (signal.SIGKILL, 5.0)):
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(sig)
            try:
                process.wait(timeout=wait)
                return
            except subprocess.TimeoutExpired:
                continue

    def stop(self) -> None:
        try:
            self._stop_process()
        finally:
            base, self.base = self.base, None
            if base is not None:
                shutil.rmtree(base, ignore_errors=True)


@contextlib.asynccontextmanager
async def open_embedded_postgres(*, port: int = 0) -> AsyncIterator[EmbeddedPostgres]:
    """Run a throwaway PostgreSQL cluster for the duration of the block.

    The cluster is made for postgres_changes: ``wal_level=logical`` and wal2json are
    available, and it listens on ``127.0.0.1`` only with trust authentication. When the
    block exits (normally, by an exception or by cancellation) PostgreSQL is stopped with
    a fast shutdown (open sessions are rolled back) and its directory is deleted, so
    nothing written to it survives. Several clusters may run at once.

    Example::

        async with open_embedded_postgres() as pg:
            server = await nursery.start(
                functools.partial(serve_realtime, "127.0.0.1", 0, database_url=pg.dsn)
            )

    Args:
        port: the TCP port; 0 picks a free one (see :attr:`EmbeddedPostgres.port`).

    Raises:
        EmbeddedPostgresError: the PostgreSQL server binaries or wal2json are not installed
            (the message names the Debian packages), or the server failed to start (the
            message quotes its log).
    """
    if port < 0 or port > 65535:
        raise ValueError(f"port must be in 0..65535, got {port!r}")
    cluster = _Cluster(port=port)
    try:
        # Not abandoned on cancellation: start-up is bounded, and the cleanup below must
        # see the process it started.
        yield await trio.to_thread.run_sync(cluster.start)
    finally:
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(cluster.stop)
