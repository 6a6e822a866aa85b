"""rate_limit() inside actor code: waits, timeouts, slots, nesting, threads, tasks and the shared budget."""

from __future__ import annotations

import asyncio
import logging
import pickle
import re
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import dramatiq
import fakeredis
import pytest
from dramatiq.middleware import CurrentMessage

import dramatiq_turbo
from dramatiq_turbo import events
from dramatiq_turbo.backoff import Backoff, is_retryable, retry_hint
from dramatiq_turbo.ratelimit import (
    LocalLimitStore,
    RateLimiter,
    RateLimitTimeout,
    RedisLimitStore,
    current_permit,
    inline,
    parse_rule,
    rate_limit,
)
from dramatiq_turbo.redis import connect_redis
from tests.harness import free_port, unique, wait_for
from tests.ratelimit.test_multiprocess import max_in_window


@pytest.fixture(autouse=True)
def _forget_limiters() -> Iterator[None]:
    """``rate_limit`` serves the last ``RateLimiter`` created: start and end each test without one."""
    inline.set_default(None)
    inline._per_process = None
    yield
    inline.set_default(None)
    inline._per_process = None


class FakeTime:
    """One clock (whole ms) for the store and the waiting loop; ``sleep`` advances it."""

    def __init__(self) -> None:
        self.now = 1_000_000
        self.sleeps: list[int] = []
        self.on_sleep: Callable[[], None] | None = None

    def ms(self) -> float:
        return float(self.now)

    def sleep(self, seconds: float) -> None:
        slept = round(seconds * 1000)
        self.sleeps.append(slept)
        self.now += slept
        if self.on_sleep is not None:
            self.on_sleep()


@pytest.fixture
def fake_time(monkeypatch: pytest.MonkeyPatch) -> tuple[FakeTime, RateLimiter]:
    """A fake clock, and a per-process ``RateLimiter`` whose store runs on it."""
    clock = FakeTime()
    monkeypatch.setattr(inline, "_now_ms", clock.ms)
    monkeypatch.setattr(inline, "_sleep", clock.sleep)
    limiter = RateLimiter()
    limiter.store = limiter.local = LocalLimitStore(clock=clock.ms)
    return clock, limiter


def overlap(spans: list[tuple[float, float]]) -> int:
    """The most spans open at once (an end at t comes before a start at t)."""
    edges = sorted([(end, -1) for _, end in spans] + [(start, 1) for start, _ in spans])
    best = running = 0
    for _, step in edges:
        running += step
        best = max(best, running)
    return best


# -- the API --------------------------------------------------------------------


def test_public_names() -> None:
    assert dramatiq_turbo.rate_limit is rate_limit and dramatiq_turbo.RateLimitTimeout is RateLimitTimeout
    assert isinstance(dramatiq_turbo.ratelimit.rate_limit, type), "the name is the class, not a module"
    assert "rate_limit" in dramatiq_turbo.__all__ and "RateLimitTimeout" in dramatiq_turbo.__all__


@pytest.mark.parametrize(
    ("arguments", "complaint"),
    [
        ({"key": ""}, "needs a non-empty str key"),
        ({}, "rate_limit('api') needs max and duration, or concurrency"),
        ({"max": 0, "duration": 1_000}, "rate_limit('api') max must be a positive int, got 0"),
        ({"max": 30, "duration": 1.5}, "rate_limit('api') duration must be an int of milliseconds, got 1.5"),
        ({"max": 30}, "rate_limit('api') duration must be an int of milliseconds, got None"),
        ({"duration": 1_000}, "rate_limit('api') max must be a positive int, got None"),
        ({"concurrency": 0}, "rate_limit('api') concurrency must be a positive int or None, got 0"),
        ({"concurrency": True}, "concurrency must be a positive int or None, got True"),
        ({"concurrency": 2, "max_wait": -1}, "rate_limit('api') max_wait must be >= 0 milliseconds, got -1"),
        ({"concurrency": 2, "max_wait": 0.5}, "max_wait must be an int of milliseconds, got 0.5"),
        ({"max": 5, "duration": 100, "burst": 6}, "burst'] must be between 1 and max (5), got 6"),
        ({"concurrency": 2, "lease": 0}, "lease'] must be > 0 milliseconds, got 0"),
    ],
)
def test_bad_arguments_fail_at_construction_naming_the_argument(arguments, complaint) -> None:
    arguments = {"key": "api", **arguments}
    with pytest.raises(ValueError, match=re.escape(complaint)):
        rate_limit(**arguments)


def test_the_rule_is_the_actor_options() -> None:
    limit = rate_limit("api", max=30, duration=1_000, concurrency=8, burst=5, lease=5_000)
    option = {"max": 30, "duration": 1_000, "concurrency": 8, "burst": 5, "lease": 5_000}
    assert limit.rule == parse_rule(option)
    assert limit.budget == "key:api" and limit.max_wait == inline.DEFAULT_MAX_WAIT == 10_000
    assert rate_limit("db", concurrency=2).rule.max == 0, "concurrency alone is a limit"


def test_timeout_is_retryable_with_its_hint_and_pickles() -> None:
    error = RateLimitTimeout("api", "30 per 1000 ms", 250, 120)
    assert is_retryable(error) == (True, "") and retry_hint(error) == 120
    copy = pickle.loads(pickle.dumps(error))
    assert (copy.key, copy.waited, copy.retry_after, str(copy)) == ("api", 250, 120, str(error))


# -- waiting, on a fake clock ---------------------------------------------------


def test_a_block_waits_for_the_exact_slot(fake_time) -> None:
    clock, _ = fake_time
    limit = rate_limit("api", max=2, duration=1_000, max_wait=5_000)
    admitted = []
    for _ in range(2):
        with limit as permit:
            admitted.append(permit.admitted_at)
        clock.now += 100
    with limit as permit:
        admitted.append(permit.admitted_at)
    assert clock.sleeps == [800], "slept until the first start left the window, once"
    assert admitted == [1_000_000, 1_000_100, 1_001_000] and permit.waited == 800
    assert permit.key == "key:api" and permit.shared is False


def test_a_slot_beyond_max_wait_raises_at_once_without_sleeping(fake_time) -> None:
    clock, _ = fake_time
    limit = rate_limit("api", max=1, duration=60_000, max_wait=10_000)
    with limit:
        pass
    clock.now += 1_000
    with pytest.raises(RateLimitTimeout) as raised, limit:
        pytest.fail("the block must not run")
    assert clock.sleeps == [], "no useless sleep"
    error = raised.value
    assert error.retry_after == 59_000 and error.waited == 0 and error.key == "api"
    assert str(error) == "rate_limit 'api' (1 per 60000 ms): no slot after waiting 0 ms; retry in 59000 ms"


def test_a_block_never_sleeps_past_what_is_left_of_max_wait(fake_time) -> None:
    clock, limiter = fake_time
    rule = parse_rule((2, 1_000))
    limit = rate_limit("api", max=2, duration=1_000, max_wait=500)
    assert limiter.local.acquire("key:api", rule, "a").admitted
    clock.now += 300
    assert limiter.local.acquire("key:api", rule, "b").admitted  # starts at 0 and 300
    clock.now += 400  # now 700: the next slot is 300 ms away, within max_wait

    def competitor_takes_the_slot() -> None:
        # Another process takes the slot this block woke up for: the next is
        # at 1,300, 300 ms away, but only 200 ms of max_wait are left.
        assert limiter.local.acquire("key:api", rule, "c").admitted

    clock.on_sleep = competitor_takes_the_slot
    with pytest.raises(RateLimitTimeout, match="after waiting 300 ms; retry in 300 ms"), limit:
        pass
    assert clock.sleeps == [300] and sum(clock.sleeps) <= 500
    # Giving up, the block took a turn, as a deferred message does: the next
    # to give up is told to come back one interval (500 ms) later, so the
    # retries return one by one.
    next_to_give_up = rate_limit("api", max=2, duration=1_000, max_wait=0)
    with pytest.raises(RateLimitTimeout, match="retry in 800 ms"), next_to_give_up:
        pass


def test_a_waiting_block_takes_no_turns_from_deferred_messages(fake_time) -> None:
    clock, limiter = fake_time
    rule = parse_rule((2, 1_000))
    for token in ("a", "b"):
        assert limiter.local.acquire("key:api", rule, token).admitted
        clock.now += 600  # starts at 0 and 600
    clock.now -= 500  # now 700

    def competitor_takes_the_first_slot() -> None:
        if len(clock.sleeps) == 1:
            assert limiter.local.acquire("key:api", rule, "c").admitted

    clock.on_sleep = competitor_takes_the_first_slot
    with rate_limit("api", max=2, duration=1_000, max_wait=5_000) as permit:
        pass
    assert clock.sleeps == [300, 600], "beaten to the slot at 1,000, it waited for the next at 1,600"
    assert permit.admitted_at == 1_001_600
    # A message deferred now is told the exact time to the next slot (400 ms):
    # the refusals of the waiting block took no turns that would push it later.
    deferred = limiter.local.acquire("key:api", rule, "deferred", max_wait=0)
    assert not deferred.admitted and deferred.wait == 400


def test_a_concurrency_slot_is_polled_for_until_max_wait_then_raises(fake_time) -> None:
    clock, limiter = fake_time
    assert limiter.local.acquire("key:db", parse_rule({"concurrency": 1}), "someone-else").admitted
    limit = rate_limit("db", concurrency=1, max_wait=250)
    with pytest.raises(RateLimitTimeout, match=r"'db' \(1 at once\): no slot after waiting 250 ms"), limit:
        pass
    assert clock.sleeps == [100, 100, 50], "polls every 100 ms, the last one cut to what is left"


def test_max_wait_zero_never_waits(fake_time) -> None:
    clock, _ = fake_time
    limit = rate_limit("api", max=1, duration=1_000, max_wait=0)
    with limit:
        pass
    with pytest.raises(RateLimitTimeout, match="retry in 1000 ms"), limit:
        pass
    assert clock.sleeps == []


# -- slots, nesting, the decorator ----------------------------------------------


def test_the_slot_is_freed_on_exception_and_the_start_stays_counted(fake_time) -> None:
    clock, _ = fake_time
    limit = rate_limit("api", max=2, duration=60_000, concurrency=1, max_wait=0)
    with pytest.raises(ValueError, match="boom"), limit:
        raise ValueError("boom")
    with limit:  # the slot came back at once
        pass
    with pytest.raises(RateLimitTimeout, match=r"2 per 60000 ms, 1 at once"), limit:
        pass  # both starts count, the failed one too
    assert clock.sleeps == []


def test_nested_blocks(fake_time) -> None:
    clock, _ = fake_time
    outer = rate_limit("llm", max=10, duration=1_000, concurrency=1, max_wait=0)
    assert current_permit() is None
    with outer as first:
        assert current_permit() is first
        # The same budget inside: part of the outer call, no second slot (which would never come).
        with rate_limit("llm", concurrency=1, max_wait=0) as inner, outer as again:
            assert inner is first and again is first
        with rate_limit("db", concurrency=1, max_wait=0) as other:
            assert other.key == "key:db" and current_permit() is other
        assert current_permit() is first
    assert current_permit() is None
    with outer as second:  # the outer slot was freed once, at the end
        assert second.admitted_at == clock.now
    assert clock.sleeps == []


def test_the_decorator_limits_each_call(fake_time) -> None:
    clock, _ = fake_time

    @rate_limit("api", max=2, duration=1_000, max_wait=5_000)
    def call(n: int) -> int:
        """Doc."""
        return n * 2

    assert call.__name__ == "call" and call.__doc__ == "Doc."
    assert [call(n) for n in range(4)] == [0, 2, 4, 6]
    assert clock.sleeps == [1_000], "the third call waited for the window"


def test_without_a_rate_limiter_limits_are_per_process_and_say_so_once(caplog) -> None:
    limit = rate_limit("solo", max=5, duration=1_000)
    with caplog.at_level(logging.WARNING, logger="dramatiq_turbo.ratelimit.inline"):
        for _ in range(3):
            with limit as permit:
                assert permit.shared is False
    assert caplog.text.count("counted per process") == 1


def test_the_rate_limiter_created_last_serves_rate_limit() -> None:
    first, second = RateLimiter(), RateLimiter()
    with rate_limit("k", max=1, duration=60_000):
        pass
    assert len(second.local._budgets["key:k"].starts) == 1 and "key:k" not in first.local._budgets
    first.after_process_boot(dramatiq.get_broker())  # a worker process re-registers its broker's limiter
    with rate_limit("k", max=1, duration=60_000):
        pass
    assert len(first.local._budgets["key:k"].starts) == 1


# -- threads and tasks (real time) ----------------------------------------------


def test_one_object_in_many_threads_keeps_rate_and_concurrency() -> None:
    RateLimiter()
    limit = rate_limit("shared", max=6, duration=300, concurrency=2, max_wait=10_000)
    lock = threading.Lock()
    spans: list[tuple[float, float]] = []
    admitted: list[float] = []

    def work() -> None:
        for _ in range(3):
            with limit as permit:
                began = time.monotonic() * 1000
                time.sleep(0.02)
                with lock:
                    spans.append((began, time.monotonic() * 1000))
                    admitted.append(permit.admitted_at)

    threads = [threading.Thread(target=work) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=20)
    assert len(admitted) == 18, "every block ran"
    assert max_in_window(admitted, 300) <= 6
    assert overlap(spans) == 2, "two at once at most, and two were reached"


def test_a_long_block_keeps_its_slot_beyond_its_lease() -> None:
    RateLimiter()
    limit = rate_limit("slow", concurrency=1, lease=300, max_wait=5_000)
    spans: list[tuple[float, float]] = []

    def hold(seconds: float) -> None:
        with limit:
            began = time.monotonic()
            time.sleep(seconds)
            spans.append((began, time.monotonic()))

    first = threading.Thread(target=hold, args=(1.0,))  # more than three leases: renewed
    first.start()
    time.sleep(0.05)
    hold(0.01)
    first.join()
    (long, short) = sorted(spans)
    assert short[0] >= long[1], "the second block started only after the first ended"


def test_async_with_and_async_functions() -> None:
    RateLimiter()
    limit = rate_limit("aio", concurrency=1, max_wait=5_000)
    spans: list[tuple[float, float]] = []

    async def block() -> None:
        async with limit as permit:
            assert current_permit() is permit
            began = time.monotonic()
            await asyncio.sleep(0.03)
            spans.append((began, time.monotonic()))

    @rate_limit("aio", concurrency=1, max_wait=5_000)
    async def decorated(n: int) -> int:
        began = time.monotonic()
        await asyncio.sleep(0.03)
        spans.append((began, time.monotonic()))
        return n

    async def main() -> list[int]:
        results = await asyncio.gather(block(), block(), decorated(1), decorated(2))
        return [r for r in results if r is not None]

    assert asyncio.run(main()) == [1, 2]
    assert len(spans) == 4 and overlap(spans) == 1, "the tasks took the one slot in turn"


# -- the shared store and Redis outages -----------------------------------------


def test_blocks_and_a_key_option_share_one_budget_in_the_store(make_broker, start_worker) -> None:
    client = fakeredis.FakeRedis()
    namespace = unique("rl")
    broker = make_broker("stub")
    broker.add_middleware(CurrentMessage())
    broker.add_middleware(RateLimiter(redis=client, namespace=namespace, max_wait=0))
    permits = []

    @dramatiq.actor(broker=broker, rate_limit={"max": 5, "duration": 60_000, "key": lambda m: "api"})
    def job() -> None:
        with rate_limit("api", max=5, duration=60_000, max_wait=0) as permit:
            permits.append(permit)

    start_worker(broker, worker_threads=1)
    job.send()
    broker.join(job.queue_name, timeout=5_000)
    log = RedisLimitStore(client, namespace=namespace).keys("key:api")[0]
    assert client.zcard(log) == 2, "the message's start and the block's, in one budget"
    assert permits[0].shared is True


def test_redis_down_fails_open_to_the_limiters_local_store(caplog) -> None:
    limiter = RateLimiter(redis=connect_redis(f"redis://127.0.0.1:{free_port()}/1"))
    limit = rate_limit("api", max=1, duration=60_000, max_wait=0)
    with caplog.at_level(logging.WARNING):
        with limit as permit:
            assert permit.shared is False
        with pytest.raises(RateLimitTimeout, match="no slot"), limit:
            pass  # the per-process limit still holds
    assert limiter.outage.errors == 2 and limiter.outage.active
    assert sum("Redis is unreachable" in r.getMessage() for r in caplog.records) == 1


def test_redis_down_fails_closed_when_the_limiter_does() -> None:
    limiter = RateLimiter(redis=connect_redis(f"redis://127.0.0.1:{free_port()}/1"), fail_open=False)
    limit = rate_limit("api", max=1, duration=2_000)
    with (
        pytest.raises(RateLimitTimeout, match="Redis is unreachable and the limiter fails closed") as raised,
        limit,
    ):
        pass
    assert raised.value.retry_after == 2_000 and limiter.outage.errors == 1


def test_redis_down_while_releasing_is_counted_not_raised() -> None:
    server = fakeredis.FakeServer()
    limiter = RateLimiter(redis=fakeredis.FakeRedis(server=server))
    with rate_limit("db", concurrency=1) as permit:
        assert permit.shared is True
        server.connected = False  # the server goes away while the block runs
    assert limiter.outage.errors == 1, "the slot's lease expires by itself"


# -- Backoff retries a job whose block timed out -------------------------------


def test_backoff_retries_a_timed_out_job_after_at_least_the_hint(make_broker, start_worker) -> None:
    broker = make_broker("stub")
    broker.add_middleware(Backoff(min_backoff=1, max_backoff=30_000))
    broker.add_middleware(RateLimiter())
    hints: list[int] = []
    delays: list[int] = []
    runs: Counter[str] = Counter()

    def listener(name: str, attributes: Any) -> None:
        if name == "retry":
            delays.append(attributes["delay_ms"])

    @dramatiq.actor(broker=broker, max_retries=1)
    def job(name: str) -> None:
        try:
            with rate_limit("api", max=1, duration=800, max_wait=0):
                runs[name] += 1
        except RateLimitTimeout as error:
            hints.append(error.retry_after)
            raise

    events.add_listener(listener)
    try:
        start_worker(broker, worker_threads=1)
        job.send("a")
        job.send("b")
        wait_for(lambda: sum(runs.values()) == 2, timeout=10, what="both jobs to run")
    finally:
        events.remove_listener(listener)
    assert runs == Counter({"a": 1, "b": 1})
    assert len(hints) == 1 and 0 < hints[0] <= 800
    assert delays and delays[0] >= hints[0], "retried no sooner than the store's hint"


def test_a_renewer_stopped_by_a_worker_shutdown_renews_the_next_hold() -> None:
    from dramatiq_turbo.ratelimit.leases import Hold, LeaseRenewer

    class RecordingStore:
        def __init__(self) -> None:
            self.renewed: list[str] = []

        def renew(self, key: str, tokens: list[str], lease: int) -> int:
            self.renewed.append(key)
            return len(tokens)

    store = RecordingStore()
    renewer = LeaseRenewer()
    renewer.add(Hold(store, "before", "t1", 30_000))
    renewer.stop()  # after_worker_shutdown of a limiter ...
    renewer.add(Hold(store, "after", "t2", 300))  # ... whose renewer then serves a block at once
    time.sleep(0.4)
    renewer.stop()
    assert "after" in store.renewed
