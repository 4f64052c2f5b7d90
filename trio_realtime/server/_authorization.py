"""Authorization of private channels (PROTOCOL.md §4.4), sans-IO.

Theory of operation
-------------------
The official server authorizes private channels with row level security on its
``realtime.messages`` table: for a sub-topic and the user's JWT claims it asks "may this user
read / write broadcasts / presence here?". The reference server asks a plain function
instead: an :data:`Authorizer` gets one :class:`AuthorizationRequest` (claims, sub-topic,
extension, action) and returns True to allow. It is only ever consulted for **private**
channels; public channels allow everything, as officially.

Where each decision is used (as the official server uses its policies):

* **join**: ``broadcast``/``read``, and ``presence``/``read`` when presence is enabled; the
  join needs at least one of them (``Unauthorized: You do not have permissions to read from
  this Channel topic: <sub-topic>``). A join asking for replay needs ``broadcast``/``read``.
* **delivery**: broadcasts reach only members allowed ``broadcast``/``read``; presence diffs
  (and ``presence_state``) only members allowed ``presence``/``read``.
* **send**: a broadcast needs ``broadcast``/``write``; without it the message is dropped and
  not even an acked push gets a reply (the client times out), as officially.
* **track**: presence needs ``presence``/``write``; without it the push is answered with
  ``{"status": "error", "response": {}}`` and nothing is tracked.
* **token refresh** (``access_token``): the read decisions are made again with the new claims;
  a read permission the channel had and lost closes it with the ``system`` error ``You no
  longer have permission to read from this Channel topic: <sub-topic>``.

Decisions are cached per channel (:class:`ChannelPolicies`) until its token changes. A policy
that raises counts as a denial (the official server also answers a broken RLS policy with
``Unauthorized``); the exception is logged.

:func:`default_authorize` is the policy used when none is given: in development mode (no JWT
secret, so there are no verified claims) it allows everything; with a JWT secret it allows the
roles ``authenticated`` and ``service_role`` and denies every other role, ``anon`` included.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any, Final, Literal, final

import attrs

__all__ = [
    "Action",
    "AuthorizationRequest",
    "Authorizer",
    "ChannelPolicies",
    "Extension",
    "decide",
    "default_authorize",
]

logger = logging.getLogger("trio_realtime.server")

#: What the request is about: broadcast messages or presence.
Extension = Literal["broadcast", "presence"]
#: Receiving (``read``) or sending / tracking (``write``).
Action = Literal["read", "write"]

#: Roles :func:`default_authorize` lets into private channels.
DEFAULT_ALLOWED_ROLES: Final = frozenset({"authenticated", "service_role"})


@final
@attrs.frozen(kw_only=True)
class AuthorizationRequest:
    """One question to an :data:`Authorizer`: may these claims do this on this topic?

    Attributes:
        claims: the verified JWT claims of the channel's access token (``role``, ``sub``,
            ``exp``...). Empty in development mode (no JWT secret: nothing is verified).
        topic: the sub-topic, i.e. the channel topic without ``realtime:`` (``"room1"``).
        extension: ``"broadcast"`` or ``"presence"``.
        action: ``"read"`` (join and receive) or ``"write"`` (send a broadcast, track presence).
    """

    claims: Mapping[str, Any] = attrs.field(repr=False)
    topic: str
    extension: Extension
    action: Action


#: A private-channel policy: return True to allow the request.
Authorizer = Callable[[AuthorizationRequest], bool]


def default_authorize(request: AuthorizationRequest) -> bool:
    """The policy used when ``serve_realtime`` gets no ``authorize``.

    Development mode (empty claims): allow. Otherwise allow the roles ``authenticated`` and
    ``service_role`` everything, and deny every other role (``anon`` in particular), for
    every topic, extension and action.
    """
    if not request.claims:
        return True
    return request.claims.get("role") in DEFAULT_ALLOWED_ROLES


def decide(authorize: Authorizer, claims: Mapping[str, Any], topic: str, extension: Extension,
           action: Action) -> bool:
    """Ask ``authorize``; a policy that raises (or returns a non-bool truthy value) is handled.

    Exceptions count as a denial and are logged with their traceback: a broken policy must
    cost one decision, not the connection.
    """
    request = AuthorizationRequest(claims=claims, topic=topic, extension=extension, action=action)
    try:
        return authorize(request) is True
    except Exception:
        logger.exception("the authorization policy raised for %s/%s on %r; denied", extension, action,
                         topic[:100])
        return False


@attrs.define(eq=False)
class ChannelPolicies:
    """A private channel's cached decisions; None means not asked yet."""

    broadcast_read: bool | None = None
    broadcast_write: bool | None = None
    presence_read: bool | None = None
    presence_write: bool | None = None

    def get(self, extension: Extension, action: Action) -> bool | None:
        value: bool | None = getattr(self, f"{extension}_{action}")
        return value

    def set(self, extension: Extension, action: Action, allowed: bool) -> None:
        setattr(self, f"{extension}_{action}", allowed)
