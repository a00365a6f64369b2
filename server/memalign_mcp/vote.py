"""The memory judge: a verdict from the retrieved human verdicts alone, for judges that run without a model.

It is a similarity-weighted vote (weighted mean for numbers) over the nearest past feedback, with the nearest
human rationales quoted as its rationale. It abstains (value None) when memory is empty or the vote is too close.
It never claims to be a model's judgement: every result it feeds says model "memory".
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from memalign_mcp.models import JudgeSpec, Value
from memalign_mcp.prompts import value_text
from memalign_mcp.records import Neighbour

_QUOTED = 2
_TEMPERATURE = 0.1
_QUOTE_CHARS = 300


@dataclass(frozen=True)
class MemoryVerdict:
    """The outcome of a memory vote."""

    value: Value | None
    rationale: str
    confidence: float | None


def memory_verdict(spec: JudgeSpec, neighbours: Sequence[Neighbour], margin: float) -> MemoryVerdict:
    """Vote with the neighbours' human verdicts, weighted by similarity; abstain when memory cannot decide."""
    if not neighbours:
        return MemoryVerdict(
            None,
            "Memory judge (no model): this judge has no feedback in memory yet, so it cannot decide. "
            "Add feedback with add_feedback, or configure a model (MEMALIGN_MODEL).",
            None,
        )
    # Weights fall off exponentially with distance from the nearest item: a near-duplicate of the query outvotes
    # loosely related items, while neighbours about as similar as each other vote about equally.
    nearest = max(n.similarity for n in neighbours)
    weights = [math.exp((n.similarity - nearest) / _TEMPERATURE) for n in neighbours]
    values = [n.row.body["value"] for n in neighbours]
    if spec.feedback_type in ("int", "float"):
        value, confidence, summary = _numeric(spec, values, weights)
    else:
        value, confidence, summary = _categorical(values, weights, margin)
    return MemoryVerdict(value, f"Memory judge (no model): {summary} {_quotes(neighbours)}", confidence)


def _categorical(values: list[Value], weights: list[float], margin: float) -> tuple[Value | None, float, str]:
    tally: dict[str, float] = {}
    originals: dict[str, Value] = {}
    for v, w in zip(values, weights, strict=True):
        key = value_text(v)
        tally[key] = tally.get(key, 0.0) + w
        originals[key] = v
    total = sum(tally.values())
    ranked = sorted(tally.items(), key=lambda kv: kv[1], reverse=True)
    best_key, best = ranked[0]
    share = best / total
    runner_up = ranked[1][1] / total if len(ranked) > 1 else 0.0
    counts = ", ".join(f"{k}: {tally[k] / total:.0%}" for k, _ in ranked)
    if share - runner_up < margin:
        return (
            None,
            share,
            f"the {_items(len(values))} are split ({counts} of the weight), "
            f"closer than the margin {margin:.0%}, so it abstains.",
        )
    return (
        originals[best_key],
        share,
        f"{_items(len(values))}, weighted by similarity: {counts}; verdict {best_key}.",
    )


def _items(n: int) -> str:
    return "most similar past item" if n == 1 else f"{n} most similar past items"


def _numeric(spec: JudgeSpec, values: list[Value], weights: list[float]) -> tuple[Value, float, str]:
    numbers = [float(v) for v in values]
    total = sum(weights)
    mean = sum(x * w for x, w in zip(numbers, weights, strict=True)) / total
    spread = math.sqrt(sum(w * (x - mean) ** 2 for x, w in zip(numbers, weights, strict=True)) / total)
    scale = (
        (spec.max_value - spec.min_value)
        if spec.min_value is not None and spec.max_value is not None
        else max(abs(mean), 1.0)
    )
    confidence = max(0.0, 1.0 - spread / scale)
    value: Value = round(mean) if spec.feedback_type == "int" else mean
    return (
        value,
        confidence,
        f"weighted mean of {len(numbers)} similar past verdicts is {mean:.3g} (spread {spread:.3g}).",
    )


def _quotes(neighbours: Sequence[Neighbour]) -> str:
    parts: list[str] = []
    for n in neighbours[:_QUOTED]:
        text = str(n.row.body.get("rationale", "")).strip().replace("\n", " ")
        if len(text) > _QUOTE_CHARS:
            text = text[:_QUOTE_CHARS] + "..."
        parts.append(
            f"Nearest human rationale ({n.row.item_id}, similarity {n.similarity:.2f}, "
            f'verdict {value_text(n.row.body["value"])}): "{text}"'
        )
    return " ".join(parts)
