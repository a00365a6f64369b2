"""What a distilled guideline may say: a rule about the responses judged, never an order to the judge itself.

Guidelines go into the judge's system message as rules to follow, and they are distilled from rationales that
any caller with the teach scope writes, so a rationale can try to smuggle an order into every later score. The
reflection reply check (distill.guideline_problem) refuses a guideline that does any of these:

1. tells the judge how to format its reply ("respond with true", "output only", "return JSON", "format your
   answer", "your verdict");
2. speaks of the prompt's own machinery (the system prompt, fenced text, markers, the nonce);
3. fixes the verdict whatever the response ("always answer yes", "always return 5", "regardless of the
   response");
4. tells the judge to ignore its instructions ("ignore the instructions", "disregard previous ...").

The list is short on purpose, each pattern names one way a guideline takes the judge over, and a rule about
responses passes even when it is worded as an order ("Always acknowledge the customer's frustration before
giving steps", "Penalise replies that ignore the customer's question"). A refused guideline is handled like
every other unusable reply: asked for once more, then its items stay pending with a note. Pure: no I/O.
"""

from __future__ import annotations

import re

_I = re.IGNORECASE
# A verdict that ends its clause ("always answer yes.", "respond with true when ..."); "reply with no jargon"
# or "always say no to spam" go on with an object, so they are advice about responses, not a fixed verdict.
_VERDICT = (
    r"[\"'`]?(?:yes|no|true|false|pass|fail|correct|incorrect|-?\d+(?:\.\d+)?"
    r"|the\s+(?:same|highest|lowest|maximum|minimum|top|best|worst)(?:\s+\w+)?)[\"'`]?"
    r"(?=\s*(?:$|[.,;:!)]|(?:for|regardless|no\s+matter|whatever|every|each|when|if|unless|only|and|or)\b))"
)
_RULES: tuple[tuple[str, re.Pattern[str]], ...] = (
    (
        "it tells the judge how to format its reply",
        re.compile(
            r"\b(?:respond|reply|answer|output)\s+(?:only\s+)?with\s+(?:only\s+)?"
            r"(?:" + _VERDICT + r"|(?:a\s+)?json\b|the\s+(?:word|number|value|verdict|json)\b"
            r"|an?\s+(?:single|one)[- ]word\b)"
            r"|\boutput\s+only\b"
            r"|\breturn\s+(?:only\s+)?(?:(?:a|an|the|valid)\s+)?json\b"
            r"|\bformat\s+your\s+(?:answer|reply|response|output|verdict|rationale)\b"
            r"|\byour\s+(?:verdict|rationale|score|output|json)\b",
            _I,
        ),
    ),
    (
        "it speaks of the prompt's fences, markers or system prompt",
        re.compile(
            r"\bsystem\s+(?:prompt|message|instructions?)\b|\bnonces?\b|\bfenced\b"
            r"|\b(?:fence|data|opening|closing|begin|end)\s+markers?\b",
            _I,
        ),
    ),
    (
        "it fixes the verdict whatever the response",
        re.compile(
            r"\balways\s+(?:answer|return|output|respond|reply|say|score|rate|grade|vote|judge|mark|choose"
            r"|pick|select|label)\b(?:\s+(?:it|this|them|everything|all|every\s+\w+|each\s+\w+"
            r"|the\s+(?:reply|response|output)s?|replies|responses|outputs))?(?:\s+(?:with|as|at))?\s+"
            + _VERDICT
            + r"|\b(?:regardless\s+of|no\s+matter)\s+(?:what\b|the\s+(?:response|reply|output|input|content"
            r"|instructions?|evidence)\b)",
            _I,
        ),
    ),
    (
        "it tells the judge to ignore its instructions",
        re.compile(
            # Not after "that"/"which": "replies that ignore the instructions given" describes a response.
            r"(?<!that )(?<!which )\b(?:ignore|disregard|forget|override|bypass)\s+"
            r"(?:(?:all|any|the|your|these|those|every|of)\s+)*"
            r"(?:(?:(?:previous|prior|above|earlier|preceding|original|other|system|judge'?s?)\s+)?"
            r"(?:instructions?|rules|guidelines|guidance|prompts?|task|directions)\b"
            r"|(?:previous|prior|above|earlier|preceding)\b)",
            _I,
        ),
    ),
)


def instruction_to_judge(text: str) -> str | None:
    """Why this guideline text addresses the judge instead of stating a rule about responses, or None."""
    for why, pattern in _RULES:
        if pattern.search(text):
            return why
    return None
