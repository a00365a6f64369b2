"""The freshness bound in process: how often a replica asks the store for commits, and that it reads its writes.

No clock is faked and nothing sleeps: the bounds used are 0 (every read asks), an hour or a minute (no read in a
test asks twice), so each assertion holds however slow the machine is.
"""

from __future__ import annotations

import pytest

from conftest import EngineFactory
from memalign_mcp.errors import StoreUnavailableError
from memalign_mcp.freshness import Freshness
from memalign_mcp.models import JudgeSpec

MINUTE_MS = 60_000  # the longest bound the setting takes


class CountingVersion:
    """A version reader that counts how often it is asked, and can be made to fail."""

    def __init__(self) -> None:
        self.asked = 0
        self.version = 7
        self.failure: Exception | None = None

    def __call__(self) -> int:
        self.asked += 1
        if self.failure is not None:
            raise self.failure
        return self.version


def test_within_the_bound_the_store_is_asked_once_and_writes_always_ask() -> None:
    reader = CountingVersion()
    freshness = Freshness(reader, bound_s=3600)
    assert [freshness.version() for _ in range(5)] == [7] * 5
    assert reader.asked == 1
    reader.version = 8
    assert freshness.version(fresh=True) == 8  # a write sees the latest commit
    assert freshness.version() == 8  # and reads share what it saw
    assert reader.asked == 2


def test_with_a_bound_of_zero_every_read_asks_and_a_failed_ask_is_never_answered_from_cache() -> None:
    reader = CountingVersion()
    freshness = Freshness(reader, bound_s=0)
    freshness.version()
    freshness.version()
    assert reader.asked == 2
    reader.failure = StoreUnavailableError("the bucket is gone")
    with pytest.raises(StoreUnavailableError):
        freshness.version()
    freshness.settle()  # nothing to wait for with a bound of 0


def test_a_replica_reads_its_own_writes_at_once_within_a_minute_long_bound(engines: EngineFactory) -> None:
    engine = engines.open(with_model=False, overrides={"store.freshness_ms": MINUTE_MS})
    engine.create_judge(JudgeSpec(name="mine", instructions="Is {{ outputs }} polite?"))
    item = {
        "id": "a",
        "inputs": "Where is it?",
        "outputs": "Not my problem.",
        "value": False,
        "rationale": "Rude.",
    }
    engine.add_feedback("mine", [item])
    assert [f.id for f in engine.list_feedback("mine").feedback] == ["a"]
    assert engine.score("mine", "Where is it?", "Not my problem.").examples_used == ["a"]
    engine.create_judge(JudgeSpec(name="other", instructions="Is {{ outputs }} kind?"))
    assert engine.get_judge("other").memory_version == 0
