"""The WebSocket upgrade decision (PROTOCOL.md §1.1-§1.3), sans-IO.

Theory of operation
-------------------
The HTTP upgrade request is judged from its target (path + query) and headers alone, in the
order the official server uses:

1. the route: ``/socket/websocket`` (Phoenix) or ``/realtime/v1/websocket`` (what clients use
   against hosted Supabase, where a gateway strips ``/realtime/v1``); anything else is 404;
2. the serializer: ``vsn`` must match ``~> 1.0.0`` or ``~> 2.0.0`` (absent: the server's
   default, 1.0.0 like Phoenix); otherwise 403 with an empty body;
3. the API key: the ``x-api-key`` header, else the ``apikey`` query parameter; absent is
   401 ``API key is missing``;
4. with a JWT secret, the key must be a valid token (:mod:`._auth`).

Only refusals of steps 3-4 are "connect errors" that the official server delays by its connect
error backoff; :attr:`Refuse.backoff` says so and the Trio layer does the sleeping.

:func:`redact_target` is what may be logged: the query string can hold the API key.
"""

from __future__ import annotations

import json
import re
import urllib.parse
from typing import TYPE_CHECKING, Final

import attrs

from ._auth import Failure, TokenRejected

if TYPE_CHECKING:
    from collections.abc import Sequence

    from ._auth import TokenVerifier

__all__ = ["ROUTES", "Accept", "Refuse", "evaluate_upgrade", "negotiate_vsn", "redact_target"]

#: The paths a client may upgrade on.
ROUTES: Final = ("/realtime/v1/websocket", "/socket/websocket")

_VSN_RE: Final = re.compile(r"^(\d+)\.(\d+)\.(\d+)$")
_PARAM_NAME_RE: Final = re.compile(r"^[A-Za-z0-9_-]{1,32}$")


@attrs.frozen(kw_only=True)
class Accept:
    """Upgrade accepted.

    Attributes:
        vsn: the canonical serializer version, ``"1.0.0"`` or ``"2.0.0"`` (``"seed002"``
            from :func:`~._seed002.evaluate_seed002_upgrade`).
        token: the API key / JWT, the socket's default access token for joins.
        subprotocol: the WebSocket subprotocol to answer with (seed-002's ``"jwt"``), or None.
    """

    vsn: str
    token: str = attrs.field(repr=False)
    subprotocol: str | None = None


@attrs.frozen(kw_only=True)
class Refuse:
    """Upgrade refused.

    Attributes:
        status: HTTP status.
        body: response body (``{"error": ...}`` JSON, or empty).
        reason: a short description for the server log (never contains the token).
        backoff: whether the official server delays this refusal (a connect error).
    """

    status: int
    body: bytes
    reason: str
    backoff: bool


def negotiate_vsn(value: str | None, default: str) -> str | None:
    """The canonical vsn for a ``vsn`` query value, or None if unsupported.

    Phoenix parses the value as a semantic version and matches ``~> 1.0.0`` / ``~> 2.0.0``,
    i.e. ``1.0.x`` / ``2.0.x``.
    """
    if value is None:
        value = default
    m = _VSN_RE.match(value)
    if m is None:
        return None
    major, minor = int(m.group(1)), int(m.group(2))
    if minor != 0 or major not in (1, 2):
        return None
    return f"{major}.0.0"


def _error_body(message: str) -> bytes:
    return json.dumps({"error": message}, separators=(",", ":")).encode("utf-8")


def redact_target(target: str) -> str:
    """``/socket/websocket?apikey=SECRET&vsn=2.0.0`` -> ``/socket/websocket?apikey=...&vsn=...``.

    Only short, plain parameter names of ``name=value`` pairs are kept; anything else (a bare
    token pasted into the query, say) becomes ``?``.
    """
    path, _, query = target.partition("?")
    if not query:
        return path
    parts = []
    for part in query.split("&"):
        name, eq, _value = part.partition("=")
        parts.append(f"{name}=..." if eq and _PARAM_NAME_RE.match(name) else "?")
    return path + "?" + "&".join(parts)


def _header(headers: Sequence[tuple[bytes, bytes]], name: bytes) -> str | None:
    found = None
    for key, value in headers:
        if key.lower() == name:
            found = value.decode("latin-1")
    return found


def evaluate_upgrade(
    target: str,
    headers: Sequence[tuple[bytes, bytes]],
    *,
    verifier: TokenVerifier | None,
    now: float,
    default_vsn: str = "1.0.0",
) -> Accept | Refuse:
    """Decide an upgrade request.

    Args:
        target: the request target, e.g. ``"/socket/websocket?apikey=...&vsn=2.0.0"``.
        headers: the request headers as ``(name, value)`` byte pairs.
        verifier: checks the API key as a JWT; None accepts any key (development mode).
        now: the current time, Unix seconds (for ``exp``).
        default_vsn: the serializer for requests without ``vsn``.

    Returns:
        :class:`Accept` or :class:`Refuse`.
    """
    split = urllib.parse.urlsplit(target)
    if split.path not in ROUTES:
        return Refuse(status=404, body=_error_body("Not Found"), reason=f"no route {split.path[:100]!r}",
                      backoff=False)
    params: dict[str, str] = {}
    for key, value in urllib.parse.parse_qsl(split.query, keep_blank_values=True):
        params[key] = value  # like Plug, the last duplicate wins
    vsn = negotiate_vsn(params.get("vsn"), default_vsn)
    if vsn is None:
        return Refuse(status=403, body=b"", reason="unsupported vsn", backoff=False)
    token = _header(headers, b"x-api-key")
    if token is None:
        token = params.get("apikey")
    rejected: TokenRejected | None = None
    if token is None:
        rejected = TokenRejected(failure=Failure.MISSING_API_KEY)
    elif verifier is not None:
        result = verifier.verify(token, now)
        if isinstance(result, TokenRejected):
            rejected = result
    if rejected is not None:
        return Refuse(status=rejected.http_status, body=_error_body(rejected.http_error),
                      reason=rejected.failure.value, backoff=True)
    assert token is not None
    return Accept(vsn=vsn, token=token)
