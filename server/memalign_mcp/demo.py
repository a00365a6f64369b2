"""`memalign-mcp demo`: the seed notebook's workflow, run through a real MCP client against the server over stdio.

Create the helpfulness judge, score a baseline, give feedback, show the guidelines, score again and compare,
unalign the "sweater" feedback, score again, list judges. Everything goes through the protocol, as an agent's
client would do it. With no model configured it says plainly that the judge runs from memory alone. This module
owns the demo's output and its one-line failure; the server it drives gets the same config file and log level.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from collections.abc import Generator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mcp.shared.exceptions import MCPError

from memalign_mcp.seed_scenario import ALIGNMENT, HELD_OUT, INSTRUCTIONS, JUDGE, SOURCE
from memalign_mcp.settings import Settings

_RULE = "=" * 72


class DemoError(RuntimeError):
    """A step of the demo failed; the message says which and why."""


@dataclass(frozen=True)
class DemoOptions:
    """What the demo's command line chose: the server's config file, store and log level."""

    config: Path | None = None
    data_dir: Path | str | None = None  # a directory, or an object-store URI such as s3://bucket/prefix
    log_level: str = "WARNING"


def _print(text: str = "") -> None:
    print(text, flush=True)


@contextmanager
def _step(number: int, title: str) -> Generator[None]:
    """A numbered step that says how long it took, so a slow model shows where the time went."""
    _print(f"\n{_RULE}\nStep {number}: {title}\n{_RULE}")
    started = time.perf_counter()
    try:
        yield
    except DemoError as exc:
        raise DemoError(
            f"step {number} ({title}) failed after {time.perf_counter() - started:.1f} s: {exc}"
        ) from exc
    _print(f"  (step {number} took {time.perf_counter() - started:.1f} s)")


async def _call(client: Any, tool: str, arguments: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
    result = await client.call_tool(tool, arguments, **kwargs)
    if result.is_error:
        text = " ".join(getattr(c, "text", "") for c in result.content)
        raise DemoError(f"{tool} failed: {text.removeprefix(f'Error executing tool {tool}: ')}")
    return dict(result.structured_content or {})


def _show_value(value: Any) -> str:
    return json.dumps(value)


async def _accuracy(client: Any, items: list[dict[str, Any]], label: str) -> float:
    right = abstained = 0
    for item in items:
        scored = await _call(
            client, "score_response", {"judge": JUDGE, "inputs": item["inputs"], "outputs": item["outputs"]}
        )
        ok = scored["value"] == item["value"]
        right += ok
        abstained += scored["value"] is None
        mark = "agrees" if ok else ("no verdict" if scored["value"] is None else "DISAGREES")
        _print(
            f"  {item['id']:<14} human={json.dumps(item['value']):<5} judge={_show_value(scored['value']):<8} {mark:<9}"
            f" (memory v{scored['judge_version']}, {scored['latency_ms']:.0f} ms, model {scored['model']})"
        )
    accuracy = right / len(items)
    note = f" ({abstained} without a verdict count as disagreement)" if abstained else ""
    _print(f"  {label}: {accuracy:.0%} agreement{note}")
    return accuracy


def _comparison(rows: list[tuple[str, float, float]]) -> None:
    _print("\nPERFORMANCE COMPARISON")
    _print(f"{'Dataset':<25} {'Baseline':<12} {'Aligned':<12} {'Change':<10}")
    _print("-" * 60)
    for name, base, aligned in rows:
        _print(f"{name:<25} {base:<12.0%} {aligned:<12.0%} {aligned - base:+.0%}")
    _print("-" * 60)


def _model_banner(settings: Settings) -> None:
    model = settings.model.default_judge_model
    if model != "memory":
        reflection = settings.model.reflection_model or "none"
        _print(f"Judge model: {model}; reflection model (distils guidelines): {reflection}.")
    else:
        _print(
            "No model is configured: the judge runs from memory alone, WITHOUT a model. Its verdicts are a\n"
            "similarity-weighted vote of the human verdicts it was given, it abstains when it cannot decide,\n"
            "and no guidelines are distilled (that needs a reflection model). Set MEMALIGN_MODEL (any litellm\n"
            "model, e.g. openai/gpt-4.1-mini) to run the full LLM judge."
        )


def _distillation(settings: Settings, added: dict[str, Any]) -> str:
    """What happened to distillation in add_feedback, in words that match what the server did."""
    if settings.model.reflection_model is None:
        return "skipped: no reflection model is configured, so the judge learns from worked examples only"
    if added["pending_ids"]:
        return (
            f"FAILED for {len(added['pending_ids'])} item(s), which stay pending: {added.get('note') or ''}"
        )
    return f"ran with {settings.model.reflection_model}: {len(added['guidelines_added'])} guideline(s) added"


_PASSED_ON = (
    "MEMALIGN_",
    "OPENAI_",
    "ANTHROPIC_",
    "LITELLM_",
    "XDG_",
    "AWS_",
    "GOOGLE_",
    "AZURE_",
    "LANCEDB_",
)


def _server(options: DemoOptions, data_dir: Path | str) -> Any:
    """How to start `memalign-mcp serve` with the demo's config file, store and log level."""
    from mcp.client.stdio import StdioServerParameters

    args = ["-m", "memalign_mcp.cli", "serve", "--data-dir", str(data_dir), "--log-level", options.log_level]
    if options.config is not None:
        args += ["--config", str(options.config.resolve())]
    return StdioServerParameters(
        command=sys.executable,
        args=args,
        env={
            k: v
            for k, v in os.environ.items()
            # PYTHONPATH: the server must import the same memalign_mcp as this process (a source checkout);
            # AWS_, GOOGLE_, AZURE_, LANCEDB_: how LanceDB reaches a store in object storage (--data-dir s3://).
            if k.startswith(_PASSED_ON) or k == "PYTHONPATH"
        },
    )


async def run_demo(settings: Settings, options: DemoOptions, data_dir: Path | str) -> None:
    """Run the whole workflow against `memalign-mcp serve` in a subprocess."""
    from mcp import Client

    _print("memalign-mcp demo: the seed notebook's workflow through a real MCP client over stdio.")
    _model_banner(settings)
    async with Client(_server(options, data_dir), read_timeout_seconds=600) as client:
        tools = await client.list_tools()
        _print(f"Connected: {len(tools.tools)} tools ({', '.join(t.name for t in tools.tools)}).")

        with _step(1, "create the helpfulness judge"):
            judge = await _call(
                client, "create_judge", {"name": JUDGE, "instructions": INSTRUCTIONS, "feedback_type": "bool"}
            )
            _print(
                f"  judge {judge['name']!r}: {judge['feedback_type']} verdicts, model {judge['effective_model']}, memory v{judge['memory_version']}"
            )

        with _step(2, "baseline: score before any feedback"):
            base_align = await _accuracy(client, ALIGNMENT, "Alignment set")
            base_test = await _accuracy(client, HELD_OUT, "Held-out set")

        with _step(3, "give human feedback (add_feedback)"):

            async def progress(done: float, total: float | None, message: str | None) -> None:
                _print(f"  progress {done:.0f}/{total or 0:.0f} {message or ''}")

            added = await _call(
                client,
                "add_feedback",
                {"judge": JUDGE, "feedback": [i | {"source": SOURCE} for i in ALIGNMENT]},
                progress_callback=progress,
            )
            _print(
                f"  stored {len(added['feedback_ids'])} items; memory v{added['judge_version']}; pending {len(added['pending_ids'])}"
            )
            _print(f"  distillation {_distillation(settings, added)}")

        with _step(4, "inspect the distilled guidelines (semantic memory)"):
            guidelines = await _call(client, "list_guidelines", {"judge": JUDGE})
            if not guidelines["guidelines"]:
                _print(f"  (none; distillation {_distillation(settings, added)})")
            for g in guidelines["guidelines"]:
                _print(
                    f"  - [{g['id']}] {g['text']}\n      from feedback: {', '.join(g['source_feedback_ids'])}"
                )

        with _step(5, "score again with memory"):
            aligned_align = await _accuracy(client, ALIGNMENT, "Alignment set")
            aligned_test = await _accuracy(client, HELD_OUT, "Held-out set")
            _comparison([("Alignment Set", base_align, aligned_align), ("Test Set", base_test, aligned_test)])
            if judge["effective_model"] == "memory":
                _print(
                    "  (The memory judge holds the alignment items themselves, so its alignment-set score is recall;\n"
                    "   the held-out set is the one that shows what it learned.)"
                )

        with _step(6, "unalign: remove the 'sweater' feedback"):
            removed = await _call(client, "remove_feedback", {"judge": JUDGE, "feedback_ids": ["sweater"]})
            _print(f"  removed {removed['removed_ids']}; memory v{removed['judge_version']}")
            for g in removed["guidelines_removed"]:
                _print(f"  guideline forgotten: {g['text']}")
            for g in removed["guidelines_revised"]:
                _print(f"  guideline re-derived without it: {g['text']}")
            if not removed["guidelines_removed"] and not removed["guidelines_revised"]:
                _print("  no guideline cited it; its worked example is gone from episodic memory")
            feedback = await _call(client, "list_feedback", {"judge": JUDGE, "limit": 50, "offset": 0})
            _print(
                f"  episodic memory now holds {feedback['total']} items: {', '.join(f['id'] for f in feedback['feedback'])}"
            )

        with _step(7, "score again after unalignment"):
            await _accuracy(client, HELD_OUT, "Held-out set")

        with _step(8, "list judges"):
            judges = await _call(client, "list_judges", {})
            for j in judges["judges"]:
                _print(
                    f"  {j['name']}: memory v{j['memory_version']}, {j['feedback_count']} feedback, "
                    f"{j['guideline_count']} guidelines, model {j['effective_model']}"
                )


def _leaves(exc: BaseException) -> list[BaseException]:
    """The exceptions inside (nested) exception groups: the client's task group wraps what a step raised."""
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for inner in exc.exceptions for leaf in _leaves(inner)]
    return [exc]


def _failure(exc: BaseException) -> str | None:
    """One line saying why the demo stopped, or None for a bug whose traceback should be seen."""
    for leaf in _leaves(exc):
        if isinstance(leaf, DemoError):
            return str(leaf)
    for leaf in _leaves(exc):
        if isinstance(leaf, MCPError):
            return f"the server stopped answering ({leaf}); run with --log-level INFO to see its log"
        if isinstance(leaf, OSError):
            return f"could not start or reach the server: {leaf}"
    return None


def main(settings: Settings, options: DemoOptions | None = None) -> int:
    """Run the demo (in a temporary store unless a data dir is given); 1 with one line on stderr if a step fails."""
    import anyio

    options = options or DemoOptions()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="memalign-demo-") as tmp:
        data_dir = options.data_dir or Path(tmp)
        try:
            anyio.run(run_demo, settings, options, data_dir)
        except Exception as exc:
            failure = _failure(exc)
            if failure is None:
                raise
            print(f"memalign-mcp demo: {failure}", file=sys.stderr)
            return 1
        where = "kept" if options.data_dir else "a temporary directory, removed now"
        _print(
            f"\nDone in {time.perf_counter() - started:.1f} s. The judge's store is in {data_dir} ({where})."
        )
    return 0
