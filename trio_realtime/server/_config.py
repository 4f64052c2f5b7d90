"""Limits and timings of the reference server."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, final

import attrs

from ._handshake import negotiate_vsn

if TYPE_CHECKING:
    import random

__all__ = ["ServerConfig"]


def _positive_int(instance: object, attribute: attrs.Attribute[int], value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"ServerConfig.{attribute.name} must be an int >= 1, got {value!r}")


def _non_negative(instance: object, attribute: attrs.Attribute[float], value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not (
        value >= 0 and math.isfinite(value)
    ):
        raise ValueError(f"ServerConfig.{attribute.name} must be a finite number >= 0, got {value!r}")


def _positive(instance: object, attribute: attrs.Attribute[float], value: float) -> None:
    _non_negative(instance, attribute, value)
    if value == 0:
        raise ValueError(f"ServerConfig.{attribute.name} must be > 0, got {value!r}")


def _optional_positive_int(instance: object, attribute: attrs.Attribute[Any], value: int | None) -> None:
    if value is not None:
        _positive_int(instance, attribute, value)


def _vsn(instance: object, attribute: attrs.Attribute[str], value: str) -> None:
    if negotiate_vsn(value, value) != value:
        raise ValueError(f"ServerConfig.{attribute.name} must be '1.0.0' or '2.0.0', got {value!r}")


@final
@attrs.frozen(kw_only=True)
class ServerConfig:
    """Limits and timings of :func:`serve_realtime`.

    Defaults are the official server's (PROTOCOL.md §7.1) except the two error backoffs, which
    default to 0 so development servers and tests answer errors at once, and the two tenant
    rate limits (events and joins per second), which are off unless set: a reference server
    mostly serves tests and benchmarks, which exceed 100 events/s by design.

    Attributes:
        max_frame_size: the largest WebSocket message accepted, in bytes (characters for text);
            a larger one closes the connection with code 1009.
        idle_timeout: a socket that sends nothing for this many seconds is closed (code 1000).
            Clients heartbeat every 25 s.
        max_channels_per_client: joined channels per socket; one more is refused with
            ``ChannelRateLimitReached: Too many channels``.
        max_payload_bytes: the largest broadcast or presence payload, measured as JSON bytes
            (the official limit is 3000 KB + 500 bytes of Erlang term size).
        join_error_backoff: seconds to wait before every join error reply. The official server
            waits 5 s to slow down misbehaving clients; the socket reads nothing meanwhile.
        connect_error_backoff: seconds to wait before refusing an upgrade for a missing or
            invalid API key (officially 2 s).
        send_queue_size: frames queued per socket for its writer. Fan-out never waits for a
            slow socket: when its queue is full, that socket is closed with code 1008
            ("send queue full"), the event is logged and counted, and everyone else carries on.
        presence_rate_limit: presence pushes allowed per channel per ``presence_rate_window``;
            the next one closes the channel (``Client presence rate limit exceeded``).
        presence_rate_window: seconds.
        close_timeout: how long the server waits when it closes a socket: for the queued frames
            to be written and for the closing handshake. After that the TCP connection is
            dropped.
        default_vsn: the serializer for clients that send no ``vsn`` (Phoenix: ``1.0.0``).
        rng: the random source for presence refs and presence keys; None seeds one from the OS.
            Pass ``random.Random(seed)`` for reproducible runs.
        postgres_poll_interval: with a database, seconds between two polls of the replication
            slot when the last poll was not full (a full one is followed at once). This is the
            added latency of a row change, at most. (Officially 100 ms + jitter.)
        postgres_batch_size: row changes read per poll (PostgreSQL completes the last
            transaction, so a poll may return more). (Officially 100.)
        postgres_max_record_bytes: a row change larger than this (as wal2json JSON) is sent
            with ``errors: ["Error 413: Payload Too Large"]`` and only its values of at most
            64 bytes (officially 1 MiB).
        postgres_backpressure_timeout: how long row-change delivery waits for a socket whose
            send queue is more than half full to drain to a quarter, so a big transaction
            reaches a reading client whole instead of overflowing its queue. Meanwhile
            nobody gets row changes. A socket still that full afterwards is left to the
            overflow policy.
        replay_max_limit: the most messages one join may ask to replay; a join's
            ``config.broadcast.replay.limit`` is clamped to ``1..replay_max_limit`` (the
            official server's 25, also the default ``limit``).
        replay_memory_per_topic: without a database, private broadcasts kept per topic for
            replay; the oldest are evicted first (and replays that reach back past them say
            ``complete: false``).
        replay_database_per_topic: with a database, rows kept per topic in the
            ``realtime_messages`` table (trimmed every 100 inserts); None keeps them all.
        max_events_per_second: the server-wide (single tenant) events/s limit: broadcast
            pushes, fan-out deliveries and unknown events count, averaged as the official rate
            counter does (see ``rate_counter_tick``). While it is triggered, nothing is
            broadcast: a channel that sends a broadcast is closed with the ``system`` error ``Too
            many messages per second`` (then ``phx_close``), and so is every channel that would
            have received it. None (the default) disables it; the official default is 100.
        max_joins_per_second: the server-wide joins/s limit (same averaging). While triggered,
            a join is refused with ``ClientJoinRateLimitReached: Too many joins per second`` and
            its socket is closed (1001), and upgrades are refused with 429 ``Too many joins per
            second``. None (the default) disables it; the official default is 100.
        rate_counter_tick: seconds per rate-counter tick (officially 5): the rate limits are
            re-evaluated at tick boundaries.
        rate_counter_ticks: ticks the rate is averaged over (officially 12: one minute).
    """

    max_frame_size: int = attrs.field(default=5_000_000, validator=_positive_int)
    idle_timeout: float = attrs.field(default=60.0, validator=_positive)
    max_channels_per_client: int = attrs.field(default=100, validator=_positive_int)
    max_payload_bytes: int = attrs.field(default=3_000_500, validator=_positive_int)
    join_error_backoff: float = attrs.field(default=0.0, validator=_non_negative)
    connect_error_backoff: float = attrs.field(default=0.0, validator=_non_negative)
    send_queue_size: int = attrs.field(default=1000, validator=_positive_int)
    presence_rate_limit: int = attrs.field(default=5, validator=_positive_int)
    presence_rate_window: float = attrs.field(default=30.0, validator=_positive)
    close_timeout: float = attrs.field(default=5.0, validator=_positive)
    default_vsn: str = attrs.field(default="1.0.0", validator=_vsn)
    rng: random.Random | None = attrs.field(default=None, eq=False, repr=False)
    postgres_poll_interval: float = attrs.field(default=0.025, validator=_positive)
    postgres_batch_size: int = attrs.field(default=1000, validator=_positive_int)
    postgres_max_record_bytes: int = attrs.field(default=1024 * 1024, validator=_positive_int)
    postgres_backpressure_timeout: float = attrs.field(default=2.0, validator=_non_negative)
    replay_max_limit: int = attrs.field(default=25, validator=_positive_int)
    replay_memory_per_topic: int = attrs.field(default=1000, validator=_positive_int)
    replay_database_per_topic: int | None = attrs.field(default=100_000, validator=_optional_positive_int)
    max_events_per_second: int | None = attrs.field(default=None, validator=_optional_positive_int)
    max_joins_per_second: int | None = attrs.field(default=None, validator=_optional_positive_int)
    rate_counter_tick: float = attrs.field(default=5.0, validator=_positive)
    rate_counter_ticks: int = attrs.field(default=12, validator=_positive_int)
