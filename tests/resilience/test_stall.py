"""StallGuard: a message that keeps killing its worker is dead-lettered, not run forever."""

from __future__ import annotations

import contextlib
import logging
import time
from typing import Any

import dramatiq
import pytest
import redis
from dramatiq.results import ResultFailure, Results
from dramatiq.results.backends import StubBackend

from dramatiq_turbo import StallGuard, install
from dramatiq_turbo.core.deadletter import FAILURE_OPTION
from dramatiq_turbo.monitor.brokers import adapter_for
from dramatiq_turbo.options import OptionError
from dramatiq_turbo.redis import connect_redis, hash_key
from tests.harness import RABBITMQ_URL, REDIS_URL, dispose_broker, make_broker, unique, wait_for


def _count_key(guard: StallGuard, message_id: str) -> str:
    return hash_key(guard.starts.shared.namespace, message_id)  # type: ignore[union-attr]


@pytest.fixture
def guarded(make_broker, redis_url: str, start_worker):
    """A StubBroker with the whole suite on real Redis, a stub results backend, and its StallGuard."""

    def build(**guard: Any):
        broker = make_broker("stub")
        broker.add_middleware(Results(backend=StubBackend()))
        stall = StallGuard(redis=connect_redis(redis_url), namespace=unique("turbo:stall"), **guard)
        install(broker, redis=connect_redis(redis_url), stall=stall, telemetry=False, monitor=False)
        return broker, stall

    return build


@pytest.mark.integration
def test_a_message_past_its_stalls_is_dead_lettered_with_the_reason_and_not_run(
    guarded, start_worker, redis_client, caplog
):
    broker, guard = guarded()
    queue = unique("stall")
    runs: list[str] = []

    @dramatiq.actor(broker=broker, queue_name=queue, store_results=True)
    def job(name: str) -> str:
        runs.append(name)
        return name

    # Two earlier starts whose worker died: the third start is past max_stalls=1.
    doomed = job.message("doomed")
    redis_client.set(_count_key(guard, doomed.message_id), 2)
    healthy = job.message("healthy")
    redis_client.set(_count_key(guard, healthy.message_id), 1)  # one stall: it may run once more
    with caplog.at_level(logging.WARNING):
        broker.enqueue(doomed)
        broker.enqueue(healthy)
        start_worker(broker)
        broker.join(queue, fail_fast=False)

    assert runs == ["healthy"], "the stalled message does not run; one stall is forgiven"
    [letter] = broker.dead_letters_by_queue[queue]
    assert letter.message_id == doomed.message_id
    assert letter.options[FAILURE_OPTION]["reason"] == "stalled 2 times"
    with pytest.raises(ResultFailure, match="StalledError"):
        doomed.get_result(backend=broker.get_results_backend())
    assert healthy.get_result(backend=broker.get_results_backend()) == "healthy"
    assert any(f"{doomed.message_id!r} stalled 2 times" in r.getMessage() for r in caplog.records)
    # Both counts are forgotten: the dead letter, put back by hand, would start afresh.
    wait_for(
        lambda: (
            redis_client.exists(_count_key(guard, doomed.message_id), _count_key(guard, healthy.message_id))
            == 0
        ),
        timeout=5,
        what="the counts to be cleared",
    )


@pytest.mark.integration
def test_every_way_a_message_finishes_forgets_its_starts(guarded, start_worker, redis_client):
    broker, guard = guarded()
    queue = unique("stall")
    seen: list[str] = []

    @dramatiq.actor(broker=broker, queue_name=queue, max_retries=1, min_backoff=0, max_backoff=0)
    def flaky() -> None:
        seen.append("flaky")
        if seen.count("flaky") == 1:
            raise RuntimeError("first attempt fails")

    @dramatiq.actor(broker=broker, queue_name=queue, max_retries=0)
    def fails() -> None:
        raise RuntimeError("no retries left")

    @dramatiq.actor(broker=broker, queue_name=queue, rate_limit={"max": 1, "duration": 4_000})
    def limited() -> None:
        seen.append("limited")

    def counted(message: Any) -> bool:
        return bool(redis_client.exists(_count_key(guard, message.message_id)))

    start_worker(broker)
    finished = [flaky.send(), fails.send(), limited.send()]
    wait_for(lambda: seen.count("flaky") == 2 and "limited" in seen, timeout=10, what="the first runs")
    deferred = limited.send()  # no slot for 4 s: deferred, not run
    wait_for(lambda: not counted(deferred) and not any(map(counted, finished)), timeout=5, what="cleared")
    assert seen.count("limited") == 1, "the deferred message has not run again yet, and its count is gone"
    broker.join(queue, fail_fast=False)
    assert seen.count("limited") == 2
    wait_for(lambda: not counted(deferred), timeout=5, what="the count of its run to be cleared")


@pytest.mark.integration
def test_an_l1_hit_counts_no_start(guarded, start_worker, redis_client):
    broker, guard = guarded()
    queue = unique("stall")

    @dramatiq.actor(broker=broker, queue_name=queue, cache=True)
    def square(x: int) -> int:
        return x * x

    start_worker(broker)
    square.send(3)
    broker.join(queue)
    hit = square.send(3)
    redis_client.set(_count_key(guard, hit.message_id), 50)  # would be dead-lettered if it counted
    broker.join(queue)
    assert queue not in broker.dead_letters_by_queue or not broker.dead_letters_by_queue[queue]
    assert redis_client.get(_count_key(guard, hit.message_id)) == b"50", "an L1 hit asks Redis nothing"
    redis_client.delete(_count_key(guard, hit.message_id))


@pytest.mark.integration
def test_the_limit_is_per_actor_and_per_message(guarded, start_worker, redis_client, caplog):
    broker, guard = guarded(max_stalls=3)
    queue = unique("stall")
    runs: list[str] = []

    @dramatiq.actor(broker=broker, queue_name=queue, max_stalls=0)
    def strict(name: str) -> None:
        runs.append(name)

    @dramatiq.actor(broker=broker, queue_name=queue, max_stalls=None)
    def unguarded(name: str) -> None:
        runs.append(name)

    @dramatiq.actor(broker=broker, queue_name=queue)
    def default(name: str) -> None:
        runs.append(name)

    cases = {
        "strict": (strict.message("strict"), 1),  # one stall is already one too many
        "unguarded": (unguarded.message("unguarded"), 1_000),  # never counted
        "default-3": (default.message("default-3"), 3),  # within the middleware's max_stalls=3
        "default-4": (default.message("default-4"), 4),
        "bad-option": (default.message_with_options(args=("bad-option",), max_stalls="two"), 4),
    }
    for message, stalls in cases.values():
        redis_client.set(_count_key(guard, message.message_id), stalls)
    with caplog.at_level(logging.WARNING):
        for message, _ in cases.values():
            broker.enqueue(message)
        start_worker(broker)
        broker.join(queue, fail_fast=False)
    assert sorted(runs) == ["default-3", "unguarded"]
    dead = {m.args[0] for m in broker.dead_letters_by_queue[queue]}
    assert dead == {"strict", "default-4", "bad-option"}, "a sender's bad option falls back to the default"
    assert any("max_stalls must be an int >= 0" in r.getMessage() for r in caplog.records)
    redis_client.delete(*(_count_key(guard, m.message_id) for m, _ in cases.values()))


@pytest.mark.parametrize("bad", [-1, 1.5, "1", True])
def test_a_bad_max_stalls_is_refused_where_it_is_declared(bad):
    from dramatiq.brokers.stub import StubBroker

    with pytest.raises(ValueError, match="max_stalls must be an int >= 0"):
        StallGuard(max_stalls=bad)
    broker = StubBroker()
    broker.add_middleware(StallGuard())
    with pytest.raises(OptionError, match="actor 'job': max_stalls must be an int >= 0"):

        @dramatiq.actor(broker=broker, max_stalls=bad)
        def job() -> None: ...


def test_without_redis_messages_run_and_the_log_says_stalls_are_not_caught(caplog, start_worker):
    from dramatiq.brokers.stub import StubBroker

    with caplog.at_level(logging.WARNING):
        broker = StubBroker()
        broker.add_middleware(StallGuard())
    assert any("no stall is caught" in r.getMessage() for r in caplog.records)
    runs = []

    @dramatiq.actor(broker=broker, queue_name=unique("stall"))
    def job() -> None:
        runs.append(1)

    for _ in range(3):
        job.send()
    start_worker(broker)
    broker.join(job.queue_name)
    assert runs == [1, 1, 1]


@pytest.mark.integration
def test_while_redis_is_down_messages_run_and_the_outage_is_logged_once(spare_redis, start_worker, caplog):
    from dramatiq.brokers.stub import StubBroker

    broker = StubBroker()
    guard = StallGuard(redis=connect_redis(spare_redis.url))
    broker.add_middleware(guard)
    runs = []

    @dramatiq.actor(broker=broker, queue_name=unique("stall"))
    def job() -> None:
        runs.append(1)

    start_worker(broker)
    spare_redis.stop()
    with caplog.at_level(logging.WARNING):
        for _ in range(5):
            job.send()
        broker.join(job.queue_name)
    assert runs == [1] * 5, "an outage costs no message"
    outages = [r for r in caplog.records if "stall: Redis is unreachable" in r.getMessage()]
    assert len(outages) == 1
    spare_redis.start()
    job.send()
    broker.join(job.queue_name)
    assert guard.starts.outage.active is False and len(runs) == 6


# The proof: a message whose actor kills its own worker, on real brokers and real worker processes.


def _dead_letters(broker: dramatiq.Broker, queue: str) -> list[Any]:
    return list(adapter_for(broker).read([queue], window=60_000, samples=10).queues[queue].dead_letters)


@pytest.mark.integration
@pytest.mark.multiprocess
@pytest.mark.slow
@pytest.mark.parametrize("kind", ["redis", "rabbitmq"])
def test_a_message_that_kills_its_worker_is_dead_lettered_after_max_stalls(
    kind: str, redis_client: redis.Redis, worker_processes, request
):
    if kind == "rabbitmq":
        request.getfixturevalue("rabbitmq_url")
    namespace = unique("stallproof")
    env = {
        "TURBO_TEST_BROKER": kind,
        "TURBO_TEST_NAMESPACE": namespace,
        "TURBO_TEST_REDIS_URL": REDIS_URL,
        "TURBO_TEST_RABBITMQ_URL": RABBITMQ_URL,
    }
    queue = f"{namespace}-q"
    producer = make_broker(kind, **({"namespace": namespace} if kind == "redis" else {}))
    backend = _results_backend(namespace)
    producer.add_middleware(Results(backend=backend))
    try:
        crasher, strict, normal = _declare_like_the_app(producer, queue)
        messages = [
            crasher.send("crasher"),
            strict.send("strict"),
            *(normal.send(f"job-{i}") for i in range(6)),
        ]
        restarts = _run_until_settled(worker_processes, env, redis_client, namespace, producer, queue)

        starts = {job: redis_client.llen(f"{namespace}:starts:{job}") for job in ("crasher", "strict")}
        assert starts == {"crasher": 2, "strict": 1}, "started max_stalls + 1 times, then dead-lettered"
        assert restarts >= 3, "each start of a crasher took its worker down"
        time.sleep(1.5)  # a late run would show by now
        done = sorted(job.decode() for job in redis_client.lrange(f"{namespace}:done", 0, -1))
        assert done == sorted(f"job-{i}" for i in range(6)), "every other message completed, once"
        letters = {letter.message_id: letter for letter in _dead_letters(producer, queue)}
        assert {m.message_id for m in messages[:2]} == set(letters)
        assert letters[messages[0].message_id].reason == "stalled 2 times"
        assert letters[messages[1].message_id].reason == "stalled 1 time"
        for message in messages[:2]:
            with pytest.raises(ResultFailure, match="StalledError"):
                message.get_result(backend=backend)
        assert [m.get_result(backend=backend) for m in messages[2:]] == [f"JOB-{i}" for i in range(6)]
        left = list(redis_client.scan_iter("turbo:stall:*"))
        assert not [key for key in left if redis_client.pttl(key) < 0], "every count has a time to live"
    finally:
        dispose_broker(producer)
        for key in redis_client.scan_iter(f"{namespace}*"):
            redis_client.delete(key)


def _results_backend(namespace: str) -> Any:
    from dramatiq.results.backends import RedisBackend

    return RedisBackend(url=REDIS_URL, namespace=f"{namespace}:results")


def _declare_like_the_app(broker: dramatiq.Broker, queue: str) -> tuple[Any, Any, Any]:
    """The app's actors, declared on the producer only to send and read results (never run here)."""
    options = {"broker": broker, "queue_name": queue, "store_results": True, "max_retries": 0}
    return (
        dramatiq.actor(lambda job: None, actor_name="crash_worker", **options),
        dramatiq.actor(lambda job: None, actor_name="crash_worker_no_second_chance", **options),
        dramatiq.actor(lambda job: None, actor_name="record_run", **options),
    )


def _run_until_settled(worker_processes, env, redis_client, namespace, producer, queue) -> int:
    """Run one single-threaded worker, restarting it each time a crasher kills it, as a supervisor
    would, until the two crashers are dead letters and the other jobs are done; return the restarts."""
    restarts = 0
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        group = worker_processes("tests.apps.stall_app", processes=1, threads=1, env=env)
        group.expected_tracebacks = ("exited unexpectedly",)
        with contextlib.suppress(AssertionError):  # killed by a crasher before it said it was ready
            group.start(1)
        command = group.popen[-1]
        while command.poll() is None and time.monotonic() < deadline:
            settled = redis_client.llen(f"{namespace}:done") == 6 and len(_dead_letters(producer, queue)) == 2
            if settled:
                group.stop()
                return restarts
            time.sleep(0.2)
        restarts += 1
    starts = {job: redis_client.llen(f"{namespace}:starts:{job}") for job in ("crasher", "strict")}
    raise AssertionError(
        f"not settled after {restarts} restarts: {redis_client.llen(f'{namespace}:done')} of 6 done, "
        f"dead letters {[letter.reason for letter in _dead_letters(producer, queue)]}, starts {starts}"
    )
