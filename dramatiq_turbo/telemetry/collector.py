"""``MetricsCollector``: counts, average and percentiles of one worker's jobs."""

from __future__ import annotations

import logging
import threading
from collections import deque
from dataclasses import dataclass

__all__ = ["MetricsCollector", "MetricsSnapshot"]

logger = logging.getLogger("dramatiq_turbo.telemetry")


@dataclass(frozen=True)
class MetricsSnapshot:
    """What a ``MetricsCollector`` has seen, at one instant.

    ``processed`` counts successes; ``avg_ms`` is their mean duration over
    all of them; the percentiles are over the most recent ``window`` ones.
    """

    name: str
    processed: int
    failed: int
    avg_ms: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float

    def format(self) -> str:
        """The log line: ``[PdfWorker] Processed: 150, Failed: 2, Avg Time: 8523.45ms, p50: ...``."""
        return (
            f"[{self.name}] Processed: {self.processed}, Failed: {self.failed}, "
            f"Avg Time: {self.avg_ms:.2f}ms, p50: {self.p50_ms:.2f}ms, "
            f"p95: {self.p95_ms:.2f}ms, p99: {self.p99_ms:.2f}ms"
        )


class MetricsCollector:
    """Thread-safe success/failure counts and durations of one worker or actor.

    Parameters:
      name(str): Shown in brackets at the start of the log line.
      window(int): How many recent durations the percentiles are computed
        over (counts and the average cover every job).  Bounded, so a
        long-running worker does not grow without limit.
    """

    def __init__(self, name: str, *, window: int = 10_000) -> None:
        if not isinstance(window, int) or isinstance(window, bool) or window < 1:
            raise ValueError(f"window must be a positive int, got {window!r}")
        self.name = name
        self._lock = threading.Lock()
        self._durations: deque[float] = deque(maxlen=window)
        self._processed = 0
        self._failed = 0
        self._total_ms = 0.0
        self._max_ms = 0.0

    def record_success(self, ms: float) -> None:
        """Count one successful job that took ``ms`` milliseconds."""
        # A tuple, not ``int | float``: that union is built anew on every call.
        if isinstance(ms, bool) or not isinstance(ms, (int, float)) or ms < 0 or ms != ms:
            raise ValueError(f"record_success takes a duration in milliseconds >= 0, got {ms!r}")
        with self._lock:
            self._processed += 1
            self._total_ms += ms
            self._durations.append(float(ms))
            if ms > self._max_ms:
                self._max_ms = float(ms)

    def record_failure(self) -> None:
        """Count one failed job."""
        with self._lock:
            self._failed += 1

    def reset(self) -> None:
        """Forget everything seen so far."""
        with self._lock:
            self._durations.clear()
            self._processed = self._failed = 0
            self._total_ms = self._max_ms = 0.0

    def snapshot(self) -> MetricsSnapshot:
        """Counts, average and p50/p95/p99 as they are now."""
        with self._lock:
            durations = sorted(self._durations)
            processed, failed, total, top = self._processed, self._failed, self._total_ms, self._max_ms
        return MetricsSnapshot(
            name=self.name,
            processed=processed,
            failed=failed,
            avg_ms=total / processed if processed else 0.0,
            p50_ms=_percentile(durations, 50),
            p95_ms=_percentile(durations, 95),
            p99_ms=_percentile(durations, 99),
            max_ms=top,
        )

    def log_metrics(self, *, level: int = logging.INFO) -> MetricsSnapshot:
        """Log the snapshot as one line (see ``MetricsSnapshot.format``) and return it."""
        snapshot = self.snapshot()
        logger.log(level, "%s", snapshot.format())
        return snapshot


def _percentile(ordered: list[float], pct: int) -> float:
    """Nearest-rank percentile of an ascending list (0.0 when empty)."""
    if not ordered:
        return 0.0
    rank = max(1, -(-pct * len(ordered) // 100))  # ceil(pct/100 * n)
    return ordered[rank - 1]
