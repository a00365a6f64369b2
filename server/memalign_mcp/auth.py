"""Bearer tokens over streamable HTTP: the tokens file, the SDK's TokenVerifier over it, and the request's grant.

This module owns reading the tokens file of CONTRACT.md (each `[[token]]` a name, the sha256 of its secret, its
scopes and optionally its judges), checking a presented bearer token against it, and the auth settings the SDK's
HTTP app needs to answer 401 with its protected-resource metadata. It must never store, log or echo a token: only
its sha256 is compared (in constant time) and only a token's name is logged.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import logging
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from mcp.server.auth.middleware.auth_context import get_access_token
from mcp.server.auth.provider import AccessToken
from mcp.server.auth.settings import AuthSettings
from pydantic import AnyHttpUrl, BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from memalign_mcp.errors import SettingsError
from memalign_mcp.oauth import JUDGES_CLAIM, IntrospectionVerifier
from memalign_mcp.scopes import ALL_SCOPES, Grant, Scope
from memalign_mcp.settings import ServerSettings

log = logging.getLogger(__name__)
LOOPBACK_NAMES = frozenset({"localhost"})
Sha256Hex = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]


class TokenEntry(BaseModel):
    """One `[[token]]` of the tokens file: who the caller is and what it may do; never the token itself."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: Annotated[str, StringConstraints(min_length=1, max_length=200, strip_whitespace=True)]
    secret_sha256: Sha256Hex
    scopes: Annotated[list[Scope], Field(min_length=1)]
    judges: Annotated[list[str], Field(min_length=1)] | None = None


_EXPECTED = {
    "name": "a non-empty name (up to 200 characters), recorded as `who` in history",
    "secret_sha256": "the lowercase hex sha256 of the bearer token (64 characters 0-9a-f), not the token",
    "scopes": f"a non-empty list of scopes from {', '.join(ALL_SCOPES)}",
    "judges": "a non-empty list of judge names, or no `judges` key for every judge",
}


def _entry_error(path: Path, index: int, exc: ValidationError, raw: dict[str, Any]) -> SettingsError:
    """The first problem of one entry as a SettingsError naming the file, the entry, the key and what fits."""
    first = exc.errors()[0]
    field = str(first["loc"][0]) if first["loc"] else ""
    key = f"{path} token[{index}]" + (f".{field}" if field else "")
    if field == "secret_sha256":
        # Whoever misplaced the token itself here must not find it printed in a log.
        value: Any = f"a value of {len(str(raw.get(field, '')))} characters"
    elif first["type"] == "extra_forbidden":
        return SettingsError(
            key, raw.get(field), "no such key: a token has name, secret_sha256, scopes, judges"
        )
    else:
        value = first.get("input")
    expected = _EXPECTED.get(field, first["msg"].lower())
    return SettingsError(key, value, expected)


def load_tokens(path: Path) -> TokenTable:
    """The tokens file, checked whole; a bad entry fails at start naming the file, the entry and the key."""
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise SettingsError(
            "server.tokens_file", str(path), f"a readable TOML file ({exc.strerror})"
        ) from exc
    except tomllib.TOMLDecodeError as exc:
        raise SettingsError("server.tokens_file", str(path), f"valid TOML ({exc})") from exc
    listed: Any = raw.get("token")
    unknown = sorted(set(raw) - {"token"})
    if unknown:
        raise SettingsError(f"{path} {unknown[0]}", raw[unknown[0]], "only [[token]] tables")
    if not isinstance(listed, list) or not listed:
        raise SettingsError(f"{path} token", listed, "one or more [[token]] tables")
    entries: list[TokenEntry] = []
    for index, item in enumerate(listed):
        if not isinstance(item, dict):
            raise SettingsError(f"{path} token[{index}]", item, "a [[token]] table")
        table: dict[str, Any] = {str(k): v for k, v in item.items()}
        try:
            entries.append(TokenEntry.model_validate(table))
        except ValidationError as exc:
            raise _entry_error(path, index, exc, table) from exc
    for field in ("name", "secret_sha256"):
        seen: set[str] = set()
        for index, entry in enumerate(entries):
            value = getattr(entry, field)
            if value in seen:
                shown = value if field == "name" else "a hash already used"
                raise SettingsError(f"{path} token[{index}].{field}", shown, f"a {field} no other token has")
            seen.add(value)
    return TokenTable(entries)


class TokenTable:
    """The SDK's TokenVerifier over the tokens file: a bearer token is valid when its sha256 is listed."""

    def __init__(self, entries: list[TokenEntry]) -> None:
        self._entries = tuple(entries)

    @property
    def names(self) -> list[str]:
        """The callers' names, for the start-up log."""
        return [e.name for e in self._entries]

    async def verify_token(self, token: str) -> AccessToken | None:
        """The access the token grants, or None (the SDK then answers 401)."""
        digest = hashlib.sha256(token.encode("utf-8")).hexdigest()
        found: TokenEntry | None = None
        for entry in self._entries:
            # Every entry is compared, each in constant time: how long this takes says nothing about the table.
            if hmac.compare_digest(digest, entry.secret_sha256):
                found = entry
        if found is None:
            log.warning("refused a request whose bearer token matches no entry of the tokens file")
            return None
        log.debug("request from token %r", found.name)
        return AccessToken(
            token=digest,  # the SDK keeps this on the request; the hash is all it needs, never the secret
            client_id=found.name,
            scopes=list(found.scopes),
            claims={JUDGES_CLAIM: found.judges},
        )


def request_grant() -> Grant | None:
    """The grant of the current request's bearer token; None when the request carries none (stdio, no tokens)."""
    access = get_access_token()
    if access is None:
        return None
    judges: Any = (access.claims or {}).get(JUDGES_CLAIM)
    allowed = frozenset(str(j) for j in judges) if isinstance(judges, list) else None
    scopes: frozenset[Scope] = frozenset(s for s in ALL_SCOPES if s in access.scopes)
    return Grant(who=access.client_id, scopes=scopes, judges=allowed)


def is_loopback(host: str) -> bool:
    """Whether only this machine can reach a server listening on `host`."""
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name other than localhost may resolve to anything


def _resource_url(server: ServerSettings) -> AnyHttpUrl:
    """The URL clients use for /mcp: the 401's metadata points them there (0.0.0.0 is no place to go)."""
    if not server.public_url:
        host = f"[{server.host}]" if ":" in server.host else server.host
        return AnyHttpUrl(f"http://{host}:{server.port}/mcp")
    try:
        return AnyHttpUrl(server.public_url)
    except ValidationError as exc:
        raise SettingsError(
            "server.public_url", server.public_url, "an http(s) URL such as https://host/mcp"
        ) from exc


@dataclass(frozen=True)
class HttpAuth:
    """What the SDK's HTTP app needs to require tokens: the verifier and its auth settings."""

    verifier: TokenTable | IntrospectionVerifier
    settings: AuthSettings


def _http_url(key: str, value: str) -> AnyHttpUrl:
    """A setting that must be an http(s) URL, or a SettingsError naming it."""
    try:
        return AnyHttpUrl(value)
    except ValidationError as exc:
        raise SettingsError(key, value, "an http(s) URL") from exc


def _oauth(server: ServerSettings) -> HttpAuth:
    """Resource-server mode: tokens issued by an authorization server and checked by introspection."""
    if not server.oauth_issuer_url or not server.oauth_introspection_url:
        missing = "oauth_introspection_url" if server.oauth_issuer_url else "oauth_issuer_url"
        raise SettingsError(
            f"server.{missing}",
            "",
            "set together with the other oauth_ URL (issuer and introspection endpoint)",
        )
    if server.tokens_file:
        raise SettingsError(
            "server.tokens_file", server.tokens_file, "empty when an authorization server issues the tokens"
        )
    issuer = _http_url("server.oauth_issuer_url", server.oauth_issuer_url)
    _http_url("server.oauth_introspection_url", server.oauth_introspection_url)
    resource = _resource_url(server)
    verifier = IntrospectionVerifier(
        server.oauth_introspection_url,
        str(resource),
        client_id=server.oauth_client_id,
        client_secret=server.oauth_client_secret,
        scope_prefix=server.oauth_scope_prefix,
    )
    # The 401's metadata sends clients to the issuer; the verifier hands the SDK only tokens whose audience is us.
    settings = AuthSettings(issuer_url=issuer, resource_server_url=resource, validate_token_resource=True)
    return HttpAuth(verifier, settings)


def http_auth(server: ServerSettings) -> HttpAuth | None:
    """Token auth for `serve --transport http`, or None to serve without it where that is allowed."""
    if server.oauth_issuer_url or server.oauth_introspection_url:
        return _oauth(server)
    if not server.tokens_file:
        if not server.insecure_no_auth and not is_loopback(server.host):
            raise SettingsError(
                "server.host",
                server.host,
                "a loopback address (127.0.0.1, ::1, localhost) when serving HTTP without tokens: anyone who can "
                "reach the port could read, teach and delete every judge. Give --tokens FILE (or "
                "MEMALIGN_TOKENS_FILE), or --insecure-no-auth if something in front of the server checks callers",
            )
        return None
    table = load_tokens(Path(server.tokens_file).expanduser())
    resource = _resource_url(server)
    settings = AuthSettings(
        # No authorization server: the operator issues tokens through the file. The SDK needs an issuer for the
        # protected-resource metadata it serves with every 401, so this server names itself.
        issuer_url=resource,
        resource_server_url=resource,
        # The tokens are this server's own, not issued for a resource by an authorization server.
        validate_token_resource=False,
    )
    return HttpAuth(table, settings)
