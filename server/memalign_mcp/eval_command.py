"""`memalign-mcp eval`: read a JSONL dataset, evaluate a judge, print and write the report.

This module owns what a shell user reads when the command fails: the file and line of a bad dataset line, the
judges that exist in the store that was opened, and advice in command-line terms (flags, `memalign-mcp serve`),
never MCP tool calls they cannot make from a shell. It prints; it never exits the process.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Sequence
from pathlib import Path

from pydantic import ValidationError

from memalign_mcp.errors import InvalidInputError, MemAlignError, UnknownJudgeError, show_value
from memalign_mcp.invalid_input import first_invalid_field
from memalign_mcp.models import LabelledExample
from memalign_mcp.settings import Settings

EXIT_FAILED = 1
_LINE_SHAPE = 'each line must be one JSON object {"inputs": ..., "outputs": ..., "value": ...}'
_DATASET_ITEM = re.compile(r"dataset\[(\d+)\]\.(.+)")


class EvalInputError(Exception):
    """The command's input cannot be used; the message is written for a shell user."""


def read_dataset(path: Path, limit: int | None = None) -> tuple[list[LabelledExample], list[int]]:
    """The labelled items of a JSONL file and the line number of each; a bad line fails naming file and line."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise EvalInputError(f"cannot read --dataset {path}: {exc}") from exc
    items: list[LabelledExample] = []
    numbers: list[int] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if limit is not None and len(items) >= limit:
            break
        if not line.strip():
            continue
        try:
            data = json.loads(line)
        except json.JSONDecodeError as exc:
            raise EvalInputError(
                f"{path}:{number}: not JSON ({exc.msg} at column {exc.colno}); {_LINE_SHAPE}."
            ) from exc
        try:
            items.append(LabelledExample.model_validate(data))
        except ValidationError as exc:
            problem = first_invalid_field(exc, data).sentence()
            raise EvalInputError(f"{path}:{number}: {problem} Fix the line; {_LINE_SHAPE}.") from exc
        numbers.append(number)
    if not items:
        raise EvalInputError(f"{path} has no items; {_LINE_SHAPE}.")
    return items, numbers


def _known_judges(known: Sequence[str], settings: Settings) -> str:
    listed = ", ".join(known) if known else "none"
    return (
        f"Judges in the store at {settings.store.resolved_uri()}: {listed}. Pass --data-dir for another store; "
        "judges are made from the config's judge files, or by an MCP client of `memalign-mcp serve` "
        "(create_judge)."
    )


def shell_message(exc: MemAlignError, settings: Settings, dataset: Path | None, lines: Sequence[int]) -> str:
    """An engine error reworded for the command line: flags and file lines, not tool calls."""
    if isinstance(exc, UnknownJudgeError):
        return f"unknown judge {exc.name!r} (--judge). {_known_judges(exc.known, settings)}"
    if isinstance(exc, InvalidInputError):
        item = _DATASET_ITEM.fullmatch(exc.field)
        if item and dataset is not None and int(item[1]) < len(lines):
            shown = show_value(exc.value)
            return (
                f"{dataset}:{lines[int(item[1])]}: Invalid {item[2]}: got {shown}; expected {exc.expected}."
            )
        if exc.field == "dataset" and dataset is None:
            return (
                "the judge has no feedback to evaluate leave-one-out. Pass --dataset FILE.jsonl of "
                "{inputs, outputs, value}, or teach the judge first (add_feedback, through an MCP client of "
                "`memalign-mcp serve`)."
            )
    return str(exc)


def run_eval(
    settings: Settings,
    judge: str,
    dataset: Path | None,
    *,
    limit: int | None,
    compare_baseline: bool,
    out: Path,
) -> int:
    """Evaluate a judge and write its report; 0, or 1 with one line on stderr saying what to fix."""
    from memalign_mcp.engine import open_engine  # lancedb and onnxruntime: only once the arguments are read
    from memalign_mcp.report import render_markdown, write_report

    lines: list[int] = []
    bar = _ProgressBar()
    try:
        examples = None
        if dataset is not None:
            examples, lines = read_dataset(dataset, limit)
        engine = open_engine(settings)
        report = engine.evaluate(judge, examples, compare_baseline=compare_baseline, progress=bar.show)
        bar.end()
        label = str(dataset) if dataset else "leave-one-out over the judge's feedback"
        paths = write_report(report, out, dataset=label)
    except (EvalInputError, MemAlignError, OSError) as exc:
        bar.end()
        message = shell_message(exc, settings, dataset, lines) if isinstance(exc, MemAlignError) else exc
        print(f"memalign-mcp eval: {message}", file=sys.stderr)
        return EXIT_FAILED
    print(render_markdown(report, dataset=label))
    print("\n".join(f"wrote {path}" for path in paths.values()), file=sys.stderr)
    return 0


class _ProgressBar:
    """A bar on stderr that ends its line before anything else is printed."""

    def __init__(self) -> None:
        self.shown = False

    def show(self, done: int, total: int, _message: str) -> None:
        """Redraw the bar (the engine's progress callback)."""
        width = 30
        filled = width * done // max(total, 1)
        bar = f"[{'#' * filled}{'.' * (width - filled)}] {done}/{total}"
        print(f"\r{bar}", end="", file=sys.stderr, flush=True)
        self.shown = True

    def end(self) -> None:
        """Finish the bar's line, if one was drawn."""
        if self.shown:
            print(file=sys.stderr)
            self.shown = False
