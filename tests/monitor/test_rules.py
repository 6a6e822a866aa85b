"""Each recommendation rule: the exact text it gives, its severity, its threshold; none on a healthy queue."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from dramatiq_turbo.monitor import Circuit, DeadLetter, QueueStats, Thresholds
from dramatiq_turbo.monitor.rules import RULES, evaluate, format_duration

HEALTHY = QueueStats(
    queue="emails",
    broker="redis",
    at=1_700_000_000_000,
    window_ms=300_000,
    waiting=5,
    delayed=0,
    dead=0,
    in_progress=2,
    dead_recent=0,
    oldest_age_ms=800,
    counters=True,
    covered_ms=300_000,
    enqueued=600,
    completed=600,
    failed=3,
    enqueued_per_min=120.0,
    completed_per_min=120.0,
    failed_per_min=0.6,
    failure_rate=0.005,
    wait_p50_ms=200,
    wait_p95_ms=900,
    processing_p50_ms=180,
    processing_p95_ms=400,
    processing_mean_ms=200.0,
    cpu_share=0.2,
    workers=2,
    worker_threads=16,
    busy_threads=4,
    utilization=0.4,
    cores=4,
)


def advice(**changes: Any) -> list[tuple[str, str, str]]:
    stats = dataclasses.replace(HEALTHY, **changes)
    return [(a.rule, a.severity, str(a)) for a in evaluate(stats)]


def test_no_rule_fires_on_a_healthy_queue() -> None:
    assert evaluate(HEALTHY) == ()


def test_no_rule_fires_on_an_idle_empty_queue_without_counters() -> None:
    empty = QueueStats(queue="q", broker="stub", at=0, window_ms=300_000, waiting=0, delayed=0, dead=0)
    assert evaluate(empty) == ()


def test_no_workers() -> None:
    assert advice(workers=0, waiting=7) == [
        ("no_workers", "critical", "No live worker consumes emails while 7 messages wait.")
    ]
    assert advice(workers=None, waiting=7) == []  # unknown is not none


def test_backlog_names_the_count_and_the_drain_time() -> None:
    assert advice(waiting=234, completed_per_min=100.0, failed_per_min=0.0, enqueued_per_min=100.0) == [
        (
            "backlog",
            "warning",
            "High number of waiting messages (234). Consider increasing worker concurrency: "
            "at the current rate of 100/min the backlog drains in 2 min 20 s.",
        )
    ]


def test_backlog_with_nothing_processed() -> None:
    found = advice(waiting=234, completed_per_min=0.0, failed_per_min=0.0, enqueued_per_min=0.0, workers=None)
    assert found == [
        (
            "backlog",
            "warning",
            "High number of waiting messages (234). Consider increasing worker concurrency: "
            "no message was processed in the last 5 min, so it will not drain.",
        )
    ]


def test_backlog_without_counters_gives_no_drain_time() -> None:
    assert advice(waiting=234, counters=False, completed_per_min=0.0, failed_per_min=0.0) == [
        (
            "backlog",
            "warning",
            "High number of waiting messages (234). Consider increasing worker concurrency.",
        )
    ]


def test_backlog_threshold() -> None:
    assert advice(waiting=99) == []
    assert [rule for rule, _, _ in advice(waiting=100)] == ["backlog"]


def test_backlog_growing_with_the_drain_time() -> None:
    assert advice(waiting=50, enqueued_per_min=150.0, completed_per_min=100.0, failed_per_min=0.0) == [
        (
            "backlog_growing",
            "warning",
            "Backlog growing by 50/min (150/min in, 100/min processed; 50 waiting): at the current rate "
            "it does not drain (once arrivals stop, it takes 30 s). Add worker threads or processes.",
        )
    ]


def test_backlog_growing_with_nothing_processed() -> None:
    found = advice(waiting=50, enqueued_per_min=150.0, completed_per_min=0.0, failed_per_min=0.0)
    assert found == [
        (
            "backlog_growing",
            "warning",
            "Backlog growing by 150/min (150/min in, none processed; 50 waiting): nothing is draining it.",
        )
    ]


def test_backlog_growing_needs_a_trend_not_a_burst() -> None:
    growing = {"waiting": 50, "enqueued_per_min": 150.0, "completed_per_min": 100.0, "failed_per_min": 0.0}
    assert advice(covered_ms=29_999, **growing) == []
    assert advice(**{**growing, "enqueued_per_min": 109.0}) == []  # below min_growth (10/min)


def test_sizing_by_littles_law_warns_when_the_load_exceeds_the_threads() -> None:
    load = {
        "workers": 1,
        "worker_threads": 2,
        "enqueued_per_min": 600.0,
        "completed_per_min": 600.0,
        "failed_per_min": 0.0,
        "processing_mean_ms": 400.0,
        "cpu_share": 0.25,
    }
    assert advice(**load) == [
        (
            "sizing",
            "warning",
            "Worker sizing (Little's law): 10.00/s x 400 ms = 4.0 messages running at once, 6 slots with "
            "x1.5 headroom, but 1 worker process(es) have 2 threads. Run 2 process(es) x 3 thread(s) "
            "(presets.recommend, 25% CPU).",
        )
    ]
    # Enough threads for the load, not for the headroom: only information.
    assert [(rule, severity) for rule, severity, _ in advice(**{**load, "worker_threads": 5})] == [
        ("sizing", "info")
    ]
    assert advice(**{**load, "worker_threads": 6}) == []
    assert advice(**{**load, "covered_ms": 59_000}) == []  # a burst, not a steady load


def test_failure_rate_above_five_percent() -> None:
    assert advice(completed=90, failed=10, failure_rate=0.1) == [
        (
            "failure_rate",
            "warning",
            "Failure rate 10.0% (10 of 100 in the last 5 min) is above 5%. Check the errors; make errors "
            "that cannot succeed on a retry non-retryable (retryable = False) so they fail at once.",
        )
    ]
    assert [s for _, s, _ in advice(completed=40, failed=60, failure_rate=0.6)] == ["critical"]
    assert advice(completed=95, failed=5, failure_rate=0.05) == []  # not above 5%
    assert advice(completed=8, failed=2, failure_rate=0.2) == []  # too few to tell


def test_dead_letters_with_backoffs_reason() -> None:
    letter = DeadLetter("m1", "send", "retries exhausted", "RuntimeError", "smtp down", 3)
    assert advice(dead_recent=3, dead=12, dead_letters=(letter,)) == [
        (
            "dead_letters",
            "warning",
            "3 message(s) dead-lettered in the last 5 min (12 in the dead-letter queue); "
            "reason: retries exhausted (RuntimeError: smtp down).",
        )
    ]
    assert advice(dead_recent=3, dead=12) == [
        (
            "dead_letters",
            "warning",
            "3 message(s) dead-lettered in the last 5 min (12 in the dead-letter queue).",
        )
    ]
    # Old dead letters alone are no news; where the broker cannot date them, the counters tell.
    assert advice(dead_recent=0, dead=12) == []
    assert [rule for rule, _, _ in advice(dead_recent=None, dead=12, dead_lettered=2)] == ["dead_letters"]


def test_circuit_open_and_half_open() -> None:
    assert advice(open_circuits=(Circuit("llm", "open", 42_000, 17),)) == [
        (
            "circuit_open",
            "warning",
            "Circuit 'llm' is open (trial call in 42 s); it refused 17 message(s) in the last 5 min. "
            "Check the dependency 'llm'.",
        )
    ]
    assert advice(open_circuits=(Circuit("llm", "half-open", 0, 3),)) == [
        (
            "circuit_open",
            "warning",
            "Circuit 'llm' is half-open (trial calls running); it refused 3 message(s) in the last 5 min. "
            "Check the dependency 'llm'.",
        )
    ]
    assert advice(open_circuits=(Circuit("llm", "closed", 0, 3),)) == []


def test_saturated_rate_limit() -> None:
    held = {
        "completed": 100,
        "failed": 0,
        "failure_rate": 0.0,
        "skipped": 30,
        "rate_limited": 30,
        "rate_limit_waits": 10,
        "rate_limit_deferred": 20,
        "saturated_limits": ("call_api: 30 per 1000 ms",),
    }
    assert advice(**held) == [
        (
            "rate_limit",
            "info",
            "Rate limit saturated (call_api: 30 per 1000 ms): 30 of 130 deliveries in the last 5 min waited "
            "for a slot or were deferred (10 waited, 20 deferred). More workers will not help; raise the "
            "limit if the dependency allows it.",
        )
    ]
    assert advice(**{**held, "rate_limited": 12}) == []  # under 10% of 130


def test_oldest_message_over_the_sla() -> None:
    assert advice(oldest_age_ms=420_000) == [
        ("sla", "warning", "Oldest waiting message is 7 min old, above the SLA of 5 min.")
    ]
    assert advice(oldest_age_ms=300_000) == []
    assert [rule for rule, _, _ in advice(oldest_age_ms=90_000)] == []
    tight = dataclasses.replace(HEALTHY, oldest_age_ms=90_000)
    assert [a.rule for a in evaluate(tight, Thresholds(sla=60_000))] == ["sla"]


def test_sla_from_the_queue_wait_where_the_age_is_unknown() -> None:
    assert advice(oldest_age_ms=None, wait_p95_ms=400_000) == [
        (
            "sla",
            "warning",
            "95% of messages waited up to 6 min 40 s in the last 5 min, above the SLA of 5 min.",
        )
    ]


def test_idle_workers_while_messages_wait() -> None:
    assert advice(waiting=57, workers=4, utilization=0.03, oldest_age_ms=12_000) == [
        (
            "idle_workers",
            "warning",
            "4 worker process(es) are 3% busy while 57 messages wait (for 12 s): check the queues they "
            "consume, delays and rate limits.",
        )
    ]
    assert advice(waiting=57, workers=4, utilization=0.03, oldest_age_ms=9_000) == []  # just arrived
    assert advice(waiting=57, workers=4, utilization=0.25, oldest_age_ms=12_000) == []


@pytest.mark.parametrize(
    ("ms", "text"),
    [(850, "850 ms"), (1_500, "1.5 s"), (42_000, "42 s"), (250_000, "4 min 10 s"), (7_500_000, "2 h 5 min")],
)
def test_durations_read_naturally(ms: int, text: str) -> None:
    assert format_duration(ms) == text


def test_every_rule_is_tested_here() -> None:
    tested = {name.removeprefix("test_") for name in globals()}
    covered = {
        "no_workers": "no_workers",
        "backlog": "backlog_names_the_count_and_the_drain_time",
        "backlog_growing": "backlog_growing_with_the_drain_time",
        "sizing": "sizing_by_littles_law_warns_when_the_load_exceeds_the_threads",
        "failure_rate": "failure_rate_above_five_percent",
        "dead_letters": "dead_letters_with_backoffs_reason",
        "circuit_open": "circuit_open_and_half_open",
        "rate_limit": "saturated_rate_limit",
        "sla": "oldest_message_over_the_sla",
        "idle_workers": "idle_workers_while_messages_wait",
    }
    assert set(RULES) == set(covered)
    assert set(covered.values()) <= tested
