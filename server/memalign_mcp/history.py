"""History of a judge's memory: versions, diffs, rollback, spec updates and purge.

Memory versions are the ledger's commits (transaction.py), so history is the ledger read back: logical rows of
our own, with ids only, that survive purge as tombstones. A rollback is a new commit whose memory equals an older
state; a state that held purged content cannot be restored (purged stays purged).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from memalign_mcp.errors import InvalidInputError, PurgedContentError
from memalign_mcp.judge import JudgeService, guideline_of
from memalign_mcp.limits import check_spec_limits
from memalign_mcp.models import (
    Judge,
    JudgeDiff,
    JudgeHistory,
    JudgeSpec,
    RollbackResult,
    VersionRecord,
    VersionSummary,
)
from memalign_mcp.records import MemoryRow, Summary, txn_age_s
from memalign_mcp.transaction import Change, MemoryState

# Spec fields update_judge may change; name and feedback_type stay (stored verdicts are of that type).
# A transaction without a commit this old was abandoned (its writer died): no write takes this long.
ORPHAN_AGE_S = 600.0
UPDATABLE = ("instructions", "model", "retrieval_k", "choices", "min_value", "max_value", "review_guidelines")


def _diff(name: str, old: MemoryState, new: MemoryState) -> JudgeDiff:
    def same(a: MemoryRow, b: MemoryRow) -> bool:
        return a.txn == b.txn or (a.content_hash == b.content_hash and a.body == b.body)

    def same_guideline(a: MemoryRow, b: MemoryRow) -> bool:
        return a.text == b.text and set(a.sources) == set(b.sources) and a.body == b.body  # body: status

    fb_old, fb_new = old.feedback, new.feedback
    gl_old, gl_new = old.guidelines, new.guidelines
    return JudgeDiff(
        judge=name,
        from_version=old.version,
        to_version=new.version,
        feedback_added=sorted(set(fb_new) - set(fb_old)),
        feedback_removed=sorted(set(fb_old) - set(fb_new)),
        feedback_changed=sorted(i for i in set(fb_old) & set(fb_new) if not same(fb_old[i], fb_new[i])),
        guidelines_added=[guideline_of(gl_new[i]) for i in sorted(set(gl_new) - set(gl_old))],
        guidelines_removed=[guideline_of(gl_old[i]) for i in sorted(set(gl_old) - set(gl_new))],
        guidelines_changed=[
            guideline_of(gl_new[i])
            for i in sorted(set(gl_old) & set(gl_new))
            if not same_guideline(gl_old[i], gl_new[i])
        ],
    )


class HistoryService(JudgeService):
    """JudgeService plus history, diff, rollback, update and purge."""

    def judge_history(self, name: str, limit: int = 50, offset: int = 0) -> JudgeHistory:
        """A judge's memory versions, newest first, ids only."""
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= 500:  # pyright: ignore[reportUnnecessaryIsInstance]
            raise InvalidInputError("limit", limit, "an integer from 1 to 500")
        if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:  # pyright: ignore[reportUnnecessaryIsInstance]
            raise InvalidInputError("offset", offset, "an integer of at least 0")
        commits = self.ledger.generation(name)
        newest = list(reversed(commits))
        return JudgeHistory(
            judge=name,
            judge_version=commits[-1].version,
            total=len(commits),
            versions=[
                VersionRecord(
                    version=c.version,
                    created_at=c.created_at,
                    who=c.who,
                    change=c.op,
                    summary=VersionSummary(**c.summary.as_dict()),
                    restored_version=c.restore_of,
                )
                for c in newest[offset : offset + limit]
            ],
        )

    def diff_judge(self, name: str, from_version: int, to_version: int) -> JudgeDiff:
        """Feedback ids and guidelines added, removed and changed between two memory versions."""
        return _diff(name, self.state_at(name, from_version), self.state_at(name, to_version))

    def rollback_judge(self, name: str, version: int, *, who: str | None = None) -> RollbackResult:
        """Make a new memory version equal to an older one; refused where that state held purged content."""
        target = self.state_at(name, version)

        def prepare(state: MemoryState) -> Change:
            if state.missing:
                raise PurgedContentError(name, version, sorted(f"{k} {i}" for k, i in state.missing))
            diff = _diff(name, state, target)  # what must change to go from now to the target
            back = self.ledger.whole_rows(target, [*diff.feedback_added, *diff.feedback_changed])
            back_gl = [target.guidelines[g.id] for g in (*diff.guidelines_added, *diff.guidelines_changed)]
            return Change(
                op="rollback",
                rows=[replace(r, pending=r.item_id in target.pending) for r in [*back.values(), *back_gl]],
                drops={
                    "feedback": diff.feedback_removed,
                    "guideline": [g.id for g in diff.guidelines_removed],
                },
                pending_on=sorted(target.pending - state.pending),
                pending_off=sorted(state.pending - target.pending),
                reads={("feedback", i) for i in state.feedback} | {("feedback", i) for i in target.feedback},
                reads_all_guidelines=True,
                summary=Summary(
                    feedback_added=tuple(diff.feedback_added),
                    feedback_removed=tuple(diff.feedback_removed),
                    feedback_replaced=tuple(diff.feedback_changed),
                    guidelines_added=tuple(g.id for g in diff.guidelines_added),
                    guidelines_removed=tuple(g.id for g in diff.guidelines_removed),
                    guidelines_revised=tuple(g.id for g in diff.guidelines_changed),
                ),
                restore_of=version,
            )

        commit, _ = self.ledger.change(name, prepare, who=who)
        summary = commit.summary.as_dict() if commit is not None else {}
        if commit is not None:
            self.ledger.freshness.settle()  # a rollback may take feedback away: as strong as a removal
        return RollbackResult(
            judge=name,
            judge_version=commit.version if commit is not None else self.state(name).version,
            restored_version=version,
            summary=VersionSummary(**summary),
        )

    def update_judge(self, name: str, changes: dict[str, Any], *, who: str | None = None) -> Judge:
        """Change a judge's instructions, model, k or value bounds, keeping its memory (a new version)."""
        unknown = sorted(set(changes) - set(UPDATABLE))
        if unknown:
            raise InvalidInputError(unknown[0], changes[unknown[0]], f"one of {', '.join(UPDATABLE)}")
        if not changes:
            raise InvalidInputError("changes", changes, f"at least one of {', '.join(UPDATABLE)}")

        def prepare(state: MemoryState) -> Change | None:
            old = JudgeSpec.model_validate_json(state.spec_json)
            spec = JudgeSpec.model_validate(old.model_dump() | changes).validated()
            check_spec_limits(spec, self.settings.limits)
            if spec == old:
                return None
            whole = self.ledger.whole_rows(state, list(state.feedback))
            for item_id, row in sorted(whole.items()):
                try:
                    spec.check_value(row.body["value"], f"feedback {item_id!r} value")
                except InvalidInputError as exc:
                    raise InvalidInputError(
                        ", ".join(sorted(changes)),
                        {k: changes[k] for k in sorted(changes)},
                        f"a change that every stored verdict still fits ({exc}); remove that feedback first",
                    ) from exc
            return Change(op="update", spec_json=spec.model_dump_json())

        self.ledger.change(name, prepare, who=who)
        return self.get_judge(name)

    def purge_feedback(self, name: str, ids: list[str], *, who: str | None, recorded: bool) -> int:
        """Erase from every file the rows of these feedback ids, of every guideline version citing them, and orphans.

        Idempotent: a purge interrupted after its commit is completed by calling remove_feedback again with
        purge=true (the ids are then 'not found' but their bytes are still erased). Without a commit of its
        own (`recorded`), a purge that erased anything leaves a tombstone version in the history.
        """
        if not recorded:
            # The tombstone first (a purge of items removed earlier has no commit of its own to carry it).

            def tombstone(_: MemoryState) -> Change:
                return Change(op="purge", summary=Summary(purged=tuple(ids)))

            self.ledger.change(name, tombstone, who=who)
        with self.store.erasing():  # the purge lease, and no maintenance step running
            state = self.ledger.state(name, fresh=True)
            rows = self.store.rows_of_generation(name, state.gen, content=False)
            # Commits read after the rows: every row seen whose transaction committed has its commit here
            # (rows and commit row land in one LanceDB commit, and no writer commits while the lease is held).
            committed = {c.txn for c in self.ledger.generation(name, fresh=True)}
            doomed = {r.key for r in rows if r.kind == "feedback" and r.item_id in ids}
            doomed |= {r.key for r in rows if r.kind == "guideline" and set(r.sources) & set(ids)}
            # Rows of a transaction that never committed (its writer was killed) may hold derived text. A
            # writer appends its rows before it claims its commit, so only orphans older than any write in
            # flight can be: younger ones are left for a later purge.
            doomed |= {r.key for r in rows if r.txn not in committed and txn_age_s(r.txn) > ORPHAN_AGE_S}
            erased = self.store.erase_keys(sorted(doomed))
        return erased
