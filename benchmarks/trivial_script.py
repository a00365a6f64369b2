"""A trivial, instant script for the scripted model server, to run the engine's model path in benchmarks.

It exercises code paths and measures overhead only: its verdicts follow one arbitrary rule (a short answer is
unhelpful) and its guidelines say nothing real. Numbers it produces are never a measure of judge quality.
"""

from __future__ import annotations

import re
from typing import Any

from scripted_model import ChatCall, Reply, ScriptedError

SCRIPTED_LABEL = "scripted model: not a measure of judge quality"
GUIDELINE = "Prefer answers that address the user's actual question with enough detail to act on."
SHORT_ANSWER_CHARS = 200

_FENCED_OUTPUTS = re.compile(r"<<<(DATA-[0-9a-f]+) outputs\n(.*?)\n\1>>>", re.DOTALL)
_ITEM = re.compile(r"^Item (\d+):$", re.MULTILINE)
_NUMBERED = re.compile(r"^(\d+)\. ", re.MULTILINE)


def _verdict(call: ChatCall) -> dict[str, Any]:
    user = str(call.messages[-1].get("content", ""))
    found = _FENCED_OUTPUTS.search(user)
    answer = found.group(2) if found else ""
    helpful = len(answer.strip()) >= SHORT_ANSWER_CHARS
    return {"rationale": f"Scripted: the answer has {len(answer)} characters.", "value": helpful}


def _guidelines(call: ChatCall) -> dict[str, Any]:
    user = str(call.messages[-1].get("content", ""))
    items = len(_ITEM.findall(user))
    # Cite item 1 (and item 2 when there is one), so that removing item 1 leaves a guideline to re-derive.
    sources = [1, 2] if items >= 2 else [1]
    existing = user.split("Existing guidelines:\n", 1)[-1].split("\n\n", 1)[0]
    known = GUIDELINE in existing and "Existing guidelines:\n" in user
    return {
        "guidelines": [
            {"text": "" if known else GUIDELINE, "source_items": sources, "existing": 1 if known else None}
        ]
    }


def _consolidated(call: ChatCall) -> dict[str, Any]:
    user = str(call.messages[-1].get("content", ""))
    numbers = [int(n) for n in _NUMBERED.findall(user.split("Guidelines:\n", 1)[-1])]
    return {"guidelines": [{"text": GUIDELINE, "merged_from": numbers or [1]}]}


def trivial_script(call: ChatCall) -> Reply:
    """Answer judge, distillation, re-derivation and consolidation requests instantly."""
    if call.schema_name == "judgement":
        return _verdict(call)
    if call.schema_name in ("guidelines", "rederived_guideline"):
        return _guidelines(call)
    if call.schema_name == "consolidated_guidelines":
        return _consolidated(call)
    return ScriptedError(400, f"trivial script: unexpected schema {call.schema_name!r}")
