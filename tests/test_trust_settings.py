"""Trust at start and over stdio: a bad tokens file, HTTP on a public address, and local scopes restricted."""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

import pytest
from mcp import Client
from mcp_types import TextContent

from conftest import hashing_settings
from memalign_mcp.app import build_server
from memalign_mcp.auth import http_auth, is_loopback, load_tokens
from memalign_mcp.errors import SettingsError
from memalign_mcp.settings import ServerSettings
from test_transports import REPO, SERVER, clean_env

DIGEST = hashlib.sha256(b"a-secret").hexdigest()


def tokens_file(tmp_path: Path, body: str) -> Path:
    """A tokens file with this TOML."""
    path = tmp_path / "tokens.toml"
    path.write_text(body)
    return path


@pytest.mark.parametrize(
    ("body", "named", "expected"),
    [
        (
            f'[[token]]\nname = "ci"\nsecret_sha256 = "{DIGEST}"\nscopes = ["scor"]\n',
            "token[0].scopes",
            "score",
        ),
        (
            '[[token]]\nname = "ci"\nsecret_sha256 = "raw-token-text"\nscopes = ["score"]\n',
            "secret_sha256",
            "hex",
        ),
        (
            f'[[token]]\nname = "ci"\nsecret_sha256 = "{DIGEST}"\nscopes = []\n',
            "token[0].scopes",
            "non-empty",
        ),
        (
            f'[[token]]\nname = "ci"\nsecret_sha256 = "{DIGEST}"\nscopes = ["score"]\nrole = 1\n',
            "role",
            "no such",
        ),
        (
            f'[[token]]\nname = "ci"\nsecret_sha256 = "{DIGEST}"\nscopes = ["read"]\n' * 2,
            "token[1].name",
            "no other token",
        ),
        ("[token]\nname = 1\n", "token", "[[token]]"),
        ("[[token]\n", "server.tokens_file", "valid TOML"),
    ],
)
def test_a_bad_tokens_file_fails_naming_the_entry_and_key(
    tmp_path: Path, body: str, named: str, expected: str
) -> None:
    with pytest.raises(SettingsError) as refused:
        load_tokens(tokens_file(tmp_path, body))
    message = str(refused.value)
    assert named in message
    assert expected in message
    assert "raw-token-text" not in message  # a token pasted into the file is never echoed


def test_a_good_tokens_file_names_its_callers(tmp_path: Path) -> None:
    body = f'[[token]]\nname = "ci"\nsecret_sha256 = "{DIGEST}"\nscopes = ["score"]\njudges = ["tone"]\n'
    assert load_tokens(tokens_file(tmp_path, body)).names == ["ci"]


def test_http_on_a_public_address_needs_tokens_or_an_explicit_opt_out(tmp_path: Path) -> None:
    assert [is_loopback(h) for h in ("127.0.0.1", "::1", "localhost", "0.0.0.0", "example.org")] == [
        True,
        True,
        True,
        False,
        False,
    ]
    assert http_auth(ServerSettings(host="0.0.0.0", insecure_no_auth=True)) is None
    done = subprocess.run(
        [str(SERVER), "serve", "--transport", "http", "--host", "0.0.0.0", "--port", "8999"],
        cwd=REPO,
        env=clean_env(tmp_path / "data"),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert "Bad setting server.host: got '0.0.0.0'" in done.stderr
    assert "--tokens FILE" in done.stderr
    assert "--insecure-no-auth" in done.stderr


def test_the_401_metadata_names_the_public_url_when_one_is_set(tmp_path: Path) -> None:
    body = f'[[token]]\nname = "ci"\nsecret_sha256 = "{DIGEST}"\nscopes = ["score"]\n'
    tokens = str(tokens_file(tmp_path, body))
    public = http_auth(
        ServerSettings(host="0.0.0.0", tokens_file=tokens, public_url="https://judges.example/mcp")
    )
    assert public is not None
    assert str(public.settings.resource_server_url) == "https://judges.example/mcp"
    local = http_auth(ServerSettings(port=8123, tokens_file=tokens))
    assert local is not None
    assert str(local.settings.resource_server_url) == "http://127.0.0.1:8123/mcp"
    with pytest.raises(SettingsError, match=r"server\.public_url"):
        http_auth(ServerSettings(tokens_file=tokens, public_url="judges.example"))


@pytest.mark.anyio
async def test_stdio_scopes_restrict_a_local_caller(tmp_path: Path) -> None:
    settings = hashing_settings(tmp_path, overrides={"server.stdio_scopes": ["score", "read"]})
    async with Client(build_server(settings)) as client:
        listed = {t.name for t in (await client.list_tools()).tools}
        assert listed == {
            "score_response",
            "list_judges",
            "list_guidelines",
            "list_feedback",
            "judge_history",
        } | {"diff_judge"}
        refused = await client.call_tool("remove_feedback", {"judge": "helpfulness", "feedback_ids": ["x"]})
    assert refused.is_error
    text = "".join(b.text for b in refused.content if isinstance(b, TextContent))
    assert "remove_feedback needs scope 'forget', which this connection does not hold" in text


def test_an_authorization_server_needs_both_urls_and_no_tokens_file(tmp_path: Path) -> None:
    introspect = "https://login.example/introspect"
    with pytest.raises(SettingsError, match=r"server\.oauth_introspection_url"):
        http_auth(ServerSettings(oauth_issuer_url="https://login.example"))
    with pytest.raises(SettingsError, match=r"server\.oauth_issuer_url"):
        http_auth(ServerSettings(oauth_introspection_url=introspect))
    with pytest.raises(SettingsError, match=r"server\.tokens_file.*empty when an authorization server"):
        http_auth(
            ServerSettings(
                oauth_issuer_url="https://login.example",
                oauth_introspection_url=introspect,
                tokens_file=str(tmp_path / "tokens.toml"),
            )
        )
    with pytest.raises(SettingsError, match=r"server\.oauth_issuer_url.*http\(s\) URL"):
        http_auth(ServerSettings(oauth_issuer_url="login.example", oauth_introspection_url=introspect))
    remote = http_auth(
        ServerSettings(
            host="0.0.0.0", oauth_issuer_url="https://login.example", oauth_introspection_url=introspect
        )
    )
    assert remote is not None  # a public address is fine: every request needs a token the issuer vouches for
    assert str(remote.settings.issuer_url).rstrip("/") == "https://login.example"
