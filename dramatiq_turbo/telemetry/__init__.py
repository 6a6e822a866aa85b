"""OpenTelemetry for Dramatiq: the ``Telemetry`` middleware, its setup, and job timing.

- ``Telemetry``: producer and consumer spans and metrics, per the
  OpenTelemetry messaging conventions.
- ``configure_telemetry``: OTLP/HTTP export configured by ``OTEL_*``
  variables, fork-safe.
- ``MetricsCollector``: per-worker counts, average and percentiles.
- ``step`` and ``Timer``: a job's steps as child spans and a step table.
"""

from __future__ import annotations

from .collector import MetricsCollector, MetricsSnapshot
from .middleware import Telemetry
from .propagation import CONTEXT_OPTION
from .setup import TelemetrySetup, configure_telemetry
from .steps import StepTable, current_steps, step
from .timer import Timer

__all__ = [
    "CONTEXT_OPTION",
    "MetricsCollector",
    "MetricsSnapshot",
    "StepTable",
    "Telemetry",
    "TelemetrySetup",
    "Timer",
    "configure_telemetry",
    "current_steps",
    "step",
]
