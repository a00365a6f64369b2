"""What the server's two prompts tell people: how an agent self-checks a draft, how an operator reviews a judge.

Plain text builders, kept apart from the MCP face so that the words can be read and changed in one place.
"""

from __future__ import annotations


def self_check_text(judge: str, passing: str = "") -> str:
    """Instructions for an agent: score a draft with a judge, revise on a failing verdict, score again."""
    bar = passing.strip() or "value true (for a score: the upper part of the judge's range)"
    return (
        f"Before you give me your answer, check it with the judge '{judge}'.\n\n"
        f"1. Call score_response with judge='{judge}', inputs = my request (verbatim), outputs = your draft.\n"
        f"2. Passing means: {bar}. If the value does not pass, read the rationale: it says what is wrong. "
        "Revise the draft to fix exactly that, without dropping what was already right.\n"
        "3. Call score_response again on the revised draft. Stop after three rounds.\n"
        "4. If value is null, the judge could not decide from its memory: say so rather than treat it as a "
        "pass. If score_response fails, say why; never report a verdict you did not get.\n"
        "5. Give me the final draft, then one line with the last value, the judge_version and what you changed."
    )


def review_guidelines_text(judge: str) -> str:
    """Instructions for an operator's assistant: review a judge's guidelines and forget confirmed bad feedback."""
    return (
        f"Help me review what the judge '{judge}' has learned, one guideline at a time.\n\n"
        f"1. Call list_guidelines with judge='{judge}'. Show each guideline with its id and the number of "
        "feedback items it was distilled from (source_feedback_ids).\n"
        f"2. Call list_feedback with judge='{judge}' (page with offset while offset + limit < total) so you "
        "can show me, for any guideline I ask about, the feedback behind it: value, rationale, source.\n"
        "3. For each guideline ask me: keep it, or forget the feedback that taught it? Do not remove "
        "anything I have not confirmed. A guideline with status 'proposed' is not in use yet: ask me whether "
        "to approve, reject or edit it, and call review_guideline with my answer.\n"
        "4. To forget, call remove_feedback with the confirmed ids. Guidelines built only on them go; "
        "guidelines that also cite other feedback are re-derived. Use purge=true when the data itself must "
        "be gone (personal data, a deletion request), so the removed text is erased from the store's files. "
        "Report removed_ids, not_found_ids and the guidelines removed or revised.\n"
        f"5. Finish with list_guidelines again and tell me the judge's new memory version. The whole prompt "
        f"the judge's model sees is the resource judge://{judge}."
    )
