"""FeedbackQA as judge feedback and labelled test items, read in place from the shared dataset folder.

Owns the mapping from the normalised FeedbackQA files (see that folder's README) to the engine's inputs:
train + valid rows with a majority label become feedback items, test rows become labelled examples. It only
reads; it never copies the data into the repository.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from memalign_mcp.models import FeedbackInput, LabelledExample

REPO = Path(__file__).resolve().parent.parent
DEFAULT_DATA = REPO.parent / "shared" / "datasets" / "feedbackqa"
HELPFUL_RATINGS = frozenset({"Excellent", "Acceptable"})
# A single rater agrees with the other two raters' shared verdict this often on test (dataset README).
HUMAN_CEILING = 0.785


@dataclass(frozen=True)
class Row:
    """One FeedbackQA item: a question, the passage shown as its answer, and the raters' judgements."""

    id: str
    domain: str
    inputs: str
    outputs: str
    ratings: tuple[str, ...]
    rationales: tuple[str, ...]
    label: bool | None


def read_split(data_dir: Path, split: str) -> list[Row]:
    """Every row of train, valid or test, in file order."""
    path = data_dir / f"{split}.jsonl"
    if not path.is_file():
        raise SystemExit(
            f"FeedbackQA split not found: {path} (pass --data DIR, the folder with {split}.jsonl)"
        )
    rows: list[Row] = []
    with path.open(encoding="utf-8") as handle:
        for line in handle:
            raw: dict[str, Any] = json.loads(line)
            rows.append(
                Row(
                    id=raw["id"],
                    domain=raw["domain"],
                    inputs=raw["inputs"],
                    outputs=raw["outputs"],
                    ratings=tuple(raw["ratings"]),
                    rationales=tuple(raw["rationales"]),
                    label=raw["label"],
                )
            )
    return rows


def agreeing_rationale(row: Row) -> str:
    """The first non-empty rationale of a rater whose rating agrees with the majority label."""
    for rating, rationale in zip(row.ratings, row.rationales, strict=True):
        if (rating in HELPFUL_RATINGS) == row.label and rationale.strip():
            return rationale.strip()
    raise ValueError(f"{row.id}: no rater agrees with the majority label")


def as_feedback(row: Row) -> FeedbackInput:
    """A labelled row as human feedback: value = majority label, rationale of an agreeing rater, stable id."""
    if row.label is None:
        raise ValueError(f"{row.id}: a tie has no majority label")
    return FeedbackInput(
        inputs=row.inputs,
        outputs=row.outputs,
        value=row.label,
        rationale=agreeing_rationale(row),
        source=f"feedbackqa-rater/{row.domain}",
        id=row.id,
    )


def as_example(row: Row) -> LabelledExample:
    """A labelled row as an evaluation example (the human verdict is the majority label)."""
    if row.label is None:
        raise ValueError(f"{row.id}: a tie has no majority label")
    return LabelledExample(inputs=row.inputs, outputs=row.outputs, value=row.label, id=row.id)


def feedback_pool(data_dir: Path, seed: int) -> list[FeedbackInput]:
    """Train + valid feedback without ties, shuffled with the seed: any prefix is a seeded sample, and
    shorter prefixes are nested in longer ones."""
    rows = [r for split in ("train", "valid") for r in read_split(data_dir, split) if r.label is not None]
    random.Random(f"pool-{seed}").shuffle(rows)
    return [as_feedback(r) for r in rows]


def held_out_sample(data_dir: Path, size: int, seed: int) -> list[LabelledExample]:
    """A fixed seeded sample of the test split (no ties there)."""
    rows = [r for r in read_split(data_dir, "test") if r.label is not None]
    random.Random(f"test-{seed}").shuffle(rows)
    return [as_example(r) for r in rows[:size]]
