"""RateLimiter on a broker: waits, deferrals, slots, cache hits and Redis outages."""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from typing import Any

import dramatiq
import pytest
from dramatiq.middleware import CurrentMessage, Middleware, SkipMessage

from dramatiq_turbo import events, install
from dramatiq_turbo.core.delivery import delivery_of, flush_outbox
from dramatiq_turbo.defer import deferral_count
from dramatiq_turbo.ratelimit import RateLimiter, RedisLimitStore, admitted_at
from dramatiq_turbo.redis import connect_redis, hash_key
from tests.harness import unique, wait_for
from tests.ratelimit.test_multiprocess import max_in_window


class Runs:
    """What the actors saw: admission times, retries and deferrals per job."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.jobs: Counter[str] = Counter()
        self.admitted: list[float] = []
        self.retries: list[int] = []
        self.deferrals: list[int] = []

    def record(self, job: str) -> None:
        message = CurrentMessage.get_current_message()
        with self.lock:
            self.jobs[job] += 1
            self.admitted.append(admitted_at(message) or 0.0)
            self.retries.append(message.options.get("retries", 0))
            self.deferrals.append(deferral_count(message))


def limited_broker(make_broker, limiter: RateLimiter, *extra: Middleware) -> dramatiq.Broker:
    broker = make_broker("stub")
    broker.add_middleware(CurrentMessage())
    for middleware in extra:
        broker.add_middleware(middleware)
    broker.add_middleware(limiter)
    return broker


def test_bad_rate_limit_fails_when_the_actor_is_declared(make_broker) -> None:
    broker = limited_broker(make_broker, RateLimiter())
    with pytest.raises(ValueError, match=r"bad_actor: rate_limit duration must be an int of milliseconds"):

        @dramatiq.actor(broker=broker, rate_limit=(10, 1.5))
        def bad_actor() -> None:
            pass

    with pytest.raises(ValueError, match="max_wait must be an int of milliseconds"):
        RateLimiter(max_wait=0.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"limits\['q'\] must be"):
        RateLimiter(limits={"q": 30})


def test_limited_messages_are_deferred_and_all_run_once(make_broker, start_worker) -> None:
    broker = limited_broker(make_broker, RateLimiter(max_wait=0))
    runs = Runs()

    @dramatiq.actor(broker=broker, rate_limit=(2, 300), max_retries=0)
    def job(name: str) -> None:
        runs.record(name)

    start_worker(broker, worker_threads=4)
    for i in range(8):
        job.send(f"j{i}")
    broker.join(job.queue_name, timeout=10_000)
    assert runs.jobs == Counter({f"j{i}": 1 for i in range(8)}), "nothing dropped, nothing doubled"
    assert set(runs.retries) == {0}, "no retry consumed"
    assert max_in_window(runs.admitted, 300) <= 2
    assert max(runs.deferrals) >= 1, "over the limit, messages were deferred"
    assert max(runs.deferrals) <= 3, "deferred messages come back at their turn, not in a spin"


def test_a_slot_due_within_max_wait_is_waited_for_in_the_thread(make_broker, start_worker) -> None:
    broker = limited_broker(make_broker, RateLimiter(max_wait=1_000))
    runs = Runs()
    waits: list[Any] = []

    def listener(name: str, attributes: Any) -> None:
        if name == "ratelimit.wait":
            waits.append(attributes["wait_ms"])

    @dramatiq.actor(broker=broker, rate_limit=(1, 150))
    def job(name: str) -> None:
        runs.record(name)

    events.add_listener(listener)
    try:
        start_worker(broker, worker_threads=2)
        for i in range(4):
            job.send(f"j{i}")
        broker.join(job.queue_name, timeout=10_000)
    finally:
        events.remove_listener(listener)
    assert sum(runs.jobs.values()) == 4
    assert set(runs.deferrals) == {0}, "a near slot is waited for, not deferred"
    assert waits and all(0 < wait <= 1_000 for wait in waits)
    assert max_in_window(runs.admitted, 150) == 1


def test_cache_hits_take_no_slot(make_broker, start_worker) -> None:
    class MarkEverythingAHit(Middleware):
        def before_process_message(self, broker: Any, message: Any) -> None:
            delivery_of(broker, message).cache_hit = True

    limiter = RateLimiter(max_wait=0)
    broker = limited_broker(make_broker, limiter, MarkEverythingAHit())
    runs = Runs()

    @dramatiq.actor(broker=broker, rate_limit=(1, 60_000))
    def job(name: str) -> None:
        runs.record(name)

    start_worker(broker)
    for i in range(5):
        job.send(f"j{i}")
    broker.join(job.queue_name, timeout=5_000)
    assert sum(runs.jobs.values()) == 5 and set(runs.deferrals) == {0}, "one per minute, yet all ran at once"
    assert runs.admitted == [0.0] * 5, "none was admitted by the limiter"


def test_queue_limits_apply_to_actors_without_their_own(make_broker, start_worker) -> None:
    queue = unique("rlq")
    broker = limited_broker(make_broker, RateLimiter(limits={queue: (1, 200)}, max_wait=0))
    runs = Runs()

    @dramatiq.actor(broker=broker, queue_name=queue)
    def one(name: str) -> None:
        runs.record(name)

    @dramatiq.actor(broker=broker, queue_name=queue)
    def other(name: str) -> None:
        runs.record(name)

    start_worker(broker, worker_threads=4)
    for i in range(3):
        one.send(f"a{i}")
        other.send(f"b{i}")
    broker.join(queue, timeout=10_000)
    assert sum(runs.jobs.values()) == 6
    assert max_in_window(runs.admitted, 200) == 1, "both actors share the queue's budget"


@pytest.mark.integration
def test_concurrency_slot_is_freed_after_failure_and_refunded_after_a_later_skip(
    make_broker, start_worker, redis_client
) -> None:
    class SkipFirstDelivery(Middleware):
        """A later gate (such as a breaker) skipping an admitted message."""

        def __init__(self) -> None:
            self.skipped: set[str] = set()

        def before_process_message(self, broker: Any, message: Any) -> None:
            if message.args[0] == "skip" and message.message_id not in self.skipped:
                self.skipped.add(message.message_id)
                raise SkipMessage("skipped after admission")

    namespace = unique("rl")
    limiter = RateLimiter(redis=redis_client, namespace=namespace, max_wait=0)
    broker = make_broker("stub")
    broker.add_middleware(CurrentMessage())
    broker.add_middleware(limiter)
    broker.add_middleware(SkipFirstDelivery())
    runs = Runs()

    @dramatiq.actor(
        broker=broker, max_retries=0, rate_limit={"max": 10, "duration": 60_000, "concurrency": 1}
    )
    def job(name: str) -> None:
        runs.record(name)
        if name == "fail":
            raise RuntimeError("boom")

    start_worker(broker, worker_threads=1)
    job.send("fail")
    job.send("skip")
    job.send("after")
    broker.join(job.queue_name, timeout=5_000, fail_fast=False)
    assert runs.jobs == Counter({"fail": 1, "after": 1}), "a failed run freed its slot for the next"
    flush_outbox()  # the last release rides in the trip after the actor: let it land
    log, _, leases = RedisLimitStore(redis_client, namespace=namespace).keys("actor:job")
    assert redis_client.zcard(leases) == 0, "no slot leaked"
    assert redis_client.zcard(log) == 2, "the skipped message's start was refunded"


@pytest.mark.integration
def test_redis_outage_fails_open_to_per_process_limits(
    make_broker, start_worker, spare_redis, caplog
) -> None:
    limiter = RateLimiter(redis=connect_redis(spare_redis.url), max_wait=0)
    broker = limited_broker(make_broker, limiter)
    runs = Runs()

    @dramatiq.actor(broker=broker, rate_limit=(2, 300))
    def job(name: str) -> None:
        runs.record(name)

    spare_redis.stop()
    start_worker(broker, worker_threads=2)
    with caplog.at_level(logging.WARNING, logger="dramatiq_turbo.ratelimit.middleware"):
        for i in range(6):
            job.send(f"j{i}")
        broker.join(job.queue_name, timeout=10_000)
    assert sum(runs.jobs.values()) == 6 and set(runs.retries) == {0}, "an outage fails no job"
    assert max_in_window(runs.admitted, 300) <= 2, "the per-process limit still holds"
    assert limiter.outage.errors >= 6
    assert sum("Redis is unreachable" in r.getMessage() for r in caplog.records) == 1, "logged once"

    spare_redis.start()
    job.send("back")
    broker.join(job.queue_name, timeout=5_000)
    assert not limiter.outage.active, "recovered on its own"


@pytest.mark.integration
def test_redis_outage_fails_closed_when_configured(make_broker, start_worker, spare_redis) -> None:
    limiter = RateLimiter(redis=connect_redis(spare_redis.url), fail_open=False, max_wait=0)
    broker = limited_broker(make_broker, limiter)
    runs = Runs()

    @dramatiq.actor(broker=broker, rate_limit=(5, 200))
    def job(name: str) -> None:
        runs.record(name)

    spare_redis.stop()
    start_worker(broker)
    job.send("held")
    time.sleep(0.8)
    assert not runs.jobs, "nothing starts while the limit cannot be checked"
    spare_redis.start()
    wait_for(lambda: runs.jobs["held"] == 1, timeout=10, what="the held job to run after Redis returned")
    assert runs.retries == [0] and runs.deferrals[0] >= 1


@pytest.mark.integration
def test_a_running_message_keeps_its_slot_beyond_the_lease(make_broker, start_worker, redis_client) -> None:
    limiter = RateLimiter(redis=redis_client, namespace=unique("rl"), max_wait=5_000)
    broker = limited_broker(make_broker, limiter)
    spans: list[tuple[float, float]] = []
    lock = threading.Lock()

    @dramatiq.actor(broker=broker, rate_limit={"concurrency": 1, "lease": 300})
    def slow(seconds: float) -> None:
        began = time.monotonic()
        time.sleep(seconds)
        with lock:
            spans.append((began, time.monotonic()))

    start_worker(broker, worker_threads=2)
    slow.send(1.0)  # more than three leases long: renewals keep the slot
    slow.send(0.01)
    broker.join(slow.queue_name, timeout=10_000)
    (first, second) = sorted(spans)
    assert second[0] >= first[1], "the second started only after the first ended"


def test_message_option_overrides_the_actor(make_broker, start_worker) -> None:
    broker = limited_broker(make_broker, RateLimiter(max_wait=0))
    runs = Runs()

    @dramatiq.actor(broker=broker)
    def free(name: str) -> None:
        runs.record(name)

    start_worker(broker)
    free.send_with_options(args=("a",), rate_limit=[1, 60_000])
    free.send_with_options(args=("b",), rate_limit=[1, 60_000])
    free.send("c")
    time.sleep(0.5)
    assert runs.jobs["c"] == 1, "the unlimited message runs"
    assert runs.jobs["a"] + runs.jobs["b"] == 1, "the second limited message waits a minute"


def test_without_redis_limits_are_per_process_and_say_so(caplog) -> None:
    with caplog.at_level(logging.WARNING, logger="dramatiq_turbo.ratelimit.middleware"):
        RateLimiter()
    assert "per process, not globally" in caplog.text


@pytest.mark.integration
def test_install_adds_a_limiter_sharing_the_redis_brokers_server(make_broker) -> None:
    broker = make_broker("redis")
    install(broker, cache=False, breaker=False, backoff=False, telemetry=False)
    (limiter,) = [m for m in broker.middleware if isinstance(m, RateLimiter)]
    assert isinstance(limiter.store, RedisLimitStore)
    assert hash_key("turbo:rl", "actor:x", "log") == limiter.store.keys("actor:x")[0]


def test_a_short_lease_added_while_the_renewer_sleeps_for_a_long_one_is_renewed_in_time():
    from dramatiq_turbo.ratelimit.leases import Hold, LeaseRenewer

    class RecordingStore:
        def __init__(self) -> None:
            self.renewed: list[str] = []

        def renew(self, key: str, tokens: list[str], lease: int) -> int:
            self.renewed.append(key)
            return len(tokens)

    store = RecordingStore()
    renewer = LeaseRenewer()
    renewer.add(Hold(store, "long", "t1", 30_000))  # renewing every 10 s
    time.sleep(0.05)
    renewer.add(Hold(store, "short", "t2", 300))  # must be renewed within 300 ms
    time.sleep(0.4)
    renewer.stop()
    assert "short" in store.renewed
