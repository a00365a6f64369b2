"""How fresh a replica's reads are: the one owner of "a commit elsewhere is seen within F seconds".

Asking the store whether anything was committed is one object-store request on S3; asking it for every score
would make each score pay a round trip. So a replica asks at most once per freshness bound F and otherwise
uses the version it saw, and a removal returns only once F has passed since its commit, so that every
replica's next read after that asks again. Writes always ask. A replica that cannot ask (the store is
unreachable) raises rather than scoring with what it cached: it fails closed.

This module knows nothing of LanceDB or judges: it is handed the function that reads the version.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


class Freshness:
    """The last version check of this process and the freshness bound; thread-safe."""

    def __init__(self, read_version: Callable[[], int], bound_s: float) -> None:
        self.bound_s = bound_s
        self._read_version = read_version
        self._checked: tuple[float, int] | None = None  # (monotonic start of the last check, version seen)
        self._lock = threading.Lock()
        self._committed = threading.local()  # when this thread's last commit was known visible (monotonic)

    def version(self, *, fresh: bool = False) -> int:
        """The store's version: asked unless a check started less than the bound ago (`fresh`: always ask).

        A check's time is taken before it asks, so a commit that check may have missed is at most the bound
        older than the next check. Whatever the read raises (StoreUnavailableError) propagates.
        """
        started = time.monotonic()
        checked = self._checked
        if not fresh and checked is not None and started - checked[0] < self.bound_s:
            return checked[1]
        version = self._read_version()
        with self._lock:
            if self._checked is None or self._checked[0] <= started:
                self._checked = (started, version)
        return version

    def committed(self) -> None:
        """Note that this thread's commit is now visible in the store (see settle)."""
        self._committed.at = time.monotonic()

    def settle(self) -> None:
        """Wait until the bound has passed since this thread's last commit: every replica's next read then asks.

        No wait with a bound of 0 (every read asks) or when this thread committed nothing.
        """
        at = getattr(self._committed, "at", None)
        if at is not None and self.bound_s > 0:
            time.sleep(max(0.0, at + self.bound_s - time.monotonic()))
