"""JWT checks of the reference server (PROTOCOL.md §1.3, §3.3 step 7, §3.7), sans-IO.

Theory of operation
-------------------
Supabase Realtime authenticates three times, with the same rules and three different
wordings of the same failures:

* the WebSocket upgrade (``apikey`` / ``x-api-key``): an HTTP status and ``{"error": ...}``;
* every ``phx_join`` (the channel's ``access_token``, else the socket's token): a join error
  ``reason`` such as ``"InvalidJWTToken: Token has expired 12 seconds ago"``;
* every ``access_token`` refresh and the expiry check while joined: a ``system`` message text.

:func:`verify_token` does the check once and returns either :class:`VerifiedToken` or
:class:`TokenRejected`; the rejection knows its three wordings. Verification is HS256/384/512
with the server's secret (pyjwt), then the claims must hold a numeric ``exp`` in the future
and a ``role``. The current time is an argument (Unix seconds), so nothing here reads a clock.

Tokens are credentials: nothing in this module logs or formats them into messages.
"""

from __future__ import annotations

import enum
import urllib.parse
import warnings
from typing import TYPE_CHECKING, Any, Final, cast

import attrs
import jwt

if TYPE_CHECKING:
    from collections.abc import Mapping

try:
    from jwt.warnings import InsecureKeyLengthWarning as _KeyLengthWarning
except ImportError:  # pragma: no cover - pyjwt < 2.10 does not warn about key lengths
    _KeyLengthWarning = UserWarning  # type: ignore[assignment,misc]

__all__ = ["Failure", "TokenRejected", "TokenVerifier", "VerifiedToken", "verify_token"]

_ALGORITHMS: Final = ["HS256", "HS384", "HS512"]

# pyjwt's own checks are all off: the time-based ones would read the wall clock, and the
# claim type checks (sub, jti...) are not made by the official server. We check exp/role
# ourselves against the ``now`` we are given.
_OPTIONS: Final = {
    "verify_signature": True,
    "verify_exp": False,
    "verify_nbf": False,
    "verify_iat": False,
    "verify_aud": False,
    "verify_iss": False,
    "verify_sub": False,
    "verify_jti": False,
    "require": [],
}


class Failure(enum.Enum):
    """Why a token was refused (the official server's error atoms)."""

    #: No ``apikey`` query parameter and no ``x-api-key`` header (upgrade only).
    MISSING_API_KEY = "missing_api_key"
    #: ``exp`` is in the past.
    EXPIRED = "expired_token"
    #: Verified, but ``role`` or ``exp`` is absent.
    MISSING_CLAIMS = "missing_claims"
    #: Not a JWT at all (bad segments, bad base64, payload not a JSON object...).
    MALFORMED = "token_malformed"
    #: A JWT whose signature does not match the secret.
    SIGNATURE = "signature_error"
    #: The token's ``alg`` cannot be verified with an HMAC secret (e.g. RS256, none).
    SIGNER = "error_generating_signer"
    #: ``exp`` (or ``iat``) is present but not a number.
    INVALID_EXP = "invalid_exp"


# (HTTP status, upgrade error body, join reason, system message) per failure. The join reason
# and system message of EXPIRED carry the number of seconds and are built on demand.
_WORDING: Final[dict[Failure, tuple[int, str, str, str]]] = {
    Failure.MISSING_API_KEY: (401, "API key is missing", "", ""),
    Failure.EXPIRED: (401, "Token has expired", "", ""),
    Failure.MISSING_CLAIMS: (
        401,
        "Fields `role` and `exp` are required in JWT",
        "InvalidJWTToken: Fields `role` and `exp` are required in JWT",
        "Fields `role` and `exp` are required in JWT",
    ),
    Failure.MALFORMED: (
        401,
        "The token provided is not a valid JWT",
        "MalformedJWT: The token provided is not a valid JWT",
        "The token provided is not a valid JWT",
    ),
    Failure.SIGNATURE: (
        401,
        "Failed to validate JWT signature",
        "JwtSignatureError: Failed to validate JWT signature",
        "Failed to validate JWT signature",
    ),
    Failure.SIGNER: (
        401,
        "Failed to generate JWT signer, check your JWT secret or JWKS configuration",
        "JwtSignerError: Failed to generate JWT signer, check your JWT secret or JWKS configuration",
        "Failed to generate JWT signer, check your JWT secret or JWKS configuration",
    ),
    # Not in the official upgrade table, so it falls under "anything else" there.
    Failure.INVALID_EXP: (
        500,
        "Error connecting to Realtime",
        "InvalidJWTToken: Token expiration time is invalid",
        "Token expiration time is invalid",
    ),
}


@attrs.frozen(kw_only=True)
class TokenRejected:
    """A refused token and the three ways the official server words the refusal.

    Attributes:
        failure: why.
        expired_seconds: for :attr:`Failure.EXPIRED`, how long ago (whole seconds, >= 0).
    """

    failure: Failure
    expired_seconds: int = 0

    @property
    def http_status(self) -> int:
        """The status of the refused WebSocket upgrade (§1.3)."""
        return _WORDING[self.failure][0]

    @property
    def http_error(self) -> str:
        """The ``error`` of the refused upgrade's JSON body (§1.3)."""
        return _WORDING[self.failure][1]

    @property
    def join_reason(self) -> str:
        """The ``reason`` of a join error reply (§3.3 step 7)."""
        if self.failure is Failure.EXPIRED:
            return f"InvalidJWTToken: Token has expired {self.expired_seconds} seconds ago"
        if self.failure is Failure.MISSING_API_KEY:  # pragma: no cover - never at join time
            return "MalformedJWT: The token provided is not a valid JWT"
        return _WORDING[self.failure][2]

    @property
    def system_message(self) -> str:
        """The ``message`` of the ``system`` error that closes a joined channel (§3.7)."""
        if self.failure is Failure.EXPIRED:
            return f"Token has expired {self.expired_seconds} seconds ago"
        if self.failure is Failure.MISSING_API_KEY:  # pragma: no cover - never at refresh time
            return "The token provided is not a valid JWT"
        return _WORDING[self.failure][3]


@attrs.frozen(kw_only=True)
class VerifiedToken:
    """A token that passed every check.

    Attributes:
        claims: the decoded claims.
        exp: the expiry, Unix seconds (may be fractional).
        role: the ``role`` claim.
    """

    claims: Mapping[str, Any]
    exp: float
    role: Any


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def check_claims(claims: Mapping[str, Any], now: float) -> VerifiedToken | TokenRejected:
    """Apply the claim rules to already-verified claims.

    Order as in the official server: ``exp`` (a number, in the future) and ``iat`` (a number,
    if present) are validated first, then both ``role`` and ``exp`` must be present.
    """
    exp = claims.get("exp")
    if exp is not None:
        if not _is_number(exp):
            return TokenRejected(failure=Failure.INVALID_EXP)
        if exp <= now:
            return TokenRejected(failure=Failure.EXPIRED, expired_seconds=max(0, int(now - exp)))
    iat = claims.get("iat")
    if iat is not None and not _is_number(iat):
        return TokenRejected(failure=Failure.INVALID_EXP)
    if exp is None or "role" not in claims:
        return TokenRejected(failure=Failure.MISSING_CLAIMS)
    return VerifiedToken(claims=claims, exp=float(exp), role=claims["role"])


@attrs.define(eq=False)
class TokenVerifier:
    """Verifies tokens against one HMAC secret.

    Args:
        secret: the tenant's JWT secret (the same secret Supabase signs anon/service keys with).
    """

    _secret: str = attrs.field(alias="secret", repr=False)
    _jwt: jwt.PyJWT = attrs.field(init=False, factory=lambda: jwt.PyJWT(cast("Any", _OPTIONS)), repr=False)

    def verify(self, token: str, now: float) -> VerifiedToken | TokenRejected:
        """Verify ``token`` at time ``now`` (Unix seconds)."""
        # The official server URI-decodes the token and strips whitespace first.
        token = urllib.parse.unquote(token).strip()
        try:
            with warnings.catch_warnings():
                # pyjwt warns about HMAC secrets shorter than the digest; the secret is the
                # operator's choice (checked once at startup), not something to raise per token.
                warnings.simplefilter("ignore", _KeyLengthWarning)
                claims = self._jwt.decode(token, self._secret, algorithms=_ALGORITHMS)
        except jwt.InvalidSignatureError:
            return TokenRejected(failure=Failure.SIGNATURE)
        except jwt.InvalidAlgorithmError:
            return TokenRejected(failure=Failure.SIGNER)
        except (jwt.InvalidTokenError, ValueError, TypeError, KeyError, UnicodeError):
            # Whatever a hostile token makes pyjwt raise, it is not a valid JWT.
            return TokenRejected(failure=Failure.MALFORMED)
        return check_claims(claims, now)


def verify_token(token: str, secret: str, now: float) -> VerifiedToken | TokenRejected:
    """One-shot :meth:`TokenVerifier.verify`."""
    return TokenVerifier(secret=secret).verify(token, now)
