"""The memory table as vector searches read it: pinned at one version, moved on only when a reader needs it.

The store's own handle asks for the table's latest version before every read (read_consistency_interval=0),
which on object storage is a LIST request before every search (BENCHMARKS.md, retrieval at scale). Searches
read this handle instead. It stays at the version it last loaded and moves to the latest (`refresh`):
- when the caller says so: retrieval.py does whenever a judge's state is newer than at its last search, so
  every row that state counts is in the view (a transaction writes its rows before the commit that counts them,
  and states come from commits);
- when it is older than `max_age_s`, so that an index built by maintenance in another process gets used;
- when a read finds a file gone (a purge or maintenance elsewhere pruned the pinned version): then it reads once
  more at the latest version.
A search in a view newer than the state is harmless: retrieval keeps only the rows the state counts.
It only reads; every write goes through the store's own handle.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


def _file_gone(exc: BaseException) -> bool:
    return "not found" in str(exc).lower()


class SearchView:
    """A LanceDB table handle that checks for a newer version only when told, when old, or when a file is gone."""

    def __init__(self, open_table: Callable[[], Any], *, max_age_s: float = 30.0) -> None:
        """`open_table` opens the table on a connection that never checks for new versions by itself."""
        self._open_table = open_table
        self.max_age_s = max_age_s
        self._lock = threading.Lock()
        self._table: Any = None
        self._loaded_at = 0.0

    def refresh(self) -> None:
        """Move to the table's latest version (one request on object storage), opening it the first time."""
        with self._lock:
            if self._table is None:
                self._table = self._open_table()
            else:
                self._table.checkout_latest()
            self._loaded_at = time.monotonic()

    def read(self, action: Callable[[Any], T]) -> T:
        """`action(table)` at the pinned version; once more at the latest if a file it needed was gone."""
        if self._table is None or time.monotonic() - self._loaded_at > self.max_age_s:
            self.refresh()
        try:
            return action(self._table)
        except (OSError, RuntimeError) as exc:
            if not _file_gone(exc):
                raise
        self.refresh()
        return action(self._table)
