"""Behind an OAuth authorization server: a real `serve --transport http` checks each token by introspection.

The authorization server is a small RFC 7662 introspection endpoint on 127.0.0.1 in this process; it records
what it was asked. A token's scopes (with the configured prefix) decide its tools, its client_id is recorded as
`who`, a token issued for another resource or reported inactive gets 401, the 401's metadata names the issuer,
and neither a token nor the introspection secret appears in the server's log.
"""

from __future__ import annotations

import base64
import json
import threading
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest

from mcp_calls import text_of
from test_http_auth import TOOL_SCOPES, connect
from test_transports import (
    CALL_DEADLINE_S,
    free_port,
    serving_http,
)

pytestmark = pytest.mark.anyio

ISSUER = "https://login.example"
CLIENT_SECRET = "introspection-secret-9d41"


@dataclass
class AuthorizationServer:
    """The introspection endpoint: token -> claims, and every (Authorization header, token) it was asked."""

    claims: dict[str, dict[str, Any]]
    asked: list[tuple[str, str]] = field(default_factory=list[tuple[str, str]])
    url: str = ""


@dataclass(frozen=True)
class Served:
    """The server under test: its /mcp endpoint, its log, and its authorization server."""

    url: str
    log: Path
    authority: AuthorizationServer


def _handler(authority: AuthorizationServer) -> type[BaseHTTPRequestHandler]:
    class Introspection(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", "0"))
            form = urllib.parse.parse_qs(self.rfile.read(length).decode())
            token = form.get("token", [""])[0]
            authority.asked.append((self.headers.get("Authorization", ""), token))
            body = json.dumps(authority.claims.get(token, {"active": False})).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Introspection


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    """The MCP clients run on asyncio."""
    return "asyncio"


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """An introspection endpoint, and `serve --transport http` configured to use it, at DEBUG."""
    root = tmp_path_factory.mktemp("oauth")
    port = free_port()
    resource = f"http://127.0.0.1:{port}/mcp"
    authority = AuthorizationServer(
        claims={
            "scorer-token": {
                "active": True,
                "client_id": "ci-agent",
                "aud": resource,
                "scope": "memalign:score",
            },
            "operator-token": {
                "active": True,
                "client_id": "ops-console",
                "aud": [resource, "https://other.example"],
                "scope": "openid memalign:admin memalign:read memalign:teach",
            },
            "elsewhere-token": {
                "active": True,
                "client_id": "someone",
                "aud": "https://other.example/mcp",
                "scope": "memalign:admin",
            },
            "unprefixed-token": {"active": True, "client_id": "x", "aud": resource, "scope": "admin score"},
            "expired-token": {
                "active": True,
                "client_id": "late",
                "aud": resource,
                "scope": "memalign:score",
                "exp": 1,
            },
        }
    )
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(authority))
    authority.url = f"http://127.0.0.1:{httpd.server_address[1]}/introspect"
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    config = root / "config.toml"
    config.write_text(
        "[server]\n"
        'judges_dir = ""\n'
        f'oauth_issuer_url = "{ISSUER}"\n'
        f'oauth_introspection_url = "{authority.url}"\n'
        'oauth_client_id = "memalign-rs"\n'
        'oauth_scope_prefix = "memalign:"\n'
    )
    secret = {"MEMALIGN_CONFIG": str(config), "MEMALIGN_OAUTH_CLIENT_SECRET": CLIENT_SECRET}
    try:
        with serving_http(root, "--log-level", "DEBUG", env=secret, port=port) as served:
            yield Served(resource, served.log, authority)
    finally:
        httpd.shutdown()
        httpd.server_close()


async def test_the_tokens_scopes_decide_its_tools_and_its_client_is_who(served: Served) -> None:
    with anyio.fail_after(CALL_DEADLINE_S):
        async with connect(served.url, "scorer-token") as scorer:
            listed = {t.name for t in (await scorer.list_tools()).tools}
            refused = await scorer.call_tool(
                "create_judge", {"name": "tone", "instructions": "{{ outputs }}"}
            )
        async with connect(served.url, "operator-token") as operator:
            operator_tools = {t.name for t in (await operator.list_tools()).tools}
            made = await operator.call_tool(
                "create_judge", {"name": "tone", "instructions": "Is {{ outputs }} kind?"}
            )
            history = await operator.call_tool("judge_history", {"judge": "tone"})
    assert listed == {t for t, s in TOOL_SCOPES.items() if s == "score"}
    assert refused.is_error
    assert "create_judge needs scope 'admin'" in text_of(refused)
    assert operator_tools == {t for t, s in TOOL_SCOPES.items() if s in ("admin", "read", "teach")}
    assert not made.is_error, text_of(made)
    assert history.structured_content is not None
    assert [v["who"] for v in history.structured_content["versions"]] == ["ops-console"]
    # The server authenticated itself to the introspection endpoint with its client id and secret.
    expected = "Basic " + base64.b64encode(f"memalign-rs:{CLIENT_SECRET}".encode()).decode()
    assert {header for header, _ in served.authority.asked} == {expected}


@pytest.mark.parametrize(
    "token",
    ["no-such-token", "elsewhere-token", "expired-token"],
    ids=["unknown or inactive", "issued for another resource", "expired"],
)
async def test_a_token_not_active_for_this_server_gets_401_with_the_issuer(
    served: Served, token: str
) -> None:
    request = {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}
    headers = {"Authorization": f"Bearer {token}", "Accept": "application/json, text/event-stream"}
    async with httpx2.AsyncClient(timeout=CALL_DEADLINE_S) as http:
        reply = await http.post(served.url, json=request, headers=headers)
        assert reply.status_code == 401
        metadata_url = reply.headers["www-authenticate"].split('resource_metadata="')[1].split('"')[0]
        metadata = (await http.get(metadata_url)).json()
    assert metadata["resource"] == served.url
    assert [url.rstrip("/") for url in metadata["authorization_servers"]] == [ISSUER]


async def test_scopes_without_the_prefix_grant_nothing(served: Served) -> None:
    with anyio.fail_after(CALL_DEADLINE_S):
        async with connect(served.url, "unprefixed-token") as client:
            assert (await client.list_tools()).tools == []


def test_no_token_or_secret_in_the_log(served: Served) -> None:
    # Runs after the calls above (pytest keeps file order): their tokens were all presented.
    logged = served.log.read_text()
    assert "ops-console" in logged  # the log does name callers
    for secret in [*served.authority.claims, CLIENT_SECRET]:
        assert secret not in logged
