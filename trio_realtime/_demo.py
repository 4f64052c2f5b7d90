"""``python -m trio_realtime demo``: a chat room on the embedded server, narrated.

Three people join a room on a reference server started on a free loopback port. They see who
is online (presence), type (typing broadcasts) and chat (message broadcasts). Then Carol's
network drops: she sees her channel error and rejoin, the others see her leave and come back,
and her next message arrives as if nothing happened. Every step waits for the events it
expects (no sleeps to order things), and the whole run is bounded by a deadline.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, TextIO

import attrs
import trio

from ._client import open_realtime
from ._config import RealtimeConfig
from ._transport import Transport, connect_websocket
from .protocol import (
    BackoffPolicy,
    Broadcast,
    BroadcastConfig,
    ChannelErrored,
    PresenceConfig,
    PresenceJoin,
    PresenceLeave,
    PresenceSync,
    RealtimeEvent,
    Rejoined,
)
from .server import serve_realtime

if TYPE_CHECKING:
    from collections.abc import Callable

    from ._subscription import Subscription

__all__ = ["run_demo"]

ROOM = "lobby"
PEOPLE = ("alice", "bob", "carol")


@attrs.define(eq=False)
class _Transcript:
    out: TextIO
    start: float

    def say(self, who: str, text: str) -> None:
        elapsed = trio.current_time() - self.start
        print(f"[{elapsed:6.3f}s] {who:<6} {text}", file=self.out, flush=True)


@attrs.define(eq=False)
class _Person:
    """One participant: what they saw, and a way to wait for something to be seen."""

    name: str
    transcript: _Transcript
    events: list[RealtimeEvent] = attrs.field(factory=list)
    changed: trio.Event = attrs.field(factory=trio.Event)
    transports: list[Transport] = attrs.field(factory=list)
    room: Subscription | None = None
    #: wait_for looks only at events after the last one it matched: steps happen in order.
    cursor: int = 0

    @property
    def joined_room(self) -> Subscription:
        assert self.room is not None, f"{self.name} has not joined yet"
        return self.room

    def record(self, event: RealtimeEvent) -> None:
        self.events.append(event)
        self.changed.set()
        self.changed = trio.Event()
        self._narrate(event)

    def _narrate(self, event: RealtimeEvent) -> None:
        say = self.transcript.say
        match event:
            case Broadcast(event="typing", payload=p):
                say(self.name, f"sees {p.get('name')} typing…")
            case Broadcast(event="message", payload=p):
                say(self.name, f"receives {p.get('name')}: {p.get('text')!r}")
            case PresenceJoin(key=key) if key != self.name:
                say(self.name, f"sees {key} come online")
            case PresenceLeave(key=key, current=()) if key != self.name:
                say(self.name, f"sees {key} go offline")
            case PresenceSync(state=state):
                say(self.name, f"online now: {', '.join(sorted(state)) or '(nobody yet)'}")
            case ChannelErrored(reason=reason):
                say(self.name, f"lost the room: {reason}")
            case Rejoined(recovered=recovered):
                say(self.name, f"rejoined the room (recovered={recovered}: refetch history if needed)")
            case _:
                pass

    async def wait_for(self, predicate: Callable[[RealtimeEvent], bool]) -> RealtimeEvent:
        while True:
            for index in range(self.cursor, len(self.events)):
                if predicate(self.events[index]):
                    self.cursor = index + 1
                    return self.events[index]
            await self.changed.wait()

    async def transport_factory(self, url: str) -> Transport:
        transport = await connect_websocket(url)
        self.transports.append(transport)
        return transport


def _online(keys: set[str]) -> Callable[[RealtimeEvent], bool]:
    return lambda e: isinstance(e, PresenceSync) and set(e.state) == keys


def _message(text: str) -> Callable[[RealtimeEvent], bool]:
    return lambda e: isinstance(e, Broadcast) and e.event == "message" and e.payload.get("text") == text


async def run_demo(out: TextIO = sys.stdout, *, deadline: float = 15.0, pace: float = 0.4) -> None:
    """Run the demo, printing the transcript to ``out``.

    ``pace`` is a pause between the script's steps so a person can follow along; it orders
    nothing (every step waits for the events it needs) and can be 0.

    Raises:
        trio.TooSlowError: it did not finish within ``deadline`` seconds.
    """
    transcript = _Transcript(out=out, start=trio.current_time())
    people = {name: _Person(name, transcript) for name in PEOPLE}
    config = RealtimeConfig(reconnect_backoff=BackoffPolicy(base=0.2, cap=1.0), heartbeat_interval=5.0)
    ready = {name: trio.Event() for name in PEOPLE}
    done = trio.Event()

    async def participant(url: str, person: _Person) -> None:
        name = person.name
        async with (
            open_realtime(
                url, api_key="demo-anon-key", config=config, transport_factory=person.transport_factory
            ) as client,
            client.channel(
                ROOM, broadcast=BroadcastConfig(ack=True), presence=PresenceConfig(key=name)
            ) as room,
        ):
            transcript.say(name, f"joined {room.topic}")
            await room.track({"name": name, "status": "online"})
            person.room = room
            async with trio.open_nursery() as inner:

                async def listen() -> None:
                    async for event in room:
                        person.record(event)

                inner.start_soon(listen)
                ready[name].set()
                await done.wait()
                inner.cancel_scope.cancel()
            stats = client.statistics()
            transcript.say(
                name,
                f"leaves: {stats.frames_sent} frames sent, {stats.frames_received} received, "
                f"{stats.reconnects} reconnect(s), last heartbeat rtt {stats.last_heartbeat_rtt}",
            )

    with trio.fail_after(deadline):
        async with trio.open_nursery() as nursery:
            server = await nursery.start(serve_realtime, "127.0.0.1", 0)
            transcript.say("server", f"listening on {server.url}")
            async with trio.open_nursery() as crowd:
                for person in people.values():
                    crowd.start_soon(participant, server.url, person)
                await _direct(people, ready, transcript, pace)
                done.set()
            transcript.say("server", f"{server.statistics()}")
            nursery.cancel_scope.cancel()
    transcript.say("demo", "done")


async def _direct(
    people: dict[str, _Person], ready: dict[str, trio.Event], transcript: _Transcript, pace: float
) -> None:
    """The script: each step waits for the events it expects."""
    for event in ready.values():
        await event.wait()
    for person in people.values():
        await person.wait_for(_online(set(PEOPLE)))
    transcript.say("demo", "— everyone is online; alice types and says hello —")

    alice, bob, carol = (people[n] for n in PEOPLE)
    await trio.sleep(pace)
    await alice.joined_room.send_broadcast("typing", {"name": "alice"})
    await alice.joined_room.send_broadcast("message", {"name": "alice", "text": "hello, room!"})
    for person in (bob, carol):
        await person.wait_for(_message("hello, room!"))
    await trio.sleep(pace)
    await bob.joined_room.send_broadcast("message", {"name": "bob", "text": "hi alice"})
    for person in (alice, carol):
        await person.wait_for(_message("hi alice"))

    await trio.sleep(pace)
    transcript.say("demo", "— carol's network drops —")
    await carol.transports[-1].aclose(1001, "demo: network drop")
    await carol.wait_for(lambda e: isinstance(e, Rejoined))
    for person in (alice, bob):
        await person.wait_for(lambda e: isinstance(e, PresenceLeave) and e.key == "carol")
        await person.wait_for(_online(set(PEOPLE)))
    await trio.sleep(pace)
    await carol.joined_room.send_broadcast("message", {"name": "carol", "text": "sorry, I'm back"})
    for person in (alice, bob):
        await person.wait_for(_message("sorry, I'm back"))
    transcript.say("demo", "— everyone leaves —")
