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
from mcp_types import ResourceTemplate as MCPResourceTemplate
from mcp_types import Tool as MCPTool
from pydantic import Field, ValidationError

from memalign_mcp import __version__
from memalign_mcp.auth import HttpAuth, request_grant
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
from memalign_mcp.scopes import Grant, Scope, ScopeDeniedError
from memalign_mcp.settings import Settings
from memalign_mcp.tool_schemas import compact_schema

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
JudgeName = Annotated[str, Field(description="Judge name (see list_judges).")]
InputsArg = Annotated[
    JudgedText,
    Field(description="The request the response answers: a string or JSON object."),
]
OutputsArg = Annotated[JudgedText, Field(description="The response to judge: a string or JSON object.")]
ExpectationsArg = Annotated[
    JudgedText | None,
    Field(description="Reference answer or facts to match: a string or JSON object."),
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
    except UnknownJudgeError as exc:
        # The engine lists every judge it knows; a caller bound to some judges must not learn of the others.
        grant = request_grant()
        known = grant.visible(exc.known) if grant else exc.known
        raise ToolError(str(UnknownJudgeError(exc.name, known))) from exc
    except MemAlignError as exc:
        raise ToolError(str(exc)) from exc


def _who() -> str | None:
    """The caller's name for the history of what it changes: its token's name over HTTP, else None."""
    grant = request_grant()
    return grant.who if grant else None


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
    server: JudgeServer, *, title: str, annotations: ToolAnnotations, scope: Scope
) -> Callable[[ToolFn], ToolFn]:
    """Register a tool whose description is its docstring and whose scope (CONTRACT.md) is declared here."""

    def register(fn: ToolFn) -> ToolFn:
        server.add_tool(fn, title=title, description=_description(fn), annotations=annotations)
        server.tool_scopes[fn.__name__] = scope
        return fn

    return register


# The hints of CONTRACT.md's table. Idempotent: the same call again changes nothing more.
READ_ONLY = _annotations(read_only=True, destructive=False, idempotent=True, open_world=False)
READ_ONLY_MODEL = _annotations(read_only=True, destructive=False, idempotent=True, open_world=True)
ADDITIVE = _annotations(read_only=False, destructive=False, idempotent=True, open_world=False)
DESTRUCTIVE_IDEMPOTENT = _annotations(read_only=False, destructive=True, idempotent=True, open_world=False)
DESTRUCTIVE = _annotations(read_only=False, destructive=True, idempotent=False, open_world=False)
# The argument naming the judge a tool touches, where it is not `judge`; a grant's `judges` is checked on it.
JUDGE_ARGUMENT = {"create_judge": "name"}


class JudgeServer(MCPServer[EngineHandle]):
    """The SDK's server, with the caller's scopes and judges enforced and argument errors in one line."""

    def __init__(self, *args: Any, local_grant: Grant, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.local_grant = local_grant
        self.tool_scopes: dict[str, Scope] = {}  # filled by _tool, one entry per tool

    def grant(self) -> Grant:
        """What the current caller may do: its bearer token's grant, else the local one (stdio, no tokens)."""
        return request_grant() or self.local_grant

    async def _refuse_outside_grant(self, name: str, arguments: dict[str, Any], context: Ctx | None) -> None:
        """A tool error for a call outside the caller's scopes, or about a judge it may not know exists."""
        scope = self.tool_scopes.get(name)
        if scope is None:
            return  # not a tool: the SDK answers that itself
        grant = self.grant()
        if not grant.may_use(scope):
            raise ToolError(str(ScopeDeniedError(name, scope, grant)))
        judge = arguments.get(JUDGE_ARGUMENT.get(name, "judge"))
        if grant.judges is None or not isinstance(judge, str) or grant.may_see(judge):
            return
        if name == "create_judge":
            raise ToolError(
                f"Token {grant.who!r} may create only the judges it is bound to: {', '.join(sorted(grant.judges))}. "
                "Choose one of those names, or ask the server's operator to bind the token to this one."
            )
        # Refused exactly as the engine refuses a judge that does not exist, listing only judges this caller sees.
        known: list[str] = []
        if context is not None:
            try:
                engine = await context.request_context.lifespan_context.get()
                judges = await anyio.to_thread.run_sync(engine.list_judges)
            except MemAlignError as exc:
                raise ToolError(str(exc)) from exc
            known = grant.visible(j.name for j in judges.judges)
        raise ToolError(str(UnknownJudgeError(judge, known)))

    async def call_tool(
        self, name: str, arguments: dict[str, Any], context: Ctx | None = None
    ) -> CallToolResult | InputRequiredResult:
        """Call a tool the caller's grant allows; arguments that do not fit fail naming field, value and type."""
        await self._refuse_outside_grant(name, arguments, context)
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

    async def list_tools(self) -> list[MCPTool]:
        """The caller's tools (those of its scopes) with compact schemas: tools/list is read into every context."""
        grant = self.grant()
        return [
            tool.model_copy(
                update={
                    "input_schema": compact_schema(tool.input_schema, output=False),
                    "output_schema": tool.output_schema and compact_schema(tool.output_schema, output=True),
                }
            )
            for tool in await super().list_tools()
            if grant.may_use(self.tool_scopes[tool.name])
        ]

    async def list_resource_templates(self) -> list[MCPResourceTemplate]:
        """judge://{name} is listed only to callers that may read it (scope score)."""
        shown = await super().list_resource_templates()
        return shown if self.grant().may_use("score") else []


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
        token_verifier=auth.verifier if auth else None,
        auth=auth.settings if auth else None,
        local_grant=Grant.local(settings.server.stdio_scopes),
    )
    _add_judge_tools(server)
    _add_memory_tools(server)
    _add_history_tools(server)
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
            Field(description="Verdict type: bool (pass/fail), int or float (a score), categorical or text."),
        ] = "bool",
        choices: Annotated[list[str] | None, Field(description=_field(JudgeSpec, "choices"))] = None,
        min_value: Annotated[float | None, Field(description=_field(JudgeSpec, "min_value"))] = None,
        max_value: Annotated[float | None, Field(description=_field(JudgeSpec, "max_value"))] = None,
        model: Annotated[str | None, Field(description=_field(JudgeSpec, "model"))] = None,
        retrieval_k: Annotated[int | None, Field(description=_field(JudgeSpec, "retrieval_k"))] = None,
    ) -> Judge:
        """Create a judge that scores responses against your instructions and learns from human
        feedback. `instructions` is a template over {{ inputs }}, {{ outputs }} and optionally {{ expectations }}.
        `feedback_type`: bool (default), int or float in [min_value, max_value], categorical (one of `choices`) or
        text. The same spec again changes nothing; another spec under a taken name is refused. Next:
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
        )
        who = _who()
        return await _run(ctx, lambda engine: engine.create_judge(spec, who=who))

    @_tool(server, title="List judges", annotations=READ_ONLY, scope="score")
    async def list_judges(ctx: Ctx) -> JudgeList:
        """List every judge: spec, `effective_model` ('memory': no model), memory version (up by one per
        change) and counts of feedback, guidelines and pending items. Call first to find a judge's name."""
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
        version: Annotated[
            int | None,
            Field(description="Score with the memory as it was at this memory version (see judge_history)."),
        ] = None,
    ) -> ScoreResult:
        """Judge one response using the judge's instructions, guidelines and most similar past
        feedback. Read `value` (the verdict) and `rationale`; if it fails, revise and score again. value null: a
        memory-only judge could not decide; not a pass. A model failure is an error, never a guess. `version`:
        score with the memory as it was then (see judge_history)."""
        return await _run(
            ctx, lambda engine: engine.score(judge, inputs, outputs, expectations, version=version)
        )

    @_tool(server, title="Delete a judge", annotations=DESTRUCTIVE, scope="admin")
    async def delete_judge(judge: JudgeName, ctx: Ctx) -> DeleteJudgeResult:
        """Delete a judge with all its feedback and guidelines; cannot be undone. To forget some
        feedback, use remove_feedback."""
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
        """Teach a judge with human verdicts: `value` must fit its feedback_type; `rationale` says why
        (guidelines are distilled from it). If any item does not fit, nothing is stored. An id sent again with new
        content replaces the old item and its influence. `pending_ids`: stored, not yet distilled (see `note`);
        used as examples already, retried by the next add_feedback."""
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
        """Forget feedback exactly: delete the items and every guideline distilled only from them,
        and re-derive guidelines that also cite other feedback. `not_found_ids` were not there. purge=true also
        erases the text from the store's files (slower): use it for personal data."""
        who = _who()
        return await _run(ctx, lambda engine: engine.remove_feedback(judge, feedback_ids, purge, who=who))

    @_tool(server, title="List a judge's guidelines", annotations=READ_ONLY, scope="score")
    async def list_guidelines(judge: JudgeName, ctx: Ctx) -> GuidelineList:
        """A judge's distilled guidelines, each with the feedback ids it came from (none: written by
        hand); check it before remove_feedback. The full prompt is the resource judge://{name}."""
        return await _run(ctx, lambda engine: engine.list_guidelines(judge))

    @_tool(server, title="List a judge's feedback", annotations=READ_ONLY, scope="read")
    async def list_feedback(
        judge: JudgeName,
        ctx: Ctx,
        limit: Annotated[int, Field(description="Items per page, 1 to 500.")] = 50,
        offset: Annotated[int, Field(description="Items to skip.")] = 0,
    ) -> FeedbackPage:
        """A page of a judge's human feedback, oldest first; ids for remove_feedback. If offset + limit
        < total, call again with offset + limit."""
        return await _run(ctx, lambda engine: engine.list_feedback(judge, limit, offset))


def _add_history_tools(server: JudgeServer) -> None:
    @_tool(server, title="Update a judge", annotations=ADDITIVE, scope="admin")
    async def update_judge(
        judge: JudgeName,
        *,
        ctx: Ctx,
        instructions: Annotated[str | None, Field(description=_field(JudgeSpec, "instructions"))] = None,
        model: Annotated[str | None, Field(description=_field(JudgeSpec, "model"))] = None,
        retrieval_k: Annotated[int | None, Field(description=_field(JudgeSpec, "retrieval_k"))] = None,
        choices: Annotated[list[str] | None, Field(description=_field(JudgeSpec, "choices"))] = None,
        min_value: Annotated[float | None, Field(description=_field(JudgeSpec, "min_value"))] = None,
        max_value: Annotated[float | None, Field(description=_field(JudgeSpec, "max_value"))] = None,
    ) -> Judge:
        """Change a judge's instructions, model, retrieval_k or value bounds while keeping its memory; the
        memory version goes up by one. Give only the fields to change. A change that stored feedback would no
        longer fit (a verdict outside new bounds or choices) is refused, naming the item."""
        given = {
            "instructions": instructions,
            "model": model,
            "retrieval_k": retrieval_k,
            "choices": choices,
            "min_value": min_value,
            "max_value": max_value,
        }
        changes = {k: v for k, v in given.items() if v is not None}
        who = _who()
        return await _run(ctx, lambda engine: engine.update_judge(judge, changes, who=who))

    @_tool(server, title="Distil pending feedback", annotations=ADDITIVE, scope="teach")
    async def distill_pending(judge: JudgeName, ctx: Ctx) -> AddFeedbackResult:
        """Distil guidelines now from a judge's pending feedback (stored while no reflection model was set, or
        whose distillation failed). Returns what add_feedback returns, for those items."""
        progress, who = _progress(ctx), _who()
        return await _run(ctx, lambda engine: engine.distill_pending(judge, progress, who=who))

    @_tool(server, title="A judge's memory history", annotations=READ_ONLY, scope="read")
    async def judge_history(
        judge: JudgeName,
        ctx: Ctx,
        limit: Annotated[int, Field(description="Versions per page, 1 to 500.")] = 50,
        offset: Annotated[int, Field(description="Versions to skip (newest first).")] = 0,
    ) -> JudgeHistory:
        """Every memory version of a judge, newest first: when, who, the kind of change, and the ids of the
        feedback and guidelines it added, removed, replaced or revised (never their content). Purged items
        stay listed as ids. Use a version with diff_judge, rollback_judge or score_response(version=...)."""
        return await _run(ctx, lambda engine: engine.judge_history(judge, limit, offset))

    @_tool(server, title="Compare two memory versions", annotations=READ_ONLY, scope="read")
    async def diff_judge(
        judge: JudgeName,
        from_version: Annotated[int, Field(description="The older memory version.")],
        to_version: Annotated[int, Field(description="The newer memory version.")],
        ctx: Ctx,
    ) -> JudgeDiff:
        """The feedback ids and guidelines added, removed and changed between two memory versions."""
        return await _run(ctx, lambda engine: engine.diff_judge(judge, from_version, to_version))

    @_tool(server, title="Roll a judge's memory back", annotations=DESTRUCTIVE_IDEMPOTENT, scope="admin")
    async def rollback_judge(
        judge: JudgeName,
        version: Annotated[int, Field(description="The memory version to restore (see judge_history).")],
        ctx: Ctx,
    ) -> RollbackResult:
        """Make a new memory version whose feedback and guidelines equal those of an older version (the spec
        stays as it is now). Nothing is lost: the versions in between stay in the history and can be restored
        in turn. Refused, naming the items, where that version held content purged since."""
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
        over its own feedback. One model call per item (two with compare_baseline); stores nothing. If agreement
        is low, fix memory with add_feedback or remove_feedback."""
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
