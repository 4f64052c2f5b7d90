"""Client configuration: one frozen record, so a running client's settings never change under it."""

from __future__ import annotations

import random
import time
from typing import TYPE_CHECKING, Literal

import attrs

from ._errors import LocalProtocolError
from .protocol import SEED002_VSN, SUPPORTED_VSNS, BackoffPolicy, RandomSource

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

__all__ = ["OverflowPolicy", "RealtimeConfig"]

#: What a subscription does when its queue is full (see :class:`RealtimeConfig`).
OverflowPolicy = Literal["drop", "close"]


def _check_vsn(instance: object, attribute: attrs.Attribute[str], value: str) -> None:
    if value not in SUPPORTED_VSNS and value != SEED002_VSN:
        raise LocalProtocolError(
            f"unsupported vsn {value!r}; use one of {', '.join(SUPPORTED_VSNS)} or {SEED002_VSN}"
        )


def _check_positive(instance: object, attribute: attrs.Attribute[float], value: float) -> None:
    if not value > 0:
        raise LocalProtocolError(f"RealtimeConfig.{attribute.name} must be > 0, got {value!r}")


@attrs.frozen(kw_only=True)
class RealtimeConfig:
    """Settings of a client. Every field has a default; pass only what you change.

    Timeouts live here, not on method calls (Trio's rule): they are applied by background tasks
    where you have no cancel scope of your own. For your own calls, use ``trio.fail_after``.

    Attributes:
        vsn: wire protocol, "2.0.0" (default: JSON arrays plus binary broadcasts, what
            realtime-js uses), "1.0.0" (JSON objects; no binary payloads) or "seed002" (the
            seed app's own JSON protocol, SPEC L7: the URL is used as given, the token travels
            as the WebSocket subprotocols ``["jwt", token]``; no presence, postgres_changes,
            private channels or binary payloads; see ``trio_realtime.protocol._seed002``).
        params: extra query parameters for the WebSocket URL (never logged).
        heartbeat_interval: seconds between heartbeats (25, as the official clients).
        heartbeat_timeout: seconds a heartbeat may go unanswered before the connection is
            declared dead and replaced (default: ``heartbeat_interval``).
        connect_timeout: seconds one connection attempt (TCP, TLS and the WebSocket upgrade)
            may take before it counts as failed.
        join_timeout: seconds to wait for a join reply (the official server delays join errors
            by 5 s, so keep this well above 5).
        push_timeout: seconds to wait for the reply to an acknowledged push.
        leave_timeout: seconds a subscription's exit waits for the leave reply.
        close_timeout: seconds ``open_realtime``'s exit waits for a clean close.
        reconnect_backoff: delays between connection attempts after a loss (unlimited by default).
        rejoin_backoff: delays between rejoin attempts of a channel the server refused to rejoin;
            set ``max_attempts`` to give up (the subscription then ends with SubscriptionClosed).
        subscription_buffer: events each subscription queues before its overflow policy applies.
        overflow: ``"drop"`` (default): events that do not fit are dropped and counted, and a
            :class:`Dropped` event takes their place as soon as there is room, so you know to
            refetch. ``"close"``: the subscription ends with ``SubscriptionClosed("overflow")``.
            Either way the reader, the heartbeat and other channels are never slowed down.
        max_pending_pushes: pushes a channel buffers while it is not joined; beyond that,
            ``send_broadcast`` waits for room.
        receive_size: bytes per socket read (large reads let one read carry many messages).
        max_message_size: largest incoming message accepted, in bytes.
        rng: random source for backoff jitter (``random.Random(seed)`` for reproducible runs).
        connect: ``"eager"`` (default): ``open_realtime`` connects before its block is entered
            and raises if that fails, so a wrong URL or key shows up at once. ``"lazy"``: the
            socket opens when the first channel is entered and closes
            ``idle_disconnect_delay`` seconds after the last one left (reopening on demand);
            for apps whose realtime features come and go.
        idle_disconnect_delay: lazy mode's grace period before closing an unused socket.
        replay_margin: seconds subtracted from the last delivery time when a rejoin asks for a
            replay, to cover clock skew between client and server (duplicates are dropped by
            message id, so a generous margin costs only bandwidth).
        replay_memory: message ids remembered per replay channel to drop duplicates.
        wall_clock: Unix time source for replay ``since`` values (injectable for tests).
    """

    vsn: str = attrs.field(default="2.0.0", validator=_check_vsn)
    params: Mapping[str, str] = attrs.field(factory=dict, repr=False)
    heartbeat_interval: float = attrs.field(default=25.0, validator=_check_positive)
    heartbeat_timeout: float | None = None
    connect_timeout: float = attrs.field(default=10.0, validator=_check_positive)
    join_timeout: float = attrs.field(default=10.0, validator=_check_positive)
    push_timeout: float = attrs.field(default=10.0, validator=_check_positive)
    leave_timeout: float = attrs.field(default=5.0, validator=_check_positive)
    close_timeout: float = attrs.field(default=5.0, validator=_check_positive)
    reconnect_backoff: BackoffPolicy = BackoffPolicy(base=1.0, factor=2.0, cap=30.0)
    rejoin_backoff: BackoffPolicy = BackoffPolicy(base=1.0, factor=2.0, cap=10.0)
    subscription_buffer: int = 1000
    overflow: OverflowPolicy = "drop"
    max_pending_pushes: int = 100
    receive_size: int = 65536
    max_message_size: int = 5_000_000
    rng: RandomSource = attrs.field(factory=random.Random, eq=False, repr=False)
    connect: Literal["eager", "lazy"] = "eager"
    idle_disconnect_delay: float = attrs.field(default=1.0, validator=_check_positive)
    replay_margin: float = 5.0
    replay_memory: int = 10_000
    wall_clock: Callable[[], float] = attrs.field(default=time.time, eq=False, repr=False)
