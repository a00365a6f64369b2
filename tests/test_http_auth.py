"""Bearer tokens over real HTTP: one `memalign-mcp serve` subprocess with a tokens file of several callers.

Each scope's token lists and calls exactly its tools; a token bound to one judge cannot learn another exists; a
request without a valid token gets 401 with the SDK's protected-resource metadata; the token's name is recorded as
`who`; and no token appears in the server's log. The server runs at DEBUG so that a leak would show.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncGenerator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError

from mcp_calls import text_of
from memalign_mcp.scopes import ALL_SCOPES, Scope
from test_transports import (
    CALL_DEADLINE_S,
    CONTRACT_TOOLS,
    FEEDBACK,
    serving_http,
)

pytestmark = pytest.mark.anyio

# CONTRACT.md's "Scopes and tokens": the one scope of every tool. Written out here, not read from the code, so a
# tool that moves to another scope fails this test.
TOOL_SCOPES: dict[str, Scope] = {
    "score_response": "score",
    "list_judges": "score",
    "list_guidelines": "score",
    "list_feedback": "read",
    "judge_history": "read",
    "diff_judge": "read",
    "add_feedback": "teach",
    "distill_pending": "teach",
    "evaluate_judge": "evaluate",
    "remove_feedback": "forget",
    "create_judge": "admin",
    "update_judge": "admin",
    "delete_judge": "admin",
    "rollback_judge": "admin",
    "add_guideline": "admin",
    "review_guideline": "admin",
}
SAID = {"inputs": "Where is my order?", "outputs": "Not my problem."}
# Arguments that are valid for judge alpha and harmless when the call is allowed; the admin ones touch other names.
CALLS: dict[str, dict[str, Any]] = {
    "score_response": {"judge": "alpha", **SAID},
    "list_judges": {},
    "list_guidelines": {"judge": "alpha"},
    "list_feedback": {"judge": "alpha"},
    "judge_history": {"judge": "alpha"},
    "diff_judge": {"judge": "alpha", "from_version": 0, "to_version": 1},
    "add_feedback": {"judge": "alpha", "feedback": FEEDBACK},
    "distill_pending": {"judge": "alpha"},
    "evaluate_judge": {"judge": "alpha", "dataset": [{**SAID, "value": False}]},
    "remove_feedback": {"judge": "alpha", "feedback_ids": ["not-there"]},
    "create_judge": {"name": "made-by-admin", "instructions": "Is {{ outputs }} polite?"},
    "update_judge": {"judge": "alpha", "retrieval_k": 4},
    "delete_judge": {"judge": "made-by-admin"},
    "rollback_judge": {"judge": "alpha", "version": 0},
    "add_guideline": {"judge": "alpha", "text": "Thank the customer for their patience."},
    "review_guideline": {"judge": "alpha", "guideline_id": "g-not-there", "action": "approve"},
}
# Every call about judge beta that a token bound to alpha must be refused exactly as if beta did not exist.
ABOUT_A_JUDGE = [tool for tool, arguments in CALLS.items() if "judge" in arguments]


@dataclass(frozen=True)
class Caller:
    """One entry of the tokens file and the bearer token behind it."""

    name: str
    secret: str
    scopes: tuple[Scope, ...]
    judges: tuple[str, ...] | None = None

    def toml(self) -> str:
        """The `[[token]]` table the operator would write: the sha256, never the secret."""
        digest = hashlib.sha256(self.secret.encode()).hexdigest()
        lines = [
            "[[token]]",
            f'name = "{self.name}"',
            f'secret_sha256 = "{digest}"',
            f"scopes = {list(self.scopes)!r}".replace("'", '"'),
        ]
        if self.judges is not None:
            lines.append(f"judges = {list(self.judges)!r}".replace("'", '"'))
        return "\n".join(lines) + "\n"


PER_SCOPE = [Caller(f"only-{s}", f"secret-of-only-{s}-7f3a9c", (s,)) for s in ALL_SCOPES]
OPERATOR = Caller("operator", "secret-of-the-operator-51e0", ALL_SCOPES)
BOUND = Caller("alpha-bot", "secret-of-alpha-bot-c4d2", ALL_SCOPES, ("alpha",))
CALLERS = [*PER_SCOPE, OPERATOR, BOUND]


@dataclass(frozen=True)
class Served:
    """The running server: its endpoint and the file its log goes to."""

    url: str
    log: Path


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    """The MCP clients run on asyncio."""
    return "asyncio"


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """`serve --transport http --tokens FILE` at DEBUG, for the whole module (one subprocess)."""
    root = tmp_path_factory.mktemp("auth")
    tokens = root / "tokens.toml"
    tokens.write_text("\n".join(c.toml() for c in CALLERS))
    with serving_http(root, "--log-level", "DEBUG", env={"MEMALIGN_TOKENS_FILE": str(tokens)}) as served:
        yield Served(served.url, served.log)


@asynccontextmanager
async def connect(url: str, secret: str) -> AsyncGenerator[Client]:
    """A client that sends this bearer token with every request."""
    async with (
        httpx2.AsyncClient(headers={"Authorization": f"Bearer {secret}"}, timeout=CALL_DEADLINE_S) as http,
        Client(streamable_http_client(url, http_client=http)) as client,
    ):
        yield client


@pytest.fixture(scope="module")
async def judges(served: Served) -> None:
    """Judges alpha and beta, each with one feedback item, made by the operator's token."""
    with anyio.fail_after(CALL_DEADLINE_S):
        async with connect(served.url, OPERATOR.secret) as client:
            for name in ("alpha", "beta"):
                made = await client.call_tool(
                    "create_judge", {"name": name, "instructions": "Is {{ outputs }} polite?"}
                )
                assert not made.is_error, text_of(made)
                taught = await client.call_tool("add_feedback", {"judge": name, "feedback": FEEDBACK})
                assert not taught.is_error, text_of(taught)


async def test_each_scope_lists_and_calls_exactly_its_tools(served: Served, judges: None) -> None:
    assert set(TOOL_SCOPES) == CONTRACT_TOOLS
    for caller in PER_SCOPE:
        (scope,) = caller.scopes
        with anyio.fail_after(CALL_DEADLINE_S):
            async with connect(served.url, caller.secret) as client:
                listed = {t.name for t in (await client.list_tools()).tools}
                assert listed == {t for t, s in TOOL_SCOPES.items() if s == scope}, caller.name
                for tool, needed in TOOL_SCOPES.items():
                    result = await client.call_tool(tool, CALLS[tool])
                    text = text_of(result)
                    if needed == scope:
                        # Allowed: it works, or fails only for a domain reason, never for want of a scope.
                        assert "needs scope" not in text, (caller.name, tool, text)
                    else:
                        assert result.is_error, (caller.name, tool)
                        assert f"{tool} needs scope {needed!r}" in text, (caller.name, tool, text)
                        assert f"token {caller.name!r}" in text
                templates = (await client.list_resource_templates()).resource_templates
                assert [t.uri_template for t in templates] == (["judge://{name}"] if scope == "score" else [])
                if scope != "score":
                    with pytest.raises(MCPError, match="needs scope 'score'"):
                        await client.read_resource("judge://alpha")


async def test_the_token_name_is_recorded_as_who(served: Served, judges: None) -> None:
    with anyio.fail_after(CALL_DEADLINE_S):
        async with connect(served.url, OPERATOR.secret) as client:
            history = await client.call_tool("judge_history", {"judge": "beta"})
    assert history.structured_content is not None
    assert {v["who"] for v in history.structured_content["versions"]} == {"operator"}


async def test_a_hand_written_guideline_names_the_token_as_its_operator(served: Served, judges: None) -> None:
    with anyio.fail_after(CALL_DEADLINE_S):
        async with connect(served.url, OPERATOR.secret) as client:
            added = await client.call_tool("add_guideline", {"judge": "beta", "text": "Offer a next step."})
            listed = await client.call_tool("list_guidelines", {"judge": "beta"})
    assert added.structured_content is not None, text_of(added)
    assert added.structured_content["provenance"] == "operator:operator"
    assert listed.structured_content is not None
    (mine,) = [
        g for g in listed.structured_content["guidelines"] if g["id"] == added.structured_content["id"]
    ]
    assert (mine["provenance"], mine["status"], mine["source_feedback_ids"]) == (
        "operator:operator",
        "active",
        [],
    )


async def test_a_token_bound_to_one_judge_cannot_learn_that_another_exists(
    served: Served, judges: None
) -> None:
    with anyio.fail_after(CALL_DEADLINE_S):
        async with connect(served.url, BOUND.secret) as client:
            listed = await client.call_tool("list_judges", {})
            assert listed.structured_content is not None
            assert [j["name"] for j in listed.structured_content["judges"]] == ["alpha"]
            for tool in ABOUT_A_JUDGE:
                absent = await client.call_tool(tool, CALLS[tool] | {"judge": "no-such-judge"})
                hidden = await client.call_tool(tool, CALLS[tool] | {"judge": "beta"})
                assert hidden.is_error, tool
                assert absent.is_error, tool
                assert text_of(hidden) == text_of(absent).replace("no-such-judge", "beta"), tool
                assert "Known judges: alpha." in text_of(hidden)
            made = await client.call_tool("create_judge", {"name": "beta", "instructions": "{{ outputs }}"})
            assert made.is_error
            assert "already exists" not in text_of(made)
            with pytest.raises(MCPError, match="Unknown judge") as hidden_doc:
                await client.read_resource("judge://beta")
            with pytest.raises(MCPError, match="Unknown judge") as absent_doc:
                await client.read_resource("judge://no-such-judge")
            assert str(hidden_doc.value) == str(absent_doc.value).replace("no-such-judge", "beta")
            assert "Is {{ outputs }} polite?" in str(await client.read_resource("judge://alpha"))
    with anyio.fail_after(CALL_DEADLINE_S):
        async with connect(served.url, OPERATOR.secret) as client:
            feedback = await client.call_tool("list_feedback", {"judge": "beta"})
    assert feedback.structured_content is not None
    assert feedback.structured_content["total"] == 1  # nothing the bound token sent reached beta


async def test_a_request_without_a_valid_token_gets_401_with_resource_metadata(served: Served) -> None:
    hello = {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}}
    headers = {"Accept": "application/json, text/event-stream"}
    async with httpx2.AsyncClient(timeout=CALL_DEADLINE_S) as http:
        for extra in ({}, {"Authorization": "Bearer not-a-token"}, {"Authorization": OPERATOR.secret}):
            refused = await http.post(served.url, json=hello, headers=headers | extra)
            assert refused.status_code == 401, extra
            challenge = refused.headers["www-authenticate"]
            assert challenge.startswith("Bearer ")
            assert "resource_metadata=" in challenge
        metadata_url = challenge.split('resource_metadata="')[1].rstrip('"')
        metadata = (await http.get(metadata_url)).json()
    assert metadata["resource"] == served.url


async def test_no_token_appears_in_the_server_log(served: Served, judges: None) -> None:
    with anyio.fail_after(CALL_DEADLINE_S):
        for caller in CALLERS:
            async with connect(served.url, caller.secret) as client:
                await client.call_tool("list_judges", {})
        async with httpx2.AsyncClient() as http:
            wrong = {"Authorization": "Bearer a-wrong-secret-9d1e"}
            assert (await http.post(served.url, json={}, headers=wrong)).status_code == 401
    logged = served.log.read_text()
    assert "from token 'operator'" in logged  # the log names callers; the check below is not vacuous
    for secret in [c.secret for c in CALLERS] + ["a-wrong-secret-9d1e"]:
        assert secret not in logged
