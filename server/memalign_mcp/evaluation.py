"""Agreement with humans as a feature: score a labelled set, or a judge's own feedback leave-one-out.

Leave-one-out scores each feedback item with itself excluded from retrieval and with every guideline it sourced
left out, so the judge is never graded on an answer it was shown. With `compare_baseline` the same items are
scored with memory switched off. An item the model cannot score (a `ModelError` after retries) does not stop the
run: it is reported with its index and error, and agreement is measured on the items that scored. Figures come
from metrics.py; this module only gathers verdicts.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, Field

from memalign_mcp.errors import InvalidInputError, ModelError
from memalign_mcp.metrics import AgreementReport, agreement_report
from memalign_mcp.models import MEMORY_MODEL, FeedbackRecord, LabelledExample, Value

if TYPE_CHECKING:
    # Annotation only: importing the service pulls in lancedb, and the MCP face imports this module at start-up.
    from memalign_mcp.judge import JudgeService

Progress = Callable[[int, int, str], None]
_MAX_ITEMS = 5_000
_WORKERS = 4


class ScoredExample(BaseModel):
    """One evaluated item: the human verdict and the judge's, with and without memory."""

    id: str | None
    human: Value
    aligned: Value | None
    baseline: Value | None = None
    error: str | None = Field(
        default=None, description="Why the item could not be scored; left out of every figure."
    )


class ScoringError(BaseModel):
    """An item the judge could not score, and why."""

    index: int = Field(description="Position of the item in the evaluated set, from 0.")
    id: str | None
    side: Literal["aligned", "baseline"]
    error: str


class EvaluationReport(BaseModel):
    """How often a judge agrees with its humans, aligned and (optionally) with memory off."""

    judge: str
    judge_version: int
    mode: Literal["dataset", "leave-one-out"]
    model: str = Field(description="The model that scored; 'memory' means a vote of past human verdicts.")
    n_items: int
    aligned: AgreementReport
    baseline: AgreementReport | None = Field(default=None, description="Same items, memory switched off.")
    items: list[ScoredExample]
    n_errors: int = Field(
        default=0, description="Items that could not be scored; agreement is measured on the others."
    )
    errors: list[ScoringError] = Field(default_factory=list[ScoringError])


def evaluate(
    service: JudgeService,
    name: str,
    dataset: Sequence[LabelledExample] | None = None,
    *,
    compare_baseline: bool = False,
    progress: Progress | None = None,
    resamples: int = 1000,
    seed: int = 0,
) -> EvaluationReport:
    """Score every item and report agreement with the human verdicts."""
    spec, version = service.spec_and_version(name)
    if dataset is None:
        examples = [
            LabelledExample(
                inputs=f.inputs, outputs=f.outputs, value=f.value, expectations=f.expectations, id=f.id
            )
            for f in _all_feedback(service, name)
        ]
        mode: Literal["dataset", "leave-one-out"] = "leave-one-out"
    else:
        examples = list(dataset)
        mode = "dataset"
    if not examples:
        raise InvalidInputError(
            "dataset", [], "at least one labelled item (or feedback in the judge's memory for leave-one-out)"
        )
    if len(examples) > _MAX_ITEMS:
        raise InvalidInputError(
            "dataset", f"{len(examples)} items", f"at most {_MAX_ITEMS} items per evaluation"
        )
    for i, example in enumerate(examples):
        spec.check_value(example.value, f"dataset[{i}].value")
        if mode == "dataset":  # checked up front, so a bad item is named before any model call is paid for
            service.check_text(f"dataset[{i}].inputs", example.inputs)
            service.check_text(f"dataset[{i}].outputs", example.outputs)
            service.check_text(f"dataset[{i}].expectations", example.expectations, required=False)
    model = service.model_for(spec)
    total = len(examples) * (2 if compare_baseline else 1)
    done = 0

    failures: list[ScoringError] = []

    def run(use_memory: bool) -> list[Value | None]:
        nonlocal done
        side: Literal["aligned", "baseline"] = "aligned" if use_memory else "baseline"

        def one(numbered: tuple[int, LabelledExample]) -> Value | None:
            index, example = numbered
            exclude = [example.id] if mode == "leave-one-out" and example.id else []
            try:
                result = service.score(
                    name,
                    example.inputs,
                    example.outputs,
                    example.expectations,
                    exclude_ids=exclude,
                    use_memory=use_memory,
                )
            except ModelError as exc:
                # One item a model cannot answer must not cost the verdicts already paid for on the others.
                failures.append(ScoringError(index=index, id=example.id, side=side, error=str(exc)))
                return None
            return result.value

        out: list[Value | None] = []
        # The memory judge is CPU-bound and fast; model calls wait on the network and gain from overlap.
        workers = 1 if model == MEMORY_MODEL else _WORKERS
        with ThreadPoolExecutor(max_workers=workers) as pool:
            for value in pool.map(one, enumerate(examples)):
                out.append(value)
                done += 1
                if progress:
                    progress(done, total, f"scored {done} of {total}")
        return out

    aligned = run(True)
    baseline = run(False) if compare_baseline else None
    failures.sort(key=lambda f: (f.index, f.side))
    failed = {f.index for f in failures}
    if len(failed) == len(examples):
        raise ModelError(
            f"Every one of the {len(examples)} items failed to score, so there is no agreement to report. "
            f"The first failure: {failures[0].error}"
        )
    # An item that failed on either side is left out of both, so aligned and baseline cover the same items.
    kept = [i for i in range(len(examples)) if i not in failed]
    human = [examples[i].value for i in kept]
    labels: list[bool | str | int] | None = None
    if spec.feedback_type == "bool":
        labels = [False, True]
    elif spec.feedback_type == "categorical":
        labels = list(spec.choices or [])
    kind = spec.feedback_type

    def report(predicted: list[Value | None]) -> AgreementReport:
        scored = [predicted[i] for i in kept]
        return agreement_report(human, scored, kind, labels=labels, resamples=resamples, seed=seed)

    errors_of = {f.index: f.error for f in failures}
    return EvaluationReport(
        judge=name,
        judge_version=version,
        mode=mode,
        model=model,
        n_items=len(examples),
        aligned=report(aligned),
        baseline=report(baseline) if baseline is not None else None,
        items=[
            ScoredExample(
                id=e.id,
                human=e.value,
                aligned=a,
                baseline=baseline[i] if baseline else None,
                error=errors_of.get(i),
            )
            for i, (e, a) in enumerate(zip(examples, aligned, strict=True))
        ],
        n_errors=len(failed),
        errors=failures,
    )


def _all_feedback(service: JudgeService, name: str) -> list[FeedbackRecord]:
    first = service.list_feedback(name, limit=500, offset=0)
    records = list(first.feedback)
    for offset in range(500, first.total, 500):
        records.extend(service.list_feedback(name, limit=500, offset=offset).feedback)
    return records
