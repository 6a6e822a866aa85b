"""What ``QueueMonitor`` reports: ``QueueStats`` per queue and the ``PerformanceReport`` of them all.

Every type here is a frozen dataclass of plain values with ``as_dict()``,
so ``json.dumps(stats.as_dict())`` is the machine-readable form the CLI's
``--json`` prints.  Durations are int milliseconds (names end in ``_ms``),
rates are messages per minute.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "SEVERITIES",
    "Circuit",
    "DeadLetter",
    "MinuteCount",
    "PerformanceReport",
    "QueueStats",
    "Recommendation",
    "WorkerInfo",
    "worst_severity",
]

#: Severities from mildest to worst; ``--check`` fails on ``warning`` or worse.
SEVERITIES = ("info", "warning", "critical")


class Recommendation(str):
    """One piece of advice: a ``str`` (its text) that also knows its rule and severity.

    Parameters:
      text(str): The advice, naming the numbers that triggered it.
      rule(str): The rule that produced it (``"backlog"``, ``"failure_rate"``...).
      severity(str): ``"info"``, ``"warning"`` or ``"critical"``.
    """

    rule: str
    severity: str

    def __new__(cls, text: str, *, rule: str, severity: str) -> Recommendation:
        if severity not in SEVERITIES:
            raise ValueError(f"severity must be one of {SEVERITIES}, got {severity!r}")
        self = super().__new__(cls, text)
        self.rule = rule
        self.severity = severity
        return self

    @property
    def text(self) -> str:
        return str.__str__(self)

    def as_dict(self) -> dict[str, str]:
        return {"rule": self.rule, "severity": self.severity, "text": self.text}

    def __reduce__(self) -> Any:  # pickling keeps rule and severity
        return (_recommendation, (self.text, self.rule, self.severity))


def _recommendation(text: str, rule: str, severity: str) -> Recommendation:
    return Recommendation(text, rule=rule, severity=severity)


def worst_severity(recommendations: Any) -> str | None:
    """The worst severity among ``recommendations``, or ``None`` when there are none."""
    ranks = [SEVERITIES.index(r.severity) for r in recommendations]
    return SEVERITIES[max(ranks)] if ranks else None


@dataclass(frozen=True)
class MinuteCount:
    """The counts of one minute: ``minute`` is its start in epoch ms."""

    minute: int
    completed: int
    failed: int


@dataclass(frozen=True)
class Circuit:
    """A circuit breaker that guards the queue's actors.

    ``state`` is ``"open"``, ``"half-open"`` or ``"closed"``; ``retry_in_ms`` is
    how long until an open circuit lets a trial call through; ``deferred`` is
    how many of the queue's messages it refused in the window.
    """

    name: str
    state: str
    retry_in_ms: int
    deferred: int


@dataclass(frozen=True)
class DeadLetter:
    """One dead-lettered message and why it was given up (``Backoff``'s ``turbo_failure`` option)."""

    message_id: str
    actor: str
    reason: str | None
    error: str | None
    detail: str | None
    retries: int | None


@dataclass(frozen=True)
class WorkerInfo:
    """A worker process as its last heartbeat described it.

    ``utilization`` is the share of its threads' time spent on messages over
    its last few heartbeats (0 to 1); ``age_ms`` is how long ago that was.
    """

    id: str
    host: str
    pid: int
    queues: tuple[str, ...]
    threads: int
    busy: int
    utilization: float
    cores: int
    age_ms: int


@dataclass(frozen=True)
class QueueStats:
    """Everything known about one queue, at one instant.

    Broker state (read from the broker itself):

    - ``waiting``: ready messages; ``delayed``: in the delay queue (retries,
      deferrals, ``send_with_options(delay=...)``), including those a worker
      holds until they are due where the broker can tell (Redis, Stub);
      ``dead``: in the dead-letter queue; ``dead_recent``: of those,
      dead-lettered within the window (``None`` when the broker cannot tell);
      ``in_progress``: delivered and not yet acknowledged (``None`` when
      unknown); ``oldest_age_ms``: how long the first waiting message has been
      due (``None`` on RabbitMQ, which cannot peek without taking it).
    - ``dead_letters``: a sample of dead letters with their reasons.

    Rates and latencies (from the counters ``QueueStatsRecorder`` writes in
    every worker process; zero when there are none, and ``counters`` is
    ``False``): counts over the last ``window_ms`` (``dead_lettered``: given
    up by the workers), per-minute counts, rates per minute over
    ``covered_ms`` (the part of the window the queue was active in),
    ``failure_rate`` (failed over completed + failed), queue wait and
    processing percentiles, ``cpu_share`` (CPU time over processing time).

    Workers: ``workers`` live worker processes consuming the queue (``None``
    when unknown), their threads, busy threads and ``utilization``.

    Gates: ``open_circuits`` that guard the queue's actors, deliveries
    deferred by a rate limit or made to wait for a slot (``rate_limited``),
    ``saturated_limits`` (the limits of the queue's actors when saturated).

    ``recommendations``: advice, each naming the numbers that triggered it.
    """

    queue: str
    broker: str
    at: int
    window_ms: int
    waiting: int
    delayed: int
    dead: int
    in_progress: int | None = None
    dead_recent: int | None = None
    oldest_age_ms: int | None = None
    counters: bool = False
    covered_ms: int = 0
    enqueued: int = 0
    completed: int = 0
    failed: int = 0
    skipped: int = 0
    retried: int = 0
    dead_lettered: int = 0
    per_minute: tuple[MinuteCount, ...] = ()
    enqueued_per_min: float = 0.0
    completed_per_min: float = 0.0
    failed_per_min: float = 0.0
    failure_rate: float = 0.0
    wait_p50_ms: int | None = None
    wait_p95_ms: int | None = None
    processing_p50_ms: int | None = None
    processing_p95_ms: int | None = None
    processing_mean_ms: float | None = None
    cpu_share: float | None = None
    workers: int | None = None
    worker_threads: int = 0
    busy_threads: int = 0
    utilization: float | None = None
    cores: int | None = None
    open_circuits: tuple[Circuit, ...] = ()
    circuit_deferred: int = 0
    rate_limited: int = 0
    rate_limit_deferred: int = 0
    rate_limit_waits: int = 0
    saturated_limits: tuple[str, ...] = ()
    dead_letters: tuple[DeadLetter, ...] = ()
    recommendations: tuple[Recommendation, ...] = field(default=())

    @property
    def processed(self) -> int:
        """Messages that ran to the end in the window, successfully or not."""
        return self.completed + self.failed

    @property
    def processed_per_min(self) -> float:
        return self.completed_per_min + self.failed_per_min

    @property
    def healthy(self) -> bool:
        """No recommendation of severity ``warning`` or worse."""
        return worst_severity(self.recommendations) in (None, "info")

    def as_dict(self) -> dict[str, Any]:
        """A JSON-serializable dict of every field (recommendations as ``{rule, severity, text}``)."""
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        for name in ("per_minute", "open_circuits", "dead_letters"):
            data[name] = [dataclasses.asdict(item) for item in data[name]]
        data["saturated_limits"] = list(self.saturated_limits)
        data["recommendations"] = [r.as_dict() for r in self.recommendations]
        data["healthy"] = self.healthy
        return data


@dataclass(frozen=True)
class PerformanceReport:
    """``QueueStats`` of several queues, the live workers, and totals over all of them."""

    at: int
    window_ms: int
    queues: tuple[QueueStats, ...]
    workers: tuple[WorkerInfo, ...]

    @property
    def healthy(self) -> bool:
        return all(stats.healthy for stats in self.queues)

    def totals(self) -> dict[str, Any]:
        """Sums over the queues, and the threads and mean utilization of the workers."""
        keys = ("waiting", "delayed", "dead", "enqueued", "completed", "failed")
        totals: dict[str, Any] = {key: sum(getattr(s, key) for s in self.queues) for key in keys}
        processed = totals["completed"] + totals["failed"]
        totals["failure_rate"] = totals["failed"] / processed if processed else 0.0
        totals["completed_per_min"] = round(sum(s.completed_per_min for s in self.queues), 2)
        threads = sum(w.threads for w in self.workers)
        totals["workers"] = len(self.workers)
        totals["worker_threads"] = threads
        totals["utilization"] = (
            sum(w.utilization * w.threads for w in self.workers) / threads if threads else None
        )
        return totals

    def as_dict(self) -> dict[str, Any]:
        return {
            "at": self.at,
            "window_ms": self.window_ms,
            "healthy": self.healthy,
            "totals": self.totals(),
            "queues": [stats.as_dict() for stats in self.queues],
            "workers": [{**dataclasses.asdict(w), "queues": list(w.queues)} for w in self.workers],
        }
