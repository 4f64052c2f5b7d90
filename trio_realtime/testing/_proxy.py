"""A loopback TCP proxy that injects faults between a client and a server.

Theory of operation
-------------------
:func:`open_fault_proxy` listens on a loopback port and forwards every connection it accepts
to a target (the server), byte for byte, until told to misbehave. It knows nothing about
WebSockets or Phoenix: faults happen at the TCP level, where real networks fail, so the
code under test sees exactly what a broken network would show it (a reset, silence, a slow
link), and it works for any TCP protocol.

The proxy owns one nursery. In it, :func:`trio.serve_listeners` accepts connections and runs
one *link* task per accepted connection (the way ``trio.serve_tcp`` runs handlers). A link
opens its upstream connection to the target, then runs its two directions in its own child
nursery. Each direction is a small pipeline of two tasks joined by a bounded memory channel::

    source socket --> reader --[at most _PIPELINE_CHUNKS chunks]--> writer --> destination

The *reader* stamps each chunk with the instant it may be delivered (now + the latency of
that direction) and blocks when the pipeline is full, so TCP back-pressure reaches the
sender and memory stays bounded. The *writer* waits for that instant, for the direction's
gate to be open (see :meth:`FaultProxy.stall`), and for the bandwidth pacer, then writes.
Byte counters, :meth:`~FaultProxy.cut_after` and :meth:`~FaultProxy.cut_every` count bytes
when they are *written*, so a cut after ``n`` bytes delivers exactly ``n`` bytes.

A link ends in one of two ways:

* **gracefully**, when each side has sent EOF (forwarded as a half-close) and both
  directions drained: both sockets are closed normally;
* **abruptly**, when it is cut, when either socket fails, or when the proxy exits: both
  sockets are closed with ``SO_LINGER`` set to zero, so each peer gets a TCP reset (RST),
  and anything still in flight — in the pipeline or in the kernel's buffers — is lost.

Everything is deterministic: there is no randomness and no timer except the latency and
bandwidth ones you set. Faults are driven by your test, either on command (:meth:`cut`,
:meth:`stall`) or by byte counts (:meth:`cut_after`, :meth:`cut_every`), never by wall-clock
schedules, so a test replays the same way every time.

The proxy is a test tool: it only ever listens on, and connects to, loopback addresses.
"""

from __future__ import annotations

import ipaddress
import math
import socket
import struct
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Final, Literal, final
from urllib.parse import urlsplit, urlunsplit

import attrs
import trio

from .._util import NoPublicConstructor

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable

__all__ = ["FaultProxy", "FaultProxyStatistics", "open_fault_proxy"]

#: A direction of traffic through the proxy, or both.
Direction = Literal["client_to_server", "server_to_client", "both"]
_OneWay = Literal["client_to_server", "server_to_client"]

_ONE_WAYS: Final[tuple[_OneWay, _OneWay]] = ("client_to_server", "server_to_client")
#: Bytes per socket read.
_CHUNK: Final = 65536
#: Chunks each direction of a link holds between its reader and its writer. With _CHUNK this
#: bounds what the proxy itself holds per link to 2 * 16 * 64 KiB (plus one chunk per task).
_PIPELINE_CHUNKS: Final = 16
#: When throttled, write at most this fraction of a second's worth of bytes at a time.
_PACING_SLICE: Final = 0.05
#: A socket's errors when its peer is gone or it was closed under us.
_SOCKET_ERRORS: Final = (trio.BrokenResourceError, trio.ClosedResourceError, OSError)


def _check_direction(direction: str) -> tuple[_OneWay, ...]:
    if direction == "both":
        return _ONE_WAYS
    if direction == "client_to_server":
        return ("client_to_server",)
    if direction == "server_to_client":
        return ("server_to_client",)
    raise ValueError(f"direction must be 'client_to_server', 'server_to_client' or 'both', got {direction!r}")


def _check_loopback(host: str, what: str) -> None:
    if host == "localhost":
        return
    try:
        address = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        address = None
    if address is None or not address.is_loopback:
        raise ValueError(
            f"the fault proxy only works on loopback addresses (it is a test tool), but {what} is "
            f"{host!r}; use 127.0.0.1, ::1 or localhost"
        )


def _abort_socket(stream: trio.SocketStream) -> None:
    """Make the next close of ``stream`` send a TCP reset and discard unsent data.

    (``struct linger`` is two C ints on Linux and macOS. Where the option is refused, the
    close stays an orderly FIN: the peer sees EOF instead of a reset.)
    """
    try:
        stream.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except (OSError, trio.ClosedResourceError):
        pass  # already closed or reset: there is nothing left to abort


@final
@attrs.frozen(kw_only=True)
class FaultProxyStatistics:
    """A snapshot of a :class:`FaultProxy`, from :meth:`FaultProxy.statistics`.

    Attributes:
        connections_accepted: TCP connections the proxy accepted, refused ones included (so
            this counts every connection attempt that reached the proxy).
        connections_refused: accepted connections reset at once because of
            :meth:`FaultProxy.refuse_new_connections`.
        connections_failed: accepted connections reset because the target could not be
            reached (the server is down).
        connections_cut: connections reset by :meth:`FaultProxy.cut`,
            :meth:`~FaultProxy.cut_after` or :meth:`~FaultProxy.cut_every`.
        active_connections: connections being proxied right now.
        bytes_client_to_server: bytes delivered to the server, over all connections.
        bytes_server_to_client: bytes delivered to clients, over all connections.
    """

    connections_accepted: int
    connections_refused: int
    connections_failed: int
    connections_cut: int
    active_connections: int
    bytes_client_to_server: int
    bytes_server_to_client: int


@attrs.define(eq=False)
class _Gate:
    """Open, or closed until :meth:`open` (one direction of one link)."""

    _opened: trio.Event | None = None

    @property
    def is_open(self) -> bool:
        return self._opened is None

    def close(self) -> None:
        if self._opened is None:
            self._opened = trio.Event()

    def open(self) -> None:
        if self._opened is not None:
            self._opened.set()
            self._opened = None

    async def wait_open(self) -> None:
        while self._opened is not None:
            await self._opened.wait()


@attrs.define(eq=False)
class _Link:
    """One proxied connection: the accepted client socket and its upstream socket."""

    id: int
    client: trio.SocketStream
    upstream: trio.SocketStream | None = None
    scope: trio.CancelScope = attrs.field(factory=trio.CancelScope)
    closed: trio.Event = attrs.field(factory=trio.Event)
    #: Both directions ended with EOF: close normally instead of resetting.
    graceful: bool = False
    was_cut: bool = False
    gates: dict[_OneWay, _Gate] = attrs.field(factory=lambda: {d: _Gate() for d in _ONE_WAYS})
    #: Bytes counted towards cut_every since the link was accepted or the rule was set.
    every_count: int = 0
    #: Bandwidth pacing: when each direction's link is free again.
    free_at: dict[_OneWay, float] = attrs.field(factory=lambda: dict.fromkeys(_ONE_WAYS, -math.inf))


@attrs.define(eq=False)
class _ByteRule:
    """Cut after ``nbytes`` bytes in ``directions``.

    For :meth:`FaultProxy.cut_after`, ``nbytes`` counts down as bytes are delivered; for
    :meth:`FaultProxy.cut_every` it stays the per-connection budget (``_Link.every_count``
    counts up).
    """

    directions: tuple[_OneWay, ...]
    nbytes: int


@final
class FaultProxy(metaclass=NoPublicConstructor):
    """A running fault-injection proxy; see :func:`open_fault_proxy`.

    There is no public constructor. Every setting applies at once to the connections being
    proxied and to the ones accepted later, unless its method says otherwise. Settings
    methods are synchronous and never block; :meth:`cut` and :meth:`wait_statistics` are
    checkpoints.
    """

    def __init__(self, listener: trio.SocketListener, target_host: str, target_port: int) -> None:
        sockname = listener.socket.getsockname()
        self._host: str = sockname[0]
        self._port: int = sockname[1]
        self._target = (target_host, target_port)
        self._links: dict[int, _Link] = {}
        self._next_id = 0
        self._refusing = False
        self._stall_new: set[_OneWay] = set()
        self._latency: dict[_OneWay, float] = dict.fromkeys(_ONE_WAYS, 0.0)
        self._bandwidth: dict[_OneWay, float | None] = dict.fromkeys(_ONE_WAYS, None)
        self._cut_after: _ByteRule | None = None
        self._cut_every: _ByteRule | None = None
        self._changed = trio.Event()
        self._counts = dict.fromkeys(
            (
                "accepted",
                "refused",
                "failed",
                "cut",
                "client_to_server",
                "server_to_client",
            ),
            0,
        )

    def __repr__(self) -> str:
        return (
            f"<FaultProxy {self.address} -> {self._target[0]}:{self._target[1]}, "
            f"{len(self._links)} connections>"
        )

    # -- where it is ---------------------------------------------------------------------

    @property
    def host(self) -> str:
        """The address the proxy listens on."""
        return self._host

    @property
    def port(self) -> int:
        """The port the proxy listens on (the one picked by the OS if you passed 0)."""
        return self._port

    @property
    def address(self) -> str:
        """``host:port`` of the proxy (``[host]:port`` for IPv6), as it goes in a URL."""
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"{host}:{self._port}"

    @property
    def target(self) -> tuple[str, int]:
        """``(host, port)`` new connections are forwarded to."""
        return self._target

    def url_for(self, url: str) -> str:
        """``url`` with its host and port replaced by the proxy's.

        Everything else (scheme, path, query) is kept, so ``proxy.url_for(server.url)`` is the
        server's URL, reached through the proxy.

        Raises:
            ValueError: ``url`` has no host.
        """
        parts = urlsplit(url)
        if not parts.hostname:
            raise ValueError(f"cannot route {url!r} through the proxy: the URL has no host")
        userinfo, at, _ = parts.netloc.rpartition("@")
        netloc = f"{userinfo}{at}{self.address}"
        return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))

    def set_target(self, host: str, port: int) -> None:
        """Forward connections accepted from now on to ``host:port``.

        Connections already proxied keep their server. Use it when the server under test is
        restarted on another port: clients keep the proxy's URL and reconnect to the new one.

        Raises:
            ValueError: ``host`` is not a loopback address.
        """
        _check_loopback(host, "the target host")
        self._target = (host, port)

    # -- faults --------------------------------------------------------------------------

    async def cut(self) -> None:
        """Reset every connection being proxied now, as a network failure would.

        Both sides get a TCP reset (RST); bytes in flight are lost. Connections attempted
        afterwards are accepted as usual (combine with :meth:`refuse_new_connections` to
        keep them out). Returns once every cut connection's sockets are closed. A
        checkpoint.
        """
        links = list(self._links.values())
        for link in links:
            self._cut(link)
        for link in links:
            await link.closed.wait()
        await trio.lowlevel.checkpoint()

    def cut_after(self, nbytes: int, *, direction: Direction = "server_to_client") -> None:
        """Reset every connection once ``nbytes`` more bytes have been delivered in ``direction``.

        A one-shot trigger: the bytes are counted from now, over all connections, and
        exactly ``nbytes`` are delivered (the chunk that crosses the line is cut short);
        then every connection is reset as by :meth:`cut`, and the trigger is spent. A second
        call replaces a trigger that has not fired yet.

        Args:
            nbytes: bytes to let through first (>= 0; 0 cuts at the next byte).
            direction: which traffic counts; ``"both"`` counts the two directions together.

        Raises:
            ValueError: ``nbytes`` is negative, or ``direction`` is not a direction.
        """
        directions = _check_direction(direction)
        if nbytes < 0:
            raise ValueError(f"nbytes must be >= 0, got {nbytes!r}")
        self._cut_after = _ByteRule(directions=directions, nbytes=nbytes)

    def cut_every(self, nbytes: int | None, *, direction: Direction = "server_to_client") -> None:
        """Reset each connection once it has delivered ``nbytes`` bytes in ``direction``.

        A standing rule, counted per connection: a connection accepted later is cut after
        its own ``nbytes``, and a connection already open counts from now. Exactly
        ``nbytes`` are delivered before the reset. A client that reconnects each time thus
        sees its connection cut every ``nbytes`` bytes, deterministically. ``None`` removes
        the rule.

        Args:
            nbytes: bytes per connection (> 0), or None to stop cutting.
            direction: which traffic counts; ``"both"`` counts the two directions together.

        Raises:
            ValueError: ``nbytes`` is not positive, or ``direction`` is not a direction.
        """
        directions = _check_direction(direction)
        if nbytes is None:
            self._cut_every = None
            return
        if nbytes <= 0:
            raise ValueError(f"nbytes must be > 0 (or None to stop), got {nbytes!r}")
        self._cut_every = _ByteRule(directions=directions, nbytes=nbytes)
        for link in self._links.values():
            link.every_count = 0

    def stall(self, direction: Direction = "both", *, new_connections: bool = False) -> None:
        """Stop delivering bytes in ``direction``: a half-open link.

        Bytes are **held, not dropped**: the proxy stops writing them, keeps reading until
        its bounded pipeline is full (16 chunks of 64 KiB per connection and direction),
        then stops reading, so the kernel buffers fill and the sender's writes eventually
        block, as over a real dead link. Nothing errors and nothing closes: only timeouts,
        such as a heartbeat, can notice. :meth:`resume` delivers the held bytes, in order.

        Args:
            direction: the traffic to hold.
            new_connections: also stall connections accepted from now on (a link that is
                down for everyone). By default only the connections open now are stalled,
                the way one TCP connection goes half-open while new ones work.

        Raises:
            ValueError: ``direction`` is not a direction.
        """
        directions = _check_direction(direction)
        for link in self._links.values():
            for one_way in directions:
                link.gates[one_way].close()
        if new_connections:
            self._stall_new.update(directions)

    def resume(self, direction: Direction = "both") -> None:
        """Undo :meth:`stall` for ``direction``: held bytes flow again, in order.

        Applies to every connection, and stops stalling new ones.

        Raises:
            ValueError: ``direction`` is not a direction.
        """
        directions = _check_direction(direction)
        self._stall_new.difference_update(directions)
        for link in self._links.values():
            for one_way in directions:
                link.gates[one_way].open()

    def set_latency(self, seconds: float, *, direction: Direction = "both") -> None:
        """Delay every chunk by ``seconds`` in ``direction`` (one way), preserving order.

        Latency does not limit throughput: chunks are stamped when read and delivered
        ``seconds`` later, pipelined. It applies to chunks read from now on; those already
        in the proxy keep their stamp (and order is kept either way). ``0`` removes it.
        With ``direction="both"`` a round trip takes ``2 * seconds`` longer.

        Raises:
            ValueError: ``seconds`` is negative or not finite, or ``direction`` is not one.
        """
        directions = _check_direction(direction)
        if not (seconds >= 0 and math.isfinite(seconds)):
            raise ValueError(f"latency must be a finite number of seconds >= 0, got {seconds!r}")
        for one_way in directions:
            self._latency[one_way] = float(seconds)

    def set_bandwidth(self, bytes_per_second: float | None, *, direction: Direction = "both") -> None:
        """Throttle each connection to ``bytes_per_second`` in ``direction``; None: no limit.

        The limit is per connection and direction (every connection gets its own link).
        Bytes are written in slices of at most a twentieth of a second's worth, each one
        when the link is free, so delivering ``n`` bytes takes at least
        ``n / bytes_per_second`` seconds.

        Raises:
            ValueError: ``bytes_per_second`` is not a positive finite number, or
                ``direction`` is not a direction.
        """
        directions = _check_direction(direction)
        if bytes_per_second is not None and not (bytes_per_second > 0 and math.isfinite(bytes_per_second)):
            raise ValueError(f"bytes_per_second must be > 0 or None, got {bytes_per_second!r}")
        for one_way in directions:
            self._bandwidth[one_way] = None if bytes_per_second is None else float(bytes_per_second)

    def refuse_new_connections(self, refuse: bool = True) -> None:
        """While ``refuse`` is true, reset every new connection as soon as it is accepted.

        A client's TCP connect succeeds (the kernel completes it) but its first read or write
        fails with a connection reset, so a WebSocket client sees its upgrade fail. Open
        connections are not affected (use :meth:`cut` as well for a full outage).
        """
        self._refusing = bool(refuse)

    # -- observing -----------------------------------------------------------------------

    def statistics(self) -> FaultProxyStatistics:
        """A snapshot of the proxy's counters."""
        c = self._counts
        return FaultProxyStatistics(
            connections_accepted=c["accepted"],
            connections_refused=c["refused"],
            connections_failed=c["failed"],
            connections_cut=c["cut"],
            active_connections=len(self._links),
            bytes_client_to_server=c["client_to_server"],
            bytes_server_to_client=c["server_to_client"],
        )

    async def wait_statistics(self, predicate: Callable[[FaultProxyStatistics], bool]) -> None:
        """Wait until ``predicate(proxy.statistics())`` is true. A checkpoint.

        The predicate runs in your task, once now and again after every change of a counter
        (a connection accepted or closed, bytes delivered). Use it to order a test without
        sleeping, e.g. ``await proxy.wait_statistics(lambda s: s.connections_refused >= 3)``.
        """
        while not predicate(self.statistics()):
            await self._changed.wait()
        await trio.lowlevel.checkpoint()

    # -- internals -----------------------------------------------------------------------

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    def _cut(self, link: _Link) -> None:
        if not link.was_cut:
            link.was_cut = True
            self._counts["cut"] += 1
        link.graceful = False
        link.scope.cancel()

    async def _handle(self, client: trio.SocketStream) -> None:
        """One accepted connection (run by ``serve_listeners``, which closes ``client`` after)."""
        self._counts["accepted"] += 1
        if self._refusing:
            self._counts["refused"] += 1
            _abort_socket(client)
            self._notify()
            return
        link = _Link(id=self._next_id, client=client)
        self._next_id += 1
        for one_way in self._stall_new:
            link.gates[one_way].close()
        self._links[link.id] = link
        self._notify()
        try:
            with link.scope:
                try:
                    upstream = await trio.open_tcp_stream(*self._target)
                except OSError:
                    self._counts["failed"] += 1
                    return
                link.upstream = upstream
                async with trio.open_nursery() as nursery:
                    for one_way, source, destination in (
                        ("client_to_server", client, upstream),
                        ("server_to_client", upstream, client),
                    ):
                        send, receive = trio.open_memory_channel[tuple[float, bytes]](_PIPELINE_CHUNKS)
                        nursery.start_soon(self._read, link, one_way, source, send)
                        nursery.start_soon(self._write, link, one_way, destination, receive)
                link.graceful = True
        finally:
            # Closed synchronously: an await here would raise Cancelled when the proxy is
            # exiting, and leave the second socket open.
            for stream in (client, link.upstream):
                if stream is None:
                    continue
                if not link.graceful:
                    _abort_socket(stream)
                stream.socket.close()
            del self._links[link.id]
            link.closed.set()
            self._notify()

    async def _read(
        self,
        link: _Link,
        one_way: _OneWay,
        source: trio.SocketStream,
        pipeline: trio.MemorySendChannel[tuple[float, bytes]],
    ) -> None:
        async with pipeline:
            while True:
                try:
                    data = await source.receive_some(_CHUNK)
                except _SOCKET_ERRORS:
                    self._broken(link)
                    return
                # b"" is EOF: it travels down the pipeline like data, so it keeps its place.
                try:
                    await pipeline.send((trio.current_time() + self._latency[one_way], bytes(data)))
                except trio.BrokenResourceError:
                    return  # the writer is gone: the link is being torn down
                if not data:
                    return

    async def _write(
        self,
        link: _Link,
        one_way: _OneWay,
        destination: trio.SocketStream,
        pipeline: trio.MemoryReceiveChannel[tuple[float, bytes]],
    ) -> None:
        async with pipeline:
            async for deliver_at, data in pipeline:
                await trio.sleep_until(deliver_at)
                gate = link.gates[one_way]
                if not data:
                    await gate.wait_open()
                    try:
                        await destination.send_eof()
                    except _SOCKET_ERRORS:
                        self._broken(link)
                    return
                view = memoryview(data)
                while view:
                    await gate.wait_open()
                    n = self._allowance(link, one_way, len(view))
                    if n > 0:
                        n = await self._pace(link, one_way, n)
                        try:
                            await destination.send_all(view[:n])
                        except _SOCKET_ERRORS:
                            self._broken(link)
                            return
                        view = view[n:]
                    if self._delivered(link, one_way, n):
                        return

    def _allowance(self, link: _Link, one_way: _OneWay, n: int) -> int:
        """How many of the next ``n`` bytes may go before a byte rule fires."""
        after, every = self._cut_after, self._cut_every
        if after is not None and one_way in after.directions:
            n = min(n, after.nbytes)
        if every is not None and one_way in every.directions:
            n = min(n, max(0, every.nbytes - link.every_count))
        return n

    async def _pace(self, link: _Link, one_way: _OneWay, n: int) -> int:
        """Wait until the throttled link may carry the next slice; return its size."""
        rate = self._bandwidth[one_way]
        if rate is None:
            return n
        n = min(n, max(1, int(rate * _PACING_SLICE)))
        free_at = max(link.free_at[one_way], trio.current_time()) + n / rate
        link.free_at[one_way] = free_at
        await trio.sleep_until(free_at)
        return n

    def _delivered(self, link: _Link, one_way: _OneWay, n: int) -> bool:
        """Count ``n`` delivered bytes; True if a byte rule fired (the link is being cut)."""
        self._counts[one_way] += n
        self._notify()
        fired = False
        after = self._cut_after
        if after is not None and one_way in after.directions:
            after.nbytes -= n
            if after.nbytes <= 0:
                self._cut_after = None
                for other in list(self._links.values()):
                    self._cut(other)
                fired = True
        every = self._cut_every
        if every is not None and one_way in every.directions:
            link.every_count += n
            if link.every_count >= every.nbytes:
                self._cut(link)
                fired = True
        return fired

    def _broken(self, link: _Link) -> None:
        """A socket of ``link`` failed: reset the other one too, as a failure propagates."""
        link.graceful = False
        link.scope.cancel()


@asynccontextmanager
async def open_fault_proxy(
    target_host: str,
    target_port: int,
    *,
    listen_host: str = "127.0.0.1",
    listen_port: int = 0,
) -> AsyncIterator[FaultProxy]:
    """Run a fault-injection TCP proxy to ``target_host:target_port`` for the block.

    Point the code under test at the proxy instead of the server
    (``proxy.url_for(server.url)``), then break the network on command from the test::

        async with open_fault_proxy("127.0.0.1", server.port) as proxy:
            async with open_realtime(proxy.url_for(server.url)) as client:
                await proxy.cut()                      # every connection gets a TCP reset
                proxy.stall("server_to_client")        # a half-open link
                proxy.set_latency(0.05)                # 50 ms each way
                proxy.set_bandwidth(100_000)           # 100 kB/s each way, per connection
                proxy.refuse_new_connections()         # reconnects fail until allowed again

    The proxy runs its accept loop and every proxied connection in a nursery of its own;
    leaving the block resets every connection still open (as :meth:`FaultProxy.cut` does)
    and closes the listening socket. Only loopback addresses are allowed.

    Args:
        target_host: the server's address: a loopback IP address or ``"localhost"``.
        target_port: the server's port.
        listen_host: the loopback IP address to listen on.
        listen_port: the port to listen on; 0 (the default) lets the OS pick a free one,
            available as ``proxy.port``.

    Raises:
        ValueError: an address is not a loopback one.
        OSError: the listening socket could not be opened (e.g. the port is taken).
    """
    _check_loopback(target_host, "target_host")
    _check_loopback(listen_host, "listen_host")
    if listen_host == "localhost":
        listen_host = "127.0.0.1"  # one listener, one port (not one per address family)
    listeners = await trio.open_tcp_listeners(listen_port, host=listen_host.strip("[]"))
    if len(listeners) != 1:  # pragma: no cover - an IP literal resolves to one address
        for extra in listeners:
            await extra.aclose()
        raise ValueError(f"listen_host {listen_host!r} resolved to {len(listeners)} addresses; pass one")
    proxy = FaultProxy._create(listeners[0], target_host, target_port)
    async with trio.open_nursery() as nursery:
        await nursery.start(trio.serve_listeners, proxy._handle, listeners)
        try:
            yield proxy
        finally:
            nursery.cancel_scope.cancel()
