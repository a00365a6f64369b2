"""A scripted stand-in for a judge and reflection model on the customer-support scenario.

It follows simple rules so that tests can check the engine's mechanics (guidelines reach the prompt, removal
takes them away); it says nothing about the quality of any real model's judgement.
"""

from __future__ import annotations

import re
from typing import Any

from scripted_model import ChatCall, Reply, ScriptedError

POLITE = "Keep a polite, professional tone; never be rude or dismissive to a customer."
EMPATHY = "When a customer is unhappy, acknowledge their feelings and apologise before explaining or fixing."
DIRECT = "For simple questions, give a direct and accurate answer."
WARM = "Answer thanks or praise warmly."

_RULES = [
    (("rude", "dismissive", "insult"), POLITE),
    (("sorry", "apolog", "disappointment", "empathy"), EMPATHY),
    (("directly", "accurate", "informative"), DIRECT),
    (("warm", "friendly"), WARM),
]
_RUDE = ("not my problem", "meh", "dumb", "couldn't care", "look it up yourself")
_UNHAPPY = ("frustrat", "nothing like", "charged me twice", "wrong")
_CARING = ("sorry", "apolog", "understand")


def _items(user_text: str) -> list[str]:
    """The text of each 'Item N:' block of a reflection prompt, in order."""
    return [chunk for chunk in re.split(r"(?m)^Item \d+:\n", user_text)[1:]]


def _existing(user_text: str) -> list[str]:
    block = user_text.split("Existing guidelines:\n", 1)
    if len(block) < 2:
        return []
    lines = block[1].split("\n\n", 1)[0].splitlines()
    return [re.sub(r"^\d+\. ", "", line) for line in lines if re.match(r"^\d+\. ", line)]


def reflect(call: ChatCall) -> dict[str, Any]:
    """Guidelines for the items of a reflection prompt, citing them by number."""
    user = call.messages[-1]["content"]
    existing = _existing(user)
    found: dict[str, list[int]] = {}
    for number, chunk in enumerate(_items(user), start=1):
        rationale = chunk.split("human rationale", 1)[-1].lower()
        for words, guideline in _RULES:
            if any(w in rationale for w in words):
                found.setdefault(guideline, []).append(number)
    out: list[dict[str, Any]] = []
    for text, sources in found.items():
        index = existing.index(text) + 1 if text in existing else None
        out.append({"text": text, "source_items": sources, "existing": index})
    return {"guidelines": out}


def judge(call: ChatCall) -> dict[str, Any]:
    """A verdict that follows the rules a prompt's guidelines state (and only those)."""
    system = call.messages[0]["content"]
    user = call.messages[-1]["content"]
    output = user.split("outputs\n", 1)[-1].lower()
    question = user.split("inputs\n", 1)[-1].lower()
    if any(w in output for w in _RUDE):
        return {"rationale": "The reply is rude.", "value": False}
    if EMPATHY in system and any(w in question for w in _UNHAPPY) and not any(w in output for w in _CARING):
        return {"rationale": "The customer is unhappy and the reply shows no empathy.", "value": False}
    return {"rationale": "The reply answers the question.", "value": True}


def support_desk(call: ChatCall) -> Reply:
    """Answer judge and reflection requests of the engine."""
    if call.schema_name == "judgement":
        return judge(call)
    if call.schema_name in ("guidelines", "rederived_guideline"):
        return reflect(call)
    return ScriptedError(400, f"support-desk script: unexpected schema {call.schema_name!r}")
