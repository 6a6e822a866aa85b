"""The metric instruments of the ``Telemetry`` middleware."""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping
from typing import Any

from opentelemetry.metrics import CallbackOptions, Histogram, Meter, Observation

from .semconv import DURATION_BUCKETS

__all__ = ["WAIT_BUCKETS", "Instruments", "LocalCounter"]

#: The bucket advice of ``turbo.queue.wait.duration``, in seconds: queue waits
#: are longer than operations, up to hours for delayed messages.
WAIT_BUCKETS = (*DURATION_BUCKETS, 30.0, 60.0, 300.0, 900.0, 3600.0)


class LocalCounter:
    """A monotonic count per attribute set, kept in process and observed at collection.

    The SDK's synchronous ``Counter.add`` validates and hashes its attributes
    on every call; the per-message counters instead add to a dict entry for
    an attribute set the middleware built once, and report the totals when
    the reader collects (an observable counter: the same data, cumulative).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[int, list[Any]] = {}  # id(attributes) -> [attributes, count]

    def add(self, attributes: Mapping[str, Any]) -> None:
        """Count one for ``attributes`` (a mapping the caller keeps and never mutates)."""
        key = id(attributes)
        with self._lock:
            entry = self._counts.get(key)
            if entry is None:
                self._counts[key] = [attributes, 1]
            else:
                entry[1] += 1

    def reset(self) -> None:
        """Forget every count (in a forked child, the parent's are not ours)."""
        with self._lock:
            self._counts.clear()

    def observe(self, options: CallbackOptions) -> Iterable[Observation]:
        with self._lock:
            entries = [(attributes, count) for attributes, count in self._counts.values()]
        # Equal attribute sets in distinct dicts must be one observation: for
        # an observable counter, a second one would replace the first.
        totals: dict[tuple[tuple[str, Any], ...], int] = {}
        for attributes, count in entries:
            key = tuple(sorted(attributes.items()))
            totals[key] = totals.get(key, 0) + count
        return [Observation(count, dict(key)) for key, count in totals.items()]


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
        self.sent = LocalCounter()
        meter.create_observable_counter(
            "messaging.client.sent.messages",
            callbacks=[self.sent.observe],
            unit="{message}",
            description="Number of messages producer attempted to send to the broker.",
        )
        self.consumed = LocalCounter()
        meter.create_observable_counter(
            "messaging.client.consumed.messages",
            callbacks=[self.consumed.observe],
            unit="{message}",
            description="Number of messages that were delivered to the application.",
        )
        self.queue_wait: Histogram = meter.create_histogram(
            "turbo.queue.wait.duration",
            unit="s",
            description="Time between a message becoming due (enqueue or eta) and its processing start.",
            explicit_bucket_boundaries_advisory=WAIT_BUCKETS,
        )
