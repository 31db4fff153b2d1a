"""Bearer tokens: ADMIN_TOKEN for the routes that change what serves, API_TOKENS for inference.

Tokens are compared in constant time (hmac.compare_digest). Without ADMIN_TOKEN the admin routes
answer 403 saying how to enable them; without API_TOKENS inference is open.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable

from service.errors import Forbidden, Unauthorized

ADMIN_DISABLED = (
    "the admin routes are off: start the service with ADMIN_TOKEN=<a secret> in its environment "
    "and send 'Authorization: Bearer <the secret>'"
)


def bearer_token(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, or None."""
    if not authorization:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def _matches(token: str, accepted: Iterable[str]) -> bool:
    found = False
    for candidate in accepted:  # every candidate compared: the time says nothing about which
        found |= hmac.compare_digest(token.encode(), candidate.encode())
    return found


def require_admin(authorization: str | None, admin_token: str | None) -> None:
    """Forbidden when admin routes are off; Unauthorized unless the header carries the token."""
    if admin_token is None:
        raise Forbidden(ADMIN_DISABLED)
    token = bearer_token(authorization)
    if token is None or not _matches(token, (admin_token,)):
        raise Unauthorized("this route needs 'Authorization: Bearer <ADMIN_TOKEN>'")


def require_api_token(authorization: str | None, api_tokens: frozenset[str]) -> None:
    """Nothing when API_TOKENS is empty; else Unauthorized unless the header carries one."""
    if not api_tokens:
        return
    token = bearer_token(authorization)
    if token is None or not _matches(token, api_tokens):
        raise Unauthorized("inference needs 'Authorization: Bearer <one of API_TOKENS>'")
