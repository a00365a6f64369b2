"""Limits (settings `[limits]` and `[memory]`): each over-limit call is one clear line and stores nothing.

Through the real MCP protocol (an in-memory client on a real LanceDB), with limits set low so that a test
reaches them with small inputs; the HTTP-only limits (request size, per-caller rate) on a real
`memalign-mcp serve --transport http` subprocess. Crashes come back as one line with a reference the log holds.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest
from mcp import Client

from conftest import hashing_settings
from in_process_model import InProcessModel
from mcp_calls import ok, refused
from memalign_mcp.alignment import MemAlignService
from memalign_mcp.app import build_server
from memalign_mcp.embeddings import HashingEmbedder
from memalign_mcp.engine import open_engine
from memalign_mcp.errors import ModelError
from memalign_mcp.limits import ModelBusyError, ModelGate, RateLimitedError, RateLimiter
from memalign_mcp.llm import Completion
from memalign_mcp.settings import Settings
from support_desk_model import support_desk
from test_transports import (
    CALL_DEADLINE_S,
    serving_http,
)

pytestmark = pytest.mark.anyio
INSTRUCTIONS = "Is {{ outputs }} a polite reply to {{ inputs }}?"
ITEM = {"inputs": "Where is my order?", "outputs": "Not my problem.", "value": False, "rationale": "Rude."}
LOW = {
    "limits.max_instructions_chars": 200,
    "limits.max_model_chars": 40,
    "limits.max_choices": 3,
    "limits.max_choice_chars": 10,
    "limits.max_ids_per_call": 3,
    "limits.max_judges": 6,
    "memory.max_items_per_call": 3,
    "memory.max_field_chars": 100,
}


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    """One asyncio loop per module, so the module's server and client are shared by its tests."""
    return "asyncio"


def low_settings(data_dir: Path, **overrides: Any) -> Settings:
    """No model, the hashing embedder, and the low limits of LOW (with `overrides` on top)."""
    return hashing_settings(data_dir, overrides=LOW | overrides)


@pytest.fixture(scope="module")
async def client(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Client]:
    """An MCP client connected in memory to a server with low limits."""
    async with Client(build_server(low_settings(tmp_path_factory.mktemp("limits")))) as connected:
        yield connected


async def listing(client: Client) -> list[dict[str, Any]]:
    return (await ok(client, "list_judges"))["judges"]


# --- sizes of a judge -----------------------------------------------------------------------------------------


async def test_oversized_instructions_model_or_choices_are_refused_and_no_judge_is_made(
    client: Client,
) -> None:
    before = await listing(client)
    long = INSTRUCTIONS + " " + "x" * 300
    message = await refused(client, "create_judge", name="big", instructions=long)
    assert "Invalid instructions: got 'Is {{ outputs }}" in message
    assert "at most 200 characters (limits.max_instructions_chars)" in message
    assert len(message) < 400  # the value is shown cut short, not echoed whole
    message = await refused(client, "create_judge", name="big", instructions=INSTRUCTIONS, model="m" * 41)
    assert "Invalid model" in message
    assert "limits.max_model_chars" in message
    many = ["a", "b", "c", "d"]
    message = await refused(
        client,
        "create_judge",
        name="big",
        instructions=INSTRUCTIONS,
        feedback_type="categorical",
        choices=many,
    )
    assert "Invalid choices: got '4 choices'; expected at most 3 choices (limits.max_choices)" in message
    message = await refused(
        client,
        "create_judge",
        name="big",
        instructions=INSTRUCTIONS,
        feedback_type="categorical",
        choices=["ok", "far too long a choice"],
    )
    assert "Invalid choices[1]" in message
    assert "limits.max_choice_chars" in message
    assert await listing(client) == before


async def test_update_judge_cannot_grow_instructions_past_the_limit(client: Client) -> None:
    await ok(client, "create_judge", name="grow", instructions=INSTRUCTIONS)
    before = await listing(client)
    message = await refused(client, "update_judge", judge="grow", instructions=INSTRUCTIONS + "y" * 300)
    assert "limits.max_instructions_chars" in message
    assert await listing(client) == before


# --- sizes of a call ------------------------------------------------------------------------------------------


async def test_too_many_items_or_ids_in_one_call_are_refused_whole(client: Client) -> None:
    await ok(client, "create_judge", name="calls", instructions=INSTRUCTIONS)
    items = [ITEM | {"id": f"i-{n}"} for n in range(4)]
    message = await refused(client, "add_feedback", judge="calls", feedback=items)
    assert message.endswith(
        "Invalid feedback: got '4 items'; expected at most 3 items per call (memory.max_items_per_call); "
        "send them in several calls."
    )
    assert (await ok(client, "list_feedback", judge="calls"))["total"] == 0
    await ok(client, "add_feedback", judge="calls", feedback=items[:3])
    ids = ["i-0", "i-1", "i-2", "nope"]
    message = await refused(client, "remove_feedback", judge="calls", feedback_ids=ids, purge=True)
    assert (
        "Invalid feedback_ids: got '4 ids'; expected at most 3 ids per call (limits.max_ids_per_call)"
        in message
    )
    message = await refused(client, "remove_feedback", judge="calls", feedback_ids=["i-0", "z" * 129])
    assert "Invalid feedback_ids[1]" in message
    assert "1-128 characters" in message
    assert (await ok(client, "list_feedback", judge="calls"))["total"] == 3


async def test_every_judged_field_and_a_text_verdict_are_bounded(client: Client) -> None:
    await ok(client, "create_judge", name="texts", instructions=INSTRUCTIONS, feedback_type="text")
    big = "w" * 101
    for field in ("inputs", "outputs", "expectations", "rationale", "value"):
        message = await refused(
            client, "add_feedback", judge="texts", feedback=[ITEM | {"value": "fine", field: big}]
        )
        assert f"Invalid feedback[0].{field}" in message
        assert "at most 100 characters (memory.max_field_chars)" in message
    message = await refused(client, "score_response", judge="texts", inputs=big, outputs="ok")
    assert "Invalid inputs" in message
    message = await refused(
        client, "evaluate_judge", judge="texts", dataset=[{"inputs": "q", "outputs": big, "value": "fine"}]
    )
    assert "Invalid dataset[0].outputs" in message
    assert (await ok(client, "list_feedback", judge="texts"))["total"] == 0


async def test_a_store_holds_at_most_max_judges_and_delete_frees_a_place(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    settings = low_settings(tmp_path_factory.mktemp("judges"), **{"limits.max_judges": 2})
    async with Client(build_server(settings)) as fresh:
        assert [j["name"] for j in await listing(fresh)] == ["helpfulness"]  # shipped with the server
        await ok(fresh, "create_judge", name="second", instructions=INSTRUCTIONS)
        message = await refused(fresh, "create_judge", name="third", instructions=INSTRUCTIONS)
        assert message.endswith(
            "Invalid name: got 'third'; expected a store of at most 2 judges (limits.max_judges), which this one "
            "has; delete_judge one first."
        )
        await ok(fresh, "create_judge", name="second", instructions=INSTRUCTIONS)  # the same spec: still fine
        await ok(fresh, "delete_judge", judge="second")
        await ok(fresh, "create_judge", name="third", instructions=INSTRUCTIONS)
        assert [j["name"] for j in await listing(fresh)] == ["helpfulness", "third"]


# --- request rates --------------------------------------------------------------------------------------------


def test_a_token_bucket_refuses_a_burst_says_when_to_retry_and_refills() -> None:
    now = [100.0]
    limiter = RateLimiter(2, "limits.requests_per_minute", clock=lambda: now[0])
    limiter.take("token 'a'")
    limiter.take("token 'a'")
    with pytest.raises(RateLimitedError) as refusal:
        limiter.take("token 'a'")
    assert refusal.value.retry_after_s == pytest.approx(30.0)
    assert "Retry in 30.0 s" in str(refusal.value)
    assert "limits.requests_per_minute" in str(refusal.value)
    limiter.take("token 'b'")  # another caller has a bucket of its own
    now[0] += 30.0
    limiter.take("token 'a'")
    with pytest.raises(RateLimitedError):
        limiter.take("token 'a'")
    RateLimiter(0, "limits.stdio_requests_per_minute").take("anyone")  # 0: no limit


async def test_stdio_is_unlimited_by_default_and_limited_when_configured(
    client: Client, tmp_path_factory: pytest.TempPathFactory
) -> None:
    for _ in range(30):
        await ok(client, "list_judges")
    settings = low_settings(tmp_path_factory.mktemp("rate"), **{"limits.stdio_requests_per_minute": 3})
    async with Client(build_server(settings)) as limited:
        await ok(limited, "create_judge", name="rated", instructions=INSTRUCTIONS)
        await ok(limited, "list_judges")
        await ok(limited, "list_judges")
        message = await refused(limited, "add_feedback", judge="rated", feedback=[ITEM])
        assert message.startswith(
            "Too many requests from the stdio client: got more than 3 tool calls a minute"
        )
        assert re.search(r"Retry in \d+\.\d s; nothing of this call was done\.$", message)


# --- model calls in flight ------------------------------------------------------------------------------------


class BlockingModel:
    """A model client whose calls wait until released, counting how many are inside at once."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.entered = threading.Semaphore(0)
        self.calls = 0

    def complete_json(self, **_: Any) -> Completion:
        self.calls += 1
        self.entered.release()
        self.release.wait(CALL_DEADLINE_S)
        return Completion(
            data={},
            model="m",
            latency_ms=0,
            prompt_tokens=None,
            completion_tokens=None,
            cost_usd=None,
            attempts=1,
        )


def test_model_calls_beyond_the_concurrency_limit_wait_then_fail_clearly() -> None:
    inner = BlockingModel()
    gate = ModelGate(inner, limit=1, wait_s=0.2)
    ask: dict[str, Any] = {"model": "m", "messages": [], "schema_name": "s", "schema": {}}
    first = threading.Thread(target=lambda: gate.complete_json(**ask))
    first.start()
    assert inner.entered.acquire(timeout=CALL_DEADLINE_S)  # the first call holds the only slot
    with pytest.raises(ModelBusyError) as busy:
        gate.complete_json(**ask)
    assert isinstance(
        busy.value, ModelError
    )  # so distillation keeps the items pending, as for any model failure
    assert str(busy.value).startswith(
        "Model busy: got no free slot within 0.2 s; expected fewer than 1 model calls"
    )
    assert "(limits.model_concurrency). Retry in a few seconds." in str(busy.value)
    assert inner.calls == 1
    inner.release.set()
    first.join(CALL_DEADLINE_S)
    gate.complete_json(**ask)  # the slot is free again
    assert inner.calls == 2


def test_the_service_sends_every_model_call_through_one_gate(tmp_path: Path) -> None:
    settings = low_settings(tmp_path, **{"limits.model_concurrency": 2, "model.judge": "openai/scripted"})
    model = InProcessModel(support_desk)
    engine = open_engine(settings, embedder=HashingEmbedder(), client=model)
    gate = engine.gated_client
    assert isinstance(gate, ModelGate)
    assert gate.inner is model
    assert gate.limit == 2
    engine.score("helpfulness", "Where is my order?", "Not my problem.")
    assert model.calls == 1


# --- crashes --------------------------------------------------------------------------------------------------


async def test_a_crash_in_a_tool_is_one_line_with_a_ref_and_the_log_has_its_traceback(
    tmp_path_factory: pytest.TempPathFactory, caplog: pytest.LogCaptureFixture
) -> None:
    def crashing_engine(settings: Settings) -> MemAlignService:
        engine = open_engine(settings, embedder=HashingEmbedder())

        def broken(*_: Any, **__: Any) -> Any:
            raise KeyError("internal detail that must not reach the caller")

        engine.list_feedback = broken  # type: ignore[method-assign]  # a per-instance fault hook
        return engine

    settings = low_settings(tmp_path_factory.mktemp("crash"))
    with caplog.at_level(logging.ERROR, logger="memalign_mcp"):
        async with Client(build_server(settings, crashing_engine)) as crashing:
            message = await refused(crashing, "list_feedback", judge="helpfulness")
            assert (await ok(crashing, "list_judges"))["judges"]  # the server keeps answering
    found = re.fullmatch(
        r"Internal error \(ref ([0-9a-f]{8})\) in list_feedback: KeyError; the server log has the details under "
        r"this ref\. Retry, and report the ref to the server's operator if it persists\.",
        message,
    )
    assert found, message
    [record] = [r for r in caplog.records if found.group(1) in r.getMessage()]
    assert record.exc_info is not None
    assert record.exc_info[0] is KeyError
    assert "internal detail" not in message


# --- over HTTP ------------------------------------------------------------------------------------------------


@pytest.fixture
def limited_http(tmp_path: Path) -> Iterator[str]:
    """`memalign-mcp serve --transport http` with 2 tool calls a minute and 64 KiB bodies; yields its URL."""
    config = tmp_path / "config.toml"
    config.write_text("[limits]\nrequests_per_minute = 2\nmax_request_bytes = 65536\n")
    with serving_http(tmp_path, "--config", str(config)) as served:
        yield served.url


async def test_over_http_a_caller_is_rate_limited_and_a_huge_body_gets_413(limited_http: str) -> None:
    with anyio.fail_after(CALL_DEADLINE_S):
        async with Client(limited_http) as caller:
            await ok(caller, "list_judges")
            await ok(caller, "list_judges")
            message = await refused(caller, "list_judges")
            assert message.startswith("Too many requests from address 127.0.0.1: got more than 2 tool calls")
            assert "(limits.requests_per_minute). Retry in" in message
        body = (
            '{"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {"pad": "' + "p" * 70_000 + '"}}'
        )
        headers = {"content-type": "application/json", "accept": "application/json, text/event-stream"}
        async with httpx2.AsyncClient() as http:
            response = await http.post(limited_http, content=body, headers=headers)
    assert response.status_code == 413
