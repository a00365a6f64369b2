"""The MCP server object of memalign-mcp: the engine opened in the background, and who may call what.

This module owns `JudgeServer` (the SDK's MCPServer with the caller's grant enforced on tools/list, every tool
call and the resource templates, and argument errors in the engine's one-line shape), the `EngineHandle` every
tool awaits, and the running of one engine call per tool. It must never hold judge logic or tool definitions
(those are `app.py`'s), and never import litellm, lancedb or onnxruntime.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable
from functools import partial
from types import NoneType, UnionType
from typing import TYPE_CHECKING, Annotated, Any, TypeVar, Union, get_args, get_origin

import anyio
import anyio.from_thread
import anyio.lowlevel
import anyio.to_thread
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError, UnexpectedToolError
from mcp.server.mcpserver.utilities.func_metadata import FuncMetadata
from mcp.shared.exceptions import MCPError
from mcp_types import CallToolResult, InputRequiredResult
from mcp_types import ResourceTemplate as MCPResourceTemplate
from mcp_types import Tool as MCPTool
from pydantic import BaseModel, ConfigDict, ValidationError

from memalign_mcp.auth import request_grant
from memalign_mcp.errors import MemAlignError, UnknownJudgeError
from memalign_mcp.invalid_input import argument_error
from memalign_mcp.limits import RateLimiter
from memalign_mcp.scopes import Grant, Scope, ScopeDeniedError
from memalign_mcp.settings import LimitsSettings, Settings
from memalign_mcp.stdio_wire import answering_stdio_server
from memalign_mcp.tool_schemas import compact_schema

if TYPE_CHECKING:
    from memalign_mcp.alignment import MemAlignService

log = logging.getLogger(__name__)
T = TypeVar("T")
Progress = Callable[[int, int, str], None]


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


async def maintain_in_background(handle: EngineHandle, settings: Settings, stop: anyio.Event) -> None:
    """Maintain the store on a thread of its own while the server runs, never on a tool call, until `stop`."""
    if settings.store.maintain_interval_s <= 0:
        return  # left to `memalign-mcp maintain` (cron)
    try:
        engine = await handle.get()
    except EngineUnavailableError:
        return  # every tool says why; there is nothing to maintain
    from memalign_mcp.maintenance import BackgroundMaintenance  # the store's module: load it late

    background = BackgroundMaintenance(engine.store, settings.store).start()
    try:
        await stop.wait()
    finally:
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(background.stop)


Ctx = Context[EngineHandle, Any]


async def run_engine(ctx: Ctx, call: Callable[[MemAlignService], T]) -> T:
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


def caller_name() -> str | None:
    """The caller's name for the history of what it changes: its token's name over HTTP, else None."""
    grant = request_grant()
    return grant.who if grant else None


def progress_reporter(ctx: Ctx) -> Progress:
    """A progress callback the engine can call from its worker thread; it sends MCP progress notifications."""
    token = anyio.lowlevel.current_token()

    def report(done: int, total: int, message: str) -> None:
        try:
            anyio.from_thread.run(partial(ctx.report_progress, done, total, message), token=token)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, anyio.RunFinishedError):
            # The client went away: the work itself must still finish and be stored.
            log.debug("progress not delivered (%d/%d %s): the client is gone", done, total, message)

    return report


def _accepts_string(annotation: Any) -> bool:
    """Whether an argument of this type may be a plain string (through Annotated, unions and Optional)."""
    if annotation is str:
        return True
    origin = get_origin(annotation)
    if origin is Annotated:
        return _accepts_string(get_args(annotation)[0])
    if origin in (Union, UnionType):
        return any(_accepts_string(arg) for arg in get_args(annotation) if arg is not NoneType)
    return False


class _StringsAsSent(FuncMetadata):
    """The SDK's function metadata, parsing JSON held in a string only where a string is not a valid value.

    Some clients send a list or an object argument as a JSON string, and the SDK parses it back; that stays for
    `feedback`, `feedback_ids`, `dataset` and the like. But where a string is itself a valid value (judged text:
    `inputs`, `outputs`, `expectations`), the SDK's parsing turned a response that happens to be JSON into an
    object, so the judge saw it re-indented: such arguments are kept exactly as sent.
    """

    def pre_parse_json(self, data: dict[str, Any]) -> dict[str, Any]:
        """The SDK's parsing, except for arguments that may be strings: those are passed on as sent."""
        fields = self.arg_model.model_fields
        as_sent = {
            key: value
            for key, value in data.items()
            if key in fields and _accepts_string(fields[key].annotation)
        }
        return super().pre_parse_json(data) | as_sent


def internal_error(tool: str, exc: BaseException) -> ToolError:
    """A one-line tool error for a crash, with a reference the server's log holds the traceback under."""
    ref = secrets.token_hex(4)
    log.error("internal error (ref %s) in %s", ref, tool, exc_info=(type(exc), exc, exc.__traceback__))
    return ToolError(
        f"Internal error (ref {ref}) in {tool}: {type(exc).__name__}; the server log has the details under this "
        "ref. Retry, and report the ref to the server's operator if it persists."
    )


# The argument naming the judge a tool touches, where it is not `judge`; a grant's `judges` is checked on it.
JUDGE_ARGUMENT = {"create_judge": "name"}


class JudgeServer(MCPServer[EngineHandle]):
    """The SDK's server, with the caller's scopes and judges enforced and argument errors in one line."""

    def __init__(
        self, *args: Any, local_grant: Grant, limits: LimitsSettings | None = None, **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        self.local_grant = local_grant
        self.tool_scopes: dict[str, Scope] = {}  # filled by _tool, one entry per tool
        limits = limits or LimitsSettings()
        self.http_limiter = RateLimiter(limits.requests_per_minute, "limits.requests_per_minute")
        self.stdio_limiter = RateLimiter(limits.stdio_requests_per_minute, "limits.stdio_requests_per_minute")

    def _count_call(self, context: Ctx | None) -> None:
        """Count one tool call against its caller's bucket: a token's name, else its address; stdio is one caller."""
        grant = request_grant()
        request: Any = context.request_context.request if context is not None else None
        if grant is not None:
            self.http_limiter.take(f"token {grant.who!r}")
        elif request is not None:
            client: Any = getattr(request, "client", None)
            self.http_limiter.take(f"address {getattr(client, 'host', None) or 'unknown'}")
        else:
            self.stdio_limiter.take("the stdio client")

    async def run_stdio_async(self) -> None:
        """Serve over stdio, answering every line the SDK cannot read with a JSON-RPC error (stdio_wire.py)."""
        async with answering_stdio_server() as (read_stream, write_stream):
            lowlevel = self._lowlevel_server
            await lowlevel.run(read_stream, write_stream, lowlevel.create_initialization_options())

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

    def refuse_loose_arguments(self, name: str) -> None:
        """Validate tool `name`'s arguments strictly: an unknown name is refused, and nothing is coerced.

        The SDK's argument model ignores unknown names (a misspelt `feedbak_type` left a bool judge) and is lax
        ("5" became 5, 1 became true), and parsed judged text that is JSON into an object. A subclass with a
        strict config, and metadata that keeps string arguments as sent, take their place; tools/list keeps the
        schema the SDK made from the lax model, which describes the same arguments.
        """
        tool = self._tool_manager.get_tool(name)
        if tool is None:
            raise KeyError(name)
        lax = tool.fn_metadata
        strict = type(
            lax.arg_model.__name__,
            (lax.arg_model,),
            {"model_config": ConfigDict(extra="forbid", strict=True)},
        )
        tool.fn_metadata = _StringsAsSent(
            arg_model=strict,
            output_schema=lax.output_schema,
            output_model=lax.output_model,
            wrap_output=lax.wrap_output,
        )

    async def call_tool(
        self, name: str, arguments: dict[str, Any], context: Ctx | None = None
    ) -> CallToolResult | InputRequiredResult:
        """Call a tool the caller's grant allows; arguments that do not fit fail naming field, value and type.

        A crash (anything but a deliberate error) comes back as one line with a reference, and the traceback
        goes to the server's log under the same reference: the caller learns nothing of the internals.
        """
        try:
            self._count_call(context)
            await self._refuse_outside_grant(name, arguments, context)
            return await super().call_tool(name, arguments, context)
        except MemAlignError as exc:  # the rate limit, or the engine failing while a grant was checked
            raise ToolError(str(exc)) from exc
        except UnexpectedToolError as exc:
            raise internal_error(name, exc.__cause__ or exc) from exc
        except ToolError as exc:
            # The SDK raises a ToolError caused by the ValidationError when the arguments do not fit the schema.
            cause = exc.__cause__
            if not isinstance(cause, ValidationError):
                raise
            tool = self._tool_manager.get_tool(name)
            model = tool.fn_metadata.arg_model if tool else BaseModel
            raise ToolError(
                f"Error executing tool {name}: {argument_error(name, cause, arguments, model)}"
            ) from cause
        except MCPError:
            raise
        except Exception as exc:
            raise internal_error(name, exc) from exc

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
