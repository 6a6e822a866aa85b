"""MetricsCollector: counts, average, percentiles, thread safety, the log line."""

from __future__ import annotations

import logging
import threading

import pytest

from dramatiq_turbo import MetricsCollector


def test_log_line_has_the_guide_form_then_percentiles(caplog: pytest.LogCaptureFixture) -> None:
    collector = MetricsCollector("PdfWorker")
    for ms in range(1, 151):
        collector.record_success(ms * 100.0)
    collector.record_failure()
    collector.record_failure()
    caplog.set_level(logging.INFO, logger="dramatiq_turbo.telemetry")
    snapshot = collector.log_metrics()
    (record,) = caplog.records
    assert record.getMessage() == (
        "[PdfWorker] Processed: 150, Failed: 2, Avg Time: 7550.00ms, "
        "p50: 7500.00ms, p95: 14300.00ms, p99: 14900.00ms"
    )
    assert snapshot.max_ms == 15000.0


def test_percentiles_are_nearest_rank() -> None:
    collector = MetricsCollector("w")
    assert collector.snapshot().p99_ms == 0.0
    for ms in (5, 1, 3, 2, 4):
        collector.record_success(ms)
    snapshot = collector.snapshot()
    assert (snapshot.p50_ms, snapshot.p95_ms, snapshot.p99_ms) == (3.0, 5.0, 5.0)
    assert snapshot.avg_ms == 3.0


def test_window_bounds_percentiles_but_not_counts() -> None:
    collector = MetricsCollector("w", window=10)
    for _ in range(100):
        collector.record_success(1000.0)
    for _ in range(10):
        collector.record_success(1.0)
    snapshot = collector.snapshot()
    assert snapshot.processed == 110
    assert snapshot.p99_ms == 1.0  # only the last 10 durations
    assert snapshot.avg_ms == pytest.approx((100 * 1000 + 10) / 110)


def test_many_threads_lose_no_count() -> None:
    collector = MetricsCollector("w")

    def work() -> None:
        for _ in range(2000):
            collector.record_success(1.5)
            collector.record_failure()

    threads = [threading.Thread(target=work) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    snapshot = collector.snapshot()
    assert (snapshot.processed, snapshot.failed) == (16000, 16000)
    assert snapshot.avg_ms == pytest.approx(1.5)


@pytest.mark.parametrize("bad", [-1, "10", None, float("nan"), True])
def test_bad_durations_are_refused(bad: object) -> None:
    with pytest.raises(ValueError, match="record_success"):
        MetricsCollector("w").record_success(bad)  # type: ignore[arg-type]


def test_reset() -> None:
    collector = MetricsCollector("w")
    collector.record_success(3)
    collector.record_failure()
    collector.reset()
    assert collector.snapshot().processed == collector.snapshot().failed == 0
