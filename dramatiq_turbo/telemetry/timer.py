"""``Timer``: milliseconds elapsed since a start, on a monotonic clock."""

from __future__ import annotations

import time
from types import TracebackType

__all__ = ["Timer"]


class Timer:
    """Measures how many milliseconds pass between its start and ``end()``.

    It starts when it is created (or entered as a context manager)::

        timer = Timer()
        download()
        print(f"Download: {timer.end():.0f}ms")

    The clock is ``time.perf_counter``: monotonic, so a wall-clock change
    never yields a negative or inflated duration.
    """

    __slots__ = ("_end", "_start")

    def __init__(self) -> None:
        self._start = time.perf_counter()
        self._end: float | None = None

    def restart(self) -> None:
        """Start measuring again from now."""
        self._start = time.perf_counter()
        self._end = None

    def end(self) -> float:
        """Stop the timer (the first call only) and return the elapsed milliseconds."""
        if self._end is None:
            self._end = time.perf_counter()
        return (self._end - self._start) * 1000.0

    @property
    def elapsed(self) -> float:
        """Milliseconds elapsed so far (or until ``end()``), without stopping the timer."""
        stop = self._end if self._end is not None else time.perf_counter()
        return (stop - self._start) * 1000.0

    def __enter__(self) -> Timer:
        self.restart()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.end()
