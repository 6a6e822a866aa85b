"""Queue health: ``QueueMonitor`` reads the brokers and the workers' counters; rules give advice.

- ``QueueStatsRecorder``: the worker-side middleware that counts every
  queue's messages per minute (and sends worker heartbeats).
- ``QueueMonitor``: ``get_detailed_stats(queue)`` -> ``QueueStats``,
  ``get_performance_report()``, ``start_health_checks()``.
- ``Thresholds`` and ``rules.RULES``: the recommendations and their limits.
- ``dramatiq-turbo stats`` / ``report``: the same from the command line.
"""

from __future__ import annotations

from .monitor import QueueMonitor
from .recorder import QueueStatsRecorder
from .rules import RULES, Thresholds
from .stats import Circuit, DeadLetter, MinuteCount, PerformanceReport, QueueStats, Recommendation, WorkerInfo

__all__ = [
    "RULES",
    "Circuit",
    "DeadLetter",
    "MinuteCount",
    "PerformanceReport",
    "QueueMonitor",
    "QueueStats",
    "QueueStatsRecorder",
    "Recommendation",
    "Thresholds",
    "WorkerInfo",
]
