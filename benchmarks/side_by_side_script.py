"""The scripted model for the side-by-side benchmark: instant, valid answers to both engines' requests.

It owns telling the requests apart (by the JSON-schema name and shape of `response_format`) and answering each
with the smallest reply that the asking engine accepts and acts on: guidelines that cite real items (MLflow's
MemAlign silently drops a guideline whose sources are not valid indices into its batch) and verdicts that fit
the judge's schema. It never sleeps, so only framework overhead is measured, and it never calls anything.
"""

from __future__ import annotations

import hashlib
import itertools
import re
import threading
from collections import Counter
from typing import Any, cast

from scripted_model import ChatCall, Reply, ScriptedError

GUIDELINES_PER_BATCH = 3

_OUR_ITEM = re.compile(r"^Item (\d+):$", re.MULTILINE)
_MLFLOW_ID = re.compile(r'^\s*"id": (\d+),$', re.MULTILINE)
_NUMBERED = re.compile(r"^(\d+)\. ", re.MULTILINE)
_SYLLABLES = ("ka", "lo", "mi", "ne", "pu", "ra", "si", "to", "vu", "ze", "bo", "di", "fe", "gu", "ha", "jo")


def _pseudo_words(seed: str, count: int) -> list[str]:
    """Made-up words unique to a seed, so that distinct guidelines stay far apart in embedding space."""
    digest = hashlib.blake2b(seed.encode(), digest_size=2 * count * 3).digest()
    words: list[str] = []
    for i in range(count):
        chunk = digest[i * 6 : i * 6 + 6]
        words.append("".join(_SYLLABLES[b % len(_SYLLABLES)] for b in chunk[:3]) + str(chunk[3] % 10))
    return words


def _spread(sources: list[int], parts: int) -> list[list[int]]:
    """Deal the sources round-robin into at most `parts` non-empty groups."""
    groups = [sources[i::parts] for i in range(min(parts, len(sources)))]
    return [g for g in groups if g]


class SideBySideScript:
    """A chat script that answers MLflow's and memalign-mcp's judge and distillation requests."""

    def __init__(self) -> None:
        self._serial = itertools.count(1)
        self._lock = threading.Lock()
        self.kinds: Counter[str] = Counter()

    def _guideline_text(self) -> str:
        with self._lock:
            number = next(self._serial)
        words = " ".join(_pseudo_words(f"guideline-{number}", 8))
        return f"Prefer answers that address {words} directly."

    def __call__(self, call: ChatCall) -> Reply:
        """Route one request by its response_format schema; unknown requests get a 400 naming the schema."""
        kind, reply = self._route(call)
        with self._lock:
            self.kinds[kind] += 1
        return reply

    def _route(self, call: ChatCall) -> tuple[str, Reply]:
        name = call.schema_name or ""
        schema = call.schema or {}
        properties = cast(dict[str, Any], schema.get("properties") or {})
        text = call.prompt_text()
        if name == "judgement":
            return "ours.judge", {"rationale": "Scripted verdict.", "value": True}
        if name in ("guidelines", "rederived_guideline"):
            return self._ours_guidelines(text, rederive=name == "rederived_guideline")
        if name == "consolidated_guidelines":
            return "ours.consolidate", self._ours_consolidate(text)
        if name == "Guidelines":
            return "mlflow.distill", self._mlflow_guidelines(text)
        if name == "ResponseFormat" and "result" in properties:
            # MLflow's judge (make_judge with feedback_value_type=bool asks for a boolean "result").
            return "mlflow.judge", {"result": True, "rationale": "Scripted verdict."}
        return "unknown", ScriptedError(400, f"side-by-side script: no answer for schema {name!r}")

    def _ours_guidelines(self, text: str, *, rederive: bool) -> tuple[str, Reply]:
        count = 0
        for number in (int(n) for n in _OUR_ITEM.findall(text)):
            # Items are numbered 1, 2, 3...; a line inside judged text that looks like one is skipped.
            if number == count + 1:
                count = number
        if count == 0:
            return "unknown", ScriptedError(400, "side-by-side script: a guidelines request without items")
        parts = 1 if rederive else GUIDELINES_PER_BATCH
        guidelines = [
            {"text": self._guideline_text(), "source_items": group, "existing": None}
            for group in _spread(list(range(1, count + 1)), parts)
        ]
        return ("ours.rederive" if rederive else "ours.distill"), {"guidelines": guidelines}

    def _ours_consolidate(self, text: str) -> Reply:
        cap_match = re.search(r"it may keep at most (\d+)", text)
        cap = int(cap_match.group(1)) if cap_match else 1
        numbers = sorted({int(n) for n in _NUMBERED.findall(text)})
        if not numbers:
            return ScriptedError(400, "side-by-side script: a consolidation request without guidelines")
        # Merge neighbours in pairs until the list fits under the cap.
        groups = [[n] for n in numbers]
        while len(groups) > cap:
            merged = [groups[i] + groups[i + 1] for i in range(0, len(groups) - 1, 2)]
            if len(groups) % 2:
                merged.append(groups[-1])
            groups = merged
        return {"guidelines": [{"text": self._guideline_text(), "merged_from": g} for g in groups]}

    def _mlflow_guidelines(self, text: str) -> Reply:
        ids = [int(n) for n in _MLFLOW_ID.findall(text)]
        if not ids:
            return ScriptedError(400, "side-by-side script: an MLflow distillation request without ids")
        return {
            "guidelines": [
                {"guideline_text": self._guideline_text(), "source_trace_ids": group}
                for group in _spread(ids, GUIDELINES_PER_BATCH)
            ]
        }
