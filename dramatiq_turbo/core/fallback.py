"""The suite's one outage policy: the shared store, or a local one while it is down.

The cache, the breaker and the limiter each keep their state in Redis and
have an in-process store with the same interface (L1 alone, ``MemoryStore``,
``LocalLimitStore``).  ``Fallback`` holds the pair and decides which one a
call goes to: the shared store, unless it failed less than
``retry_interval`` ms ago; on a Redis error the call is made on the local
store instead (or the error is raised, for a limiter that fails closed).
``Outage`` logs the outage once when it starts and once when it ends.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Generic, TypeVar

import redis

from ..outage import Outage

__all__ = ["Fallback"]

S = TypeVar("S")
T = TypeVar("T")


class Fallback(Generic[S]):
    """A shared store and its local stand-in.

    Parameters:
      shared: The store in Redis, or ``None`` to work per process only.
      local: The in-process store with the same interface.
      component(str): Who depends on Redis (``"cache"``), for the log and events.
      logger(logging.Logger): Where the outage is logged.
      outage(Outage): An ``Outage`` to share (one per middleware), instead of a new one.
      retry_interval(int): Milliseconds after a failure during which the shared
        store is not tried again; 0 tries it on every call.
      errors(tuple): The exceptions that mean the shared store failed
        (``redis.RedisError`` by default).
    """

    def __init__(
        self,
        *,
        shared: S | None,
        local: S,
        component: str,
        logger: logging.Logger | None = None,
        outage: Outage | None = None,
        retry_interval: int = 0,
        errors: tuple[type[BaseException], ...] = (redis.RedisError,),
    ) -> None:
        self.shared = shared
        self.local = local
        self.outage = outage or Outage(component=component, logger=logger)
        self.retry_interval = retry_interval / 1000
        self.errors = errors
        self._failed_at = 0.0

    @property
    def has_shared(self) -> bool:
        """Whether there is a shared store at all (not just the local one)."""
        return self.shared is not None and self.shared is not self.local

    def current(self) -> S:
        """The store to use now: the shared one, unless it failed less than ``retry_interval`` ago."""
        shared = self.shared
        if shared is None or (
            self.outage.active and time.monotonic() - self._failed_at < self.retry_interval
        ):
            return self.local
        return shared

    def failed(self, error: BaseException) -> None:
        """A call to the shared store failed."""
        self._failed_at = time.monotonic()
        self.outage.failed(error)

    def succeeded(self, sent_at: float | None = None) -> None:
        """A call to the shared store, sent at ``sent_at`` (``time.monotonic()``), worked."""
        self.outage.succeeded(sent_at)

    def run(self, decide: Callable[[S], T], *, local_on_error: bool = True) -> tuple[S, T]:
        """``decide(store)`` on the current store, and on the local one when Redis fails.

        Returns:
          The store that decided, and its answer.

        Raises:
          redis.RedisError: (one of ``errors``) when Redis fails and ``local_on_error`` is false.
        """
        store = self.current()
        if store is self.local:
            return store, decide(store)
        sent_at = time.monotonic()
        try:
            answer = decide(store)
        except self.errors as error:
            self.failed(error)
            if not local_on_error:
                raise
            return self.local, decide(self.local)
        self.succeeded(sent_at)
        return store, answer

    def answer(
        self,
        reply: Callable[[], T],
        decide: Callable[[S], T],
        *,
        local_on_error: bool = True,
        sent_at: float | None = None,
    ) -> tuple[S, T]:
        """The shared store's answer from a call already sent (``reply()`` raises its error), as ``run``.

        ``sent_at`` is when the call went out (``Call.sent_at``): its success
        ends an outage only if it was sent after the outage began.
        """
        assert self.shared is not None
        try:
            answer = reply()
        except self.errors as error:
            self.failed(error)
            if not local_on_error:
                raise
            return self.local, decide(self.local)
        self.succeeded(sent_at)
        return self.shared, answer
