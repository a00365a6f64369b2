"""The model seam against a real HTTP server: schema requests, retries, errors, embeddings, quiet stdout."""

from __future__ import annotations

import json
import logging
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from memalign_mcp.errors import ModelError
from memalign_mcp.llm import Completion, LiteLLMClient, LiteLLMEmbedder, ModelClient, close_cached_clients
from scripted_model import (
    ChatCall,
    Reply,
    ScriptedError,
    ScriptedModelServer,
    hashed_embedding,
    queue_script,
    rough_tokens,
)

MODEL = "openai/scripted"
VERDICT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"reason": {"type": "string"}, "verdict": {"type": "string", "enum": ["yes", "no"]}},
    "required": ["reason", "verdict"],
    "additionalProperties": False,
}
MESSAGES = [
    {"role": "system", "content": "You judge whether an answer is polite."},
    {"role": "user", "content": "Answer: 'Thanks so much for asking, here is the report you wanted.'"},
]
GOOD = {"reason": "It thanks the reader.", "verdict": "yes"}


def check_verdict(data: dict[str, Any]) -> None:
    """Reject verdicts outside the judge's choices, as the judge service does."""
    if data.get("verdict") not in ("yes", "no"):
        raise ValueError(f"verdict {data.get('verdict')!r} is not one of 'yes', 'no'")


@pytest.fixture(scope="session")
def model_server() -> Iterator[ScriptedModelServer]:
    with ScriptedModelServer() as server:
        yield server
    close_cached_clients()


@pytest.fixture
def server(model_server: ScriptedModelServer) -> ScriptedModelServer:
    model_server.reset()
    return model_server


@pytest.fixture
def client(server: ScriptedModelServer) -> LiteLLMClient:
    return LiteLLMClient(api_base=server.base_url, api_key="test", max_retries=2, retry_backoff_s=0.0)


def ask(client: ModelClient, model: str = MODEL) -> Completion:
    return client.complete_json(
        model=model, messages=MESSAGES, schema_name="verdict", schema=VERDICT_SCHEMA, check=check_verdict
    )


def closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"


def test_valid_reply_is_parsed_with_usage_and_request_carries_the_schema(
    server: ScriptedModelServer, client: LiteLLMClient
) -> None:
    server.script = queue_script([GOOD])

    completion = ask(client)

    assert completion.data == GOOD
    assert completion.model == MODEL
    assert completion.attempts == 1
    assert completion.latency_ms > 0
    [call] = server.calls
    assert completion.prompt_tokens == rough_tokens(call.prompt_text())
    assert completion.completion_tokens == rough_tokens(json.dumps(GOOD))
    assert completion.cost_usd is None  # litellm has no price for an unknown model
    assert client.calls == 1
    assert call.model == "scripted"
    assert call.messages == MESSAGES
    assert call.schema_name == "verdict"
    assert call.schema == VERDICT_SCHEMA
    assert call.raw_body["response_format"]["type"] == "json_schema"
    assert call.raw_body["response_format"]["json_schema"]["strict"] is True
    assert call.raw_body["temperature"] == 0.0
    assert "polite" in call.prompt_text()


def test_cost_is_reported_for_a_model_litellm_has_a_price_for(
    server: ScriptedModelServer, client: LiteLLMClient
) -> None:
    server.script = queue_script([GOOD])

    completion = ask(client, model="openai/gpt-4o-mini")

    assert completion.cost_usd is not None
    assert completion.cost_usd > 0


def test_fenced_json_is_accepted(server: ScriptedModelServer, client: LiteLLMClient) -> None:
    server.script = queue_script(["```json\n" + json.dumps(GOOD) + "\n```"])

    assert ask(client).data == GOOD


def test_a_reply_out_of_schema_is_asked_for_again_quoting_it_and_the_problem(
    server: ScriptedModelServer, client: LiteLLMClient
) -> None:
    bad = {"reason": "unsure", "verdict": "maybe"}
    server.script = queue_script([bad, GOOD])

    completion = ask(client)

    assert completion.data == GOOD
    assert completion.attempts == 2
    assert client.calls == 2
    first, second = server.calls
    assert first.messages == MESSAGES
    assert second.messages[: len(MESSAGES)] == MESSAGES
    assert second.messages[-2] == {"role": "assistant", "content": json.dumps(bad)}
    assert second.messages[-1]["role"] == "user"
    assert "'maybe' is not one of" in second.messages[-1]["content"]
    assert second.format_type == "json_schema"  # a bad answer is not a refused format
    assert completion.completion_tokens == rough_tokens(json.dumps(bad)) + rough_tokens(json.dumps(GOOD))


@pytest.mark.parametrize(
    ("bad", "named"),
    [
        ({"reason": "unsure", "verdict": "maybe"}, "'maybe' is not one of"),
        ([1, 2], "not an object"),
        ("", "empty"),
    ],
)
def test_two_unusable_replies_raise_model_error(
    server: ScriptedModelServer, client: LiteLLMClient, bad: Reply, named: str
) -> None:
    server.script = queue_script([bad, bad] if not isinstance(bad, list) else [json.dumps(bad)] * 2)

    with pytest.raises(ModelError) as raised:
        ask(client)

    assert MODEL in str(raised.value)
    assert named in str(raised.value)
    assert len(server.calls) == 2


def test_server_errors_are_retried_a_bounded_number_of_times(
    server: ScriptedModelServer, client: LiteLLMClient
) -> None:
    server.script = lambda call: ScriptedError(500, "the model fell over")

    with pytest.raises(ModelError) as raised:
        ask(client)

    message = str(raised.value)
    assert len(server.calls) == 3  # one request and max_retries=2 retries
    assert client.calls == 3
    assert "after 3 attempts" in message
    assert "the model fell over" in message
    assert server.base_url in message
    assert "MEMALIGN_MODEL" in message


def test_a_transient_server_error_then_a_reply_succeeds(
    server: ScriptedModelServer, client: LiteLLMClient
) -> None:
    server.script = queue_script([ScriptedError(503, "warming up"), GOOD])

    completion = ask(client)

    assert completion.data == GOOD
    assert completion.attempts == 2


def test_a_rejected_key_is_not_retried_and_says_so(
    server: ScriptedModelServer, client: LiteLLMClient
) -> None:
    server.script = lambda call: ScriptedError(401, "invalid api key")

    with pytest.raises(ModelError, match="MEMALIGN_API_KEY"):
        ask(client)

    assert len(server.calls) == 1


def test_a_reply_past_the_timeout_is_not_sent_again_and_the_error_names_the_timeout(
    server: ScriptedModelServer,
) -> None:
    release = threading.Event()

    def stall(call: ChatCall) -> Reply:
        release.wait(10)
        return GOOD

    server.script = stall
    client = LiteLLMClient(api_base=server.base_url, api_key="test", timeout_s=0.2, max_retries=2)
    try:
        with pytest.raises(ModelError) as raised:
            ask(client)
    finally:
        release.set()

    message = str(raised.value)
    assert len(server.calls) == 1  # max_retries=2, yet the same request is not sent into the same timeout
    assert "0.2 s" in message
    assert "MEMALIGN_TIMEOUT_S" in message
    assert "MEMALIGN_MODEL" not in message  # the model and URL were fine; the wait was too short


def test_connection_refused_names_the_api_base() -> None:
    url = closed_port_url()
    client = LiteLLMClient(api_base=url, api_key="test", max_retries=1, retry_backoff_s=0.0)

    with pytest.raises(ModelError) as raised:
        ask(client)

    assert url in str(raised.value)
    assert "MEMALIGN_API_BASE" in str(raised.value)
    assert isinstance(raised.value.__cause__, Exception)
    assert client.calls == 2


def test_nothing_reaches_stdout_even_with_litellm_debug_logging(
    server: ScriptedModelServer,
    client: LiteLLMClient,
    capfd: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    server.script = queue_script([GOOD, GOOD, ScriptedError(500, "boom"), ScriptedError(500, "boom")])
    ask(client)  # the first call configures litellm; the checked calls come after it
    capfd.readouterr()
    caplog.set_level(logging.DEBUG, logger="LiteLLM")
    quiet = LiteLLMClient(api_base=server.base_url, api_key="test", max_retries=1, retry_backoff_s=0.0)

    ask(quiet)
    with pytest.raises(ModelError):
        ask(quiet)

    assert capfd.readouterr().out == ""
    assert caplog.records  # litellm did log; it went to the logging system, not to stdout


def test_importing_the_seam_does_not_import_litellm_or_other_systems() -> None:
    code = (
        "import sys, memalign_mcp.llm; "
        "print(sorted(m for m in ('litellm', 'lancedb', 'onnxruntime', 'mcp') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)

    assert result.stdout.strip() == "[]"


def test_embedder_returns_unit_rows_in_order(server: ScriptedModelServer) -> None:
    embedder = LiteLLMEmbedder("openai/scripted-embed", api_base=server.base_url, api_key="test")
    texts = ["the cat sat", "a dog barked loudly", "!!!"]

    vectors = embedder.embed(texts)

    assert embedder.name == "litellm/openai/scripted-embed"
    assert vectors.dtype == np.float32
    assert vectors.shape == (3, 64)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(vectors, np.array([hashed_embedding(text) for text in texts]), atol=1e-6)
    assert embedder.dim == 64
    assert len(server.embedding_calls) == 1  # dim came from the embed call, no probe


def test_embedder_batches_at_most_256_texts_per_request(server: ScriptedModelServer) -> None:
    embedder = LiteLLMEmbedder("openai/scripted-embed", api_base=server.base_url, api_key="test")
    texts = [f"feedback item number {index}" for index in range(300)]

    vectors = embedder.embed(texts)

    assert vectors.shape == (300, 64)
    assert [len(call.texts) for call in server.embedding_calls] == [256, 44]
    np.testing.assert_allclose(vectors[299], hashed_embedding(texts[299]), atol=1e-6)
    assert embedder.calls == 2


def test_embedder_dim_probes_once_when_nothing_was_embedded(server: ScriptedModelServer) -> None:
    embedder = LiteLLMEmbedder("openai/scripted-embed", api_base=server.base_url, api_key="test")

    assert embedder.dim == 64
    assert embedder.dim == 64
    assert len(server.embedding_calls) == 1
    assert embedder.embed([]).shape == (0, 64)
    assert len(server.embedding_calls) == 1


def test_embedder_failure_raises_model_error(server: ScriptedModelServer) -> None:
    server.embedding_error = ScriptedError(401, "invalid api key")
    embedder = LiteLLMEmbedder("openai/scripted-embed", api_base=server.base_url, api_key="test")

    with pytest.raises(ModelError) as raised:
        embedder.embed(["hello"])

    assert "openai/scripted-embed" in str(raised.value)
    assert server.base_url in str(raised.value)


def test_scripted_server_answers_unknown_paths_with_404(server: ScriptedModelServer) -> None:
    import urllib.error
    import urllib.request

    request = urllib.request.Request(server.base_url + "/nowhere", data=b"{}", method="POST")
    with pytest.raises(urllib.error.HTTPError) as raised:
        urllib.request.urlopen(request, timeout=5)

    assert raised.value.code == 404
    assert "no route" in raised.value.read().decode()


def test_a_call_from_the_main_thread_leaves_no_event_loop_behind(
    server: ScriptedModelServer, client: LiteLLMClient
) -> None:
    import asyncio

    server.reset(lambda call: GOOD)
    ask(client)
    # litellm's logging would otherwise create and set a loop here that nothing closes (a ResourceWarning later).
    local = asyncio.get_event_loop_policy()._local  # pyright: ignore[reportAttributeAccessIssue, reportUnknownMemberType, reportDeprecated]
    assert getattr(local, "_loop", None) is None
