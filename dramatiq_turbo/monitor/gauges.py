"""Queue depth and oldest-message age as OpenTelemetry observable gauges.

The health checks of ``QueueMonitor`` keep their latest report here; the
gauges' callbacks only read it, so a metric export never waits on the
broker.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from typing import Any

import dramatiq
from opentelemetry import metrics
from opentelemetry.metrics import CallbackOptions, MeterProvider, Observation

from .stats import PerformanceReport

__all__ = ["QueueGauges", "find_meter_provider"]

_SCOPE = "dramatiq_turbo.monitor"
_DESTINATION = "messaging.destination.name"


def find_meter_provider(broker: dramatiq.Broker) -> MeterProvider | None:
    """The meter provider Telemetry uses, when Telemetry is configured; else ``None``.

    Configured means: ``configure_telemetry`` was called in this process, or
    a ``Telemetry`` middleware is on ``broker`` (then its own provider, or
    the global one).
    """
    from ..telemetry import Telemetry
    from ..telemetry.setup import configured

    telemetry = next((m for m in broker.middleware if isinstance(m, Telemetry)), None)
    if telemetry is not None and telemetry.meter_provider is not None:
        return telemetry.meter_provider
    setup = configured()
    if setup is not None:
        return setup.meter_provider
    if telemetry is not None:
        return metrics.get_meter_provider()
    return None


class QueueGauges:
    """``turbo.queue.depth`` (by ``state``: waiting, delayed, dead, in_progress) and
    ``turbo.queue.oldest_age`` (seconds, as OpenTelemetry's conventions want), per queue.

    Parameters:
      meter_provider(MeterProvider): Where the gauges are created.
    """

    def __init__(self, meter_provider: MeterProvider) -> None:
        from .. import __version__

        self._lock = threading.Lock()
        self._report: PerformanceReport | None = None
        meter = meter_provider.get_meter(_SCOPE, __version__)
        meter.create_observable_gauge(
            "turbo.queue.depth",
            callbacks=[self._depth],
            unit="{message}",
            description="Messages in a queue, by state (waiting, delayed, dead, in_progress).",
        )
        meter.create_observable_gauge(
            "turbo.queue.oldest_age",
            callbacks=[self._oldest],
            unit="s",
            description="How long the oldest waiting message of a queue has been due.",
        )

    def update(self, report: PerformanceReport) -> None:
        """Publish ``report`` at the next collection."""
        with self._lock:
            self._report = report

    def _latest(self) -> PerformanceReport | None:
        with self._lock:
            return self._report

    def _depth(self, options: CallbackOptions) -> Iterable[Observation]:
        report = self._latest()
        if report is None:
            return []
        observations = []
        for stats in report.queues:
            counts: dict[str, Any] = {
                "waiting": stats.waiting,
                "delayed": stats.delayed,
                "dead": stats.dead,
                "in_progress": stats.in_progress,
            }
            observations += [
                Observation(value, {_DESTINATION: stats.queue, "state": state})
                for state, value in counts.items()
                if value is not None
            ]
        return observations

    def _oldest(self, options: CallbackOptions) -> Iterable[Observation]:
        report = self._latest()
        if report is None:
            return []
        return [
            Observation(stats.oldest_age_ms / 1000, {_DESTINATION: stats.queue})
            for stats in report.queues
            if stats.oldest_age_ms is not None
        ]
