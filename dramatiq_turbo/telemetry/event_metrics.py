"""The suite's events (``dramatiq_turbo.events``) as metrics.

Each event name is a counter; only the attributes the vocabulary calls
low-cardinality become metric attributes, plus the queue and actor of the
message being processed, so a dashboard can break cache hits down by level
and queue without exploding the number of series.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from opentelemetry.metrics import Counter, Histogram, Meter

from ..redact import redact_text

__all__ = ["EVENT_COUNTERS", "EventMetrics"]

#: event name -> (counter name, description, attributes kept on the metric).
EVENT_COUNTERS: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "cache.hit": ("turbo.cache.hits", "Results served from the cache.", ("level",)),
    "cache.miss": ("turbo.cache.misses", "Cache lookups that found nothing.", ()),
    "cache.store": ("turbo.cache.stores", "Results stored in the cache.", ()),
    "cache.wait": ("turbo.cache.waits", "Waits for another worker computing the same key.", ("outcome",)),
    "defer": ("turbo.deferrals", "Messages deferred (re-enqueued later without a retry).", ("reason",)),
    "ratelimit.wait": ("turbo.ratelimit.waits", "In-thread waits for a rate-limit slot.", ()),
    "breaker.state": (
        "turbo.breaker.transitions",
        "Circuit breaker state changes.",
        ("breaker", "state", "previous"),
    ),
    "breaker.reject": ("turbo.breaker.rejections", "Calls refused by an open breaker.", ("breaker",)),
    "retry": ("turbo.retries", "Failed messages scheduled for a retry.", ("reason",)),
    "giveup": ("turbo.giveups", "Failed messages not retried any more.", ("reason",)),
    "outage": ("turbo.outages", "Times a shared store became unreachable.", ("component", "error_type")),
    "recovered": ("turbo.recoveries", "Times a shared store became reachable again.", ("component",)),
}

_OTHER = ("turbo.events", "Other suite events.", ())


class EventMetrics:
    """A ``dramatiq_turbo.events`` listener counting events with a meter.

    Parameters:
      meter(Meter): Makes the instruments.
      message_attributes: Returns the low-cardinality attributes of the
        message being processed on this thread (queue, actor), or ``{}``.
    """

    def __init__(self, meter: Meter, message_attributes: Callable[[], Mapping[str, Any]]) -> None:
        self._message_attributes = message_attributes
        self._counters: dict[str, tuple[Counter, tuple[str, ...]]] = {}
        for event, (name, description, keep) in EVENT_COUNTERS.items():
            self._counters[event] = (
                meter.create_counter(name, unit="{event}", description=description),
                keep,
            )
        self._other = meter.create_counter(_OTHER[0], unit="{event}", description=_OTHER[1])
        self._wait: Histogram = meter.create_histogram(
            "turbo.ratelimit.wait.duration",
            unit="s",
            description="Time spent waiting in-thread for a rate-limit slot.",
        )

    def __call__(self, name: str, attributes: Mapping[str, Any]) -> None:
        labels = dict(self._message_attributes())
        known = self._counters.get(name)
        if known is None:
            labels["event"] = name
            self._other.add(1, labels)
            return
        counter, keep = known
        for key in keep:
            value = attributes.get(key)
            if value is not None:
                labels[key] = _label(value)
        counter.add(1, labels)
        if name == "ratelimit.wait":
            wait_ms = attributes.get("wait_ms")
            if isinstance(wait_ms, (int, float)):
                self._wait.record(wait_ms / 1000.0, labels)


def _label(value: Any) -> Any:
    """A metric attribute value: numbers and bools as they are, anything else as redacted text."""
    if isinstance(value, bool | int | float):
        return value
    # A breaker's name may come from a message's options: never a password on a metric.
    return redact_text(value if isinstance(value, str) else str(value))
