"""The MCP face of guideline review: the tools `add_guideline` and `review_guideline` (scope admin).

Split from app.py, which registers them through its `_tool` (handed in, so the scope and description rules stay
in one place). Like app.py, it holds no judge logic (review.py has it) and never imports litellm or lancedb.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

from mcp_types import ToolAnnotations
from pydantic import Field

from memalign_mcp.judge_server import Ctx, JudgeServer
from memalign_mcp.judge_server import caller_name as _who
from memalign_mcp.judge_server import run_engine as _run
from memalign_mcp.models import ReviewAction, ReviewedGuideline

# app.py's `_tool(server, title=, annotations=, scope=)`.
Register = Callable[..., Callable[[Callable[..., Any]], Callable[..., Any]]]

# Module-level: the SDK resolves string annotations against this module's globals.
JudgeName = Annotated[str, Field(description="See list_judges.")]
RuleText = Annotated[str, Field(description="One rule, at most 300 characters.")]
GuidelineId = Annotated[str, Field(description="See list_guidelines.")]

_ADD = ToolAnnotations(
    read_only_hint=False, destructive_hint=False, idempotent_hint=False, open_world_hint=False
)
_REVIEW = ToolAnnotations(
    read_only_hint=False, destructive_hint=True, idempotent_hint=False, open_world_hint=False
)


def add_review_tools(server: JudgeServer, tool: Register) -> None:
    """Register add_guideline and review_guideline on the server."""

    @tool(server, title="Add a guideline", annotations=_ADD, scope="admin")
    async def add_guideline(judge: JudgeName, text: RuleText, ctx: Ctx) -> ReviewedGuideline:
        """Add a rule you wrote; in use at once, provenance 'operator:<you>'."""
        who = _who()
        return await _run(ctx, lambda engine: engine.add_guideline(judge, text, who=who))

    @tool(server, title="Review a guideline", annotations=_REVIEW, scope="admin")
    async def review_guideline(
        judge: JudgeName,
        guideline_id: GuidelineId,
        action: ReviewAction,
        ctx: Ctx,
        text: Annotated[str | None, Field(description="New text (edit only).")] = None,
    ) -> ReviewedGuideline:
        """approve: use it in scoring; reject: remove it; edit: new text (sources kept), in use."""
        who = _who()
        return await _run(
            ctx, lambda engine: engine.review_guideline(judge, guideline_id, action, text, who=who)
        )
