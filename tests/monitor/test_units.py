"""Histograms, summaries, the stats types and URL redaction: the pieces, without services."""

from __future__ import annotations

import json
import pickle
import random

import pytest

from dramatiq_turbo.monitor import QueueStats, Recommendation
from dramatiq_turbo.monitor.counters import MINUTE, Tally, summarize
from dramatiq_turbo.monitor.histogram import bucket_bounds, bucket_of, merge, percentile
from dramatiq_turbo.monitor.redact import Redactor, redact_url
from dramatiq_turbo.monitor.stats import PerformanceReport, WorkerInfo, worst_severity
from dramatiq_turbo.monitor.utilization import BusyTracker


def _exact(values: list[float], pct: int) -> float:
    ordered = sorted(values)
    return ordered[max(1, -(-pct * len(ordered) // 100)) - 1]


@pytest.mark.parametrize("seed", range(5))
def test_percentiles_from_buckets_are_within_ten_percent(seed: int) -> None:
    rng = random.Random(seed)
    values = [rng.lognormvariate(4, 1.5) for _ in range(5_000)]  # ms, from about 1 ms to many seconds
    counts: dict[int, int] = {}
    for value in values:
        counts[bucket_of(value)] = counts.get(bucket_of(value), 0) + 1
    for pct in (50, 95, 99):
        exact = _exact(values, pct)
        found = percentile(counts, pct)
        assert found is not None
        assert abs(found - exact) <= 0.1 * exact + 1, (pct, found, exact)


def test_buckets_hold_what_they_say() -> None:
    for ms in (0.2, 1.0, 1.01, 7.0, 1_000.0, 3_600_000.0):
        lower, upper = bucket_bounds(bucket_of(ms))
        assert lower < ms <= upper or (ms <= 1 and upper == 1.0)
    assert percentile({}, 50) is None


def test_histograms_of_processes_add_up() -> None:
    one, two = {3: 2, 10: 1}, {10: 4, 12: 1}
    assert merge([one, two]) == {3: 2, 10: 5, 12: 1}


def test_summary_rates_are_over_the_time_the_queue_was_active() -> None:
    at = 1_000 * MINUTE + 30_000  # 30 s into a minute
    buckets = {
        1_000: {"completed": 60, "failed": 6, "first": 1_000 * MINUTE + 10_000, "p:20": 66, "w:5": 66},
        994: {"completed": 999},  # outside a 5-minute window
    }
    summary = summarize(buckets, at=at, window=300_000)
    assert summary.get("completed") == 60 and summary.get("failed") == 6
    assert summary.covered_ms == 20_000  # active since its first write, 20 s ago
    assert summary.per_min("completed") == pytest.approx(180.0)
    assert summary.processing == {20: 66} and summary.wait == {5: 66}
    assert [row[0] for row in summary.per_minute] == [m * MINUTE for m in range(996, 1_001)]


def test_tally_drains_once() -> None:
    tally = Tally()
    tally.add("q", 5 * MINUTE + 1, [("completed", 1), ("proc_ms", 10)])
    tally.add("q", 5 * MINUTE + 2, iter([("completed", 1)]))  # a generator is summed when drained
    batch = tally.drain()
    assert batch.counts == {("q", 5): {"completed": 2, "proc_ms": 10}}
    assert batch.first == {("q", 5): 5 * MINUTE + 1}
    assert not tally.drain()


def test_busy_tracker_counts_running_work_in_its_interval() -> None:
    tracker = BusyTracker()
    tracker._tick -= 1.0  # the interval began a second ago
    tracker.start("q")
    tracker._running[next(iter(tracker._running))] = ("q", tracker._tick + 0.5)  # started half-way
    assert tracker.running() == {"q": 1}
    assert tracker.tick(threads=2) == pytest.approx(0.25, abs=0.02)  # 0.5 s of 2 x 1 s


def test_a_recommendation_is_its_text_with_a_rule_and_severity() -> None:
    advice = Recommendation("High number of waiting messages (234).", rule="backlog", severity="warning")
    assert advice == "High number of waiting messages (234)."
    assert (advice.rule, advice.severity) == ("backlog", "warning")
    again = pickle.loads(pickle.dumps(advice))
    assert (again, again.rule, again.severity) == (advice, "backlog", "warning")
    with pytest.raises(ValueError, match="severity"):
        Recommendation("x", rule="r", severity="fatal")
    assert worst_severity([advice, Recommendation("y", rule="r", severity="info")]) == "warning"


def test_stats_and_reports_are_json() -> None:
    advice = Recommendation("x", rule="backlog", severity="warning")
    stats = QueueStats(
        queue="q",
        broker="stub",
        at=1,
        window_ms=60_000,
        waiting=1,
        delayed=0,
        dead=0,
        recommendations=(advice,),
    )
    data = json.loads(json.dumps(stats.as_dict()))
    assert data["recommendations"] == [{"rule": "backlog", "severity": "warning", "text": "x"}]
    assert data["healthy"] is False and data["waiting"] == 1
    worker = WorkerInfo("w", "h", 1, ("q",), 8, 2, 0.5, 2, 100)
    report = PerformanceReport(at=1, window_ms=60_000, queues=(stats,), workers=(worker,))
    document = json.loads(json.dumps(report.as_dict()))
    assert document["totals"]["worker_threads"] == 8 and document["totals"]["utilization"] == 0.5
    assert document["healthy"] is False


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://:s3cr%40t@h:6379/1", "redis://:***@h:6379/1"),
        ("amqp://guest:guest@127.0.0.1:5672", "amqp://guest:***@127.0.0.1:5672"),
        ("redis://h:6379/0", "redis://h:6379/0"),
        ("amqp://u:p@[::1]:5672/vh", "amqp://u:***@[::1]:5672/vh"),
    ],
)
def test_urls_lose_their_password(url: str, shown: str) -> None:
    assert redact_url(url) == shown


def test_the_redactor_removes_secrets_in_any_form() -> None:
    redactor = Redactor("redis://:s3cr%40t@h:6379/1", None)
    text = redactor("redis://:s3cr%40t@h:6379/1 refused s3cr@t and s3cr%40t")
    assert "s3cr" not in text
    assert text == "redis://:***@h:6379/1 refused *** and ***"


def test_a_plain_table_without_rich(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import sys

    from dramatiq_turbo.monitor.render import print_stats

    for name in [m for m in sys.modules if m == "rich" or m.startswith("rich.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "rich", None)  # import rich now fails
    advice = Recommendation("High number of waiting messages (234).", rule="backlog", severity="warning")
    stats = QueueStats(
        queue="emails",
        broker="redis",
        at=0,
        window_ms=300_000,
        waiting=234,
        delayed=1,
        dead=0,
        recommendations=(advice,),
    )
    print_stats([stats], "redis://:***@h:6379/0")
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("Queues of redis://:***@h:6379/0 at ")
    assert out[1].split()[:4] == ["queue", "waiting", "delayed", "dead"]
    assert out[3].split()[:4] == ["emails", "234", "1", "0"]
    assert out[4:] == ["emails:", "  warning  High number of waiting messages (234)."]
