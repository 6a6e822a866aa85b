"""Keeping every process's L1 honest: the invalidation channel.

Every write and delete of a ``MultiLevelCache`` publishes its keys on
``<namespace>:invalidate`` in the same round trip.  Each process runs one
listener thread that drops those keys from its L1.  Pub/sub delivers only
to connected subscribers, so when the listener subscribes again after Redis
was unreachable, it clears the whole L1: any message it missed is then
harmless.  While the listener is cut off (and in the milliseconds before its
first subscription is confirmed), an L1 entry may be stale for at most the
cache's ``l1_ttl``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
from collections.abc import Callable

import redis

from .store import RedisStore

__all__ = ["InvalidationListener"]

logger = logging.getLogger(__name__)


class InvalidationListener:
    """A daemon thread that applies other processes' invalidations to this process's L1.

    Parameters:
      store(RedisStore): The channel and client.
      drop(callable): Called with a list of keys to drop from L1.
      reset(callable): Called to clear L1 when (re)subscribed.
      retry_interval(int): Milliseconds between reconnection attempts.
    """

    def __init__(
        self,
        store: RedisStore,
        *,
        drop: Callable[[list[str]], None],
        reset: Callable[[], None],
        retry_interval: int = 1_000,
    ) -> None:
        self.store = store
        self.drop = drop
        self.reset = reset
        self.retry_interval = retry_interval
        self.subscribed = threading.Event()
        self._thread: threading.Thread | None = None
        self._pid = 0
        self._stop = threading.Event()
        self._lock = threading.Lock()

    def ensure_started(self) -> None:
        """Start the thread in this process unless it runs already (cheap when it does)."""
        if self._thread is not None and self._pid == os.getpid():
            return
        with self._lock:
            if self._thread is not None and self._pid == os.getpid():
                return
            self._stop = threading.Event()
            self.subscribed = threading.Event()
            self._pid = os.getpid()
            self._thread = threading.Thread(target=self._run, name="turbo-cache-invalidation", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        stop, subscribed = self._stop, self.subscribed
        first = True
        while not stop.is_set():
            pubsub = self.store.client.pubsub()  # type: ignore[no-untyped-call]
            try:
                pubsub.subscribe(self.store.channel)
                # Read the confirmation, so "subscribed" means messages now arrive.
                while pubsub.get_message(timeout=1.0) is None:
                    if stop.is_set():
                        return
                if not first:
                    self.reset()
                first = False
                subscribed.set()
                while not stop.is_set():
                    message = pubsub.get_message(ignore_subscribe_messages=True, timeout=0.5)
                    if message is not None and message.get("type") == "message":
                        self._apply(message["data"])
            except (redis.RedisError, OSError) as error:
                logger.debug("Cache invalidation channel lost (%s); retrying.", error)
                subscribed.clear()
                stop.wait(self.retry_interval / 1000)
            except Exception:
                logger.exception("Cache invalidation listener failed; restarting it.")
                subscribed.clear()
                stop.wait(self.retry_interval / 1000)
            finally:
                with contextlib.suppress(Exception):  # closing a dead connection
                    pubsub.close()

    def _apply(self, data: bytes) -> None:
        # Anyone who can publish on the channel can send anything: a message
        # that is not ours is dropped here, never left to restart the thread
        # (which would clear L1) - JSON nested too deep raises RecursionError.
        try:
            message = json.loads(data)
            origin, keys = message["o"], message["k"]
            if not isinstance(keys, list):
                raise TypeError("'k' is not a list")
        except Exception:
            logger.warning("Ignoring a malformed cache invalidation message: %r", data[:200])
            return
        if origin != self.store.origin:
            self.drop([key for key in keys if isinstance(key, str)])
