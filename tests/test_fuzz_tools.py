"""Property-based fuzzing of every tool through the real MCP protocol (in-memory client, real LanceDB).

Arguments are drawn well-formed and malformed alike: wrong types, unknown names, huge strings, unicode with
lone surrogates, nested junk, boundary and huge integers, bogus ids (`"abc\\n"`, SQL-ish text). Properties:
every call ends, within a bound, in a result or a tool error (never a protocol error or a hang); a refused call
leaves the store exactly as it was (judges, feedback, guidelines and history read before and after); and the
server keeps answering. The model is the in-process scripted one.

`HYPOTHESIS_PROFILE=ci` (the default) tries a few hundred inputs, derandomized so CI is stable; `long` tries
thousands (run by hand; its figures are in BENCHMARKS.md).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from anyio.from_thread import BlockingPortal, start_blocking_portal
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st
from mcp import Client
from mcp_types import CallToolResult

from conftest import hashing_settings
from in_process_model import InProcessModel
from mcp_calls import text_of
from memalign_mcp.alignment import MemAlignService
from memalign_mcp.app import build_server
from memalign_mcp.embeddings import HashingEmbedder
from memalign_mcp.engine import open_engine
from memalign_mcp.settings import Settings
from support_desk_model import support_desk

CALL_DEADLINE_S = 60.0  # a hang fails the example instead of the whole run
_SLOW_OK = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example]
settings.register_profile(
    "ci", max_examples=80, derandomize=True, deadline=None, database=None, suppress_health_check=_SLOW_OK
)
settings.register_profile(
    "long", max_examples=3000, deadline=None, database=None, suppress_health_check=_SLOW_OK
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

JUDGES = ["fz-bool", "fz-int", "fz-cat"]
SPECS: dict[str, dict[str, Any]] = {
    "fz-bool": {"instructions": "Is {{ outputs }} a polite reply to {{ inputs }}?"},
    "fz-int": {
        "instructions": "Rate {{ outputs }} for {{ inputs }}.",
        "feedback_type": "int",
        "min_value": 1,
        "max_value": 5,
    },
    "fz-cat": {
        "instructions": "Classify {{ outputs }}.",
        "feedback_type": "categorical",
        "choices": ["good", "bad"],
    },
}

# --- strategies ---------------------------------------------------------------------------------------------

# Lone surrogates are legal in a JSON string ("\ud800") and in a Python str; they must not crash the server.
_any_char = st.characters(codec=None, exclude_categories=())
_BIG = ["x" * 25_000, "é" * 21_000, "{{ inputs }}" + "y" * 30_000, "\ud800" * 300, "a" * 3_000_000]
_BOGUS_IDS = [
    "abc\n",
    "' OR 1=1 --",
    "x'; DROP TABLE memory_v2; --",
    'id" OR "1"="1',
    "a" * 129,
    "",
    " ",
    "../../etc/passwd",
    "nul\x00byte",
    "\ud800",
    "kept-1",
    "fb-0000000000000000",
]
_BOUNDARY_INTS = [-1, 0, 1, 4, 5, 50, 51, 500, 501, 2**31, 2**53 + 1, 2**63, -(2**63), 10**30]

text = st.text(_any_char, max_size=40) | st.sampled_from(_BIG)
integers = st.sampled_from(_BOUNDARY_INTS) | st.integers()
floats = st.floats(allow_nan=False, allow_infinity=False) | st.sampled_from([0.5, 1e308, -1e308, 2.0])
scalar = st.none() | st.booleans() | integers | floats | text
junk = st.recursive(
    scalar,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=6,
)
ids = st.sampled_from(_BOGUS_IDS) | st.text(_any_char, max_size=20)
judged = st.sampled_from(
    ["Where is my order?", "Not my problem.", "I'm sorry, it is on its way."]
) | st.dictionaries(st.text(max_size=6), st.text(max_size=20), min_size=1, max_size=2)
verdict = st.booleans() | st.sampled_from([1, 3, 5, "good", "bad"])


def maybe(valid: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Mostly a well-formed value (four times in five), sometimes anything at all."""
    return st.one_of(valid, valid, valid, valid, junk)


judge_name = st.one_of(
    st.sampled_from(JUDGES),
    st.sampled_from(JUDGES),
    st.sampled_from(JUDGES),
    junk,
    st.sampled_from(["helpfulness", "no-such-judge", "FZ-BOOL", "fz bool"]),
)


def feedback_item() -> st.SearchStrategy[Any]:
    item = st.fixed_dictionaries(
        {
            "inputs": maybe(judged),
            "outputs": maybe(judged),
            "value": maybe(verdict),
            "rationale": maybe(st.sampled_from(["Rude and dismissive.", "Apologises first.", "ok"]) | text),
        },
        optional={
            "expectations": maybe(judged),
            "source": maybe(st.sampled_from(["support-lead", "qa"])),
            "id": maybe(st.sampled_from(["fz-1", "fz-2", "fz-3"]) | ids),
            "bogus_field": junk,
        },
    )
    return st.one_of(item, junk)


def listed(strategy: st.SearchStrategy[Any], max_size: int = 4) -> st.SearchStrategy[Any]:
    return maybe(st.lists(strategy, max_size=max_size))


ARGUMENTS: dict[str, tuple[dict[str, st.SearchStrategy[Any]], dict[str, st.SearchStrategy[Any]]]] = {
    "create_judge": (
        {
            "name": maybe(st.sampled_from([*JUDGES, "fz-new"])),
            "instructions": maybe(st.sampled_from([s["instructions"] for s in SPECS.values()]) | text),
        },
        {
            "feedback_type": maybe(st.sampled_from(["bool", "int", "float", "categorical", "text", "BOOL"])),
            "choices": listed(text),
            "min_value": maybe(integers | floats),
            "max_value": maybe(integers | floats),
            "model": maybe(st.sampled_from(["memory", "openai/scripted", ""]) | text),
            "retrieval_k": maybe(integers),
            "review_guidelines": maybe(st.booleans()),
        },
    ),
    "list_judges": ({}, {}),
    "score_response": (
        {"judge": judge_name, "inputs": maybe(judged), "outputs": maybe(judged)},
        {"expectations": maybe(judged), "version": maybe(integers)},
    ),
    "delete_judge": ({"judge": judge_name}, {}),
    "add_feedback": ({"judge": judge_name, "feedback": listed(feedback_item(), 3)}, {}),
    "remove_feedback": (
        {"judge": judge_name, "feedback_ids": listed(st.sampled_from(["fz-1", "fz-2"]) | ids)},
        {"purge": maybe(st.booleans())},
    ),
    "list_guidelines": ({"judge": judge_name}, {}),
    "list_feedback": ({"judge": judge_name}, {"limit": maybe(integers), "offset": maybe(integers)}),
    "update_judge": (
        {"judge": judge_name},
        {
            "instructions": maybe(text),
            "model": maybe(text),
            "retrieval_k": maybe(integers),
            "choices": listed(text),
            "min_value": maybe(integers | floats),
            "max_value": maybe(integers | floats),
            "review_guidelines": maybe(st.booleans()),
        },
    ),
    "add_guideline": (
        {"judge": judge_name, "text": maybe(st.sampled_from(["Apologise before steps."]) | text)},
        {},
    ),
    "review_guideline": (
        {
            "judge": judge_name,
            "guideline_id": maybe(ids),
            "action": maybe(st.sampled_from(["approve", "reject", "edit", "APPROVE", ""]) | text),
        },
        {"text": maybe(text)},
    ),
    "distill_pending": ({"judge": judge_name}, {}),
    "judge_history": ({"judge": judge_name}, {"limit": maybe(integers), "offset": maybe(integers)}),
    "diff_judge": ({"judge": judge_name, "from_version": maybe(integers), "to_version": maybe(integers)}, {}),
    "rollback_judge": ({"judge": judge_name, "version": maybe(integers)}, {}),
    "evaluate_judge": (
        {"judge": judge_name},
        {
            "dataset": listed(
                st.fixed_dictionaries(
                    {"inputs": maybe(judged), "outputs": maybe(judged), "value": maybe(verdict)}
                )
                | junk,
                3,
            ),
            "compare_baseline": maybe(st.booleans()),
        },
    ),
}


def arguments_for(tool: str) -> st.SearchStrategy[dict[str, Any]]:
    """A tool's arguments: its own (some left out) and sometimes an unknown one."""
    required, optional = ARGUMENTS[tool]
    # Required arguments are there four times in five (each may still be junk); then each may be missing.
    given = st.one_of(*[st.fixed_dictionaries(required)] * 4, st.fixed_dictionaries({}, optional=required))
    known = st.builds(dict.__or__, given, st.fixed_dictionaries({}, optional=optional))
    extra = st.dictionaries(
        st.sampled_from(["feedbak", "judge_name", "", "__proto__", "purge "]), junk, max_size=1
    )

    def merged(given: dict[str, Any], unknown: dict[str, Any]) -> dict[str, Any]:
        return {**unknown, **given}

    return st.builds(merged, known, st.one_of(st.just({}), st.just({}), extra))


calls = st.sampled_from(sorted(ARGUMENTS)).flatmap(lambda tool: st.tuples(st.just(tool), arguments_for(tool)))

# --- the server ---------------------------------------------------------------------------------------------


def fuzz_settings(data_dir: Path) -> Settings:
    return hashing_settings(data_dir, overrides={"model.judge": "openai/scripted", "model.max_retries": 0})


def fuzz_engine(settings: Settings) -> MemAlignService:
    return open_engine(settings, embedder=HashingEmbedder(), client=InProcessModel(support_desk))


class Fuzzed:
    """An MCP client on a blocking portal, so hypothesis's synchronous examples can make async calls."""

    def __init__(self, portal: BlockingPortal, client: Client) -> None:
        self.portal = portal
        self.client = client

    def call(self, tool: str, arguments: dict[str, Any]) -> CallToolResult:
        async def bounded() -> CallToolResult:
            with anyio.fail_after(CALL_DEADLINE_S):
                return await self.client.call_tool(tool, arguments)

        return self.portal.call(bounded)

    def ok(self, tool: str, **arguments: Any) -> dict[str, Any]:
        result = self.call(tool, arguments)
        assert not result.is_error, text_of(result)
        assert result.structured_content is not None
        return result.structured_content

    def snapshot(self) -> str:
        """Everything a caller can read of the store, as one comparable text."""
        seen: dict[str, Any] = {"judges": self.ok("list_judges")["judges"]}
        for judge in seen["judges"]:
            name = judge["name"]
            seen[name] = [
                self.ok("list_feedback", judge=name, limit=500),
                self.ok("list_guidelines", judge=name),
                self.ok("judge_history", judge=name, limit=500),
            ]
        return json.dumps(seen, sort_keys=True, default=str)


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fuzzed]:
    """One server for the whole run, its judges made once; the fuzzer then changes them as it likes."""
    server = build_server(fuzz_settings(tmp_path_factory.mktemp("fuzz")), fuzz_engine)
    with start_blocking_portal() as portal, portal.wrap_async_context_manager(Client(server)) as client:
        fuzzed = Fuzzed(portal, client)
        for name, spec in SPECS.items():
            fuzzed.ok("create_judge", name=name, **spec)
        yield fuzzed


ITEM = {"inputs": "Where is my order?", "outputs": "Not my problem.", "value": False, "rationale": "Rude."}
# One well-formed call per tool, always tried first: each tool's answering path is under the same properties.
WELL_FORMED: list[tuple[str, dict[str, Any]]] = [
    ("create_judge", {"name": "fz-new", "instructions": "Is {{ outputs }} kind?"}),
    ("list_judges", {}),
    ("add_feedback", {"judge": "fz-bool", "feedback": [ITEM | {"id": "fz-1"}]}),
    ("score_response", {"judge": "fz-bool", "inputs": "Where is it?", "outputs": "Look it up yourself."}),
    ("list_feedback", {"judge": "fz-bool", "limit": 5, "offset": 0}),
    ("list_guidelines", {"judge": "fz-bool"}),
    ("distill_pending", {"judge": "fz-bool"}),
    ("judge_history", {"judge": "fz-bool", "limit": 3}),
    ("diff_judge", {"judge": "fz-bool", "from_version": 0, "to_version": 1}),
    (
        "evaluate_judge",
        {"judge": "fz-bool", "dataset": [{"inputs": "q", "outputs": "Not my problem.", "value": False}]},
    ),
    ("update_judge", {"judge": "fz-int", "retrieval_k": 3}),
    ("rollback_judge", {"judge": "fz-bool", "version": 1}),
    ("add_guideline", {"judge": "fz-bool", "text": "Apologise before giving steps."}),
    ("review_guideline", {"judge": "fz-bool", "guideline_id": "g-none", "action": "approve"}),
    ("remove_feedback", {"judge": "fz-bool", "feedback_ids": ["fz-1"], "purge": True}),
    ("delete_judge", {"judge": "fz-new"}),
]


def with_well_formed_examples(test: Any) -> Any:
    """Decorate `test` with one hypothesis example per entry of WELL_FORMED, in order."""
    for call in reversed(WELL_FORMED):
        test = example(call=call)(test)
    return test


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
@with_well_formed_examples
@given(call=calls)
def test_every_tool_answers_any_arguments_and_a_refusal_changes_nothing(
    fuzzed: Fuzzed, call: tuple[str, dict[str, Any]]
) -> None:
    tool, arguments = call
    before = fuzzed.snapshot()
    result = fuzzed.call(tool, arguments)  # an MCPError or a timeout here fails the example
    event(f"{tool} {'refused' if result.is_error else 'answered'}")  # the mix: --hypothesis-show-statistics
    if result.is_error:
        message = text_of(result)
        assert message
        assert result.structured_content is None
        assert "\n" not in message.strip(), f"a tool error should be one line: {message!r}"
        assert "Internal error" not in message, message
        assert fuzzed.snapshot() == before, f"{tool} was refused but changed the store: {message}"
    else:
        assert result.structured_content is not None
    still_there = {j["name"] for j in fuzzed.ok("list_judges")["judges"]}  # still answering
    for name in sorted(SPECS.keys() - still_there):  # deleted: made again, so later calls find it
        fuzzed.ok("create_judge", name=name, **SPECS[name])


# --- what the fuzzer found, kept as plain regressions -----------------------------------------------------------

LONE = "\ud800"


def test_a_lone_surrogate_anywhere_is_refused_naming_the_field_not_a_crash(fuzzed: Fuzzed) -> None:
    before = fuzzed.snapshot()
    item = {"inputs": "q", "outputs": "a", "value": True, "rationale": "r"}
    cases: list[tuple[str, dict[str, Any], str]] = [
        ("delete_judge", {"judge": LONE * 300}, "Unknown judge '\\ud800"),
        ("list_feedback", {"judge": "fz" + LONE}, "Unknown judge 'fz\\ud800'"),
        ("judge_history", {"judge": LONE}, "Unknown judge '\\ud800'"),
        ("diff_judge", {"judge": LONE, "from_version": 0, "to_version": 1}, "Unknown judge"),
        ("rollback_judge", {"judge": LONE, "version": 0}, "Unknown judge"),
        (
            "add_feedback",
            {"judge": "fz-bool", "feedback": [item | {"inputs": "a" + LONE}]},
            "feedback[0].inputs",
        ),
        ("add_feedback", {"judge": "fz-bool", "feedback": [item | {"source": LONE}]}, "feedback[0].source"),
        (
            "add_feedback",
            {"judge": "fz-bool", "feedback": [item | {"outputs": {"k": LONE}}]},
            "feedback[0].outputs",
        ),
        ("remove_feedback", {"judge": "fz-bool", "feedback_ids": [LONE], "purge": True}, "feedback_ids[0]"),
        ("create_judge", {"name": "fz-new", "instructions": "Is {{ outputs }} ok?" + LONE}, "instructions"),
        ("update_judge", {"judge": "fz-bool", "model": LONE}, "model"),
        ("score_response", {"judge": "fz-bool", "inputs": LONE, "outputs": "a"}, "inputs"),
        # Found by the long run once the review tools were fuzzed too: a guideline text of lone surrogates.
        ("add_guideline", {"judge": "fz-bool", "text": LONE * 300}, "Invalid text"),
        ("review_guideline", {"judge": "fz-bool", "guideline_id": LONE, "action": "approve"}, "guideline"),
    ]
    for tool, arguments, named in cases:
        result = fuzzed.call(tool, arguments)
        assert result.is_error, (tool, named)
        message = text_of(result)
        assert named in message, message
        assert "Internal error" not in message
        assert len(message) < 600, message  # a huge value is shown cut short
    assert fuzzed.snapshot() == before


def test_an_unknown_argument_to_a_tool_without_arguments_says_it_takes_none(fuzzed: Fuzzed) -> None:
    result = fuzzed.call("list_judges", {"purge ": []})
    assert result.is_error
    assert text_of(result).endswith(
        "Unknown argument 'purge ' for list_judges. Got []; expected no arguments. "
        "Call list_judges again without purge ."
    )


def test_the_fuzzer_knows_every_tool_the_server_lists(fuzzed: Fuzzed) -> None:
    # A new tool must get argument strategies here, or it would never be fuzzed.
    listed = {tool.name for tool in fuzzed.portal.call(fuzzed.client.list_tools).tools}
    assert listed == set(ARGUMENTS)
