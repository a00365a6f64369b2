"""Structured output from any OpenAI-compatible server: token limits, corrected retries, format fallbacks.

Each test drives the real litellm client against the scripted HTTP server and asserts on the requests it made:
what a server operator would see in their logs, and what a user waits for.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from memalign_mcp.errors import ModelError
from memalign_mcp.llm import Completion, LiteLLMClient, close_cached_clients
from memalign_mcp.settings import ModelSettings
from scripted_model import ChatCall, CutOffReply, Reply, ScriptedError, ScriptedModelServer, queue_script

MODEL = "openai/scripted"
SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "reason": {"type": "string", "maxLength": 80},
        "verdict": {"type": "string", "enum": ["yes", "no"]},
    },
    "required": ["reason", "verdict"],
    "additionalProperties": False,
}
MESSAGES = [
    {"role": "system", "content": "You judge whether an answer is polite."},
    {"role": "user", "content": "Answer: 'Thanks so much for asking, here is the report you wanted.'"},
]
GOOD = {"reason": "It thanks the reader.", "verdict": "yes"}
REFUSAL = "response_format json_schema is not supported by this server"


@pytest.fixture(scope="module")
def model_server() -> Iterator[ScriptedModelServer]:
    with ScriptedModelServer() as server:
        yield server
    close_cached_clients()


@pytest.fixture
def server(model_server: ScriptedModelServer) -> ScriptedModelServer:
    model_server.reset()
    return model_server


def make_client(server: ScriptedModelServer, **options: Any) -> LiteLLMClient:
    return LiteLLMClient(
        api_base=server.base_url,
        api_key="test",
        max_retries=0,
        retry_backoff_s=0.0,
        max_tokens={"verdict": 64},
        **options,
    )


def ask(client: LiteLLMClient, schema_name: str = "verdict") -> Completion:
    return client.complete_json(model=MODEL, messages=MESSAGES, schema_name=schema_name, schema=SCHEMA)


def test_every_request_carries_the_output_token_limit_of_its_reply_schema(
    server: ScriptedModelServer,
) -> None:
    server.script = lambda call: GOOD
    settings = ModelSettings(
        api_base=server.base_url, api_key="x", max_tokens_score=111, max_tokens_distill=222
    )
    client = LiteLLMClient.from_settings(settings)

    for name in ("judgement", "guidelines", "something-else"):
        ask(client, name)

    assert [call.raw_body["max_tokens"] for call in server.calls] == [111, 222, 2048]


def test_a_reply_cut_off_at_the_token_limit_is_never_sent_again_as_it_was(
    server: ScriptedModelServer,
) -> None:
    cut = '{"reason": "It is polite, polite, polite, polite, polite, polite'
    server.script = queue_script([CutOffReply(cut), GOOD])

    completion = ask(make_client(server))

    assert completion.data == GOOD
    first, second = server.calls
    assert first.raw_body["max_tokens"] == 64
    assert second.messages != first.messages
    assert second.messages[: len(MESSAGES)] == MESSAGES
    assert second.messages[-2] == {"role": "assistant", "content": cut}
    assert "cut off at the output limit of 64 tokens" in second.messages[-1]["content"]
    assert "shorter" in second.messages[-1]["content"]


def test_a_complete_object_before_the_cut_is_used_without_a_retry(server: ScriptedModelServer) -> None:
    server.script = queue_script([CutOffReply(json.dumps(GOOD) + "\n\nAlso, to add: it is")])

    assert ask(make_client(server)).data == GOOD
    assert len(server.calls) == 1


def test_two_cut_off_replies_fail_saying_so_and_naming_the_limit(server: ScriptedModelServer) -> None:
    server.script = lambda call: CutOffReply('{"reason": "polite polite polite')

    with pytest.raises(ModelError) as raised:
        ask(make_client(server))

    message = str(raised.value)
    assert "cut off at the output token limit" in message
    assert "64 tokens" in message
    assert "max_tokens_" in message
    assert len(server.calls) == 2
    assert server.calls[0].messages != server.calls[1].messages


@pytest.mark.parametrize(
    "reply",
    [
        "Sure! Here is my judgement:\n" + json.dumps(GOOD) + "\nI hope this helps {or not}.",
        "```json\n" + json.dumps(GOOD) + "\n```",
        'Thinking... {"draft": true} no wait. Final: ' + json.dumps(GOOD),
        'Note: {"reason": "a } in a string {", "verdict": "no"} is my answer.',
    ],
)
def test_a_json_object_wrapped_in_prose_or_fences_is_found_and_validated(
    server: ScriptedModelServer, reply: str
) -> None:
    server.script = queue_script([reply])

    completion = ask(make_client(server))

    assert completion.data["verdict"] in ("yes", "no")
    assert len(server.calls) == 1


def test_a_wrapped_object_that_breaks_the_schema_limits_is_refused_not_used(
    server: ScriptedModelServer,
) -> None:
    too_long = {"reason": "polite " * 30, "verdict": "yes"}
    server.script = queue_script(["Here: " + json.dumps(too_long), GOOD])

    completion = ask(make_client(server))

    assert completion.data == GOOD
    assert "reason is 210 characters long; at most 80 are allowed" in server.calls[1].messages[-1]["content"]


def refuses_json_schema(call: ChatCall) -> Reply:
    return ScriptedError(400, REFUSAL) if call.format_type == "json_schema" else GOOD


def test_a_strict_mode_that_refuses_length_limits_gets_the_schema_without_them_and_we_still_check_them(
    server: ScriptedModelServer,
) -> None:
    server.script = queue_script(
        [
            ScriptedError(400, "Invalid schema for response_format 'verdict': 'maxLength' is not permitted."),
            {"reason": "polite " * 30, "verdict": "yes"},
            GOOD,
            GOOD,
        ]
    )
    client = make_client(server)

    first = ask(client)
    ask(client)

    assert first.data == GOOD
    sent = [call.schema for call in server.calls]
    assert [call.format_type for call in server.calls] == ["json_schema"] * 4
    assert "maxLength" in json.dumps(sent[0])
    assert all("maxLength" not in json.dumps(schema) for schema in sent[1:])
    assert sent[1] is not None
    assert sent[1]["properties"]["verdict"]["enum"] == ["yes", "no"]  # the shape is kept, only limits go
    assert "at most 80 are allowed" in server.calls[2].messages[-1]["content"]
    assert client.response_mode(MODEL) == "json_schema_basic"


def test_a_server_that_refuses_json_schema_gets_json_mode_and_later_calls_go_straight_there(
    server: ScriptedModelServer,
) -> None:
    server.script = refuses_json_schema
    client = make_client(server)

    first = ask(client)
    second = ask(client)

    assert first.data == second.data == GOOD
    kinds = [call.format_type for call in server.calls]
    assert kinds == ["json_schema", "json_schema", "json_object", "json_object"]
    assert first.attempts == 3
    assert second.attempts == 1
    # JSON mode carries no schema, so the prompt describes it; the reply is still validated against it.
    assert '"maxLength":80' in server.calls[2].messages[0]["content"]
    assert (server.calls[2].schema_name, server.calls[2].schema) == ("verdict", SCHEMA)
    assert client.response_mode(MODEL) == "json_object"


def test_a_server_that_refuses_both_formats_is_asked_in_the_prompt_alone(server: ScriptedModelServer) -> None:
    server.script = lambda call: ScriptedError(400, REFUSAL) if call.format_type else GOOD
    client = make_client(server)

    assert ask(client).data == GOOD
    assert ask(client).data == GOOD
    assert [call.format_type for call in server.calls] == [
        "json_schema",
        "json_schema",
        "json_object",
        None,
        None,
    ]
    assert "response_format" not in server.calls[-1].raw_body
    assert "JSON Schema" in server.calls[-1].messages[0]["content"]


def test_the_remembered_mode_is_per_endpoint_and_model(server: ScriptedModelServer) -> None:
    server.script = refuses_json_schema
    client = make_client(server)
    ask(client)
    server.calls.clear()

    client.complete_json(model="openai/other", messages=MESSAGES, schema_name="verdict", schema=SCHEMA)

    assert [call.format_type for call in server.calls] == ["json_schema", "json_schema", "json_object"]


def test_a_server_that_ignores_response_format_gets_the_schema_in_the_prompt(
    server: ScriptedModelServer,
) -> None:
    def ignores_format(call: ChatCall) -> Reply:
        # Like a server without structured output: it answers whatever the prompt asks for.
        return GOOD if "JSON Schema" in call.prompt_text() else "The answer is polite, so yes."

    server.script = ignores_format
    client = make_client(server)

    first = ask(client)
    second = ask(client)

    assert first.data == second.data == GOOD
    assert len(server.calls) == 3
    retry = server.calls[1]
    assert retry.messages[-2] == {"role": "assistant", "content": "The answer is polite, so yes."}
    assert "not valid JSON" in retry.messages[-1]["content"]
    assert server.calls[2].messages[0]["content"] == retry.messages[0]["content"]  # straight to what worked


def test_prose_without_any_json_never_becomes_a_verdict(server: ScriptedModelServer) -> None:
    server.script = lambda call: "I think the answer is yes."

    with pytest.raises(ModelError) as raised:
        ask(make_client(server))

    assert "not valid JSON" in str(raised.value)
    assert len(server.calls) == 2


def test_a_server_that_cannot_compile_the_schema_falls_back_too(server: ScriptedModelServer) -> None:
    server.script = lambda call: (
        ScriptedError(400, "Unsupported JSON Schema keyword") if call.format_type else GOOD
    )

    assert ask(make_client(server)).data == GOOD
    assert server.calls[-1].format_type is None


def test_a_bad_request_unrelated_to_the_format_is_not_a_fallback(server: ScriptedModelServer) -> None:
    server.script = lambda call: ScriptedError(400, "maximum context length exceeded")

    with pytest.raises(ModelError, match="maximum context length"):
        ask(make_client(server))

    assert len(server.calls) == 1


def test_one_prose_reply_where_the_schema_mode_has_worked_does_not_abandon_it(
    server: ScriptedModelServer,
) -> None:
    server.script = queue_script([GOOD, "Let me think about it first.", GOOD])
    client = make_client(server)

    ask(client)
    ask(client)

    assert [call.format_type for call in server.calls] == ["json_schema", "json_schema", "json_schema"]
    assert client.response_mode(MODEL) == "json_schema"


def test_json_that_never_fits_blames_the_model_not_the_structured_output_support(
    server: ScriptedModelServer,
) -> None:
    server.script = lambda call: {"reason": "fine", "verdict": "maybe"}

    with pytest.raises(ModelError) as raised:
        ask(make_client(server))

    assert "more capable model" in str(raised.value)
    assert "structured output" not in str(raised.value)
