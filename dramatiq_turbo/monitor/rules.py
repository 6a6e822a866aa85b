"""Recommendations: rules over one queue's ``QueueStats``, each with documented thresholds.

Every rule looks at the numbers of one queue and returns its advice, or
nothing.  The advice names the numbers that triggered it.  The thresholds
are the fields of ``Thresholds``; the rules are found by name in ``RULES``
and run in that order by ``evaluate``.

=====================  ========  ===========================================================
rule                   severity  fires when
=====================  ========  ===========================================================
``no_workers``         critical  messages wait and no live worker consumes the queue
``backlog``            warning   ``waiting >= max_waiting`` (100)
``backlog_growing``    warning   arrivals exceed processing by ``min_growth`` (10/min) or more
                                 while messages wait, over at least ``growth_window`` (30 s)
``sizing``             warning   Little's law (``presets.recommend``) needs more slots than
                       / info    the workers have: warning when the load alone exceeds them,
                                 info when only the headroom (x1.5) is missing; needs
                                 ``min_samples`` (20) messages over ``sizing_window`` (60 s)
``failure_rate``       warning   more than ``max_failure_rate`` (5%) of at least
                       /critical ``min_samples`` messages failed; critical from
                                 ``critical_failure_rate`` (50%)
``dead_letters``       warning   messages were dead-lettered in the window
``circuit_open``       warning   a circuit breaker guarding the queue's actors is open or
                                 half-open
``rate_limit``         info      at least ``rate_limited_share`` (10%) of at least
                                 ``min_samples`` deliveries waited for a rate limit or were
                                 deferred by it
``sla``                warning   the oldest waiting message is older than ``sla`` (5 min);
                                 where its age is unknown (RabbitMQ), when the p95 queue
                                 wait is
``idle_workers``       warning   messages wait for at least ``idle_grace`` (10 s) while the
                                 queue's workers are less than ``idle_utilization`` (20%) busy
=====================  ========  ===========================================================
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from ..presets import recommend
from .stats import QueueStats, Recommendation

__all__ = ["RULES", "Rule", "Thresholds", "evaluate", "format_duration", "format_rate"]


@dataclass(frozen=True)
class Thresholds:
    """The limits the rules compare with; durations in ms.

    Parameters:
      max_waiting(int): Waiting messages from which ``backlog`` fires.
      min_growth(float): Messages per minute by which arrivals must exceed
        processing for ``backlog_growing``.
      growth_window(int): The activity ``backlog_growing`` needs: a burst
        of a second is no trend.
      max_failure_rate(float): Failure rate above which ``failure_rate`` fires.
      critical_failure_rate(float): ... and from which it is critical.
      min_samples(int): Messages a rate needs before ``failure_rate``,
        ``rate_limit`` and ``sizing`` trust it.
      sla(int): The age of the oldest waiting message above which ``sla`` fires.
      idle_utilization(float): Utilization below which workers are idle.
      idle_grace(int): How long messages must have waited for ``idle_workers``.
      rate_limited_share(float): Share of deliveries held by a rate limit for ``rate_limit``.
      headroom(float): Slots per busy slot that ``sizing`` asks for.
      sizing_window(int): Activity ``sizing`` needs: Little's law holds for
        a steady load, not a burst.
    """

    max_waiting: int = 100
    min_growth: float = 10.0
    growth_window: int = 30_000
    max_failure_rate: float = 0.05
    critical_failure_rate: float = 0.5
    min_samples: int = 20
    sla: int = 300_000
    idle_utilization: float = 0.2
    idle_grace: int = 10_000
    rate_limited_share: float = 0.1
    headroom: float = 1.5
    sizing_window: int = 60_000


Rule = Callable[[QueueStats, Thresholds], list[Recommendation]]


def format_duration(ms: float) -> str:
    """``850 ms``, ``1.5 s``, ``42 s``, ``4 min 10 s``, ``2 h 5 min``."""
    if ms < 1_000:
        return f"{ms:.0f} ms"
    seconds = ms / 1_000
    if seconds < 10:
        return f"{seconds:.1f} s"
    if seconds < 60:
        return f"{seconds:.0f} s"
    minutes, seconds = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {seconds} s" if seconds else f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min" if minutes else f"{hours} h"


def format_rate(per_min: float) -> str:
    """A rate per minute: one decimal below 10, whole numbers above."""
    return f"{per_min:.1f}" if per_min < 10 else f"{per_min:.0f}"


def _advice(text: str, rule: str, severity: str) -> list[Recommendation]:
    return [Recommendation(text, rule=rule, severity=severity)]


def no_workers(stats: QueueStats, t: Thresholds) -> list[Recommendation]:
    if stats.waiting == 0 or stats.workers != 0:
        return []
    return _advice(
        f"No live worker consumes {stats.queue} while {stats.waiting} messages wait.",
        "no_workers",
        "critical",
    )


def backlog(stats: QueueStats, t: Thresholds) -> list[Recommendation]:
    if stats.waiting < t.max_waiting:
        return []
    rate = stats.processed_per_min
    head = f"High number of waiting messages ({stats.waiting}). Consider increasing worker concurrency"
    if not stats.counters:
        return _advice(f"{head}.", "backlog", "warning")  # no rates known: no drain time
    if rate <= 0:
        window = format_duration(stats.window_ms)
        return _advice(
            f"{head}: no message was processed in the last {window}, so it will not drain.",
            "backlog",
            "warning",
        )
    drain = format_duration(stats.waiting / rate * 60_000)
    return _advice(
        f"{head}: at the current rate of {format_rate(rate)}/min the backlog drains in {drain}.",
        "backlog",
        "warning",
    )


def backlog_growing(stats: QueueStats, t: Thresholds) -> list[Recommendation]:
    arriving, processing = stats.enqueued_per_min, stats.processed_per_min
    growth = arriving - processing
    if (
        not stats.counters
        or stats.waiting == 0
        or growth < t.min_growth
        or stats.covered_ms < t.growth_window
    ):
        return []
    if processing <= 0:
        text = (
            f"Backlog growing by {format_rate(growth)}/min ({format_rate(arriving)}/min in, none "
            f"processed; {stats.waiting} waiting): nothing is draining it."
        )
    else:
        drain = format_duration(stats.waiting / processing * 60_000)
        text = (
            f"Backlog growing by {format_rate(growth)}/min ({format_rate(arriving)}/min in, "
            f"{format_rate(processing)}/min processed; {stats.waiting} waiting): at the current rate "
            f"it does not drain (once arrivals stop, it takes {drain}). Add worker threads or processes."
        )
    return _advice(text, "backlog_growing", "warning")


def sizing(stats: QueueStats, t: Thresholds) -> list[Recommendation]:
    if (
        not stats.workers
        or not stats.worker_threads
        or stats.processed < t.min_samples
        or stats.covered_ms < t.sizing_window
        or not stats.processing_mean_ms
    ):
        return []
    per_min = max(stats.enqueued_per_min, stats.processed_per_min)
    arrival = per_min / 60
    service = max(1, round(stats.processing_mean_ms))
    cpu_share = min(1.0, max(0.0, stats.cpu_share or 0.0))
    found = recommend(arrival, service, cpu_share, max(1, stats.cores or 1), headroom=t.headroom)
    needed = max(1, math.ceil(found.busy_slots * t.headroom))
    if needed <= stats.worker_threads:
        return []
    preset = found.preset
    severity = "warning" if found.busy_slots > stats.worker_threads else "info"
    return _advice(
        f"Worker sizing (Little's law): {arrival:.2f}/s x {service} ms = {found.busy_slots:.1f} messages "
        f"running at once, {needed} slots with x{t.headroom:g} headroom, but {stats.workers} worker "
        f"process(es) have {stats.worker_threads} threads. Run {preset.processes} process(es) x "
        f"{preset.threads} thread(s) (presets.recommend, {cpu_share:.0%} CPU).",
        "sizing",
        severity,
    )


def failure_rate(stats: QueueStats, t: Thresholds) -> list[Recommendation]:
    if stats.processed < t.min_samples or stats.failure_rate <= t.max_failure_rate:
        return []
    severity = "critical" if stats.failure_rate >= t.critical_failure_rate else "warning"
    return _advice(
        f"Failure rate {stats.failure_rate:.1%} ({stats.failed} of {stats.processed} in the last "
        f"{format_duration(stats.window_ms)}) is above {t.max_failure_rate:.0%}. Check the errors; "
        "make errors that cannot succeed on a retry non-retryable (retryable = False) so they fail at once.",
        "failure_rate",
        severity,
    )


def dead_letters(stats: QueueStats, t: Thresholds) -> list[Recommendation]:
    recent = stats.dead_recent if stats.dead_recent is not None else stats.dead_lettered
    if recent <= 0:
        return []
    text = (
        f"{recent} message(s) dead-lettered in the last {format_duration(stats.window_ms)} "
        f"({stats.dead} in the dead-letter queue)"
    )
    latest = next((letter for letter in stats.dead_letters if letter.reason), None)
    if latest is not None:
        text += f"; reason: {latest.reason} ({latest.error}: {latest.detail})"
    return _advice(text + ".", "dead_letters", "warning")


def circuit_open(stats: QueueStats, t: Thresholds) -> list[Recommendation]:
    advice: list[Recommendation] = []
    window = format_duration(stats.window_ms)
    for circuit in stats.open_circuits:
        if circuit.state == "closed":
            continue
        if circuit.state == "open":
            state = f"open (trial call in {format_duration(circuit.retry_in_ms)})"
        else:
            state = "half-open (trial calls running)"
        advice += _advice(
            f"Circuit '{circuit.name}' is {state}; it refused {circuit.deferred} message(s) in the last "
            f"{window}. Check the dependency '{circuit.name}'.",
            "circuit_open",
            "warning",
        )
    return advice


def rate_limit(stats: QueueStats, t: Thresholds) -> list[Recommendation]:
    starts = stats.processed + stats.skipped
    if starts < t.min_samples or stats.rate_limited < t.rate_limited_share * starts:
        return []
    limits = f" ({', '.join(stats.saturated_limits)})" if stats.saturated_limits else ""
    return _advice(
        f"Rate limit saturated{limits}: {stats.rate_limited} of {starts} deliveries in the last "
        f"{format_duration(stats.window_ms)} waited for a slot or were deferred "
        f"({stats.rate_limit_waits} waited, {stats.rate_limit_deferred} deferred). More workers will "
        "not help; raise the limit if the dependency allows it.",
        "rate_limit",
        "info",
    )


def sla(stats: QueueStats, t: Thresholds) -> list[Recommendation]:
    if stats.oldest_age_ms is not None:
        if stats.oldest_age_ms <= t.sla:
            return []
        text = (
            f"Oldest waiting message is {format_duration(stats.oldest_age_ms)} old, "
            f"above the SLA of {format_duration(t.sla)}."
        )
    elif stats.wait_p95_ms is not None and stats.wait_p95_ms > t.sla and stats.waiting:
        text = (
            f"95% of messages waited up to {format_duration(stats.wait_p95_ms)} in the last "
            f"{format_duration(stats.window_ms)}, above the SLA of {format_duration(t.sla)}."
        )
    else:
        return []
    return _advice(text, "sla", "warning")


def idle_workers(stats: QueueStats, t: Thresholds) -> list[Recommendation]:
    waited = stats.oldest_age_ms if stats.oldest_age_ms is not None else stats.wait_p50_ms
    if (
        not stats.waiting
        or not stats.workers
        or stats.utilization is None
        or stats.utilization >= t.idle_utilization
        or waited is None
        or waited < t.idle_grace
    ):
        return []
    return _advice(
        f"{stats.workers} worker process(es) are {stats.utilization:.0%} busy while {stats.waiting} "
        f"messages wait (for {format_duration(waited)}): check the queues they consume, "
        "delays and rate limits.",
        "idle_workers",
        "warning",
    )


#: The rules by name, in the order ``evaluate`` runs them.
RULES: dict[str, Rule] = {
    "no_workers": no_workers,
    "backlog": backlog,
    "backlog_growing": backlog_growing,
    "sizing": sizing,
    "failure_rate": failure_rate,
    "dead_letters": dead_letters,
    "circuit_open": circuit_open,
    "rate_limit": rate_limit,
    "sla": sla,
    "idle_workers": idle_workers,
}


def evaluate(stats: QueueStats, thresholds: Thresholds | None = None) -> tuple[Recommendation, ...]:
    """Every rule's advice for ``stats``, in the order of ``RULES``."""
    limits = thresholds or Thresholds()
    return tuple(advice for rule in RULES.values() for advice in rule(stats, limits))
