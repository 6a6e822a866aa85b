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
import time

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
        #: When the current (or last) outage began, by ``time.monotonic()``.
        self.began = 0.0
        self._lock = threading.Lock()

    def failed(self, error: BaseException) -> None:
        """Count a failed call; log and record an event when it starts an outage."""
        with self._lock:
            self.errors += 1
            starts = not self.active
            if starts:
                self.active = True
                self.outages += 1
                self.began = time.monotonic()
        if starts:
            self.logger.warning(
                "%s: Redis is unreachable (%s: %s); working per process until it returns.",
                self.component,
                type(error).__name__,
                error,
            )
            record("outage", component=self.component, error_type=type(error).__name__)

    def succeeded(self, sent_at: float | None = None) -> None:
        """Note a working call; log and record an event when it ends an outage.

        Parameters:
          sent_at(float): When the call went out (``time.monotonic()``).  A
            reply to a call sent before the outage began says nothing of
            Redis now: with threads, it can be handled just after another
            thread's call failed, and must not end the outage.
        """
        if not self.active:
            return
        with self._lock:
            if sent_at is not None and sent_at < self.began:
                return
            ends, self.active = self.active, False
        if ends:
            self.logger.warning("%s: Redis is reachable again; shared state resumed.", self.component)
            record("recovered", component=self.component)
