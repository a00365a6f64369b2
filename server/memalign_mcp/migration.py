"""Carrying a 0.1 store over to the transactional layout of 0.2, once, without losing anything.

0.1 kept judges in a `judges` table and memory rows in `memory`, edited in place. Each judge moves in one commit
(its spec, every row with its pending flag, and its memory version), so a migration killed half-way leaves each
judge either wholly moved or not at all, and another process opening the store meanwhile either sees a judge
moved or moves it itself (the commit numbers decide which). The old tables are dropped only once every judge is
there with the same feedback and guideline ids, so their rows (removed text included) do not outlive the move.
"""

from __future__ import annotations

import logging

from memalign_mcp.store import MemoryStore
from memalign_mcp.transaction import Ledger

log = logging.getLogger(__name__)


def migrate_0_1(store: MemoryStore, ledger: Ledger) -> int:
    """Move every judge of a 0.1 store into the ledger; return how many moved now."""
    legacy = store.legacy_judges()
    if not legacy:
        return 0
    moved = 0
    for name, spec_json, version, rows in legacy:
        if ledger.create(name, spec_json, who="migration 0.1", rows=rows, version=version) is not None:
            moved += 1
    for name, _, _, rows in legacy:
        state = ledger.state(name)
        for kind, held in (("feedback", state.feedback), ("guideline", state.guidelines)):
            if {r.item_id for r in rows if r.kind == kind} != set(held):
                log.error("judge %r did not move whole from the 0.1 store; its old tables are kept", name)
                return moved
    store.drop_legacy_tables()
    log.info("moved %d judge(s) from the 0.1 layout; the old tables are dropped", len(legacy))
    return moved
