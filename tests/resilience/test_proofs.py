"""Proofs with real Redis/RabbitMQ and 4 real worker processes.

A failing dependency trips one shared breaker once; while it is open the
dependency gets no calls; after ``reset_timeout`` exactly one trial call runs
across all processes; then every deferred message completes exactly once, with
``retries`` counting only real failures, and the Results backend holds the real
values.  A flapping dependency under ``Backoff`` loses and duplicates nothing.
"""

from __future__ import annotations

import json
from collections import Counter

import dramatiq
import pytest
from dramatiq.results import ResultFailure
from dramatiq.results.backends import RedisBackend

from dramatiq_turbo.backoff import FAILURE_OPTION
from dramatiq_turbo.redis import connect_redis
from tests.harness import RABBITMQ_URL, unique, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.multiprocess, pytest.mark.slow]

APP = "tests.apps.resilience_breaker"
RESET_TIMEOUT = 1_500


def _send(broker, actor_name, queue, x):
    broker.declare_queue(queue)
    return broker.enqueue(
        dramatiq.Message(queue_name=queue, actor_name=actor_name, args=(x,), kwargs={}, options={})
    )


def _log(client, key):
    return [json.loads(item) for item in client.lrange(key, 0, -1)]


@pytest.fixture
def scenario(redis_url, make_broker, worker_processes, request):
    """Start 4 worker processes of the app on ``kind`` and hand back what a test needs."""
    client = connect_redis(redis_url)
    namespaces = []
    results = []  # (backend, message): result keys are hashes, not under the namespace

    def start(kind, **env):
        namespace = unique("res")
        namespaces.append(namespace)
        queue = unique("resq")
        if kind == "rabbitmq":
            request.getfixturevalue("rabbitmq_url")
            broker = make_broker("rabbitmq")
        else:
            broker = make_broker("redis", namespace=namespace)
        broker.declare_queue(queue)
        workers = worker_processes(
            APP,
            processes=4,
            threads=2,
            env={
                "TURBO_TEST_REDIS_URL": redis_url,
                "TURBO_TEST_NAMESPACE": namespace,
                "TURBO_TEST_QUEUE": queue,
                "TURBO_TEST_BROKER": kind,
                "TURBO_TEST_RABBITMQ_URL": RABBITMQ_URL,
                **env,
            },
        )
        # The failures the scenarios provoke; any other traceback fails the test.
        workers.expected_tracebacks = (
            "ConnectionError: dependency is down",
            "ConnectionError: dependency flapped",
            "NotRetryable: input",
        )
        backend = RedisBackend(url=redis_url, namespace=f"{namespace}-results")

        def send(actor_name, x):
            message = _send(broker, actor_name, queue, x)
            results.append((backend, message))
            return message

        return namespace, queue, send, broker, workers, backend

    yield client, start
    for backend, message in results:
        client.delete(backend.build_message_key(message))
    for namespace in namespaces:
        keys = list(client.scan_iter(f"{namespace}*"))
        if keys:
            client.delete(*keys)
    client.close()


@pytest.mark.parametrize("kind", ["redis", "rabbitmq"])
def test_failing_dependency_trips_once_for_all_processes_and_every_message_completes_once(kind, scenario):
    client, start = scenario
    namespace, queue, send, _broker, workers, backend = start(kind)
    client.set(f"{namespace}:mode", "fail")
    workers.start(1)
    messages = [send("guarded", x) for x in range(24)]

    transitions = wait_for(
        lambda: _log(client, f"{namespace}:transitions"), timeout=20, what="the breaker to trip"
    )
    # The dependency recovers while the breaker is open: only a trial call can find out.
    client.set(f"{namespace}:mode", "ok")
    wait_for(
        lambda: client.llen(f"{namespace}:done") >= len(messages),
        timeout=40,
        what="every message to complete",
    )
    results = [m.get_result(backend=backend, block=True, timeout=10_000) for m in messages]
    done = _log(client, f"{namespace}:done")
    transitions = _log(client, f"{namespace}:transitions")
    calls = _log(client, f"{namespace}:calls")

    # Tripped once, for everyone: one closed->open, one trial, closed again.
    assert [(old, new) for _, old, new, _ in transitions] == [
        ("closed", "open"),
        ("open", "half-open"),
        ("half-open", "closed"),
    ], transitions
    opened_at, half_open_at, closed_at = (t for t, *_ in transitions)
    assert half_open_at - opened_at >= RESET_TIMEOUT - 100, "the open period lasts reset_timeout (Redis time)"
    # While open the dependency receives no calls (calls already in flight at the trip may land just after).
    during_open = [c for c in calls if opened_at + 100 <= c[0] < half_open_at]
    assert during_open == [], during_open
    # Exactly one call, in one process, was admitted as a trial, and it reached the recovered dependency.
    trial = [c for c in calls if c[3][0] == "half-open"]
    assert len(trial) == 1 and trial[0][2] == "ok", f"exactly one trial call across all processes: {trial}"
    assert half_open_at <= trial[0][0] <= closed_at
    generations = sorted({c[3][1] for c in calls})
    assert len(generations) == 3, f"closed (failing), half-open (trial), closed again: {generations}"
    failed_calls = Counter(c[1] for c in calls if c[2] == "fail")
    assert 3 <= sum(failed_calls.values()) <= 3 + 8, "fail_max failures, plus at most the calls in flight"

    # Every deferred message completed exactly once, with its real result.
    assert sorted(x for x, *_ in done) == list(range(24)), "each message completed exactly once"
    assert len({mid for _, mid, *_ in done}) == 24
    assert results == [2 * x for x in range(24)], "the Results backend holds the real values"
    # retries counts the message's real failures only; deferrals are counted apart.
    for x, _, retries, _deferrals in done:
        assert retries == failed_calls[x], (x, retries, failed_calls[x])
    assert sum(deferrals for *_, deferrals in done) >= 24 - sum(failed_calls.values()) - 8, (
        "messages that arrived while open were deferred"
    )
    if kind == "redis":
        assert client.zcard(f"{namespace}:{queue}.XQ") == 0, "nothing dead-lettered"


def test_flapping_dependency_with_backoff_loses_and_duplicates_nothing(scenario):
    client, start = scenario
    namespace, queue, send, broker, workers, backend = start("redis")
    client.set(f"{namespace}:mode", "flap")
    workers.start(1)
    count = 60
    messages = [send("flapping", x) for x in range(count)]

    def outcomes():
        done = _log(client, f"{namespace}:done")
        dead = [json.loads(m) for m in client.hvals(f"{namespace}:{queue}.XQ.msgs")]
        return (done, dead) if len(done) + len(dead) >= count else None

    done, dead = wait_for(outcomes, timeout=60, what="every message to end done or dead")
    broker.join(queue, timeout=20_000)  # nothing left in flight or delayed
    done, dead = (
        _log(client, f"{namespace}:done"),
        [json.loads(m) for m in client.hvals(f"{namespace}:{queue}.XQ.msgs")],
    )

    done_x = [x for x, _ in done]
    dead_x = [m["args"][0] for m in dead]
    assert len(done_x) == len(set(done_x)), "no message completed twice"
    assert sorted(done_x + dead_x) == list(range(count)), "every message ended done or dead-lettered, once"
    for m in dead:
        failure = m["options"][FAILURE_OPTION]
        if m["args"][0] % 10 == 0:
            assert failure["reason"] == "NotRetryable is not retryable" and failure["retries"] == 0
        else:
            assert failure["reason"] == "retries exhausted" and failure["retries"] == 4
    assert {x for x in range(0, count, 10)} <= set(dead_x), "bad input is dead-lettered at once"
    for message in messages:
        x = message.args[0]
        if x in done_x:
            assert message.get_result(backend=backend, block=True, timeout=5_000) == 2 * x
        else:
            with pytest.raises(ResultFailure):
                message.get_result(backend=backend, block=True, timeout=5_000)


def test_breaker_store_outage_falls_back_to_local_breakers_in_each_process(scenario, spare_redis):
    client, start = scenario
    namespace, _queue, send, _broker, workers, backend = start(
        "redis", TURBO_TEST_BREAKER_REDIS_URL=spare_redis.url
    )
    workers.processes = 2
    client.set(f"{namespace}:mode", "ok")
    workers.start(1)
    spare_redis.stop()  # the breakers' Redis is gone; the broker's is fine

    first = [send("guarded", x) for x in range(10)]
    assert [m.get_result(backend=backend, block=True, timeout=15_000) for m in first] == [
        2 * x for x in range(10)
    ], "a Redis outage of the breaker never fails a job"
    # Now the dependency fails: each process trips its own local breaker.
    client.set(f"{namespace}:mode", "fail")
    second = [send("guarded", x) for x in range(10, 30)]

    def opened_by():
        return {pid for _, _, new, pid in _log(client, f"{namespace}:transitions") if new == "open"}

    # Each process trips its own breaker: wait until both have, before the dependency recovers.
    wait_for(lambda: len(opened_by()) == 2, timeout=20, what="the local breaker of each process to trip")
    client.set(f"{namespace}:mode", "ok")
    results = [m.get_result(backend=backend, block=True, timeout=20_000) for m in second]
    assert results == [2 * x for x in range(10, 30)]

    done = [x for x, *_ in _log(client, f"{namespace}:done")]
    assert sorted(done) == list(range(30)), "every message completed exactly once"
    trips = Counter(pid for _, old, new, pid in _log(client, f"{namespace}:transitions") if new == "open")
    assert len(trips) == 2 and set(trips.values()) == {1}, f"one trip in each of the 2 processes: {trips}"
    calls = _log(client, f"{namespace}:calls")
    failed = [c for c in calls if c[2] == "fail"]
    # Each local breaker trips after 3 failures, plus calls in flight.
    assert len(failed) <= len({c[4] for c in calls}) * (3 + 2) + 2 * 2, len(failed)
    output = workers.output()
    assert output.count("breaker: Redis is unreachable") <= 2, "one warning per process and outage"
    assert output.count("breaker: Redis is unreachable") >= 1


def test_half_open_admits_exactly_half_open_calls_trials_across_all_processes(scenario):
    """``half_open_calls=3`` on 4 worker processes: three trial calls in all, then closed.

    Calls take 300 ms, so the processes ask for trials while others are in flight.
    """
    client, start = scenario
    namespace, _queue, send, _broker, workers, backend = start(
        "redis", TURBO_TEST_HALF_OPEN_CALLS="3", TURBO_TEST_CALL_MS="300"
    )
    client.set(f"{namespace}:mode", "fail")
    workers.start(1)
    messages = [send("guarded", x) for x in range(24)]
    wait_for(lambda: _log(client, f"{namespace}:transitions"), timeout=20, what="the breaker to trip")
    client.set(f"{namespace}:mode", "ok")
    results = [m.get_result(backend=backend, block=True, timeout=40_000) for m in messages]
    assert results == [2 * x for x in range(24)]

    transitions = [(old, new) for _, old, new, _ in _log(client, f"{namespace}:transitions")]
    assert transitions == [("closed", "open"), ("open", "half-open"), ("half-open", "closed")], transitions
    trial = [c for c in _log(client, f"{namespace}:calls") if c[3] and c[3][0] == "half-open"]
    assert len(trial) == 3, f"exactly half_open_calls trial calls across all processes: {trial}"
    assert all(c[2] == "ok" for c in trial)
