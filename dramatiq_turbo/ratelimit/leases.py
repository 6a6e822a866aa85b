"""Concurrency slots are leases: ``Hold`` is one slot held, ``LeaseRenewer`` keeps a process's slots alive.

A slot lives ``lease`` ms unless renewed, so a killed worker never keeps one.
While the work that took it runs, one daemon thread per process extends
every slot the process holds, for the ``RateLimiter`` middleware (a message)
and for ``rate_limit()`` blocks alike.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass

from .store import LimitStore

__all__ = ["Hold", "LeaseRenewer"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Hold:
    """What one admitted attempt took, to renew and release it.

    Parameters:
      store(LimitStore): The store that admitted it (Redis, or the local one during an outage).
      key(str): The budget's name, such as ``"actor:send_email"`` or ``"key:llm"``.
      token(str): The attempt's unique id in the store.
      lease(int): The slot's lease in ms; 0 when no concurrency slot is held.
    """

    store: LimitStore
    key: str
    token: str
    lease: int


class LeaseRenewer:
    """A daemon thread that extends the leases this process holds while their work runs.

    Thread-safe.  The thread starts with the first ``add`` in each process
    (threads do not survive a fork) and again after ``stop``.
    """

    def __init__(self) -> None:
        self._held: dict[Hold, None] = {}
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._changed = threading.Event()  # set by add() and stop(): the period may be shorter now
        self._thread: threading.Thread | None = None
        self._pid = 0

    def add(self, hold: Hold) -> None:
        """Renew ``hold``'s lease until it is discarded."""
        with self._lock:
            self._held[hold] = None
            thread = self._thread
            if thread is None or self._pid != os.getpid() or not thread.is_alive() or self._stopped.is_set():
                # Each thread gets its own stop event: a thread told to stop
                # just before this add exits, and this new one takes over.
                self._pid = os.getpid()
                self._stopped = threading.Event()
                self._thread = threading.Thread(
                    target=self._run, args=(self._stopped,), name="turbo-lease-renewer", daemon=True
                )
                self._thread.start()
        self._changed.set()

    def discard(self, hold: Hold) -> None:
        """Stop renewing ``hold`` (its work ended)."""
        with self._lock:
            self._held.pop(hold, None)

    def stop(self) -> None:
        """End the thread; a later ``add`` starts a new one."""
        with self._lock:
            self._stopped.set()
        self._changed.set()

    def _run(self, stopped: threading.Event) -> None:
        renewed_at = time.monotonic()
        while True:
            with self._lock:
                holds = list(self._held)
            # Renew every third of the shortest lease held; a hold added with
            # a shorter lease wakes the thread to recompute when that is.
            period = min((h.lease for h in holds), default=3_000) / 3 / 1000
            remaining = renewed_at + period - time.monotonic()
            if remaining > 0:
                self._changed.wait(remaining)
                self._changed.clear()
                if stopped.is_set():
                    return
                continue
            if stopped.is_set():
                return
            renewed_at = time.monotonic()
            self._renew_all()

    def _renew_all(self) -> None:
        groups: dict[tuple[int, str, int], list[Hold]] = {}
        with self._lock:
            for hold in self._held:
                groups.setdefault((id(hold.store), hold.key, hold.lease), []).append(hold)
        for (_, key, lease), group in groups.items():
            try:
                renewed = group[0].store.renew(key, [h.token for h in group], lease)
            except Exception as error:
                logger.warning("Could not renew %d concurrency lease(s) of %s: %s", len(group), key, error)
                continue
            with self._lock:
                # A block that ended after the copy above released its slot,
                # so renewing it found nothing: that is no expiry.
                ended = sum(1 for hold in group if hold not in self._held)
            expired = len(group) - renewed - ended
            if expired > 0:
                logger.warning(
                    "%d concurrency lease(s) of %s expired while running; raise rate_limit 'lease'.",
                    expired,
                    key,
                )
