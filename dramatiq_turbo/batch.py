"""Bounded-parallel batch work and parallel steps inside an actor.

Both functions run on one thread pool per process (rebuilt in a forked
child), never on threads created per call, so a worker with 8 threads that
each call ``process_batch`` cannot start hundreds of threads.

The calling thread always works too: it takes items (or not-yet-started
callables) itself instead of only waiting for the pool.  That is what makes
nesting safe: ``process_batch`` called from a function that ``process_batch``
or ``parallel`` already runs on a pool thread cannot deadlock, even when
every pool thread is busy, because the caller finishes the work alone and
cancels the pool tasks that never started.
"""

from __future__ import annotations

import contextvars
import itertools
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from .options import require_ms
from .perprocess import PerProcess, size_from_env

__all__ = ["BatchResult", "parallel", "pool_threads", "process_batch"]

T = TypeVar("T")
R = TypeVar("R")

#: Pool threads when ``TURBO_POOL_THREADS`` is not set: work here waits on I/O.
DEFAULT_POOL_THREADS = 16


def _new_pool() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=pool_threads(), thread_name_prefix="turbo-pool")


# A forked child gets its own: the parent's threads do not exist there.
_pool: PerProcess[ThreadPoolExecutor] = PerProcess(_new_pool)


def pool_threads() -> int:
    """Threads in the per-process pool: ``TURBO_POOL_THREADS``, else 16."""
    return size_from_env("TURBO_POOL_THREADS", DEFAULT_POOL_THREADS)


def shared_pool() -> ThreadPoolExecutor:
    """This process's bounded thread pool, created on first use."""
    return _pool.get()


@dataclass
class BatchResult(Generic[R]):
    """What ``process_batch`` did.

    Attributes:
      results(list): One entry per item, in input order: the function's return
        value, or ``None`` where it raised.
      errors(list[tuple[int, Exception]]): ``(index, exception)`` for every
        item that raised, by index.
      elapsed_ms(int): Wall time of the whole batch.
    """

    results: list[R | None] = field(default_factory=list)
    errors: list[tuple[int, Exception]] = field(default_factory=list)
    elapsed_ms: int = 0

    @property
    def total(self) -> int:
        return len(self.results)

    @property
    def succeeded(self) -> int:
        return len(self.results) - len(self.errors)

    @property
    def failed(self) -> int:
        return len(self.errors)

    @property
    def ok(self) -> bool:
        """True when no item raised."""
        return not self.errors

    def raise_errors(self) -> None:
        """Raise an ``ExceptionGroup`` of the items' errors, if there are any."""
        if self.errors:
            raise ExceptionGroup(
                f"{len(self.errors)} of {self.total} items failed",
                [_noted(error, f"item {index}") for index, error in self.errors],
            )


def _noted(error: Exception, note: str) -> Exception:
    if note not in getattr(error, "__notes__", ()):
        error.add_note(note)
    return error


class _ProgressBar:
    """A one-line progress bar on stderr, redrawn at most ten times a second."""

    def __init__(self, total: int | None) -> None:
        self.total = total
        self.started = time.monotonic()
        self.drawn = 0.0

    def update(self, completed: int, *, final: bool = False) -> None:
        now = time.monotonic()
        if not final and now - self.drawn < 0.1:
            return
        self.drawn = now
        rate = completed / max(now - self.started, 1e-9)
        if self.total:
            filled = int(30 * completed / self.total)
            line = f"[{'#' * filled}{'.' * (30 - filled)}] {completed}/{self.total}"
        else:
            line = f"{completed} done"
        sys.stderr.write(f"\r{line} ({rate:.1f}/s)" + ("\n" if final else ""))
        sys.stderr.flush()


class _Feed(Generic[T]):
    """Hands out ``(index, item)`` pairs, reading the source ``batch_size`` items at a time."""

    def __init__(self, items: Iterable[T], batch_size: int) -> None:
        self._source: Iterator[tuple[int, T]] = enumerate(items)
        self._batch_size = batch_size
        self._buffer: list[tuple[int, T]] = []
        self._lock = threading.Lock()
        self.stopped = False
        self.read = 0

    def next(self) -> tuple[int, T] | None:
        with self._lock:
            if self.stopped:
                return None
            if not self._buffer:
                self._buffer = list(itertools.islice(self._source, self._batch_size))
                self._buffer.reverse()
                self.read += len(self._buffer)
                if not self._buffer:
                    self.stopped = True
                    return None
            return self._buffer.pop()

    def stop(self) -> None:
        with self._lock:
            self.stopped = True
            self._buffer.clear()


def process_batch(
    items: Iterable[T],
    fn: Callable[[T], R],
    *,
    batch_size: int = 20,
    concurrency: int = 5,
    on_progress: Callable[[int, int | None], None] | None = None,
    progress: bool = False,
) -> BatchResult[R]:
    """Call ``fn(item)`` for every item, ``concurrency`` at a time.

    Items are read lazily, ``batch_size`` at a time, so a generator of a
    million items never sits in memory at once.  An item whose call raises
    does not stop the others: its exception is collected in
    ``BatchResult.errors`` with its index.  ``BaseException`` (such as
    Dramatiq's time limit interrupting the caller) stops the batch: no new
    items start and the exception propagates.

    Parameters:
      items(Iterable): The items; any iterable, including generators.
      fn(callable): Called with one item; should be I/O-bound (threads do not
        speed up pure-Python CPU work).
      batch_size(int): How many items are read from ``items`` at a time.
        Defaults to 20.
      concurrency(int): Most calls in flight at once, the calling thread
        included; also bounded by the shared pool (``TURBO_POOL_THREADS``).
        Defaults to 5.
      on_progress(callable): Called as ``on_progress(completed, total)`` after
        each item, from whichever thread finished it, one call at a time;
        ``total`` is ``None`` when ``items`` has no length.
      progress(bool): Draw a progress bar on stderr, only when stderr is a
        terminal.  Defaults to ``False``.

    Returns:
      BatchResult: results in input order, errors with their indexes.
    """
    for name, value in (("batch_size", batch_size), ("concurrency", concurrency)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    if not callable(fn):
        raise TypeError(f"fn must be callable, got {fn!r}")
    total: int | None
    try:
        total = len(items)  # type: ignore[arg-type]
    except TypeError:
        total = None
    started = time.monotonic()
    feed = _Feed(items, batch_size)
    done: dict[int, R] = {}
    errors: list[tuple[int, Exception]] = []
    report_lock = threading.Lock()
    completed = 0
    bar = _ProgressBar(total) if progress and sys.stderr.isatty() else None

    def work() -> None:
        nonlocal completed
        while (pair := feed.next()) is not None:
            index, item = pair
            try:
                value = fn(item)
            except Exception as error:
                with report_lock:
                    errors.append((index, error))
                    completed += 1
                    _report(completed)
            except BaseException:
                feed.stop()
                raise
            else:
                with report_lock:
                    done[index] = value
                    completed += 1
                    _report(completed)

    def _report(count: int) -> None:
        if on_progress is not None:
            on_progress(count, total)
        if bar is not None:
            bar.update(count)

    helpers = _start_helpers(work, concurrency - 1)
    try:
        work()
    except BaseException:
        feed.stop()
        _cancel(helpers)
        raise
    _finish_helpers(helpers)
    if bar is not None:
        bar.update(completed, final=True)
    count = feed.read
    errors.sort(key=lambda pair: pair[0])
    return BatchResult(
        results=[done.get(index) for index in range(count)],
        errors=errors,
        elapsed_ms=int((time.monotonic() - started) * 1000),
    )


def _start_helpers(work: Callable[[], None], count: int) -> list[Future[None]]:
    if count <= 0:
        return []
    pool = shared_pool()
    # Each helper runs in its own copy of the caller's context (one Context
    # cannot be entered by two threads at once): breakers held by the message,
    # the current span and the job's step table are seen inside the items.
    return [pool.submit(contextvars.copy_context().run, work) for _ in range(min(count, pool_threads()))]


def _cancel(futures: list[Future[Any]]) -> None:
    for future in futures:
        future.cancel()


def _finish_helpers(helpers: list[Future[None]]) -> None:
    # Helpers still queued have nothing left to do; only running ones are waited for.
    for future in helpers:
        if future.cancel():
            continue
        error = future.exception()
        if error is not None:
            raise error


#: How long ``parallel(timeout=...)`` lets the pool start a callable before running it inline.
_START_GRACE = 0.02


def _wait_to_start(future: Future[Any], seconds: float) -> None:
    end = time.monotonic() + seconds
    while not (future.running() or future.done()) and time.monotonic() < end:
        time.sleep(0.0005)


def parallel(*fns: Callable[[], Any], timeout: int | None = None) -> list[Any]:
    """Run independent callables at once and return their results in order.

    The calling thread runs the first callable and then whatever the pool
    has not started yet (with a ``timeout``, every callable goes to the pool
    and the caller only runs those not started within 20 ms), so
    ``parallel`` works inside pool threads too, even on a saturated pool.

    If a callable raises, the callables that have not started are
    cancelled, the running ones are waited for (up to ``timeout``), and the
    first error (in time) is raised with a note for each other failure and
    for each cancelled callable.

    Parameters:
      *fns(callable): Callables taking no arguments (use ``functools.partial``
        or a lambda to bind them).
      timeout(int): Most milliseconds to wait in total; ``None`` waits as long
        as it takes.  On expiry ``TimeoutError`` is raised, naming the
        callables still running (threads cannot be killed, so they finish in
        the background) and the cancelled ones.

    Returns:
      list: ``[fns[0](), fns[1](), ...]``.
    """
    for index, fn in enumerate(fns):
        if not callable(fn):
            raise TypeError(f"parallel() argument {index} is not callable: {fn!r}")
    if timeout is not None:
        require_ms("timeout", timeout)
    if not fns:
        return []
    deadline = None if timeout is None else time.monotonic() + timeout / 1000
    failures: list[tuple[int, BaseException]] = []
    failures_lock = threading.Lock()
    failed = threading.Event()

    def runner(index: int, fn: Callable[[], Any]) -> Callable[[], Any]:
        def run() -> Any:
            try:
                return fn()
            except BaseException as error:
                with failures_lock:
                    failures.append((index, error))
                failed.set()
                raise

        return run

    pool = shared_pool()
    # Without a timeout the caller runs the first callable itself; with one,
    # everything goes to the pool first, since what the caller runs itself
    # cannot be abandoned at the deadline.
    inline_first = deadline is None
    futures: list[Future[Any]] = [
        Future()
        if index == 0 and inline_first
        else pool.submit(contextvars.copy_context().run, runner(index, fn))
        for index, fn in enumerate(fns)
    ]
    cancelled: list[int] = []
    grace = 0.0 if inline_first else _START_GRACE
    # Then it runs whatever the pool has not started (after a moment's grace
    # with a timeout): nested calls on a busy pool cannot deadlock.
    for index, future in enumerate(futures):
        if grace:
            _wait_to_start(future, grace)
        if failed.is_set() or (deadline is not None and time.monotonic() >= deadline):
            break
        if (index == 0 and inline_first) or future.cancel():
            inline: Future[Any] = Future()
            try:
                inline.set_result(runner(index, fns[index])())
            except Exception as error:
                inline.set_exception(error)
            except BaseException:
                # Interrupted (a time limit, ^C): start nothing more.
                _cancel(futures)
                raise
            futures[index] = inline
    for index, future in enumerate(futures):
        if not future.done() and future.cancel():
            cancelled.append(index)
    running = []
    for index, future in enumerate(futures):
        if index in cancelled:
            continue
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        try:
            future.exception(timeout=left)
        except TimeoutError:
            running.append(index)
    if failures:
        first_index, first_error = failures[0]
        for index, other in failures[1:]:
            first_error.add_note(f"parallel(): callable {index} also failed: {type(other).__name__}: {other}")
        if cancelled:
            first_error.add_note(f"parallel(): callables {cancelled} were cancelled before they started")
        if running:
            first_error.add_note(f"parallel(): callables {running} were still running at the timeout")
        first_error.add_note(f"parallel(): raised by callable {first_index}")
        raise first_error
    if running or cancelled:
        raise TimeoutError(
            f"parallel() timed out after {timeout} ms: callables {running} still running"
            + (f", {cancelled} cancelled before they started" if cancelled else "")
        )
    return [future.result() for future in futures]
