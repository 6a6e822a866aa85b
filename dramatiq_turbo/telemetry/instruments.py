"""The metric instruments of the ``Telemetry`` middleware."""

from __future__ import annotations

from opentelemetry.metrics import Counter, Histogram, Meter

from .semconv import DURATION_BUCKETS

__all__ = ["Instruments"]

# Queue waits are longer than operations: up to hours for delayed messages.
_WAIT_BUCKETS = (*DURATION_BUCKETS, 30.0, 60.0, 300.0, 900.0, 3600.0)


class Instruments:
    """The instruments made from one meter (one per process: see ``Telemetry``)."""

    def __init__(self, meter: Meter) -> None:
        self.meter = meter
        self.process_duration: Histogram = meter.create_histogram(
            "messaging.process.duration",
            unit="s",
            description="Duration of processing operation.",
            explicit_bucket_boundaries_advisory=DURATION_BUCKETS,
        )
        self.operation_duration: Histogram = meter.create_histogram(
            "messaging.client.operation.duration",
            unit="s",
            description="Duration of messaging operation initiated by a producer or consumer client.",
            explicit_bucket_boundaries_advisory=DURATION_BUCKETS,
        )
        self.sent: Counter = meter.create_counter(
            "messaging.client.sent.messages",
            unit="{message}",
            description="Number of messages producer attempted to send to the broker.",
        )
        self.consumed: Counter = meter.create_counter(
            "messaging.client.consumed.messages",
            unit="{message}",
            description="Number of messages that were delivered to the application.",
        )
        self.queue_wait: Histogram = meter.create_histogram(
            "turbo.queue.wait.duration",
            unit="s",
            description="Time between a message becoming due (enqueue or eta) and its processing start.",
            explicit_bucket_boundaries_advisory=_WAIT_BUCKETS,
        )
