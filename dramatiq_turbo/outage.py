"""Degrading gracefully while a backing service (Redis) is down.

A Redis outage never fails a job by itself: the cache, breaker and limiter
fall back to per-process behaviour.  ``Outage`` is the one place that notices
an outage, logs it once when it starts and once when it ends, and counts the
errors in between, so a dead Redis does not flood the log with one traceback
per message.
"""

from __future__ import annotations

import logging
import threading

from .events import record

__all__ = ["Outage"]


class Outage:
    """Tracks one component's outages of its backing service.

    Call ``failed(error)`` when a call to the service fails and ``succeeded()``
    when one works; both are cheap when nothing changes.

    Parameters:
      component(str): Who depends on the service, such as ``"cache"``; used in
        logs and in the ``outage``/``recovered`` events.
      logger(logging.Logger): Where to log; the module's logger by default.
    """

    def __init__(self, *, component: str, logger: logging.Logger | None = None) -> None:
        self.component = component
        self.logger = logger or logging.getLogger(__name__)
        self.errors = 0
        self.outages = 0
        self.active = False
        self._lock = threading.Lock()

    def failed(self, error: BaseException) -> None:
        """Count a failed call; log and record an event when it starts an outage."""
        with self._lock:
            self.errors += 1
            starts = not self.active
            if starts:
                self.active = True
                self.outages += 1
        if starts:
            self.logger.warning(
                "%s: Redis is unreachable (%s: %s); working per process until it returns.",
                self.component,
                type(error).__name__,
                error,
            )
            record("outage", component=self.component, error_type=type(error).__name__)

    def succeeded(self) -> None:
        """Note a working call; log and record an event when it ends an outage."""
        if not self.active:
            return
        with self._lock:
            ends, self.active = self.active, False
        if ends:
            self.logger.warning("%s: Redis is reachable again; shared state resumed.", self.component)
            record("recovered", component=self.component)
