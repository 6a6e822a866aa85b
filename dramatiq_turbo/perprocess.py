"""Values that each process builds for itself: sessions, thread pools.

Sockets and threads do not survive ``fork``: a forked Dramatiq worker
process that used its parent's session or pool would share connections with
the parent or hand work to threads that do not exist.  ``PerProcess`` builds
its value on first use in each process and forgets it in a forked child.
"""

from __future__ import annotations

import os
import threading
import weakref
from collections.abc import Callable
from typing import Generic, TypeVar

__all__ = ["PerProcess", "size_from_env"]

T = TypeVar("T")

_instances: weakref.WeakSet[PerProcess[object]] = weakref.WeakSet()


class PerProcess(Generic[T]):
    """A value built once per process, on first use, by ``build``.

    Parameters:
      build(callable): Makes the value; called at most once per process
        (under a lock), unless ``get`` is given another builder.
    """

    def __init__(self, build: Callable[[], T]) -> None:
        self._build = build
        self._value: T | None = None
        self._pid = 0
        self._lock = threading.Lock()
        _instances.add(self)  # type: ignore[arg-type]

    def get(self, build: Callable[[], T] | None = None) -> T:
        """This process's value; ``build`` (if given) makes it when it does not exist yet."""
        value = self._value
        if value is not None and self._pid == os.getpid():
            return value
        with self._lock:
            if self._value is None or self._pid != os.getpid():
                self._value = (build or self._build)()
                self._pid = os.getpid()
            return self._value

    def peek(self) -> T | None:
        """This process's value if it was built, without building it."""
        return self._value if self._pid == os.getpid() else None

    def reset(self) -> None:
        """Forget the value: the next ``get`` builds a new one."""
        with self._lock:
            self._value = None
            self._pid = 0

    def _after_fork(self) -> None:
        # A lock held by another parent thread at fork time would never be released here.
        self._lock = threading.Lock()
        self._value = None
        self._pid = 0


def size_from_env(name: str, default: int) -> int:
    """A per-process size (threads, connections) from environment variable ``name``.

    Raises:
      ValueError: naming the variable, when it is not an integer >= 1.
    """
    configured = os.environ.get(name, "").strip()
    if not configured:
        return default
    try:
        size = int(configured)
    except ValueError:
        raise ValueError(f"{name} must be an integer, got {configured!r}") from None
    if size < 1:
        raise ValueError(f"{name} must be at least 1, got {size}")
    return size


def _reset_all_after_fork() -> None:
    for instance in list(_instances):
        instance._after_fork()


os.register_at_fork(after_in_child=_reset_all_after_fork)
