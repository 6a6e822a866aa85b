"""process_batch and parallel: bounded concurrency, order, errors, one pool, nesting."""

from __future__ import annotations

import itertools
import os
import threading
import time
from collections.abc import Iterator

import pytest

import dramatiq_turbo
from dramatiq_turbo import batch
from dramatiq_turbo.batch import BatchResult, parallel, process_batch, shared_pool

from .conftest import in_forked_child


@pytest.fixture(autouse=True)
def fresh_pool() -> Iterator[None]:
    # Tests that shrink the pool (TURBO_POOL_THREADS) must not leave it small.
    yield
    batch._pool.reset()


class InFlight:
    """Counts concurrent calls and remembers the highest count."""

    def __init__(self) -> None:
        self.now = 0
        self.peak = 0
        self.lock = threading.Lock()

    def __enter__(self) -> None:
        with self.lock:
            self.now += 1
            self.peak = max(self.peak, self.now)

    def __exit__(self, *exc: object) -> None:
        with self.lock:
            self.now -= 1


def test_public_names() -> None:
    assert dramatiq_turbo.process_batch is process_batch
    assert dramatiq_turbo.parallel is parallel
    assert dramatiq_turbo.BatchResult is BatchResult


def test_results_in_input_order_with_bounded_concurrency() -> None:
    flight = InFlight()

    def work(n: int) -> int:
        with flight:
            time.sleep(0.001 * (n % 7))  # finish out of order
            return n * n

    result = process_batch(range(200), work, batch_size=20, concurrency=5)
    assert result.results == [n * n for n in range(200)]
    assert result.ok and result.total == 200 and result.succeeded == 200
    assert flight.peak <= 5
    assert flight.peak >= 3  # it did run in parallel


def test_errors_collected_with_their_index() -> None:
    def work(n: int) -> int:
        if n % 10 == 3:
            raise ValueError(f"bad {n}")
        return n

    result = process_batch(range(50), work, concurrency=4)
    assert [index for index, _ in result.errors] == [3, 13, 23, 33, 43]
    assert all(isinstance(error, ValueError) and str(error) == f"bad {i}" for i, error in result.errors)
    assert result.results[3] is None and result.results[4] == 4
    assert result.failed == 5 and result.succeeded == 45 and not result.ok
    with pytest.raises(ExceptionGroup) as group:
        result.raise_errors()
    assert len(group.value.exceptions) == 5


def test_generator_is_consumed_lazily() -> None:
    pulled = 0
    finished = 0
    lag = 0
    lock = threading.Lock()

    def items() -> Iterator[int]:
        nonlocal pulled, lag
        for n in itertools.count():
            if n == 100_000:
                return
            with lock:
                pulled += 1
                lag = max(lag, pulled - finished)
            yield n

    def work(n: int) -> None:
        nonlocal finished
        with lock:
            finished += 1

    result = process_batch(items(), work, batch_size=50, concurrency=4)
    assert result.total == 100_000 and result.ok
    # Never more than a batch (plus the items in flight) read ahead of the work.
    assert lag <= 50 + 4


def test_progress_reports_each_item(capsys: pytest.CaptureFixture[str]) -> None:
    calls: list[tuple[int, int | None]] = []
    process_batch(range(30), lambda n: n, on_progress=lambda done, total: calls.append((done, total)))
    assert [done for done, _ in calls] == list(range(1, 31))
    assert {total for _, total in calls} == {30}
    unsized: list[tuple[int, int | None]] = []
    process_batch(iter(range(5)), lambda n: n, on_progress=lambda d, t: unsized.append((d, t)))
    assert unsized[-1] == (5, None)
    # Asked for a bar, but stderr is not a terminal: nothing is drawn.
    process_batch(range(5), lambda n: n, progress=True)
    assert capsys.readouterr().err == ""


def test_progress_bar_drawn_on_a_terminal(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr("sys.stderr.isatty", lambda: True, raising=False)
    process_batch(range(10), lambda n: n, progress=True)
    err = capsys.readouterr().err
    assert "10/10" in err and "#" in err


def test_io_bound_batch_beats_a_loop() -> None:
    def io(n: int) -> int:
        time.sleep(0.02)
        return n

    started = time.monotonic()
    result = process_batch(range(50), io, concurrency=10)
    elapsed = time.monotonic() - started
    assert result.ok
    assert elapsed < 50 * 0.02 / 5  # a loop takes 1 s


def test_reuses_one_pool_and_no_threads_per_call() -> None:
    pool = shared_pool()
    process_batch(range(20), lambda n: n, concurrency=5)
    parallel(lambda: 1, lambda: 2)
    before = set(threading.enumerate())
    for _ in range(20):
        process_batch(range(20), lambda n: time.sleep(0.001), concurrency=5)
        parallel(lambda: 1, lambda: 2, lambda: 3)
    assert shared_pool() is pool
    # Other tests' daemon threads may come and go; every thread these calls
    # started must be one of the shared pool's, and the pool stays bounded.
    started = set(threading.enumerate()) - before
    assert started <= set(pool._threads)
    assert len(pool._threads) <= batch.pool_threads()


def test_nested_batches_do_not_deadlock_on_a_saturated_pool(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TURBO_POOL_THREADS", "2")
    outer_done: list[int] = []

    def inner(n: int) -> int:
        return sum(process_batch(range(10), lambda m: m + n, concurrency=5).results)  # type: ignore[arg-type]

    def outer(n: int) -> int:
        value = inner(n)
        outer_done.append(n)
        return value

    result: list[BatchResult[int]] = []
    thread = threading.Thread(target=lambda: result.append(process_batch(range(8), outer, concurrency=8)))
    thread.start()
    thread.join(timeout=20)
    assert not thread.is_alive(), "nested process_batch deadlocked"
    assert result[0].results == [45 + 10 * n for n in range(8)]
    assert len(shared_pool()._threads) <= 2


def test_base_exception_stops_the_batch() -> None:
    started: list[int] = []

    class Stop(BaseException):
        pass

    def work(n: int) -> int:
        started.append(n)
        if n == 5:
            raise Stop
        time.sleep(0.01)
        return n

    with pytest.raises(Stop):
        process_batch(range(1000), work, concurrency=2, batch_size=10)
    time.sleep(0.1)
    assert len(started) < 30


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="concurrency"):
        process_batch([1], lambda n: n, concurrency=0)
    with pytest.raises(ValueError, match="batch_size"):
        process_batch([1], lambda n: n, batch_size=-1)
    with pytest.raises(TypeError, match="fn"):
        process_batch([1], None)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="argument 1"):
        parallel(lambda: 1, 42)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="timeout"):
        parallel(lambda: 1, timeout=0.5)  # type: ignore[arg-type]


def test_parallel_runs_at_once_and_keeps_order() -> None:
    def slow(value: int) -> int:
        time.sleep(0.2)
        return value

    started = time.monotonic()
    assert parallel(lambda: slow(1), lambda: slow(2), lambda: slow(3), lambda: slow(4)) == [1, 2, 3, 4]
    assert time.monotonic() - started < 0.5
    assert parallel() == []


def test_parallel_raises_first_error_with_the_rest_attached() -> None:
    finished: list[str] = []
    started = [threading.Event(), threading.Event()]

    def slow_ok() -> str:
        started[0].set()
        time.sleep(0.3)
        finished.append("slow")
        return "slow"

    def fails_fast() -> None:
        for event in started:  # fail only once the others run
            event.wait(5)
        raise KeyError("first")

    def fails_later() -> None:
        started[1].set()
        time.sleep(0.1)
        raise ValueError("second")

    with pytest.raises(KeyError) as caught:
        parallel(slow_ok, fails_fast, fails_later)
    notes = "\n".join(caught.value.__notes__)
    assert "callable 2 also failed: ValueError: second" in notes
    assert "raised by callable 1" in notes
    # The running callable was waited for, not left running unnoticed.
    assert finished == ["slow"]


def test_parallel_cancels_what_has_not_started(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TURBO_POOL_THREADS", "1")
    ran: list[int] = []
    gate = threading.Event()

    def blocker() -> None:
        gate.wait(5)

    shared_pool().submit(blocker)  # occupy the only pool thread

    def fail() -> None:
        raise RuntimeError("boom")

    def record(n: int) -> None:
        ran.append(n)

    try:
        with pytest.raises(RuntimeError) as caught:
            parallel(fail, lambda: record(1), lambda: record(2))
    finally:
        gate.set()
    assert ran == []
    assert "callables [1, 2] were cancelled" in "\n".join(caught.value.__notes__)


def test_parallel_timeout_names_what_still_runs() -> None:
    release = threading.Event()

    with pytest.raises(TimeoutError, match=r"callables \[1\] still running"):
        parallel(lambda: 1, lambda: release.wait(5), timeout=200)
    release.set()


def test_parallel_inside_pool_threads_does_not_deadlock(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TURBO_POOL_THREADS", "1")

    def level(depth: int) -> int:
        if depth == 0:
            return 1
        return sum(parallel(lambda: level(depth - 1), lambda: level(depth - 1)))

    out: list[int] = []
    thread = threading.Thread(target=lambda: out.append(level(4)))
    thread.start()
    thread.join(timeout=20)
    assert not thread.is_alive(), "nested parallel deadlocked"
    assert out == [16]


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_forked_child_gets_a_working_pool() -> None:
    parent_pool = shared_pool()
    parent_pool.submit(lambda: None).result()

    def child_pool_works() -> bool:
        ok = shared_pool() is not parent_pool and parallel(lambda: 1, lambda: 2) == [1, 2]
        return ok and process_batch(range(10), lambda n: n, concurrency=3).results == list(range(10))

    assert in_forked_child(child_pool_works)


def test_parallel_timeout_also_covers_the_first_callable() -> None:
    release = threading.Event()
    started = time.monotonic()
    with pytest.raises(TimeoutError, match=r"callables \[0\] still running"):
        parallel(lambda: release.wait(5), lambda: 2, timeout=200)
    assert time.monotonic() - started < 1.0
    release.set()


def test_items_and_steps_see_the_callers_context() -> None:
    import contextvars

    current: contextvars.ContextVar[str] = contextvars.ContextVar("current", default="none")
    token = current.set("message-1")
    try:
        result = process_batch(range(40), lambda n: current.get(), concurrency=5)
        assert result.ok and set(result.results) == {"message-1"}
        assert parallel(current.get, current.get, current.get) == ["message-1"] * 3
    finally:
        current.reset(token)
