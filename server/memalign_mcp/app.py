"""The MCP face of memalign-mcp: `build_server()` adapts the judge engine to MCP tools, a resource and prompts.

This module owns the agent-facing contract: tool names, arguments, annotations, descriptions and each tool's
scope. The server object, how a call reaches the engine and how engine errors become tool errors that tell the
agent what to do next are `judge_server.py`'s. It must never hold judge logic, keep a module-level server or any
other global state, write to stdout, or import litellm, lancedb or onnxruntime: a client waits for `tools/list`
while this module loads, so the engine is opened in a worker thread by the server's lifespan and every tool
awaits it.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import AsyncGenerator, Callable
from contextlib import asynccontextmanager
from functools import partial
from typing import TYPE_CHECKING, Annotated, Any, Literal, TypeVar

import anyio
import anyio.to_thread
from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import (
    ResourceError,
    ResourceNotFoundError,
)
from mcp_types import ToolAnnotations
from pydantic import Field

from memalign_mcp import __version__
from memalign_mcp.auth import HttpAuth
from memalign_mcp.errors import MemAlignError, UnknownJudgeError
from memalign_mcp.evaluation import EvaluationReport
from memalign_mcp.guides import review_guidelines_text, self_check_text
from memalign_mcp.judge_server import (
    Ctx,
    EngineHandle,
    JudgeServer,
    maintain_in_background,
    open_default_engine,
)
from memalign_mcp.judge_server import caller_name as _who
from memalign_mcp.judge_server import progress_reporter as _progress
from memalign_mcp.judge_server import run_engine as _run
from memalign_mcp.models import (
    AddFeedbackResult,
    DeleteJudgeResult,
    FeedbackInput,
    FeedbackPage,
    GuidelineList,
    Judge,
    JudgeDiff,
    JudgedText,
    JudgeHistory,
    JudgeList,
    JudgeSpec,
    LabelledExample,
    RemoveFeedbackResult,
    RollbackResult,
    ScoreResult,
)
from memalign_mcp.review_tools import add_review_tools
from memalign_mcp.scopes import Grant, Scope, ScopeDeniedError
from memalign_mcp.settings import Settings

if TYPE_CHECKING:
    from memalign_mcp.alignment import MemAlignService

ToolFn = TypeVar("ToolFn", bound=Callable[..., Any])
EngineFactory = Callable[[Settings], "MemAlignService"]
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
JudgeName = Annotated[str, Field(description="See list_judges.")]
InputsArg = Annotated[
    JudgedText,
    Field(description="The request the response answers: a string or JSON object."),
]
OutputsArg = Annotated[JudgedText, Field(description="The response to judge: a string or JSON object.")]
ExpectationsArg = Annotated[
    JudgedText | None,
    Field(description="Reference answer or facts to match: a string or JSON object."),
]


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
    server: JudgeServer, *, title: str, annotations: ToolAnnotations, scope: Scope
) -> Callable[[ToolFn], ToolFn]:
    """Register a tool whose description is its docstring and whose scope (CONTRACT.md) is declared here."""

    def register(fn: ToolFn) -> ToolFn:
        server.add_tool(fn, title=title, description=_description(fn), annotations=annotations)
        server.refuse_loose_arguments(fn.__name__)
        server.tool_scopes[fn.__name__] = scope
        return fn

    return register


# The hints of CONTRACT.md's table. Idempotent: the same call again changes nothing more.
READ_ONLY = _annotations(read_only=True, destructive=False, idempotent=True, open_world=False)
READ_ONLY_MODEL = _annotations(read_only=True, destructive=False, idempotent=True, open_world=True)
ADDITIVE = _annotations(read_only=False, destructive=False, idempotent=True, open_world=False)
DESTRUCTIVE_IDEMPOTENT = _annotations(read_only=False, destructive=True, idempotent=True, open_world=False)
DESTRUCTIVE = _annotations(read_only=False, destructive=True, idempotent=False, open_world=False)


def build_server(
    settings: Settings,
    engine_factory: EngineFactory = open_default_engine,
    *,
    log_level: LogLevel = "INFO",
    auth: HttpAuth | None = None,
) -> JudgeServer:
    """The MCP server for these settings; with `auth`, HTTP callers need a bearer token of the tokens file."""

    @asynccontextmanager
    async def lifespan(_: MCPServer[EngineHandle]) -> AsyncGenerator[EngineHandle]:
        handle = EngineHandle()
        stop = anyio.Event()
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(handle.open, partial(engine_factory, settings))
            tasks.start_soon(maintain_in_background, handle, settings, stop)
            try:
                yield handle
            finally:
                # Leaving waits for an open still in progress, and for a maintenance step: neither's thread
                # can be interrupted.
                stop.set()

    server = JudgeServer(
        "memalign-mcp",
        title="memalign-mcp: judges that learn from feedback",
        instructions=SERVER_INSTRUCTIONS,
        version=__version__,
        lifespan=lifespan,
        log_level=log_level,  # also the level of the HTTP server's (uvicorn's) log
        token_verifier=auth.verifier if auth else None,
        auth=auth.settings if auth else None,
        local_grant=Grant.local(settings.server.stdio_scopes),
        limits=settings.limits,
    )
    _add_judge_tools(server)
    _add_memory_tools(server)
    _add_history_tools(server)
    add_review_tools(server, _tool)
    _add_evaluation_tool(server)
    _add_resource_and_prompts(server)
    return server


def _add_judge_tools(server: JudgeServer) -> None:
    @_tool(server, title="Create a judge", annotations=ADDITIVE, scope="admin")
    async def create_judge(
        *,
        name: Annotated[str, Field(description=_field(JudgeSpec, "name"))],
        instructions: Annotated[str, Field(description=_field(JudgeSpec, "instructions"))],
        ctx: Ctx,
        feedback_type: Annotated[
            Literal["bool", "int", "float", "categorical", "text"],
            Field(description="The type of verdict."),
        ] = "bool",
        choices: Annotated[list[str] | None, Field(description=_field(JudgeSpec, "choices"))] = None,
        min_value: Annotated[float | None, Field(description=_field(JudgeSpec, "min_value"))] = None,
        max_value: Annotated[float | None, Field(description=_field(JudgeSpec, "max_value"))] = None,
        model: Annotated[str | None, Field(description=_field(JudgeSpec, "model"))] = None,
        retrieval_k: Annotated[int | None, Field(description=_field(JudgeSpec, "retrieval_k"))] = None,
        review_guidelines: Annotated[bool, Field(description=_field(JudgeSpec, "review_guidelines"))] = False,
    ) -> Judge:
        """Create a judge that scores responses against your instructions and learns from human
        feedback. The same spec again changes nothing; another spec under a taken name is refused. Next:
        score_response, add_feedback."""
        spec = JudgeSpec(
            name=name,
            instructions=instructions,
            feedback_type=feedback_type,
            choices=choices,
            min_value=min_value,
            max_value=max_value,
            model=model,
            retrieval_k=retrieval_k,
            review_guidelines=review_guidelines,
        )
        who = _who()
        return await _run(ctx, lambda engine: engine.create_judge(spec, who=who))

    @_tool(server, title="List judges", annotations=READ_ONLY, scope="score")
    async def list_judges(ctx: Ctx) -> JudgeList:
        """List every judge: spec, `effective_model` ('memory': no model), memory version and counts.
        Call first to find a judge's name."""
        listed = await _run(ctx, lambda engine: engine.list_judges())
        grant = server.grant()
        return JudgeList(judges=[j for j in listed.judges if grant.may_see(j.name)])

    @_tool(server, title="Score a response", annotations=READ_ONLY_MODEL, scope="score")
    async def score_response(
        judge: JudgeName,
        inputs: InputsArg,
        outputs: OutputsArg,
        *,
        ctx: Ctx,
        expectations: ExpectationsArg = None,
        version: int | None = None,
    ) -> ScoreResult:
        """Judge one response with the judge's instructions, guidelines and nearest past feedback. Read
        `value` and `rationale`; if it fails, revise and rescore. value null: a memory-only judge could not
        decide (not a pass). `version`: an old memory."""
        return await _run(
            ctx, lambda engine: engine.score(judge, inputs, outputs, expectations, version=version)
        )

    @_tool(server, title="Delete a judge", annotations=DESTRUCTIVE, scope="admin")
    async def delete_judge(judge: JudgeName, ctx: Ctx) -> DeleteJudgeResult:
        """Delete a judge and all its memory; cannot be undone. To forget some feedback: remove_feedback."""
        who = _who()
        return await _run(ctx, lambda engine: engine.delete_judge(judge, who=who))


def _add_memory_tools(server: JudgeServer) -> None:
    @_tool(server, title="Teach a judge with feedback", annotations=ADDITIVE, scope="teach")
    async def add_feedback(
        judge: JudgeName,
        feedback: Annotated[
            list[FeedbackInput],
            Field(description="Human verdicts, each with its reason."),
        ],
        ctx: Ctx,
    ) -> AddFeedbackResult:
        """Teach a judge with human verdicts; if any item does not fit, nothing is stored. An id sent again
        with new content replaces the old item and its influence. `pending_ids`: stored, not yet distilled (see
        `note`)."""
        progress, who = _progress(ctx), _who()
        return await _run(ctx, lambda engine: engine.add_feedback(judge, feedback, progress, who=who))

    @_tool(server, title="Forget feedback", annotations=DESTRUCTIVE_IDEMPOTENT, scope="forget")
    async def remove_feedback(
        judge: JudgeName,
        feedback_ids: Annotated[list[str], Field(description="Feedback ids (see list_feedback).")],
        ctx: Ctx,
        purge: Annotated[
            bool,
            Field(description="Also erase the text from the store's files."),
        ] = False,
    ) -> RemoveFeedbackResult:
        """Forget feedback exactly: the items, every guideline distilled only from them, and re-derive
        guidelines that also cite other feedback. purge=true also erases the text from the store's files
        (slower): use it for personal data."""
        who = _who()
        return await _run(ctx, lambda engine: engine.remove_feedback(judge, feedback_ids, purge, who=who))

    @_tool(server, title="List a judge's guidelines", annotations=READ_ONLY, scope="score")
    async def list_guidelines(judge: JudgeName, ctx: Ctx) -> GuidelineList:
        """A judge's guidelines with their source feedback ids (none: by hand) and status ('proposed': unused
        until approved). The full prompt is judge://{name}."""
        return await _run(ctx, lambda engine: engine.list_guidelines(judge))

    @_tool(server, title="List a judge's feedback", annotations=READ_ONLY, scope="read")
    async def list_feedback(
        judge: JudgeName,
        ctx: Ctx,
        limit: Annotated[int, Field(description="Items per page, 1 to 500.")] = 50,
        offset: Annotated[int, Field(description="Items to skip.")] = 0,
    ) -> FeedbackPage:
        """A page of a judge's human feedback, oldest first, with ids for remove_feedback."""
        return await _run(ctx, lambda engine: engine.list_feedback(judge, limit, offset))


def _add_history_tools(server: JudgeServer) -> None:
    @_tool(server, title="Update a judge", annotations=ADDITIVE, scope="admin")
    async def update_judge(
        judge: JudgeName,
        *,
        ctx: Ctx,
        instructions: str | None = None,
        model: str | None = None,
        retrieval_k: int | None = None,
        choices: list[str] | None = None,
        min_value: float | None = None,
        max_value: float | None = None,
        review_guidelines: bool | None = None,
    ) -> Judge:
        """Change fields of a judge (as in create_judge), keeping its memory. Give only what changes.
        Refused, naming the item, if stored feedback would not fit."""
        given = {
            "instructions": instructions,
            "model": model,
            "retrieval_k": retrieval_k,
            "choices": choices,
            "min_value": min_value,
            "max_value": max_value,
            "review_guidelines": review_guidelines,
        }
        changes = {k: v for k, v in given.items() if v is not None}
        who = _who()
        return await _run(ctx, lambda engine: engine.update_judge(judge, changes, who=who))

    @_tool(server, title="Distil pending feedback", annotations=ADDITIVE, scope="teach")
    async def distill_pending(judge: JudgeName, ctx: Ctx) -> AddFeedbackResult:
        """Distil a judge's pending feedback now; returns what add_feedback returns."""
        progress, who = _progress(ctx), _who()
        return await _run(ctx, lambda engine: engine.distill_pending(judge, progress, who=who))

    @_tool(server, title="A judge's memory history", annotations=READ_ONLY, scope="read")
    async def judge_history(
        judge: JudgeName,
        ctx: Ctx,
        limit: Annotated[int, Field(description="1 to 500.")] = 50,
        offset: int = 0,
    ) -> JudgeHistory:
        """A judge's memory versions, newest first: when, who, and what changed (ids, never content)."""
        return await _run(ctx, lambda engine: engine.judge_history(judge, limit, offset))

    @_tool(server, title="Compare two memory versions", annotations=READ_ONLY, scope="read")
    async def diff_judge(
        judge: JudgeName,
        from_version: int,
        to_version: int,
        ctx: Ctx,
    ) -> JudgeDiff:
        """Feedback ids and guidelines added, removed and changed between two memory versions."""
        return await _run(ctx, lambda engine: engine.diff_judge(judge, from_version, to_version))

    @_tool(server, title="Roll a judge's memory back", annotations=DESTRUCTIVE_IDEMPOTENT, scope="admin")
    async def rollback_judge(
        judge: JudgeName,
        version: int,
        ctx: Ctx,
    ) -> RollbackResult:
        """A new version whose memory equals an older one's (spec unchanged). Refused, naming the items,
        where that version held content purged since."""
        who = _who()
        return await _run(ctx, lambda engine: engine.rollback_judge(judge, version, who=who))


def _add_evaluation_tool(server: JudgeServer) -> None:
    @_tool(server, title="Evaluate a judge against humans", annotations=READ_ONLY_MODEL, scope="evaluate")
    async def evaluate_judge(
        judge: JudgeName,
        ctx: Ctx,
        dataset: Annotated[
            list[LabelledExample] | None,
            Field(description="Responses with their human verdicts; omit for leave-one-out."),
        ] = None,
        compare_baseline: Annotated[
            bool,
            Field(description="Also score without memory, to show what feedback changed."),
        ] = False,
    ) -> EvaluationReport:
        """Measure a judge's agreement with human verdicts on `dataset`, or without it leave-one-out
        over its own feedback. One model call per item (two with compare_baseline); stores nothing."""
        progress = _progress(ctx)
        return await _run(
            ctx,
            lambda engine: engine.evaluate(
                judge, dataset, compare_baseline=compare_baseline, progress=progress
            ),
        )


def _add_resource_and_prompts(server: JudgeServer) -> None:
    @server.resource(
        "judge://{name}",
        name="judge",
        title="A judge as its model sees it",
        description="The judge's spec and full instructions, with its distilled guidelines appended under "
        "'Distilled Guidelines (N)', one per line.",
        mime_type="text/plain",
    )
    async def judge_document(name: str, ctx: Ctx) -> str:
        grant = server.grant()
        if not grant.may_use("score"):
            raise ResourceError(str(ScopeDeniedError(f"judge://{name}", "score", grant)))
        try:
            engine = await ctx.request_context.lifespan_context.get()
            if not grant.may_see(name):
                judges = await anyio.to_thread.run_sync(engine.list_judges)
                raise UnknownJudgeError(name, grant.visible(j.name for j in judges.judges))
            return await anyio.to_thread.run_sync(engine.judge_document, name)
        except UnknownJudgeError as exc:
            shown = grant.visible(exc.known)  # the engine lists every judge; this caller may see only some
            raise ResourceNotFoundError(str(UnknownJudgeError(exc.name, shown))) from exc
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
