"""Optional API keys: `Authorization: Bearer <key>` against `CA_API_KEYS`.

With no keys configured every route is open, except the model admin routes
(`require_admin`): those change what every client gets, so without keys to guard them they
are off (403 `admin_disabled`) unless `allow_unauthenticated_admin` opens them on purpose.
With keys, `/classify`, `/v1/model` and the admin routes need one; `/healthz`, `/readyz`,
`/metrics` (probes and Prometheus) and the docs stay open.
Keys are compared as SHA-256 digests with `hmac.compare_digest`, against every key
without stopping early, so timing reveals neither a key's length nor which one matched.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from service.errors import AdminDisabled, Unauthorized

_bearer = HTTPBearer(auto_error=False, description="One of the keys in CA_API_KEYS")


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8")).digest()


class ApiKeys:
    """The configured keys, kept as digests."""

    def __init__(self, keys: tuple[str, ...]) -> None:
        self._digests = tuple(_digest(key) for key in keys if key)

    @property
    def enabled(self) -> bool:
        return bool(self._digests)

    def accepts(self, token: str) -> bool:
        candidate = _digest(token)
        matched = False
        for digest in self._digests:
            matched |= hmac.compare_digest(candidate, digest)
        return matched


async def require_api_key(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> None:
    """FastAPI dependency: raise `Unauthorized` (401) unless a configured key is presented."""
    keys: ApiKeys = request.app.state.api_keys
    if not keys.enabled:
        return
    _check(keys, credentials)


async def require_admin(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> None:
    """FastAPI dependency for the model admin routes: a configured key (401 without one);
    with no keys configured, `AdminDisabled` (403) unless the settings open them."""
    keys: ApiKeys = request.app.state.api_keys
    if keys.enabled:
        _check(keys, credentials)
    elif not request.app.state.settings.allow_unauthenticated_admin:
        raise AdminDisabled(
            "the model admin routes are off: set CA_API_KEYS (then send one), or "
            "CA_ALLOW_UNAUTHENTICATED_ADMIN=true on a gateway only trusted clients can reach"
        )


def _check(keys: ApiKeys, credentials: HTTPAuthorizationCredentials | None) -> None:
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise Unauthorized("missing API key: send 'Authorization: Bearer <key>'")
    if not keys.accepts(credentials.credentials):
        raise Unauthorized("invalid API key")


Authorized = Annotated[None, Depends(require_api_key)]
Admin = Annotated[None, Depends(require_admin)]
