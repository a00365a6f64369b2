"""After a purge, no live object of the server process still refers to the purged text.

A purge erases the text from the store's files; these tests check that the process's own caches let go of it
too (the judge service's vector snapshots, the ledger's states, the embedder's feature cache). They check
references, walking every object the garbage collector tracks: freed memory may still hold the bytes until it
is reused, and CPython may keep interned copies of short strings, so neither is something a test can assert.
"""

from __future__ import annotations

import gc
import secrets
from pathlib import Path

from conftest import hashing_settings
from memalign_mcp.alignment import MemAlignService
from memalign_mcp.embeddings import HashingEmbedder
from memalign_mcp.engine import open_engine
from memalign_mcp.models import JudgeSpec

JUDGE = "hygiene"


def open_memory_engine(data_dir: Path) -> MemAlignService:
    """An engine with no model (judges answer from memory) and the hashing embedder."""
    return open_engine(hashing_settings(data_dir), embedder=HashingEmbedder())


def teach_and_use(engine: MemAlignService, secret: str) -> None:
    """Teach the judge an item holding the secret, then use it the ways that fill caches."""
    engine.create_judge(JudgeSpec(name=JUDGE, instructions="Is {{ outputs }} a good reply to {{ inputs }}?"))
    engine.add_feedback(
        JUDGE,
        [
            {
                "id": "private-1",
                "inputs": f"My card number is {secret}, can you check it?",
                "outputs": {"reply": f"Your card {secret} is fine."},
                "expectations": f"never echo {secret}",
                "value": False,
                "rationale": f"It repeats the card number {secret} back.",
                "source": "support-lead",
            },
            {
                "id": "kept-1",
                "inputs": "Where is my order?",
                "outputs": "It left today; here is the tracking link.",
                "value": True,
                "rationale": "Answers the question with a link.",
            },
        ],
    )
    engine.score(JUDGE, "Can you check my card number?", "Sure, it is fine.")
    engine.list_feedback(JUDGE)
    engine.evaluate(JUDGE)  # leave-one-out scores every stored item, the private one too
    engine.judge_document(JUDGE)


def holders_of(needle: str) -> list[str]:
    """Every live string containing `needle` (other than `needle` itself), named by the object holding it."""
    gc.collect()
    found: list[str] = []
    for holder in gc.get_objects():
        for ref in gc.get_referents(holder):
            if type(ref) is str and ref is not needle and needle in ref:
                found.append(f"{type(holder).__name__} holds {ref[:80]!r}")
    return found


def test_a_purge_leaves_no_cached_reference_to_the_purged_text(tmp_path: Path) -> None:
    secret = "zq" + secrets.token_hex(12)  # lowercase: the embedder's lowercased words are the same text
    engine = open_memory_engine(tmp_path / "data")
    teach_and_use(engine, secret)
    assert holders_of(secret), "the test should see the secret in memory before the purge"

    result = engine.remove_feedback(JUDGE, ["private-1"], purge=True)

    assert result.removed_ids == ["private-1"]
    assert holders_of(secret) == []
    # The judge still works from what is left, and the caches fill again from it.
    assert engine.score(JUDGE, "Where is my order?", "On its way.").examples_used == ["kept-1"]
    assert holders_of(secret) == []
