"""The client's transport for the seed-002 protocol (SPEC L7): the token as a subprotocol.

The protocol itself (frames, mapping to Phoenix messages) is the sans-IO
:mod:`trio_realtime.protocol._seed002`; this module only opens the WebSocket the way the
seed's browser client does: ``new WebSocket(url, ["jwt", token])``. Like a browser, it fails
the connection if the server does not select the ``jwt`` subprotocol: such a server does not
speak seed-002, and every frame after the upgrade would be misunderstood.
"""

from __future__ import annotations

from ._errors import HandshakeFailed
from ._transport import Transport, connect_websocket
from .protocol._seed002 import SEED002_SUBPROTOCOL, seed002_subprotocols

__all__ = ["open_seed002_transport"]


async def open_seed002_transport(
    url: str, token: str, *, receive_size: int = 65536, max_message_size: int = 5_000_000
) -> Transport:
    """Open a WebSocket to ``url`` offering the subprotocols ``["jwt", token]``.

    The caller owns the returned transport. A checkpoint; no timeout argument (wrap the call
    in a cancel scope).

    Raises:
        HandshakeFailed: the connection could not be made or the upgrade was refused (a bad
            token: ``status`` 401 and the server's ``{"error": ...}`` in ``body``), or the
            server accepted without selecting the ``jwt`` subprotocol.
        LocalProtocolError: ``token`` cannot travel as a subprotocol (empty, or characters
            outside RFC 7230 token characters).
    """
    transport = await connect_websocket(
        url,
        subprotocols=seed002_subprotocols(token),
        receive_size=receive_size,
        max_message_size=max_message_size,
    )
    if transport.subprotocol != SEED002_SUBPROTOCOL:
        await transport.aclose(1002, "the jwt subprotocol was not selected")
        raise HandshakeFailed(
            f"the server accepted the WebSocket upgrade without selecting the {SEED002_SUBPROTOCOL!r} "
            "subprotocol, so it does not speak seed-002 (is the URL right?)"
        )
    return transport
