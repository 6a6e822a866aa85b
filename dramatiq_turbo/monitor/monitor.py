"""``QueueMonitor``: queue health from the broker, the workers' counters and the breakers' state."""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
import weakref
from collections.abc import Callable, Sequence
from typing import Any

import dramatiq
import redis
from opentelemetry.metrics import MeterProvider
from redis import Redis

from ..options import require_ms
from ..redis import RedisLike, connect_redis_like, hash_key, resolve_redis
from .brokers import BrokerAdapter, adapter_for
from .compose import broker_fields, build_stats, counter_fields, gate_fields, worker_fields, worker_info
from .counters import (
    DEFAULT_NAMESPACE,
    CounterStore,
    MemoryCounterStore,
    Reading,
    RedisCounterStore,
    summarize,
)
from .gauges import QueueGauges, find_meter_provider
from .recorder import QueueStatsRecorder
from .rules import Thresholds, evaluate
from .scripts import run_pipeline
from .stats import Circuit, PerformanceReport, QueueStats

__all__ = ["QueueMonitor"]

logger = logging.getLogger(__name__)


class QueueMonitor:
    """Statistics, health checks and recommendations for a broker's queues.

    The broker's own state (waiting, delayed, dead-lettered, in progress,
    oldest message) is read from the broker; rates, latencies and worker
    utilization from the counters that ``QueueStatsRecorder`` writes in every
    worker process.  Statistics of any number of queues take a fixed number
    of round trips: one to the broker, one or two to the counters' Redis.

    Parameters:
      broker(dramatiq.Broker): A ``RedisBroker``, ``RabbitmqBroker`` or ``StubBroker``.
      redis: Where the workers' counters are: a client, a URL, or ``None``
        (the ``QueueStatsRecorder`` on ``broker`` knows, else the
        ``RedisBroker``'s server; without either, no rates).
      namespace(str): The recorder's key prefix (``"turbo:monitor"``).
      window(int): Milliseconds of history the rates cover (5 minutes).
      thresholds(Thresholds): The recommendations' limits.
      dead_letter_samples(int): Dead letters per queue whose reason is read.
      breaker_namespace(str): ``CircuitBreaker``'s key prefix, to read
        circuits' state (``"turbo:breaker"``).
      meter_provider(MeterProvider): Where the health checks publish gauges;
        by default Telemetry's, when Telemetry is configured, else none.
    """

    def __init__(
        self,
        broker: dramatiq.Broker,
        *,
        redis: RedisLike = None,
        namespace: str = DEFAULT_NAMESPACE,
        window: int = 300_000,
        thresholds: Thresholds | None = None,
        dead_letter_samples: int = 3,
        breaker_namespace: str = "turbo:breaker",
        meter_provider: MeterProvider | None = None,
    ) -> None:
        self.broker = broker
        self.window = require_ms("window", window, allow_zero=False)
        self.thresholds = thresholds or Thresholds()
        self.dead_letter_samples = dead_letter_samples
        self.breaker_namespace = breaker_namespace
        self.adapter: BrokerAdapter = adapter_for(broker)
        self.recorder = next((m for m in broker.middleware if isinstance(m, QueueStatsRecorder)), None)
        self._own_client: Redis | None = None  # a client this monitor made, and closes
        self.counters: CounterStore | None = self._counter_store(resolve_redis(redis), namespace)
        self.meter_provider = meter_provider
        self._registered: list[str] = []
        self._health = _HealthChecks(self)

    def _counter_store(self, client: redis.Redis | None, namespace: str) -> CounterStore | None:
        if client is not None:
            return RedisCounterStore(client, namespace=namespace)
        if self.recorder is not None:
            return self.recorder._store_for(self.broker)
        broker_client = getattr(self.broker, "client", None)
        if isinstance(broker_client, redis.Redis):
            own = self._own_client = connect_redis_like(broker_client)
            return RedisCounterStore(own, namespace=namespace)
        return None

    # -- queues -------------------------------------------------------------

    def register_queue(self, name: str) -> None:
        """Watch queue ``name`` (by default every queue the broker and the counters know of)."""
        if not isinstance(name, str) or not name:
            raise ValueError(f"a queue name must be a non-empty str, got {name!r}")
        if name not in self._registered:
            self._registered.append(name)

    def queues(self) -> list[str]:
        """The registered queues, or else every queue declared or found on the broker and in the counters."""
        if self._registered:
            return list(self._registered)
        found = self.adapter.queues()
        if self.counters is not None:
            found |= self.counters.read([], window=self.window).queues
        return sorted(name for name in found if not name.endswith((".DQ", ".XQ")))

    # -- statistics -----------------------------------------------------------

    def get_detailed_stats(self, queue: str) -> QueueStats:
        """Everything known about ``queue`` now, with recommendations."""
        return self.get_stats([queue])[0]

    def get_stats(self, queues: Sequence[str] | None = None) -> list[QueueStats]:
        """``QueueStats`` of ``queues`` (default: ``queues()``), read together."""
        return list(self._collect(list(queues) if queues is not None else self.queues())[0])

    def get_performance_report(self) -> PerformanceReport:
        """``QueueStats`` of every watched queue, the live workers, and totals."""
        stats, reading, at = self._collect(self.queues())
        workers = tuple(
            worker_info(beat, at) for beat in (reading.workers if reading else ()) if beat.live(at)
        )
        return PerformanceReport(at=at, window_ms=self.window, queues=tuple(stats), workers=workers)

    def _collect(self, queues: list[str]) -> tuple[list[QueueStats], Reading | None, int]:
        state = self.adapter.read(queues, window=self.window, samples=self.dead_letter_samples)
        reading = self._read_counters(queues)
        at = reading.at if reading is not None else state.at
        beats = [beat for beat in (reading.workers if reading else ()) if beat.live(at)]
        summaries = (
            {queue: summarize(reading.buckets.get(queue, {}), at=at, window=self.window) for queue in queues}
            if reading is not None
            else {}
        )
        circuits = self._circuits(summaries, beats)
        stats = []
        for queue in queues:
            summary = summaries.get(queue)
            parts = [
                broker_fields(self.adapter.kind, state.queues[queue], state.at),
                counter_fields(summary) if summary is not None else {},
                worker_fields(queue, self.adapter.kind, state.queues[queue], beats, bool(beats)),
                gate_fields(queue, summary, beats, circuits),
            ]
            stats.append(self._advise(build_stats(queue, self.adapter.kind, at, self.window, parts)))
        return stats, reading, at

    def _read_counters(self, queues: list[str]) -> Reading | None:
        if self.counters is None:
            return None
        if isinstance(self.counters, MemoryCounterStore) and self.recorder is not None:
            self.recorder.flush(self.broker)  # same process: what it counted is there to read
        return self.counters.read(queues, window=self.window)

    def _advise(self, stats: QueueStats) -> QueueStats:
        advice = evaluate(stats, self.thresholds)
        limits = stats.saturated_limits if any(a.rule == "rate_limit" for a in advice) else ()
        return dataclasses.replace(stats, recommendations=advice, saturated_limits=limits)

    def _circuits(self, summaries: dict[str, Any], beats: Sequence[Any]) -> dict[str, Circuit]:
        """The state of every circuit breaker that guards a watched queue, by name."""
        names: set[str] = set()
        for summary in summaries.values():
            names.update(summary.breakers)
        for beat in beats:
            for queue_breakers in beat.payload.get("breakers", {}).values():
                names.update(queue_breakers)
        if not names:
            return {}
        if isinstance(self.counters, RedisCounterStore):
            return self._redis_circuits(self.counters.client, sorted(names))
        return self._local_circuits(sorted(names))

    def _redis_circuits(self, client: redis.Redis, names: list[str]) -> dict[str, Circuit]:
        commands: list[Any] = [("TIME",)]
        commands += [
            ("HMGET", hash_key(self.breaker_namespace, n, "state"), "state", "open_until") for n in names
        ]
        replies = run_pipeline(client, commands)
        seconds, micros = replies[0]
        now = int(seconds) * 1000 + int(micros) // 1000
        circuits = {}
        for name, reply in zip(names, replies[1:], strict=True):
            if isinstance(reply, redis.ResponseError) or not reply or reply[0] is None:
                continue
            state, until = reply[0].decode(), int(reply[1] or 0)
            if state == "open" and until <= now:
                state = "half-open"  # the next call is a trial
            circuits[name] = Circuit(name, state, max(0, until - now) if state == "open" else 0, 0)
        return circuits

    def _local_circuits(self, names: list[str]) -> dict[str, Circuit]:
        # No shared store: this process's CircuitBreaker is the only one that knows.
        middleware: Any = next(
            (m for m in self.broker.middleware if type(m).__name__ == "CircuitBreaker"), None
        )
        if middleware is None:
            return {}
        return {name: Circuit(name, str(middleware.get(name).current_state), 0, 0) for name in names}

    # -- health checks ------------------------------------------------------------

    def start_health_checks(
        self, interval: int = 30_000, *, on_report: Callable[[PerformanceReport], None] | None = None
    ) -> None:
        """Check every watched queue every ``interval`` ms in a background thread.

        Each check logs recommendations as they appear (warning) and clear
        (info), calls ``on_report`` with the report, and, when Telemetry is
        configured (or a ``meter_provider`` was given), publishes queue depth
        and oldest-message age as observable gauges.  Calling it again while
        checks run changes nothing; a forked child does not inherit running
        checks (threads do not survive ``fork``) and may start its own.
        """
        self._health.start(require_ms("interval", interval, allow_zero=False), on_report)

    def stop_health_checks(self, timeout: int = 5_000) -> None:
        """Stop the health checks and wait up to ``timeout`` ms for the thread to end."""
        self._health.stop(timeout)

    @property
    def last_report(self) -> PerformanceReport | None:
        """The report of the last health check."""
        return self._health.last

    def close(self) -> None:
        """Stop the health checks and close the broker adapter's connections."""
        self.stop_health_checks()
        self.adapter.close()
        if self._own_client is not None:
            self._own_client.close()


class _HealthChecks:
    """The background thread of ``QueueMonitor.start_health_checks``."""

    def __init__(self, monitor: QueueMonitor) -> None:
        self.monitor = weakref.proxy(monitor)
        self.broker = monitor.broker
        self.last: PerformanceReport | None = None
        self.gauges: QueueGauges | None = None
        self._reset()
        _checks.add(self)

    def _reset(self) -> None:
        self.lock = threading.Lock()
        self.stop_event = threading.Event()
        self.thread: threading.Thread | None = None
        self.pid = os.getpid()
        self.seen: dict[str, set[str]] = {}

    def start(self, interval: int, on_report: Callable[[PerformanceReport], None] | None) -> None:
        with self.lock:
            if self.thread is not None and self.thread.is_alive():
                return
            provider = self.monitor.meter_provider or find_meter_provider(self.broker)
            if provider is not None and self.gauges is None:
                self.gauges = QueueGauges(provider)
            self.stop_event = threading.Event()
            self.thread = threading.Thread(
                target=self._run, args=(interval, on_report, self.stop_event), name="turbo-queue-health"
            )
            self.thread.daemon = True
            self.thread.start()

    def stop(self, timeout: int) -> None:
        with self.lock:
            thread, self.thread = self.thread, None
            self.stop_event.set()
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout / 1000)

    def _run(
        self, interval: int, on_report: Callable[[PerformanceReport], None] | None, stop: threading.Event
    ) -> None:
        while not stop.is_set():
            self.check(on_report)
            stop.wait(interval / 1000)

    def check(self, on_report: Callable[[PerformanceReport], None] | None = None) -> None:
        try:
            report = self.monitor.get_performance_report()
        except ReferenceError:
            self.stop_event.set()  # the monitor is gone
            return
        except Exception as error:
            logger.warning("Queue health check failed: %s: %s", type(error).__name__, error)
            return
        self.last = report
        if self.gauges is not None:
            self.gauges.update(report)
        self._log(report)
        if on_report is not None:
            try:
                on_report(report)
            except Exception:
                logger.exception("Queue health check: on_report failed.")

    def _log(self, report: PerformanceReport) -> None:
        for stats in report.queues:
            current = {str(r) for r in stats.recommendations}
            before = self.seen.get(stats.queue, set())
            for text in sorted(current - before):
                logger.warning("Queue %s: %s", stats.queue, text)
            if before and not current:
                logger.info("Queue %s: healthy again.", stats.queue)
            self.seen[stats.queue] = current

    def _after_fork(self) -> None:
        # The thread stayed in the parent; a lock it held would never be released here.
        self._reset()


_checks: weakref.WeakSet[_HealthChecks] = weakref.WeakSet()


def _reset_after_fork() -> None:
    for checks in list(_checks):
        checks._after_fork()


os.register_at_fork(after_in_child=_reset_after_fork)
