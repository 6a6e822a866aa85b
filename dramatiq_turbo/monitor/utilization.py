"""How busy a worker process's threads are: the share of their time spent on messages."""

from __future__ import annotations

import threading
import time
from collections import deque

__all__ = ["BusyTracker"]


class BusyTracker:
    """Busy time of worker threads, measured exactly per heartbeat interval.

    A message's time counts in the interval it ran in, also while it is still
    running when the interval ends, so a long job does not show as idle time
    followed by a burst.

    Parameters:
      intervals(int): How many recent heartbeat intervals ``utilization``
        averages over.
    """

    def __init__(self, *, intervals: int = 10) -> None:
        self._lock = threading.Lock()
        self._running: dict[int, tuple[str, float]] = {}  # thread id -> (queue, start)
        self._tick = time.monotonic()
        self._busy = 0.0  # seconds of finished work in the current interval
        self._history: deque[tuple[float, float]] = deque(maxlen=intervals)  # (busy s, elapsed s)

    def start(self, queue: str) -> None:
        """The current thread starts a message of ``queue``."""
        with self._lock:
            self._running[threading.get_ident()] = (queue, time.monotonic())

    def stop(self) -> None:
        """The current thread is done with its message."""
        now = time.monotonic()
        with self._lock:
            entry = self._running.pop(threading.get_ident(), None)
            if entry is not None:
                self._busy += now - max(entry[1], self._tick)

    def running(self) -> dict[str, int]:
        """Messages running now, per queue."""
        with self._lock:
            entries = list(self._running.values())
        counts: dict[str, int] = {}
        for queue, _ in entries:
            counts[queue] = counts.get(queue, 0) + 1
        return counts

    def tick(self, threads: int) -> float:
        """Close the current interval and return the utilization (0 to 1) of ``threads`` threads
        over the recent intervals."""
        now = time.monotonic()
        with self._lock:
            busy = self._busy + sum(now - max(start, self._tick) for _, start in self._running.values())
            self._history.append((busy, now - self._tick))
            self._busy = 0.0
            self._tick = now
            history = list(self._history)
        capacity = sum(elapsed for _, elapsed in history) * max(1, threads)
        return min(1.0, sum(b for b, _ in history) / capacity) if capacity > 0 else 0.0
