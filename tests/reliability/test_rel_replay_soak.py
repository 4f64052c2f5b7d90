"""The replay soak: 10,000 broadcasts through cuts every ~200 messages and one server restart.

A publisher, connected straight to the server, sends ``N`` acked broadcasts on a private
channel. A subscriber with replay on reaches the server through the fault proxy, which cuts
its connection each time ~200 messages' worth of bytes went to it (``cut_every``), so it
loses its connection about 50 times; half-way through, the server itself is restarted
(its task cancelled, a new one started on the same port). Messages are stored in
PostgreSQL (an embedded throwaway cluster), so they survive the restart.

What is asserted, against ground truth (the publisher's sequence numbers):

* the subscriber receives every message exactly once, in order;
* every ``Rejoined(recovered=True)`` was true: the messages after it continue the sequence
  with no gap. (How many rejoins said True is asserted too: all of them, since the replay
  limit is well above what one outage misses.)

Tuning (rates, sizes, margins; never the assertions): the client asks for a replay since its
last delivery minus ``replay_margin``, so each rejoin replays ``margin + outage`` worth of
messages, duplicates dropped by id. That must fit well within one cut's byte budget (or the
replay itself is cut) and within the replay limit. The publisher is paced to ``RATE``
messages/s to keep that true on a loaded 2-core machine.

Real sockets, real time: everything runs under ``fail_after``; ordering comes from the
publisher's acks and events, never from sleeps (the pacing sleep only sets the rate).
"""

from __future__ import annotations

import functools
import json
from typing import TYPE_CHECKING

import attrs
import trio

from trio_realtime import (
    BackoffPolicy,
    Broadcast,
    BroadcastConfig,
    ChannelErrored,
    RealtimeConfig,
    Rejoined,
    ReplayConfig,
    open_realtime,
)
from trio_realtime.server import ServerConfig, open_embedded_postgres, serve_realtime
from trio_realtime.testing import open_fault_proxy

if TYPE_CHECKING:
    from trio_realtime import Subscription
    from trio_realtime.server import RealtimeServer

GUARD = 60
N = 10_000
#: Messages published per second (pacing, so each outage misses a bounded number).
RATE = 1000
#: Cut the subscriber's connection every this many messages' worth of bytes.
CUT_EVERY_MESSAGES = 200
REPLAY_LIMIT = 1000
TOPIC = "soak"
PAD = "x" * 40


def frame_size() -> int:
    """Bytes of one broadcast as the subscriber receives it (vsn 2.0.0 kind 4 + WS header)."""
    meta = json.dumps({"id": "00000000-0000-4000-8000-000000000000"}, separators=(",", ":"))
    body = json.dumps({"i": 1234, "pad": PAD}, separators=(",", ":"))
    return 5 + len(f"realtime:{TOPIC}") + len("m") + len(meta) + len(body) + 2


@attrs.define
class Record:
    """What the subscriber saw, in order."""

    received: list[int] = attrs.field(factory=list)
    #: (index into ``received`` where the rejoin happened, recovered flag)
    rejoins: list[tuple[int, bool]] = attrs.field(factory=list)
    errors: int = 0
    done: trio.Event = attrs.field(factory=trio.Event)


async def subscribe(sub: Subscription, record: Record) -> None:
    async for event in sub:
        if isinstance(event, Broadcast):
            record.received.append(event.payload["i"])
            if record.received[-1] == N - 1:
                record.done.set()
        elif isinstance(event, Rejoined):
            record.rejoins.append((len(record.received), event.recovered))
        elif isinstance(event, ChannelErrored):
            record.errors += 1


def truly_recovered(received: list[int], position: int) -> bool:
    """Ground truth for a rejoin at ``position``: the next message continues the sequence."""
    if position >= len(received):
        return True  # nothing came after it
    expected = received[position - 1] + 1 if position > 0 else received[0]
    return received[position] == expected


async def test_replay_soak_cuts_and_restart_lose_nothing() -> None:
    server_config = ServerConfig(replay_max_limit=REPLAY_LIMIT, send_queue_size=20_000)
    backoff = BackoffPolicy(base=0.02, cap=0.05)
    sub_config = RealtimeConfig(reconnect_backoff=backoff, rejoin_backoff=backoff,
                                subscription_buffer=N + 1)
    pub_config = RealtimeConfig(reconnect_backoff=backoff, rejoin_backoff=backoff)
    record = Record()
    restarted: list[RealtimeServer] = []
    with trio.fail_after(GUARD):
        async with open_embedded_postgres() as pg, trio.open_nursery() as nursery:
            serve = functools.partial(serve_realtime, "127.0.0.1", config=server_config, database_url=pg.dsn)
            first_scope = trio.CancelScope()
            first_stopped = trio.Event()

            async def first_server(task_status: trio.TaskStatus[RealtimeServer]) -> None:
                try:
                    with first_scope:
                        await serve(0, task_status=task_status)
                finally:
                    first_stopped.set()

            server: RealtimeServer = await nursery.start(first_server)
            port = server.port
            async with (
                open_fault_proxy("127.0.0.1", port) as proxy,
                open_realtime(proxy.url_for(server.url), api_key="k", config=sub_config) as subscriber,
                open_realtime(server.url, api_key="k", config=pub_config) as publisher,
                subscriber.channel(TOPIC, private=True,
                                   broadcast=BroadcastConfig(replay=ReplayConfig(limit=REPLAY_LIMIT))) as sub,
                publisher.channel(TOPIC, private=True, broadcast=BroadcastConfig(ack=True)) as pub,
            ):
                proxy.cut_every(CUT_EVERY_MESSAGES * frame_size(), direction="server_to_client")
                nursery.start_soon(subscribe, sub, record)
                interval = 1 / RATE
                next_send = trio.current_time()
                for i in range(N):
                    if i == N // 2:
                        # Every message so far is acked, so stored: restart the server now.
                        first_scope.cancel()
                        await first_stopped.wait()
                        restarted.append(await nursery.start(functools.partial(serve, port)))
                    await pub.send_broadcast("m", {"i": i, "pad": PAD})
                    next_send += interval
                    await trio.sleep_until(next_send)
                await record.done.wait()
                cuts = proxy.statistics().connections_cut
                after_restart = restarted[0].statistics()
            nursery.cancel_scope.cancel()

    assert record.received == list(range(N)), _first_problem(record.received)
    lies = [(pos, record.received[pos - 1 : pos + 2]) for pos, recovered in record.rejoins
            if recovered and not truly_recovered(record.received, pos)]
    assert lies == [], f"recovered=True but a gap followed: {lies}"
    recovered = sum(1 for _, flag in record.rejoins if flag)
    print(f"\nsoak: {N} messages, {cuts} cuts, {len(record.rejoins)} rejoins, {recovered} recovered=True")
    assert cuts >= N // CUT_EVERY_MESSAGES // 2
    assert len(record.rejoins) == record.errors >= cuts
    assert recovered == len(record.rejoins)
    # The restarted server served the second half, replays included, from the database.
    assert after_restart.stored_messages == N - N // 2
    assert after_restart.replayed_messages > 0


def _first_problem(received: list[int]) -> str:
    seen: set[int] = set()
    for position, value in enumerate(received):
        if value in seen:
            return f"duplicate {value} at position {position}"
        seen.add(value)
        expected = received[position - 1] + 1 if position else 0
        if value != expected:
            return f"expected {expected} at position {position}, got {value}"
    return f"{len(received)} received of {N}"
