"""Memory transactions under failure: a failure injected at every step leaves the judge as it was, for every
reader, and the same call again completes; a change is never half-visible."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from in_process_model import InProcessModel
from memalign_mcp.alignment import MemAlignService
from memalign_mcp.errors import MemAlignError, ModelError, PurgedContentError, UnknownJudgeError
from memalign_mcp.seed_scenario import ALIGNMENT, JUDGE
from store_worker import open_worker_engine
from support_desk_model import EMPATHY, POLITE

Fingerprint = tuple[int, frozenset[tuple[str, str]], frozenset[tuple[str, frozenset[str]]], frozenset[str]]


def fingerprint(engine: MemAlignService) -> Fingerprint | None:
    """What a reader sees of the judge: version, feedback (id, content hash), guidelines (text, sources), pending."""
    try:
        state = engine.state(JUDGE)
    except UnknownJudgeError:
        return None
    return (
        state.version,
        frozenset((i, r.content_hash) for i, r in state.feedback.items()),
        frozenset((r.text, frozenset(r.sources)) for r in state.guidelines.values()),
        state.pending,
    )


def content(engine: MemAlignService) -> Any:
    """The fingerprint without the version: what two ways of reaching the same memory must agree on."""
    found = fingerprint(engine)
    return None if found is None else found[1:]


class Injector:
    """Counts the steps of one call (embeddings, model calls, store writes) and fails the k-th."""

    def __init__(self, engine: MemAlignService, fail_at: int | None) -> None:
        self.steps: list[str] = []
        self.fail_at = fail_at
        model = engine.client
        assert isinstance(model, InProcessModel)
        model.fail = self._model_fails
        embed = engine.embedder.embed

        def failing_embed(texts: Any) -> Any:
            if self._tick("embedding") is not None:
                raise ModelError("injected embedding failure")
            return embed(texts)

        engine.embedder.embed = failing_embed  # type: ignore[method-assign]  # a per-instance fault hook
        for name in ("commit", "erase", "delete_generation", "delete_orphans"):
            self._wrap_store(engine, name)

    def _model_fails(self, _: int) -> bool:
        return self._tick("model") is not None

    def _tick(self, kind: str) -> str | None:
        self.steps.append(kind)
        return kind if len(self.steps) == self.fail_at else None

    def _wrap_store(self, engine: MemAlignService, name: str) -> None:
        original = getattr(engine.store, name)

        def failing(*args: Any, **kwargs: Any) -> Any:
            if self._tick(f"store.{name}") is not None:
                raise OSError(f"injected failure of store.{name}")
            return original(*args, **kwargs)

        setattr(engine.store, name, failing)


def _rude(item_id: str) -> dict[str, Any]:
    return {**ALIGNMENT[3], "id": item_id, "inputs": f"{ALIGNMENT[3]['inputs']} ({item_id})"}


OPERATIONS: dict[str, Callable[[MemAlignService], Any]] = {
    "add": lambda e: e.add_feedback(JUDGE, [_rude("extra")]),
    "replace": lambda e: e.add_feedback(
        JUDGE, [{**ALIGNMENT[3], "rationale": "Rude and dismissive, again."}]
    ),
    "remove": lambda e: e.remove_feedback(JUDGE, ["track-order"]),
    "remove+purge": lambda e: e.remove_feedback(JUDGE, ["track-order"], purge=True),
    "delete": lambda e: e.delete_judge(JUDGE),
}


# Steps of each clean run: add = embed, commit the items, distil, commit the guidelines; replace = re-derive
# the guideline the old version shaped (model, embedding), embed the new version, commit, distil, commit.
STEPS = {"add": 4, "replace": 6, "remove": 3, "remove+purge": 4, "delete": 2}


def _base(data_dir: Path) -> MemAlignService:
    engine = open_worker_engine(str(data_dir))
    engine.add_feedback(JUDGE, ALIGNMENT)
    return engine


@pytest.fixture(scope="module")
def clean_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[int, Any]]:
    """Each operation run without failures: how many steps it takes, and the memory it ends with."""
    out: dict[str, tuple[int, Any]] = {}
    for op, run in OPERATIONS.items():
        data_dir = tmp_path_factory.mktemp(op)
        engine = _base(data_dir)
        injector = Injector(engine, fail_at=None)
        run(engine)
        out[op] = (len(injector.steps), content(open_worker_engine(str(data_dir))))
    return out


def _cases() -> Iterator[Any]:
    # Step counts of the clean runs, fixed by the scenario (checked in the test itself).
    for op, steps in STEPS.items():
        for k in range(1, steps + 1):
            yield pytest.param(op, k, id=f"{op}-step{k}")


@pytest.mark.parametrize(("op", "fail_at"), list(_cases()))
def test_a_failure_at_any_step_leaves_the_old_version_and_a_retry_completes(
    tmp_path: Path, clean_runs: dict[str, tuple[int, Any]], op: str, fail_at: int
) -> None:
    steps, expected = clean_runs[op]
    assert fail_at <= steps
    engine = _base(tmp_path)
    warm_reader = open_worker_engine(str(tmp_path))  # another process that has read the judge already
    before = fingerprint(warm_reader)
    injector = Injector(engine, fail_at=fail_at)
    try:
        OPERATIONS[op](engine)
        failed = False
    except (MemAlignError, OSError):
        failed = True
    failed_step = injector.steps[fail_at - 1]
    fresh_reader = open_worker_engine(str(tmp_path))
    if failed and not (op == "remove+purge" and failed_step == "store.erase"):
        # The call failed: every reader, warm or fresh, sees the judge exactly as it was.
        assert fingerprint(warm_reader) == before
        assert fingerprint(fresh_reader) == before
    for reader in (warm_reader, fresh_reader):
        state = None if fingerprint(reader) is None else reader.state(JUDGE)
        if state is not None:  # never a guideline citing an item that is not there
            assert all(set(g.sources) <= set(state.feedback) for g in state.guidelines.values())
    # The same call again, with nothing failing, completes; what it left pending is finished on request.
    injector.fail_at = None
    if op != "delete" or fingerprint(fresh_reader) is not None:
        OPERATIONS[op](engine)
    if fingerprint(engine) is not None and engine.state(JUDGE).pending:
        engine.distill_pending(JUDGE)
    assert content(open_worker_engine(str(tmp_path))) == expected
    if op == "remove+purge":
        with pytest.raises(PurgedContentError, match="track-order"):
            engine.state_at(JUDGE, before[0] if before else 0)


def test_the_clean_runs_take_the_steps_the_cases_assume(clean_runs: dict[str, tuple[int, Any]]) -> None:
    counts = {op: steps for op, (steps, _) in clean_runs.items()}
    assert counts == STEPS


def test_distinct_rules_sharing_remaining_sources_survive_rederivation(tmp_path: Path) -> None:
    engine = open_worker_engine(str(tmp_path))
    # One item is both rude and unkind to an unhappy customer: two rules cite it and the item to be removed.
    both = {
        **ALIGNMENT[4],
        "id": "both",
        "rationale": "Rude and dismissive, and no apology for the disappointment.",
    }
    gone = {**ALIGNMENT[3], "id": "gone", "rationale": "Rude; and no apology either."}
    engine.add_feedback(JUDGE, [both, gone])
    assert {g.text for g in engine.list_guidelines(JUDGE).guidelines} == {POLITE, EMPATHY}
    removed = engine.remove_feedback(JUDGE, ["gone"])
    # One re-derivation prompt for the shared remaining sources, two distinct rules back, none collapsed.
    assert {g.text for g in removed.guidelines_revised} == {POLITE, EMPATHY}
    after = engine.list_guidelines(JUDGE).guidelines
    assert sorted(g.text for g in after) == sorted([POLITE, EMPATHY])
    assert all(g.source_feedback_ids == ["both"] for g in after)


def test_history_diff_and_rollback_make_a_new_version_equal_to_the_old_one(tmp_path: Path) -> None:
    engine = open_worker_engine(str(tmp_path))
    first = engine.add_feedback(JUDGE, ALIGNMENT)
    removed = engine.remove_feedback(JUDGE, ["sweater"])
    assert removed.judge_version > first.judge_version
    diff = engine.diff_judge(JUDGE, first.judge_version, removed.judge_version)
    assert diff.feedback_removed == ["sweater"]
    assert [g.text for g in diff.guidelines_removed] == [EMPATHY]

    rolled = engine.rollback_judge(JUDGE, first.judge_version)
    assert rolled.judge_version == removed.judge_version + 1
    assert rolled.summary.feedback_added == ["sweater"]
    fresh = open_worker_engine(str(tmp_path))
    assert content(fresh) == content_at(fresh, first.judge_version)
    history = fresh.judge_history(JUDGE)
    assert [v.change for v in history.versions[:3]] == ["rollback", "remove", "distill"]
    assert history.versions[0].restored_version == first.judge_version
    assert history.versions[1].summary.feedback_removed == ["sweater"]
    assert "sweater" not in str(history.versions[1].summary.guidelines_removed)  # ids, never content
    # Scoring at an older version uses that version's memory.
    old = fresh.score(JUDGE, ALIGNMENT[4]["inputs"], ALIGNMENT[4]["outputs"], version=removed.judge_version)
    assert old.judge_version == removed.judge_version
    assert "sweater" not in old.examples_used


def content_at(engine: MemAlignService, version: int) -> Any:
    """The content fingerprint of an older version."""
    state = engine.state_at(JUDGE, version)
    return (
        frozenset((i, r.content_hash) for i, r in state.feedback.items()),
        frozenset((r.text, frozenset(r.sources)) for r in state.guidelines.values()),
        state.pending,
    )


def test_rollback_to_a_version_holding_purged_content_is_refused_naming_it(tmp_path: Path) -> None:
    engine = open_worker_engine(str(tmp_path))
    first = engine.add_feedback(JUDGE, ALIGNMENT)
    engine.remove_feedback(JUDGE, ["sweater"], purge=True)
    with pytest.raises(PurgedContentError, match="feedback sweater"):
        engine.rollback_judge(JUDGE, first.judge_version)
    history = engine.judge_history(JUDGE)
    assert history.versions[0].summary.purged == ["sweater"]  # the tombstone: id, when, who; no text


def test_a_deleted_shipped_judge_stays_deleted_after_a_restart(tmp_path: Path) -> None:
    engine = open_worker_engine(str(tmp_path))
    engine.add_feedback(JUDGE, ALIGNMENT)
    engine.delete_judge(JUDGE)
    with pytest.raises(UnknownJudgeError):
        open_worker_engine(str(tmp_path)).state(JUDGE)


def test_the_same_item_twice_in_one_call_is_taken_once_and_conflicting_copies_are_refused(
    tmp_path: Path,
) -> None:
    engine = open_worker_engine(str(tmp_path))
    twice = engine.add_feedback(JUDGE, [ALIGNMENT[0], ALIGNMENT[0]])
    assert twice.feedback_ids == ["store-hours"]
    no_ids = [{k: v for k, v in ALIGNMENT[1].items() if k != "id"}] * 2
    assert len(engine.add_feedback(JUDGE, no_ids).feedback_ids) == 1
    version = engine.state(JUDGE).version
    other = {**ALIGNMENT[1], "id": "store-hours"}
    with pytest.raises(MemAlignError, match=r"feedback\[0\] and feedback\[1\] differ"):
        engine.add_feedback(JUDGE, [ALIGNMENT[0] | {"id": "x"}, other | {"id": "x"}])
    assert engine.state(JUDGE).version == version


def test_a_resend_changing_only_the_source_updates_provenance_without_distilling(tmp_path: Path) -> None:
    engine = open_worker_engine(str(tmp_path))
    engine.add_feedback(JUDGE, [ALIGNMENT[3]])
    model = engine.client
    assert isinstance(model, InProcessModel)
    calls = model.calls
    again = engine.add_feedback(JUDGE, [{**ALIGNMENT[3], "source": "support-lead"}])
    assert model.calls == calls
    assert again.unchanged_ids == [ALIGNMENT[3]["id"]]
    [item] = engine.list_feedback(JUDGE).feedback
    assert item.source == "support-lead"


def test_versions_told_to_two_writers_are_never_the_same(tmp_path: Path) -> None:
    first = open_worker_engine(str(tmp_path))
    second = open_worker_engine(str(tmp_path))
    told = [first.add_feedback(JUDGE, [_rude(f"a{n}")]).judge_version for n in range(3)]
    told += [second.add_feedback(JUDGE, [_rude(f"b{n}")]).judge_version for n in range(3)]
    told.append(first.remove_feedback(JUDGE, ["b0"]).judge_version)
    assert len(set(told)) == len(told)
    assert sorted(v.version for v in first.judge_history(JUDGE, limit=500).versions)[-1] == max(told)
