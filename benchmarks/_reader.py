"""Reader workers: ``python -m benchmarks._reader KIND --task throughput|rtt ...``.

Each run is one process holding one client, so asyncio, Trio and Node never share a process.
The result is one JSON line on stdout; then the process exits at once (``os._exit``), without
the client's graceful close, which is not what is measured.

Kinds (``KINDS``):

``trio_realtime``        our client: ``async for event in sub``, counting :class:`Broadcast`.
``trio_realtime_batch``  our client with a batch receive (``await sub.receive_batch()``), if the
                         library has one; otherwise the worker reports ``unavailable``.
``trio_websocket``       bare trio-websocket ``get_message()`` loop, default settings (4 KiB
                         reads): the naive Trio ceiling. Raw strings, no JSON.
``trio_websocket_64k``   the same with 64 KiB reads.
``websockets``           bare ``websockets`` (asyncio) ``recv()`` loop: the Python ceiling.
``realtime_py``          the official PyPI ``realtime`` client, counting broadcast callbacks.
``raw_socket``           a blocking socket that counts bytes and divides by the frame size:
                         the blaster's own ceiling (proves the server is not the bottleneck).

(realtime-js runs in ``benchmarks/realtime_js_reader.mjs`` with the same arguments and output.)

Throughput (``--task throughput``): count messages; after the first broadcast, wait
``--warmup`` seconds, then measure for ``--duration`` seconds. The clock is read every
``CHECK_EVERY`` messages (every batch for batch readers), the same in every reader.

Round trip (``--task rtt``): join with ``self: true`` and send broadcasts at each fixed rate in
``--rates`` for ``--duration`` seconds, timing each one from just before its send to its arrival
(both in this process, ``time.perf_counter``); the first ``--warmup`` seconds are discarded.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import socket
import sys
import time
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import urlencode

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

from ._frames import EVENT, TOPIC_NAME, client_broadcast_push, client_join_frame, payloads

KINDS: Final = (
    "trio_realtime",
    "trio_realtime_batch",
    "trio_websocket",
    "trio_websocket_64k",
    "websockets",
    "realtime_py",
    "raw_socket",
)
#: Messages between two clock reads (the same in every reader).
CHECK_EVERY: Final = 64
API_KEY: Final = "bench"
#: Seconds an rtt run waits for its last messages after the last send.
STRAGGLERS: Final = 2.0
#: Batch-receive method names probed on a Subscription, in order.
BATCH_METHODS: Final = ("receive_batch", "receive_many")


def emit(result: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(result) + "\n")
    sys.stdout.flush()


def finish(result: dict[str, Any]) -> None:
    """Print the result and leave at once (no graceful close: it is not what is measured)."""
    emit(result)
    sys.stderr.flush()
    os._exit(0)


def ws_url(base: str, vsn: str, size: int | None = None) -> str:
    """``ws://host:port/realtime/v1`` -> the full WebSocket URL with apikey, vsn (and size)."""
    query: dict[str, str] = {"apikey": API_KEY, "vsn": vsn}
    if size is not None:
        query["size"] = str(size)
    return f"{base}/websocket?{urlencode(query)}"


class Meter:
    """Counts messages; measures ``duration`` seconds after a ``warmup`` from the first one."""

    def __init__(self, warmup: float, duration: float) -> None:
        self.warmup = warmup
        self.duration = duration
        self.count = 0
        self.next_check = 1
        self.t_first: float | None = None
        self.t0 = 0.0
        self.n0 = 0
        self.started = False
        self.done = False
        self.t1 = 0.0
        self.n1 = 0
        self.on_start: Callable[[], None] | None = None

    def check(self) -> bool:
        """Call when ``count >= next_check``; True once the measurement is over."""
        self.next_check = self.count + CHECK_EVERY
        now = time.perf_counter()
        if self.t_first is None:
            self.t_first = now
        elif not self.started:
            if now - self.t_first >= self.warmup:
                self.started = True
                self.t0, self.n0 = now, self.count
                if self.on_start is not None:
                    self.on_start()
        elif now - self.t0 >= self.duration:
            self.t1, self.n1 = now, self.count
            self.done = True
        return self.done

    def result(self, kind: str, **extra: Any) -> dict[str, Any]:
        seconds = self.t1 - self.t0
        messages = self.n1 - self.n0
        return {
            "kind": kind,
            "status": "ok",
            "messages": messages,
            "seconds": seconds,
            "rate": messages / seconds if seconds > 0 else 0.0,
            **extra,
        }


# -- throughput readers ----------------------------------------------------------------------


async def _tp_trio_realtime(args: argparse.Namespace, batch: bool) -> None:
    from trio_realtime import Broadcast, RealtimeConfig, open_realtime

    config = RealtimeConfig(vsn=args.vsn, params={"size": str(args.size)})
    meter = Meter(args.warmup, args.duration)
    kind = "trio_realtime_batch" if batch else "trio_realtime"
    async with open_realtime(args.url, api_key=API_KEY, config=config) as client:
        stats0: list[Any] = []
        meter.on_start = lambda: stats0.append(client.statistics())
        async with client.channel(TOPIC_NAME) as sub:
            if batch:
                method = next((getattr(sub, m) for m in BATCH_METHODS if hasattr(sub, m)), None)
                if method is None:
                    finish(
                        {
                            "kind": kind,
                            "status": "unavailable",
                            "reason": "Subscription has no batch receive ("
                            + " / ".join(BATCH_METHODS)
                            + ") yet",
                        }
                    )
                    return
                while True:
                    events = await method()
                    for event in events:
                        if type(event) is Broadcast:
                            meter.count += 1
                    if meter.count >= meter.next_check and meter.check():
                        break
            else:
                async for event in sub:
                    if type(event) is Broadcast:
                        meter.count += 1
                        if meter.count >= meter.next_check and meter.check():
                            break
            s0, s1 = stats0[0], client.statistics()
            frames = s1.frames_received - s0.frames_received
            finish(
                meter.result(
                    kind,
                    frames_rate=frames / (meter.t1 - meter.t0),
                    dropped=s1.dropped_events - s0.dropped_events,
                )
            )


async def _tp_trio_websocket(args: argparse.Namespace, receive_size: int | None) -> None:
    from trio_websocket import open_websocket_url

    kwargs: dict[str, Any] = {}
    if receive_size is not None:
        kwargs["receive_buffer_size"] = receive_size
    meter = Meter(args.warmup, args.duration)
    async with open_websocket_url(ws_url(args.url, args.vsn, args.size), **kwargs) as ws:
        await ws.send_message(client_join_frame(args.vsn))
        await ws.get_message()  # the join reply
        while True:
            await ws.get_message()
            meter.count += 1
            if meter.count >= meter.next_check and meter.check():
                break
        kind = "trio_websocket" if receive_size is None else "trio_websocket_64k"
        finish(meter.result(kind))


async def _tp_websockets(args: argparse.Namespace) -> None:
    from websockets.asyncio.client import connect

    meter = Meter(args.warmup, args.duration)
    async with connect(ws_url(args.url, args.vsn, args.size), max_size=None, compression=None) as ws:
        await ws.send(client_join_frame(args.vsn))
        await ws.recv()
        recv = ws.recv
        while True:
            await recv()
            meter.count += 1
            if meter.count >= meter.next_check and meter.check():
                break
        finish(meter.result("websockets"))


async def _tp_realtime_py(args: argparse.Namespace) -> None:
    import asyncio

    from realtime import AsyncRealtimeClient

    meter = Meter(args.warmup, args.duration)
    done = asyncio.Event()
    client = AsyncRealtimeClient(args.url, token=API_KEY, params={"size": str(args.size)})
    channel = client.channel(TOPIC_NAME, {"config": {"broadcast": {"self": False, "ack": False}}})

    def on_broadcast(_message: Any) -> None:
        meter.count += 1
        if meter.count >= meter.next_check and not meter.done and meter.check():
            done.set()

    channel.on_broadcast(EVENT, on_broadcast)
    await channel.subscribe()
    await done.wait()
    finish(meter.result("realtime_py"))


def _tp_raw_socket(args: argparse.Namespace) -> None:
    """Read the blast with a blocking socket; messages = bytes / frame size. Ceiling check."""
    from urllib.parse import urlsplit

    from wsproto import ConnectionType, WSConnection
    from wsproto.events import AcceptConnection, Request, TextMessage

    from ._frames import blast_buffer

    buf, n = blast_buffer(args.vsn, args.size, 512)
    frame_size = len(buf) / n
    url = urlsplit(ws_url(args.url, args.vsn, args.size))
    sock = socket.create_connection((url.hostname, url.port))
    ws = WSConnection(ConnectionType.CLIENT)
    sock.sendall(ws.send(Request(host=url.netloc, target=f"{url.path}?{url.query}")))
    while True:
        ws.receive_data(sock.recv(65536))
        if any(isinstance(e, AcceptConnection) for e in ws.events()):
            break
    sock.sendall(ws.send(TextMessage(data=client_join_frame(args.vsn))))
    chunk = bytearray(1 << 20)
    meter = Meter(args.warmup, args.duration)
    total = 0
    while True:
        got = sock.recv_into(chunk)
        if not got:
            raise SystemExit("blaster closed the connection")
        total += got
        meter.count = int(total / frame_size)
        if meter.count >= meter.next_check and meter.check():
            break
    finish(meter.result("raw_socket", note="bytes / frame size"))


# -- round-trip readers ----------------------------------------------------------------------


class RttLog:
    """Send times by sequence number, and the round trips of the measured part."""

    def __init__(self, rate: float, duration: float, warmup: float) -> None:
        self.rate = rate
        self.total = max(1, round(rate * (warmup + duration)))
        self.skip = round(rate * warmup)
        self.sent: list[float] = [0.0] * self.total
        self.rtts: list[float] = []
        self.received = 0
        self.late_sends = 0
        #: Called once every message came back.
        self.on_complete: Callable[[], object] | None = None

    def arrived(self, seq: int, now: float) -> None:
        self.received += 1
        if self.skip <= seq < self.total:
            self.rtts.append(now - self.sent[seq])
        if self.received == self.total and self.on_complete is not None:
            self.on_complete()

    def result(self) -> dict[str, Any]:
        rtts = sorted(self.rtts)
        return {
            "rate": self.rate,
            "samples": len(rtts),
            "lost": self.total - self.skip - len(rtts),
            "late_sends": self.late_sends,
            **percentiles(rtts),
            "rtts_us": [round(r * 1e6) for r in rtts],
        }


def percentiles(values: list[float]) -> dict[str, float | None]:
    """p50/p90/p99/max in milliseconds (nearest rank) of sorted ``values`` in seconds."""
    if not values:
        return {"p50_ms": None, "p90_ms": None, "p99_ms": None, "max_ms": None}

    def rank(p: float) -> float:
        index = min(len(values) - 1, max(0, math.ceil(p / 100 * len(values)) - 1))
        return values[index] * 1000

    return {"p50_ms": rank(50), "p90_ms": rank(90), "p99_ms": rank(99), "max_ms": values[-1] * 1000}


class _Current:
    """The log of the rate being measured (the receive side looks it up per message)."""

    log: RttLog | None = None

    def arrived(self, seq: int) -> None:
        if self.log is not None:
            self.log.arrived(seq, time.perf_counter())


async def _rtt_schedule_trio(
    args: argparse.Namespace, current: _Current, send: Callable[[dict[str, Any]], Awaitable[None]]
) -> list[dict[str, Any]]:
    """Send at each fixed rate (Trio); wait up to 2 s for the stragglers."""
    import trio

    results = []
    for rate in args.rates:
        log = RttLog(rate, args.duration, args.warmup)
        complete = trio.Event()
        log.on_complete = complete.set
        current.log = log
        bodies = payloads(args.size, log.total)
        start = trio.current_time()
        for seq in range(log.total):
            due = start + seq / rate
            now = trio.current_time()
            if now < due:
                await trio.sleep_until(due)
            elif now - due > 1 / rate:
                log.late_sends += 1
            log.sent[seq] = time.perf_counter()
            await send(bodies[seq])
        with trio.move_on_after(STRAGGLERS):
            await complete.wait()
        results.append(log.result())
    return results


async def _rtt_trio_realtime(args: argparse.Namespace) -> None:
    import trio

    from trio_realtime import Broadcast, BroadcastConfig, RealtimeConfig, open_realtime

    current = _Current()
    config = RealtimeConfig(vsn=args.vsn)
    async with open_realtime(args.url, api_key=API_KEY, config=config) as client:
        name = f"rtt-{os.getpid()}"
        async with client.channel(name, broadcast=BroadcastConfig(receive_own=True)) as sub:

            async def consume() -> None:
                async for event in sub:
                    if type(event) is Broadcast:
                        current.arrived(event.payload["i"])

            async def send(body: dict[str, Any]) -> None:
                await sub.send_broadcast(EVENT, body)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(consume)
                results = await _rtt_schedule_trio(args, current, send)
                finish({"kind": "trio_realtime", "status": "ok", "vsn": args.vsn, "rates": results})


async def _rtt_trio_websocket(args: argparse.Namespace) -> None:
    """Bare trio-websocket, vsn 1.0.0: JSON-decode each message and route broadcasts by hand."""
    import trio
    from trio_websocket import open_websocket_url

    current = _Current()
    topic = f"realtime:rtt-{os.getpid()}"
    async with open_websocket_url(ws_url(args.url, "1.0.0")) as ws:
        await ws.send_message(client_join_frame("1.0.0", topic, self_=True))
        await ws.get_message()

        async def consume() -> None:
            while True:
                msg = json.loads(await ws.get_message())
                if msg["event"] == "broadcast":
                    current.arrived(msg["payload"]["payload"]["i"])

        async def send(body: dict[str, Any]) -> None:
            await ws.send_message(client_broadcast_push(topic, "1", None, body))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(consume)
            results = await _rtt_schedule_trio(args, current, send)
            finish({"kind": "trio_websocket", "status": "ok", "vsn": "1.0.0", "rates": results})


async def _rtt_realtime_py(args: argparse.Namespace) -> None:
    import asyncio

    from realtime import AsyncRealtimeClient

    current = _Current()
    client = AsyncRealtimeClient(args.url, token=API_KEY)
    channel = client.channel(
        f"rtt-{os.getpid()}", {"config": {"broadcast": {"self": True, "ack": False}}}
    )

    def on_broadcast(message: Any) -> None:
        body = message.get("payload", message)
        if isinstance(body, dict) and "i" not in body and isinstance(body.get("payload"), dict):
            body = body["payload"]
        current.arrived(body["i"])

    channel.on_broadcast(EVENT, on_broadcast)
    await channel.subscribe()
    loop = asyncio.get_running_loop()
    results = []
    for rate in args.rates:
        log = RttLog(rate, args.duration, args.warmup)
        complete = asyncio.Event()
        log.on_complete = complete.set
        current.log = log
        bodies = payloads(args.size, log.total)
        start = loop.time()
        for seq in range(log.total):
            due = start + seq / rate
            now = loop.time()
            if now < due:
                await asyncio.sleep(due - now)
            elif now - due > 1 / rate:
                log.late_sends += 1
            log.sent[seq] = time.perf_counter()
            await channel.send_broadcast(EVENT, bodies[seq])
        try:
            await asyncio.wait_for(complete.wait(), STRAGGLERS)
        except TimeoutError:
            pass  # counted as lost
        results.append(log.result())
    finish({"kind": "realtime_py", "status": "ok", "vsn": "1.0.0", "rates": results})


# -- main ----------------------------------------------------------------------------------


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks._reader", description=__doc__.splitlines()[0])
    parser.add_argument("kind", choices=KINDS)
    parser.add_argument("--task", choices=("throughput", "rtt"), default="throughput")
    parser.add_argument("--url", required=True, help="ws://127.0.0.1:PORT/realtime/v1 (loopback only)")
    parser.add_argument("--vsn", default="1.0.0", choices=("1.0.0", "2.0.0"))
    parser.add_argument("--size", type=int, default=100, help="payload bytes")
    parser.add_argument("--warmup", type=float, default=0.3)
    parser.add_argument("--duration", type=float, default=1.0)
    parser.add_argument("--rates", default="100,1000", help="rtt: messages per second, comma-separated")
    args = parser.parse_args(argv)
    from urllib.parse import urlsplit

    if urlsplit(args.url).hostname not in ("127.0.0.1", "localhost", "::1"):
        parser.error(f"refusing non-loopback URL {args.url}")
    args.rates = [float(r) for r in args.rates.split(",") if r]
    return args


def main(argv: list[str] | None = None) -> None:
    args = _parse(sys.argv[1:] if argv is None else argv)
    kind = args.kind
    if args.task == "throughput":
        if kind in ("trio_realtime", "trio_realtime_batch"):
            import trio

            trio.run(_tp_trio_realtime, args, kind == "trio_realtime_batch")
        elif kind in ("trio_websocket", "trio_websocket_64k"):
            import trio

            trio.run(_tp_trio_websocket, args, None if kind == "trio_websocket" else 65536)
        elif kind == "websockets":
            import asyncio

            asyncio.run(_tp_websockets(args))
        elif kind == "realtime_py":
            import asyncio

            asyncio.run(_tp_realtime_py(args))
        elif kind == "raw_socket":
            _tp_raw_socket(args)
    else:
        if kind == "trio_realtime":
            import trio

            trio.run(_rtt_trio_realtime, args)
        elif kind == "trio_websocket":
            import trio

            trio.run(_rtt_trio_websocket, args)
        elif kind == "realtime_py":
            import asyncio

            asyncio.run(_rtt_realtime_py(args))
    finish({"kind": kind, "status": "unavailable", "reason": f"no {args.task} reader for {kind}"})


if __name__ == "__main__":
    main()
