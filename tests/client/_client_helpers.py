"""Helpers for the client tests: a ScriptedServer, the memory transport and virtual time.

Every test takes the ``autojump_clock`` fixture (pytest-trio), so times are exact
and a test that waits 25 virtual seconds for a heartbeat runs in microseconds.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from trio_realtime import BackoffPolicy, RealtimeConfig, open_realtime

if TYPE_CHECKING:
    from contextlib import AbstractAsyncContextManager

    from trio_realtime import RealtimeClient, TokenSource
    from trio_realtime.testing import ScriptedServer

URL = "ws://realtime.test/realtime/v1"
#: Backoff 1, 2, 4, ... with no jitter, so reconnect times are exact.
NO_JITTER = BackoffPolicy(base=1.0, factor=2.0, cap=30.0, jitter=False)


def make_config(**overrides: Any) -> RealtimeConfig:
    overrides.setdefault("reconnect_backoff", NO_JITTER)
    overrides.setdefault("rejoin_backoff", NO_JITTER)
    return RealtimeConfig(**overrides)


def open_client(
    server: ScriptedServer,
    *,
    api_key: str | None = "anon-key",
    access_token: TokenSource = None,
    **config: Any,
) -> AbstractAsyncContextManager[RealtimeClient]:
    """``open_realtime`` connected to ``server``, speaking its vsn, with jitter-free backoff."""
    config.setdefault("vsn", server.vsn)
    return open_realtime(
        URL,
        api_key=api_key,
        access_token=access_token,
        config=make_config(**config),
        transport_factory=server.transport_factory,
    )
