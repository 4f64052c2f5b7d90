"""The reference server's side of the seed-002 protocol (SPEC L7): the upgrade decision.

Theory of operation
-------------------
A request is a seed-002 request if it upgrades on :data:`SEED002_PATH` or offers the
subprotocol ``"jwt"`` (on any path). That is decided *before* the Phoenix route and ``vsn``
logic of :func:`~._handshake.evaluate_upgrade`, which never sees it:

1. the token is the offered subprotocol right after ``"jwt"`` (the browser's
   ``new WebSocket(url, ["jwt", token])``); none: 401 ``{"error": "..."}``;
2. with a JWT secret it must verify exactly as an API key does (:mod:`._auth`); a refusal is
   401 with the same ``{"error": ...}`` wording (``"Token has expired"``, ``"Failed to
   validate JWT signature"``...); without a secret any token is accepted;
3. accepted: the server answers with the subprotocol ``"jwt"``, runs the socket with a
   :class:`~trio_realtime.protocol.Seed002Serializer` of its own, and queues
   ``auth_success`` (:func:`auth_success`) before reading anything.

The token is the socket's token for every ``subscribe`` (checked again at each join, and its
expiry watched, as for Phoenix sockets); ``{"type": "auth", "token": T}`` replaces it.
"""

from __future__ import annotations

import json
import urllib.parse
import uuid
from typing import TYPE_CHECKING, Final

from ..protocol import SEED002_VSN, Message
from ..protocol._seed002 import SEED002_SUBPROTOCOL
from ._auth import TokenRejected
from ._handshake import Accept, Refuse

if TYPE_CHECKING:
    import random
    from collections.abc import Sequence

    from ._auth import TokenVerifier

__all__ = ["SEED002_PATH", "auth_success", "evaluate_seed002_upgrade", "new_connection_id"]

#: The path seed-002 clients upgrade on (any path works if the request offers ``"jwt"``).
SEED002_PATH: Final = "/seed002"

_NO_TOKEN: Final = 'seed-002 connections must offer the WebSocket subprotocols ["jwt", <token>]'


def _error_body(message: str) -> bytes:
    return json.dumps({"error": message}, separators=(",", ":")).encode("utf-8")


def evaluate_seed002_upgrade(
    target: str,
    subprotocols: Sequence[str],
    *,
    verifier: TokenVerifier | None,
    now: float,
) -> Accept | Refuse | None:
    """Decide a seed-002 upgrade request; None if the request is not one.

    Args:
        target: the request target (path and query).
        subprotocols: the subprotocols the client offered, in order.
        verifier: checks the token; None accepts any (development mode).
        now: the current time, Unix seconds (for ``exp``).
    """
    path = urllib.parse.urlsplit(target).path
    offered = list(subprotocols)
    if path != SEED002_PATH and SEED002_SUBPROTOCOL not in offered:
        return None
    index = offered.index(SEED002_SUBPROTOCOL) if SEED002_SUBPROTOCOL in offered else -1
    if index < 0 or index + 1 >= len(offered):
        return Refuse(
            status=401, body=_error_body(_NO_TOKEN), reason="seed002: no jwt subprotocol", backoff=True
        )
    token = offered[index + 1]
    if verifier is not None:
        result = verifier.verify(token, now)
        if isinstance(result, TokenRejected):
            # Always 401: the seed's protocol knows no other refusal of a token.
            return Refuse(
                status=401,
                body=_error_body(result.http_error),
                reason=f"seed002: {result.failure.value}",
                backoff=True,
            )
    return Accept(vsn=SEED002_VSN, token=token, subprotocol=SEED002_SUBPROTOCOL)


def new_connection_id(rng: random.Random) -> str:
    """A version-4 UUID drawn from the server's (injectable) RNG."""
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def auth_success(connection_id: str) -> Message:
    """The message every seed-002 connection starts with (``{"type": "auth_success", ...}``)."""
    return Message(topic="phoenix", event="auth_success", payload={"connectionId": connection_id})
