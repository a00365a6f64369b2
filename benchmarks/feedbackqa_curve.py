"""FeedbackQA learning curve: a judge's agreement with human raters after 10, 50, 200 and 1000 feedback items.

Feedback comes from FeedbackQA train + valid (ties skipped; value = majority label, rationale = that of a rater
who agrees with it, id = the item's stable id), in nested seeded samples: the 50 contain the 10, and so on.
Agreement (accuracy with a 95% bootstrap CI, Cohen's kappa, abstention rate) is measured on a fixed seeded
sample of the test split, next to the human ceiling of 78.5% from the dataset README. The baseline is the same
judge with memory switched off. Two variants of what is embedded for retrieval are compared: the question
alone ("inputs") and question with answer ("inputs+outputs"). Run from the repository root:

    .venv/bin/python benchmarks/feedbackqa_curve.py
        the memory judge (no model; a similarity-weighted vote of retrieved human verdicts), both variants;
        writes benchmarks/results/feedbackqa_curve.json and learning_curve.png, prints Markdown tables.
    OPENAI_API_KEY=... .venv/bin/python benchmarks/feedbackqa_curve.py --model openai/gpt-4.1-mini \
            --fields inputs+outputs
        the same curve with a real model as judge and reflection model (any litellm model string; --api-base
        for an OpenAI-compatible server). It costs about 20 distillation calls and 1,500 judge calls per
        variant at the default sizes; results go to feedbackqa_curve_<model>.json and learning_curve_<model>.png.
    .venv/bin/python benchmarks/feedbackqa_curve.py --scripted
        the model code path with an instant scripted model (a trivial rule, not a judge), to time the engine's
        own overhead; its agreement figures are labelled as meaningless and go to feedbackqa_curve_scripted.json.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
import time
from collections.abc import Callable, Generator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from feedbackqa_data import DEFAULT_DATA, HUMAN_CEILING, REPO, feedback_pool, held_out_sample
from memalign_mcp.alignment import MemAlignService
from memalign_mcp.embeddings import Embedder, EmbeddingFields, LocalMiniLMEmbedder
from memalign_mcp.engine import open_engine
from memalign_mcp.evaluation import EvaluationReport
from memalign_mcp.metrics import AgreementReport
from memalign_mcp.models import FeedbackInput, JudgeSpec, LabelledExample
from memalign_mcp.report import CurvePoint, comparison_table, draw_learning_curve
from memalign_mcp.settings import load_settings
from run_record import describe, run_record

RESULTS = REPO / "benchmarks" / "results"
CONFIG = REPO / "configs" / "default.toml"
JUDGE = "feedbackqa-helpful"
INSTRUCTIONS = (
    "A user asked a public-service help site (government or health agency) this question:\n{{ inputs }}\n\n"
    "The site answered with this passage:\n{{ outputs }}\n\n"
    "Is the passage a helpful answer to the question, one a careful reader would rate Excellent or "
    "Acceptable (rather than Could be Improved or Bad)? Answer true if helpful, false if not."
)
SIZES = (10, 50, 200, 1000)
VARIANTS: tuple[EmbeddingFields, ...] = ("inputs", "inputs+outputs")
SCRIPTED_BANNER = "=" * 30 + " SCRIPTED MODEL: NOT A MEASURE OF JUDGE QUALITY " + "=" * 30


def log(message: str) -> None:
    """Progress goes to stderr so that stdout holds only the Markdown tables."""
    print(message, file=sys.stderr, flush=True)


class Judging:
    """Which judge the curve runs: the memory judge, a real model, or the scripted stand-in."""

    def __init__(self, kind: str, model: str = "", overrides: dict[str, Any] | None = None) -> None:
        self.kind = kind
        self.model = model
        self.overrides = overrides or {}

    @property
    def label(self) -> str:
        """The judge as named in tables and file names."""
        return {"memory": "memory judge (no model)", "scripted": "scripted model"}.get(self.kind, self.model)

    @property
    def slug(self) -> str:
        """A file-name suffix: '' for the memory judge."""
        if self.kind == "memory":
            return ""
        return "_" + re.sub(r"[^A-Za-z0-9.-]+", "-", self.model if self.kind == "model" else "scripted")


@contextmanager
def judging_from(args: argparse.Namespace) -> Generator[Judging]:
    """The judge the flags ask for; with --scripted, the scripted server runs for the duration."""
    if args.scripted:
        sys.path.insert(0, str(REPO / "tests"))
        from scripted_model import ScriptedModelServer
        from trivial_script import trivial_script

        with ScriptedModelServer(trivial_script) as server:
            yield Judging(
                "scripted",
                "openai/scripted",
                {
                    "model.judge": "openai/scripted",
                    "model.api_base": server.base_url,
                    "model.api_key": "scripted",
                    "model.max_retries": 0,
                },
            )
        return
    if args.model:
        overrides = {
            "model.judge": args.model,
            "model.reflection": args.reflection_model or args.model,
            "model.api_base": args.api_base or os.environ.get("MEMALIGN_API_BASE", ""),
            # Provider keys (OPENAI_API_KEY, ANTHROPIC_API_KEY, ...) are read by litellm itself.
            "model.api_key": os.environ.get("MEMALIGN_API_KEY", ""),
        }
        yield Judging("model", args.model, overrides)
        return
    yield Judging("memory")


def _figures(side: AgreementReport) -> dict[str, Any]:
    head = side.headline
    correct = (side.accuracy or 0.0) * side.n_scored
    return {
        "accuracy": side.accuracy,
        "ci95": list(head.ci) if head.ci else None,
        "cohen_kappa": side.cohen_kappa,
        "abstention_rate": side.abstention_rate,
        "n_scored": side.n_scored,
        "n_items": side.n_items,
        "correct_of_all_items": correct / side.n_items if side.n_items else None,
        "confusion_matrix": side.confusion_matrix.matrix if side.confusion_matrix else None,
    }


def _add_in_calls(engine: MemAlignService, items: Sequence[FeedbackInput]) -> None:
    limit = engine.settings.memory.max_items_per_call
    for start in range(0, len(items), limit):
        engine.add_feedback(JUDGE, items[start : start + limit])


def run_variant(
    fields: EmbeddingFields,
    judging: Judging,
    pool: Sequence[FeedbackInput],
    examples: Sequence[LabelledExample],
    sizes: Sequence[int],
    embedder: Embedder,
) -> tuple[list[dict[str, Any]], EvaluationReport]:
    """The curve of one variant on a fresh store: add feedback up to each size, evaluate after each step."""
    with tempfile.TemporaryDirectory(prefix="memalign-fqa-") as data_dir:
        settings = load_settings(
            CONFIG,
            env={},
            overrides={
                "store.data_dir": data_dir,
                "server.judges_dir": "",
                "embedding.embed_fields": fields,
                **judging.overrides,
            },
        )
        engine = open_engine(settings, embedder=embedder)
        engine.create_judge(JudgeSpec(name=JUDGE, instructions=INSTRUCTIONS, feedback_type="bool"))
        calls: Callable[[], int] = lambda: engine.client.calls if engine.client is not None else 0  # noqa: E731
        if judging.kind != "memory":
            # One unrecorded call first, so that the one-off import of litellm (seconds) is not in step 1.
            engine.score(JUDGE, "warm-up question", "warm-up answer", use_memory=False)
        points: list[dict[str, Any]] = []
        final: EvaluationReport | None = None
        have = 0
        for n in sizes:
            before = calls()
            started = time.perf_counter()
            _add_in_calls(engine, pool[have:n])
            add_s = time.perf_counter() - started
            add_calls = calls() - before
            judge = engine.get_judge(JUDGE)
            last = n == sizes[-1]
            before = calls()
            started = time.perf_counter()
            # Memory off does not depend on what memory holds, so the baseline is scored once, at the end.
            report = engine.evaluate(JUDGE, examples, compare_baseline=last)
            eval_s = time.perf_counter() - started
            scored = len(examples) * (2 if last else 1)
            points.append(
                {
                    "n_feedback": n,
                    **_figures(report.aligned),
                    "add_seconds": add_s,
                    "added_items_per_second": (n - have) / add_s if add_s else None,
                    "evaluate_seconds": eval_s,
                    "evaluate_ms_per_item": eval_s / scored * 1000,
                    "model_calls_add": add_calls,
                    "model_calls_evaluate": calls() - before,
                    "guidelines": judge.guideline_count,
                    "pending": judge.pending_count,
                }
            )
            log(
                f"  {fields:>14} n={n:>4}: accuracy {_pct(report.aligned.accuracy)}, abstained "
                f"{report.aligned.abstention_rate:.0%}, add {add_s:.1f}s, evaluate {eval_s:.1f}s"
            )
            have = n
            final = report
        assert final is not None
        assert final.baseline is not None
        baseline = {"n_feedback": 0, **_figures(final.baseline)}
        return [baseline, *points], final


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1%}"


def _acc_cell(point: dict[str, Any]) -> str:
    if point["accuracy"] is None:
        return "n/a"
    ci = point["ci95"]
    return f"{point['accuracy']:.1%} ({ci[0]:.1%} to {ci[1]:.1%})" if ci else f"{point['accuracy']:.1%}"


def quality_table(label: str, variants: dict[str, list[dict[str, Any]]]) -> str:
    """The agreement table: one row per variant and number of feedback items."""
    lines = [
        "| Judge | Embedded | Feedback items | Accuracy (95% CI) | Cohen's kappa | Abstained | "
        "Correct of all items | Accuracy vs ceiling |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for fields, points in variants.items():
        for p in points:
            n = "0 (memory off)" if p["n_feedback"] == 0 else str(p["n_feedback"])
            kappa = "n/a" if p["cohen_kappa"] is None else f"{p['cohen_kappa']:.3f}"
            gap = "n/a" if p["accuracy"] is None else f"{(p['accuracy'] - HUMAN_CEILING) * 100:+.1f} pts"
            lines.append(
                f"| {label} | {fields} | {n} | {_acc_cell(p)} | {kappa} | {p['abstention_rate']:.1%} | "
                f"{_pct(p['correct_of_all_items'])} | {gap} |"
            )
    return "\n".join(lines) + "\n"


def timing_table(variants: dict[str, list[dict[str, Any]]]) -> str:
    """Wall time of each step: adding the new feedback, and scoring the test sample."""
    lines = [
        "| Embedded | Feedback items | Add: seconds | Add: items/s | Model calls (add) | Guidelines | "
        "Evaluate: seconds | Evaluate: ms/item | Model calls (evaluate) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for fields, points in variants.items():
        for p in points:
            if p["n_feedback"] == 0:
                continue
            lines.append(
                f"| {fields} | {p['n_feedback']} | {p['add_seconds']:.2f} | {p['added_items_per_second']:.0f} | "
                f"{p['model_calls_add']} | {p['guidelines']} | {p['evaluate_seconds']:.1f} | "
                f"{p['evaluate_ms_per_item']:.1f} | {p['model_calls_evaluate']} |"
            )
    return "\n".join(lines) + "\n"


def curve_points(label: str, variants: dict[str, list[dict[str, Any]]]) -> list[CurvePoint]:
    """The chart's points, one line per variant."""
    return [
        CurvePoint(
            variant=f"{label}, embeds {fields}",
            n_feedback=p["n_feedback"],
            value=p["accuracy"],
            ci=tuple(p["ci95"]) if p["ci95"] else None,
            abstention_rate=p["abstention_rate"],
        )
        for fields, points in variants.items()
        for p in points
    ]


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--data", type=Path, default=DEFAULT_DATA, help="the FeedbackQA folder (read in place)"
    )
    parser.add_argument("--test-size", type=int, default=300, help="test items in the fixed seeded sample")
    parser.add_argument("--sizes", type=int, nargs="+", default=list(SIZES), help="feedback items per step")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--fields", nargs="+", choices=VARIANTS, default=list(VARIANTS), help="embed_fields")
    judge = parser.add_mutually_exclusive_group()
    judge.add_argument("--model", default="", help="a litellm model string to judge and reflect with")
    judge.add_argument(
        "--scripted", action="store_true", help="instant scripted model: overhead only, not judge quality"
    )
    parser.add_argument("--reflection-model", default="", help="with --model: another model for distilling")
    parser.add_argument("--api-base", default="", help="with --model: an OpenAI-compatible server's URL")
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder for the JSON and the PNG")
    args = parser.parse_args(argv)
    sizes = sorted(set(args.sizes))
    if sizes[0] < 1:
        parser.error("--sizes must be positive")
    args.sizes = sizes
    return args


def main(argv: Sequence[str] | None = None) -> None:
    """Run the curve for every variant, print the tables, write the JSON (and the chart for real judges)."""
    args = parse_args(argv)
    record = run_record()
    pool = feedback_pool(args.data, args.seed)
    if args.sizes[-1] > len(pool):
        raise SystemExit(f"--sizes up to {args.sizes[-1]}, but only {len(pool)} feedback items exist")
    examples = held_out_sample(args.data, args.test_size, args.seed)
    falses = sum(e.value is False for e in examples) / len(examples)
    majority = max(falses, 1 - falses)
    embedder = LocalMiniLMEmbedder()
    embedder.warm()
    variants: dict[str, list[dict[str, Any]]] = {}
    finals: dict[str, EvaluationReport] = {}
    started = time.perf_counter()
    with judging_from(args) as judging:
        for fields in args.fields:
            log(f"{judging.label}, embed_fields={fields}:")
            variants[fields], finals[fields] = run_variant(
                fields, judging, pool, examples, args.sizes, embedder
            )
    total_s = time.perf_counter() - started
    scripted = judging.kind == "scripted"
    result: dict[str, Any] = {
        "benchmark": "feedbackqa_curve",
        **record,
        "warning": SCRIPTED_BANNER.strip("= ").lower() if scripted else None,
        "judge": judging.label,
        "data": str(args.data),
        "seed": args.seed,
        "test_size": len(examples),
        "feedback_pool": len(pool),
        "sizes": args.sizes,
        "human_ceiling": HUMAN_CEILING,
        "majority_class_rate": majority,
        "embedder": embedder.name,
        "total_seconds": total_s,
        "variants": variants,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    json_path = args.out / f"feedbackqa_curve{judging.slug}.json"
    json_path.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")

    title = f"FeedbackQA learning curve: {judging.label}"
    header = (
        f"Test: {len(examples)} items of FeedbackQA test (seed {args.seed}); the majority class alone scores "
        f"{majority:.1%}; human ceiling {HUMAN_CEILING:.1%}. Feedback: nested seeded samples of {len(pool)} "
        f"train+valid items. Embedder: {embedder.name}. Total {total_s:.0f} s.\n\n{describe(record)}\n"
    )
    if scripted:
        print(f"{SCRIPTED_BANNER}\n\n### {title} (agreement figures are meaningless)\n\n{header}")
        print(quality_table("scripted model (NOT judge quality)", variants))
        print(f"### Overhead with the scripted model\n\n{timing_table(variants)}\n{SCRIPTED_BANNER}")
    else:
        print(f"### {title}\n\n{header}")
        print(quality_table(judging.label, variants))
        comparison = comparison_table([(f"FeedbackQA test, embeds {f}", r) for f, r in finals.items()])
        print(f"#### Baseline versus aligned after {args.sizes[-1]} items\n\n{comparison}")
        print(f"#### Time per step\n\n{timing_table(variants)}")
        png = draw_learning_curve(
            curve_points(judging.label, variants),
            HUMAN_CEILING,
            args.out / f"learning_curve{judging.slug}.png",
            title,
            references={"majority class": majority},
        )
        log(f"wrote {png}")
    log(f"wrote {json_path}")


if __name__ == "__main__":
    main()
