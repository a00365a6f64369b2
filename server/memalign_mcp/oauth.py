"""Behind an OAuth authorization server: bearer tokens checked by token introspection (RFC 7662).

This module owns the SDK TokenVerifier for the resource-server mode: the server issues no tokens; an
authorization server (Keycloak, Auth0, Okta, an IdP of your own) does, and each token presented to /mcp is
introspected there. The token's `scope` names our scopes (optionally with a prefix such as `memalign:`), its
`client_id` (or `sub`) is the caller recorded as `who`, and an optional `memalign_judges` claim binds it to
judges. Only tokens issued for this server's resource URL (RFC 8707 `aud`) are accepted. It must never log or
keep a token: positive answers are cached under the token's sha256 for at most a minute.
"""

from __future__ import annotations

import hashlib
import logging
import time
from typing import Any

import httpx2
from mcp.server.auth.provider import AccessToken

from memalign_mcp.scopes import ALL_SCOPES

log = logging.getLogger(__name__)
JUDGES_CLAIM = "memalign_judges"
CACHE_S = 60.0
CACHE_ENTRIES = 1024
INTROSPECTION_TIMEOUT_S = 5.0


class IntrospectionVerifier:
    """The SDK's TokenVerifier over an authorization server's introspection endpoint."""

    def __init__(
        self,
        introspection_url: str,
        resource: str,
        *,
        client_id: str = "",
        client_secret: str = "",
        scope_prefix: str = "",
    ) -> None:
        self._url = introspection_url
        self._resource = resource.removesuffix("/")
        self._auth = httpx2.BasicAuth(client_id, client_secret) if client_id else httpx2.USE_CLIENT_DEFAULT
        self._prefix = scope_prefix
        self._cache: dict[str, tuple[float, AccessToken]] = {}
        self.names = [f"tokens introspected at {introspection_url}"]

    async def verify_token(self, token: str) -> AccessToken | None:
        """The access an active token grants, or None (the SDK then answers 401)."""
        digest = hashlib.sha256(token.encode("utf-8")).hexdigest()
        cached = self._cache.get(digest)
        now = time.time()
        if cached is not None and cached[0] > now:
            return cached[1]
        claims = await self._introspect(token)
        access = self._access(digest, claims, now) if claims is not None else None
        if access is None:
            self._cache.pop(digest, None)
            return None
        if len(self._cache) >= CACHE_ENTRIES:
            self._cache.clear()
        until = min(now + CACHE_S, float(access.expires_at or now + CACHE_S))
        self._cache[digest] = (until, access)
        return access

    async def _introspect(self, token: str) -> dict[str, Any] | None:
        """The authorization server's answer for `token`, or None when it cannot be asked or says no."""
        try:
            async with httpx2.AsyncClient(timeout=INTROSPECTION_TIMEOUT_S) as http:
                reply = await http.post(
                    self._url,
                    data={"token": token, "token_type_hint": "access_token"},
                    auth=self._auth,
                    headers={"Accept": "application/json"},
                )
        except httpx2.HTTPError as exc:
            log.error("token introspection at %s failed: %s", self._url, type(exc).__name__)
            return None
        if reply.status_code != 200:
            log.error("token introspection at %s answered HTTP %d", self._url, reply.status_code)
            return None
        try:
            claims: Any = reply.json()
        except ValueError:
            log.error("token introspection at %s answered something other than JSON", self._url)
            return None
        return claims if isinstance(claims, dict) else None

    def _access(self, digest: str, claims: dict[str, Any], now: float) -> AccessToken | None:
        """The grant of an introspection answer: active, unexpired, for this resource; else None."""
        if claims.get("active") is not True:
            log.warning("refused a bearer token the authorization server reports inactive")
            return None
        expires = claims.get("exp")
        if isinstance(expires, int | float) and expires <= now:
            log.warning("refused an expired bearer token")
            return None
        audience = claims.get("aud")
        audiences = (
            [audience] if isinstance(audience, str) else audience if isinstance(audience, list) else []
        )
        if self._resource not in {str(a).removesuffix("/") for a in audiences}:
            log.warning("refused a bearer token issued for another resource (aud %r)", audience)
            return None
        granted = str(claims.get("scope", "")).split()
        scopes = [s for s in ALL_SCOPES if f"{self._prefix}{s}" in granted]
        who = str(claims.get("client_id") or claims.get("sub") or "oauth-client")
        judges = claims.get(JUDGES_CLAIM)
        log.debug("request from OAuth client %r", who)
        return AccessToken(
            token=digest,  # the hash, never the token
            client_id=who,
            scopes=scopes,
            expires_at=int(expires) if isinstance(expires, int | float) else None,
            resource=self._resource,
            claims={JUDGES_CLAIM: [str(j) for j in judges] if isinstance(judges, list) else None},
        )
