"""The MCP face of memalign-mcp: `build_server()` adapts the judge engine to MCP tools, a resource and prompts.

This module owns the agent-facing contract (tool names, arguments, annotations, descriptions) and the turning of
engine errors (`MemAlignError`) into tool errors whose text tells the agent what to do next. It must never hold
judge logic, keep a module-level server or any other global state, write to stdout, or import litellm, lancedb
or onnxruntime: a client waits for `tools/list` while this module loads, so the engine is opened in a worker
thread by the server's lifespan and every tool awaits it.
"""

from __future__ import annotations

import inspect
import logging
import re
from collections.abc import AsyncGenerator, Callable
from contextlib import asynccontextmanager
from functools import partial
from typing import TYPE_CHECKING, Annotated, Any, Literal, TypeVar

import anyio
import anyio.from_thread
import anyio.lowlevel
import anyio.to_thread
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import (
    ResourceError,
    ResourceNotFoundError,
    ToolError,
    UnexpectedToolError,
)
from mcp_types import CallToolResult, InputRequiredResult, ToolAnnotations
from pydantic import Field, ValidationError

from memalign_mcp import __version__
from memalign_mcp.errors import MemAlignError, UnknownJudgeError
from memalign_mcp.evaluation import EvaluationReport
from memalign_mcp.guides import review_guidelines_text, self_check_text
from memalign_mcp.invalid_input import argument_error
from memalign_mcp.models import (
    AddFeedbackResult,
    DeleteJudgeResult,
    FeedbackInput,
    FeedbackPage,
    GuidelineList,
    Judge,
    JudgedText,
    JudgeList,
    JudgeSpec,
    LabelledExample,
    RemoveFeedbackResult,
    ScoreResult,
)
from memalign_mcp.settings import Settings

if TYPE_CHECKING:
    from memalign_mcp.alignment import MemAlignService

log = logging.getLogger(__name__)
T = TypeVar("T")
ToolFn = TypeVar("ToolFn", bound=Callable[..., Any])
EngineFactory = Callable[[Settings], "MemAlignService"]
Progress = Callable[[int, int, str], None]
LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]

SERVER_INSTRUCTIONS = """\
memalign-mcp keeps LLM judges that learn from human feedback and can forget it exactly.
Use a judge to check a response before you hand it over: score_response returns a verdict (`value`) and a
`rationale`; revise when the verdict is failing and score again. Teach a judge with add_feedback (a human's
verdict and reason); it distils guidelines and keeps the feedback as worked examples. Review what it learned
with list_guidelines and list_feedback, forget items with remove_feedback (purge=true when the data itself
must be erased), and measure agreement with humans with evaluate_judge. Start with list_judges."""


def _field(model: type[JudgeSpec], name: str) -> str:
    """A field's description from the engine's model, so the tool schema cannot drift from it."""
    return model.model_fields[name].description or ""


# Argument types: module-level because the SDK resolves string annotations against this module's globals.
JudgeName = Annotated[str, Field(description="The judge's name, as list_judges shows it.")]
InputsArg = Annotated[
    JudgedText,
    Field(description="What the judged response answers (the user's request): a string or a JSON object."),
]
OutputsArg = Annotated[JudgedText, Field(description="The response to judge: a string or a JSON object.")]
ExpectationsArg = Annotated[
    JudgedText | None,
    Field(
        description="Optional reference answer or facts the response should match: a string or a JSON object."
    ),
]
Ctx = Context["EngineHandle", Any]


class EngineUnavailableError(MemAlignError):
    """The engine could not be opened, so no tool can work until the server is restarted."""


class EngineHandle:
    """The engine as it is being opened in a worker thread; tools await it instead of delaying start-up."""

    def __init__(self) -> None:
        self._opened = anyio.Event()
        self._engine: MemAlignService | None = None
        self._failure: BaseException | None = None

    async def open(self, factory: Callable[[], MemAlignService]) -> None:
        """Run the factory in a worker thread and keep the engine, or the reason it could not open."""
        try:
            self._engine = await anyio.to_thread.run_sync(factory)
            log.info("judge engine ready")
        except MemAlignError as exc:
            log.error("the judge engine could not start: %s", exc)
            self._failure = exc
        except Exception as exc:
            # Kept and re-raised (as a tool error) on every call; the traceback goes to the log once, here.
            log.exception("the judge engine could not start")
            self._failure = exc
        finally:
            self._opened.set()

    async def get(self) -> MemAlignService:
        """The engine once open; EngineUnavailableError, on every call, if it failed to open."""
        await self._opened.wait()
        if self._engine is not None:
            return self._engine
        failure = self._failure
        cause = str(failure) if isinstance(failure, MemAlignError) else f"{type(failure).__name__}: {failure}"
        raise EngineUnavailableError(
            f"The judge engine could not start: {cause} Fix the setting or the store named here (the server's "
            "log has details), then restart the server."
        )


def open_default_engine(settings: Settings) -> MemAlignService:
    """The production engine factory: open the store, embedder and model client the settings name."""
    from memalign_mcp.engine import open_engine  # the engine pulls in lancedb and onnxruntime: load it late

    engine = open_engine(settings)
    # Load the embedding model now, off the request path, so the first score does not wait for it.
    warm: Callable[[], None] | None = getattr(engine.embedder, "warm", None)
    if warm is not None:
        warm()
    if settings.model.reflection_model is not None:
        # A model is configured: pay litellm's import (about 3 s) now, off the request path, not in the first score.
        from memalign_mcp.llm import preload_litellm

        preload_litellm()
    return engine


async def _run(ctx: Ctx, call: Callable[[MemAlignService], T]) -> T:
    """Run one engine call in a worker thread; an engine error becomes a tool error the agent can act on."""
    try:
        engine = await ctx.request_context.lifespan_context.get()
        return await anyio.to_thread.run_sync(partial(call, engine))
    except MemAlignError as exc:
        raise ToolError(str(exc)) from exc


def _progress(ctx: Ctx) -> Progress:
    """A progress callback the engine can call from its worker thread; it sends MCP progress notifications."""
    token = anyio.lowlevel.current_token()

    def report(done: int, total: int, message: str) -> None:
        try:
            anyio.from_thread.run(partial(ctx.report_progress, done, total, message), token=token)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, anyio.RunFinishedError):
            # The client went away: the work itself must still finish and be stored.
            log.debug("progress not delivered (%d/%d %s): the client is gone", done, total, message)

    return report


def _annotations(
    *, read_only: bool, destructive: bool, idempotent: bool, open_world: bool
) -> ToolAnnotations:
    return ToolAnnotations(
        read_only_hint=read_only,
        destructive_hint=destructive,
        idempotent_hint=idempotent,
        open_world_hint=open_world,
    )


def _description(fn: Callable[..., Any]) -> str:
    """A tool's description from its docstring: dedented, and each paragraph on one line."""
    return re.sub(r"(?<!\n)\n(?!\n)", " ", inspect.cleandoc(fn.__doc__ or ""))


def _tool(
    server: MCPServer[EngineHandle], *, title: str, annotations: ToolAnnotations
) -> Callable[[ToolFn], ToolFn]:
    """Register a tool whose description is its docstring, so what agents read lives next to the code."""

    def register(fn: ToolFn) -> ToolFn:
        server.add_tool(fn, title=title, description=_description(fn), annotations=annotations)
        return fn

    return register


# The hints of CONTRACT.md's table. Idempotent: the same call again changes nothing more.
READ_ONLY = _annotations(read_only=True, destructive=False, idempotent=True, open_world=False)
READ_ONLY_MODEL = _annotations(read_only=True, destructive=False, idempotent=True, open_world=True)
ADDITIVE = _annotations(read_only=False, destructive=False, idempotent=True, open_world=False)
DESTRUCTIVE_IDEMPOTENT = _annotations(read_only=False, destructive=True, idempotent=True, open_world=False)
DESTRUCTIVE = _annotations(read_only=False, destructive=True, idempotent=False, open_world=False)


class JudgeServer(MCPServer[EngineHandle]):
    """The SDK's server, with its argument errors in the engine's one-line shape instead of pydantic's dump."""

    async def call_tool(
        self, name: str, arguments: dict[str, Any], context: Ctx | None = None
    ) -> CallToolResult | InputRequiredResult:
        """Call a tool; arguments that do not fit its schema fail naming the field, the value and the type."""
        try:
            return await super().call_tool(name, arguments, context)
        except ToolError as exc:
            # The SDK raises a ToolError caused by the ValidationError when the arguments do not fit the schema.
            cause = exc.__cause__
            if isinstance(exc, UnexpectedToolError) or not isinstance(cause, ValidationError):
                raise
            raise ToolError(
                f"Error executing tool {name}: {argument_error(name, cause, arguments)}"
            ) from cause


def build_server(
    settings: Settings,
    engine_factory: EngineFactory = open_default_engine,
    *,
    log_level: LogLevel = "INFO",
) -> JudgeServer:
    """The MCP server for these settings; its lifespan opens the engine (in the background) once per run."""

    @asynccontextmanager
    async def lifespan(_: MCPServer[EngineHandle]) -> AsyncGenerator[EngineHandle]:
        handle = EngineHandle()
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(handle.open, partial(engine_factory, settings))
            yield handle
            # Leaving waits for an open still in progress: a worker thread cannot be interrupted.

    server = JudgeServer(
        "memalign-mcp",
        title="memalign-mcp: judges that learn from feedback",
        instructions=SERVER_INSTRUCTIONS,
        version=__version__,
        lifespan=lifespan,
        log_level=log_level,  # also the level of the HTTP server's (uvicorn's) log
    )
    _add_judge_tools(server)
    _add_memory_tools(server)
    _add_evaluation_tool(server)
    _add_resource_and_prompts(server)
    return server


def _add_judge_tools(server: MCPServer[EngineHandle]) -> None:
    @_tool(server, title="Create a judge", annotations=ADDITIVE)
    async def create_judge(
        *,
        name: Annotated[str, Field(description=_field(JudgeSpec, "name"))],
        instructions: Annotated[str, Field(description=_field(JudgeSpec, "instructions"))],
        ctx: Ctx,
        feedback_type: Annotated[
            Literal["bool", "int", "float", "categorical", "text"],
            Field(
                description="The type of verdict: bool (pass/fail), int or float (a score), categorical, text."
            ),
        ] = "bool",
        choices: Annotated[list[str] | None, Field(description=_field(JudgeSpec, "choices"))] = None,
        min_value: Annotated[float | None, Field(description=_field(JudgeSpec, "min_value"))] = None,
        max_value: Annotated[float | None, Field(description=_field(JudgeSpec, "max_value"))] = None,
        model: Annotated[str | None, Field(description=_field(JudgeSpec, "model"))] = None,
        retrieval_k: Annotated[int | None, Field(description=_field(JudgeSpec, "retrieval_k"))] = None,
    ) -> Judge:
        """Create a judge: an LLM evaluator that scores responses against your instructions and learns from
        human feedback. Make one per quality you want checked (helpfulness, tone, factual accuracy...).
        `instructions` is a template over {{ inputs }} and {{ outputs }}, optionally {{ expectations }}; no
        other variables. `feedback_type` fixes what a verdict is: bool (the default), int or float within
        [min_value, max_value], categorical (one of `choices`), or text. Calling again with the identical spec
        returns the existing judge unchanged; a different spec under a taken name is refused (choose another
        name, or delete_judge first). Without a model configured the judge answers from its memory of human
        verdicts alone (model 'memory'). Next: score_response to judge a response, add_feedback to teach it."""
        spec = JudgeSpec(
            name=name,
            instructions=instructions,
            feedback_type=feedback_type,
            choices=choices,
            min_value=min_value,
            max_value=max_value,
            model=model,
            retrieval_k=retrieval_k,
        )
        return await _run(ctx, lambda engine: engine.create_judge(spec))

    @_tool(server, title="List judges", annotations=READ_ONLY)
    async def list_judges(ctx: Ctx) -> JudgeList:
        """List every judge: its spec, the model that scores for it now (`effective_model`), its memory version
        (goes up by one with every change to its memory) and counts of feedback, guidelines and pending
        feedback (stored but not yet distilled into guidelines). Call this first to find a judge's exact name
        and the type of verdict it gives before score_response or add_feedback."""
        return await _run(ctx, lambda engine: engine.list_judges())

    @_tool(server, title="Score a response", annotations=READ_ONLY_MODEL)
    async def score_response(
        judge: JudgeName,
        inputs: InputsArg,
        outputs: OutputsArg,
        ctx: Ctx,
        expectations: ExpectationsArg = None,
    ) -> ScoreResult:
        """Judge one response with a judge's instructions, its distilled guidelines and its most similar past
        human feedback. Read `value` (the verdict, of the judge's feedback_type) and `rationale` (why). For a
        bool judge, value false means the response should be revised: read the rationale for what to fix,
        revise, and call score_response again. For a score, a low value means the same. value null means a
        memory-only judge (model 'memory') found too little similar feedback to decide; do not read it as a
        pass. `guidelines_used` and `examples_used` are the ids of the memory the verdict relied on and
        `judge_version` the memory version it saw. When the model fails the call is an error, never a guess."""
        return await _run(ctx, lambda engine: engine.score(judge, inputs, outputs, expectations))

    @_tool(server, title="Delete a judge", annotations=DESTRUCTIVE)
    async def delete_judge(judge: JudgeName, ctx: Ctx) -> DeleteJudgeResult:
        """Delete a judge together with all of its feedback and guidelines; this cannot be undone. Call it only
        when asked to remove the whole judge. To forget particular feedback, use remove_feedback instead."""
        return await _run(ctx, lambda engine: engine.delete_judge(judge))


def _add_memory_tools(server: MCPServer[EngineHandle]) -> None:
    @_tool(server, title="Teach a judge with feedback", annotations=ADDITIVE)
    async def add_feedback(
        judge: JudgeName,
        feedback: Annotated[
            list[FeedbackInput],
            Field(description="Human verdicts on responses, each with the reason for the verdict."),
        ],
        ctx: Ctx,
    ) -> AddFeedbackResult:
        """Teach a judge with human verdicts. Each item has inputs, outputs, the human's `value` (it must fit the
        judge's feedback_type, see list_judges) and `rationale` (why; guidelines are distilled from it), and
        optionally expectations, `source` (who gave it) and `id` (yours; made from the content when absent).
        The call is checked whole: if any item does not fit, nothing is stored and the error names the field.
        Sending an id again with the same content changes nothing; with different content it replaces the old
        item and its influence. Returns the ids, the guidelines added and removed, and `pending_ids`: items
        stored but not yet distilled (no reflection model, or it failed; see `note`). Pending items already
        serve as examples, and the next add_feedback retries them. Reports progress while distilling."""
        progress = _progress(ctx)
        return await _run(ctx, lambda engine: engine.add_feedback(judge, feedback, progress))

    @_tool(server, title="Forget feedback", annotations=DESTRUCTIVE_IDEMPOTENT)
    async def remove_feedback(
        judge: JudgeName,
        feedback_ids: Annotated[
            list[str], Field(description="Ids of the feedback to forget (see list_feedback).")
        ],
        ctx: Ctx,
        purge: Annotated[
            bool,
            Field(description="Also erase the removed text from every file of the store before returning."),
        ] = False,
    ) -> RemoveFeedbackResult:
        """Forget feedback exactly: delete the items, delete every guideline distilled only from them, and
        re-derive each guideline that also cites other feedback from what remains, so no removed item keeps any
        influence. Find ids with list_feedback, and what cites them with list_guidelines. `not_found_ids` lists
        ids the judge did not have; nothing happened for those, so check them against list_feedback. Set
        purge=true when the data itself must be gone (personal data, a deletion request): old versions of the
        store are then erased too, which is slower. Removing the same ids again changes nothing."""
        return await _run(ctx, lambda engine: engine.remove_feedback(judge, feedback_ids, purge))

    @_tool(server, title="List a judge's guidelines", annotations=READ_ONLY)
    async def list_guidelines(judge: JudgeName, ctx: Ctx) -> GuidelineList:
        """A judge's distilled guidelines (its semantic memory): each with its id, text and source_feedback_ids,
        the feedback it was distilled from (empty for one written by hand). Call this to review what a judge
        has learned, or before remove_feedback to see which guidelines an item shaped. The judge's whole prompt
        as its model sees it is the resource judge://{name}."""
        return await _run(ctx, lambda engine: engine.list_guidelines(judge))

    @_tool(server, title="List a judge's feedback", annotations=READ_ONLY)
    async def list_feedback(
        judge: JudgeName,
        ctx: Ctx,
        limit: Annotated[int, Field(description="Items per page, 1 to 500.")] = 50,
        offset: Annotated[int, Field(description="Items to skip, for the next page.")] = 0,
    ) -> FeedbackPage:
        """A page of a judge's stored human feedback (its episodic memory), oldest first: each item's id,
        inputs, outputs, value, rationale, source, created_at and whether it is still pending distillation.
        `total` counts every item; when offset + limit < total, call again with offset increased by limit.
        Use the ids with remove_feedback."""
        return await _run(ctx, lambda engine: engine.list_feedback(judge, limit, offset))


def _add_evaluation_tool(server: MCPServer[EngineHandle]) -> None:
    @_tool(server, title="Evaluate a judge against humans", annotations=READ_ONLY_MODEL)
    async def evaluate_judge(
        judge: JudgeName,
        ctx: Ctx,
        dataset: Annotated[
            list[LabelledExample] | None,
            Field(description="Responses with the human verdict each should get; omit for leave-one-out."),
        ] = None,
        compare_baseline: Annotated[
            bool,
            Field(
                description="Also score without memory, to show what the feedback changed (twice the calls)."
            ),
        ] = False,
    ) -> EvaluationReport:
        """Measure how well a judge agrees with human verdicts. Without `dataset`, leave-one-out over the
        judge's own feedback: each item is scored with that item, and every guideline distilled from it,
        hidden. With `dataset` (a list of {inputs, outputs, value}), those are scored. Returns agreement
        metrics (see the fields). It calls the model once per item (twice with compare_baseline), so it can
        take a while; it reports progress. Nothing is stored. If agreement is low, read the disagreements,
        then add_feedback with corrected verdicts or remove_feedback for items that taught the wrong rule."""
        progress = _progress(ctx)
        return await _run(
            ctx,
            lambda engine: engine.evaluate(
                judge, dataset, compare_baseline=compare_baseline, progress=progress
            ),
        )


def _add_resource_and_prompts(server: MCPServer[EngineHandle]) -> None:
    @server.resource(
        "judge://{name}",
        name="judge",
        title="A judge as its model sees it",
        description="The judge's spec and full instructions, with its distilled guidelines appended under "
        "'Distilled Guidelines (N)', one per line.",
        mime_type="text/plain",
    )
    async def judge_document(name: str, ctx: Ctx) -> str:
        try:
            engine = await ctx.request_context.lifespan_context.get()
            return await anyio.to_thread.run_sync(engine.judge_document, name)
        except UnknownJudgeError as exc:
            raise ResourceNotFoundError(str(exc)) from exc
        except MemAlignError as exc:
            raise ResourceError(str(exc)) from exc

    @server.prompt(name="self_check", title="Self-check a draft with a judge")
    def self_check(
        judge: Annotated[str, Field(description="The judge to check the draft with (see list_judges).")],
        passing: Annotated[
            str,
            Field(description="What counts as passing, e.g. 'value >= 4'; default: true for a bool judge."),
        ] = "",
    ) -> str:
        """Check your own draft with a judge before you hand it over, and revise until it passes."""
        return self_check_text(judge, passing)

    @server.prompt(name="review_guidelines", title="Review what a judge has learned")
    def review_guidelines(
        judge: Annotated[str, Field(description="The judge whose memory to review (see list_judges).")],
    ) -> str:
        """Walk an operator through a judge's guidelines and the feedback behind them, forgetting what is wrong."""
        return review_guidelines_text(judge)
