"""The suite as a drop-in for an existing Dramatiq app: what Dramatiq users rely on keeps working."""

from __future__ import annotations

import logging
import os
import signal
import sys
import time
from pathlib import Path

import dramatiq
import pytest
from dramatiq.middleware import Middleware, Retries

from dramatiq_turbo import Backoff, install
from dramatiq_turbo.backoff import compute_delay
from tests.harness import send_by_name, unique, wait_for


def test_an_actor_with_throws_logs_dramatiqs_aborting_line_and_is_not_retried(
    make_broker, start_worker, caplog
):
    broker = make_broker("stub")
    install(broker, cache=False, rate_limit=False, breaker=False, telemetry=False, monitor=False)
    queue = unique("compat")
    runs = []

    class Expected(Exception):
        pass

    @dramatiq.actor(broker=broker, queue_name=queue, throws=(Expected,), max_retries=5)
    def expected_failure():
        runs.append(1)
        raise Expected("bad input")

    with caplog.at_level(logging.INFO):
        start_worker(broker)
        message = expected_failure.send()
        broker.join(queue, fail_fast=False)

    assert runs == [1], "not retried"
    aborting = [r for r in caplog.records if r.getMessage() == f"Aborting message {message.message_id!r}."]
    assert len(aborting) == 1 and aborting[0].levelno == logging.INFO, "Dramatiq's line, as Dramatiq logs it"
    assert aborting[0].name == "dramatiq.middleware.retries.Retries", "under Dramatiq's logger name too"
    assert not any(
        r.levelno >= logging.WARNING and "Retries exceeded" in r.getMessage() for r in caplog.records
    )


class _Delays(Middleware):
    """Records the delay of every enqueue that is a retry."""

    def __init__(self) -> None:
        self.delays: list[int] = []

    def before_enqueue(self, broker, message, delay):
        if delay:
            self.delays.append(delay)


def _retrying_broker(make_broker, **backoff):
    broker = make_broker("stub")
    delays = _Delays()
    broker.add_middleware(delays)
    install(
        broker,
        cache=False,
        rate_limit=False,
        breaker=False,
        telemetry=False,
        monitor=False,
        backoff=Backoff(**backoff) if backoff else True,
    )
    return broker, delays


def test_min_backoff_stays_a_minimum_with_the_default_jitter():
    """Dramatiq's meaning: no retry sooner than ``min_backoff`` (an existing actor keeps it)."""
    samples = [
        compute_delay(retries, min_backoff=1_000, max_backoff=60_000)
        for retries in range(6)
        for _ in range(300)
    ]
    assert min(samples) >= 1_000, "the default jitter never goes below min_backoff"
    assert len(set(samples)) > 100, "and it still spreads retries out"
    assert max(compute_delay(3, min_backoff=1_000, jitter="bounded") for _ in range(300)) <= 8_000
    # A jitter chosen to go below it does: that is the user's choice.
    assert min(compute_delay(0, min_backoff=1_000, jitter="full") for _ in range(300)) < 1_000


def test_an_actor_with_min_backoff_is_not_retried_sooner(make_broker, start_worker):
    broker, delays = _retrying_broker(make_broker)
    queue = unique("compat")
    runs = []

    @dramatiq.actor(broker=broker, queue_name=queue, min_backoff=1_000, max_backoff=5_000, max_retries=8)
    def flaky():
        runs.append(1)
        if len(runs) <= 8:
            raise RuntimeError("again")

    for _ in range(8):
        flaky.send()
    start_worker(broker)
    wait_for(lambda: len(delays.delays) >= 8, timeout=10, what="eight retries")
    assert min(delays.delays) >= 1_000, delays.delays


def test_retry_with_a_delay_is_retried_after_that_delay(make_broker, start_worker):
    broker, delays = _retrying_broker(make_broker, min_backoff=1_000, max_backoff=60_000)
    queue = unique("compat")
    runs = []

    @dramatiq.actor(broker=broker, queue_name=queue, max_retries=5)
    def polling():
        runs.append(1)
        if len(runs) <= 3:
            raise dramatiq.Retry(delay=100)

    polling.send()
    start_worker(broker)
    wait_for(lambda: len(runs) >= 4, timeout=10, what="three polls and a success")
    assert delays.delays == [100, 100, 100], "the delay the actor asked for, not a backoff under it"


# retry_when and on_retry_exhausted ---------------------------------------------------------------
# Each scenario runs on plain Dramatiq (its Retries) and with the suite installed
# (Backoff in Retries' place), and both must behave the same.


def _stack(make_broker, stack: str, **retry_options):
    """A StubBroker with Dramatiq's ``Retries`` or with the suite installed, given ``retry_options``."""
    broker = make_broker("stub")
    if stack == "dramatiq":
        index = next(i for i, m in enumerate(broker.middleware) if isinstance(m, Retries))
        broker.middleware[index] = Retries(**retry_options)
    else:
        install(broker, backoff=Backoff(**retry_options))
    return broker


# Fast retries, under both stacks (Dramatiq's Retries ignores a min_backoff of 0).
FAST = {"min_backoff": 10, "max_backoff": 10}


@pytest.mark.parametrize("stack", ["dramatiq", "suite"])
@pytest.mark.parametrize("where", ["actor option", "middleware argument"])
def test_retry_when_decides_each_retry_then_the_message_is_given_up(make_broker, start_worker, stack, where):
    asked: list[tuple[int, BaseException]] = []
    raised: list[BaseException] = []
    exhausted: list[tuple[dict, dict]] = []

    def three_retries(retries: int, exception: BaseException) -> bool:
        asked.append((retries, exception))
        return retries < 3

    broker = _stack(make_broker, stack, **({"retry_when": three_retries} if where != "actor option" else {}))
    queue = unique("compat")
    own = {"retry_when": three_retries} if where == "actor option" else {}

    # max_retries=0 would stop at the first failure: retry_when takes precedence over it.
    @dramatiq.actor(broker=broker, queue_name=queue, max_retries=0, on_retry_exhausted="sink", **FAST, **own)
    def flaky():
        error = RuntimeError(f"attempt {len(raised) + 1}")
        raised.append(error)
        raise error

    @dramatiq.actor(broker=broker, queue_name=queue)
    def sink(message_data, retry_info):
        exhausted.append((message_data, retry_info))

    message = flaky.send()
    start_worker(broker)
    broker.join(queue, fail_fast=False, timeout=10_000)

    assert len(raised) == 4, f"{stack}: retried while retry_when said so, then given up"
    assert [retries for retries, _ in asked] == [0, 1, 2, 3], "called with the retries done so far"
    assert all(exception is error for (_, exception), error in zip(asked, raised, strict=True)), (
        "called with the exception the attempt raised"
    )
    (dead,) = broker.dead_letters
    assert dead.message_id == message.message_id and dead.options["retries"] == 4, "dead-lettered"
    assert [info for _, info in exhausted] == [{"retries": 3, "max_retries": 0}], (
        "on_retry_exhausted is told as by Dramatiq: the retries done and the max_retries option"
    )


@pytest.mark.parametrize("stack", ["dramatiq", "suite"])
def test_an_actors_retry_when_overrides_the_middlewares(make_broker, start_worker, stack):
    """As with Dramatiq's ``Retries``: the actor's own predicate is asked, the middleware's is not."""
    middleware_asked = []
    runs = []
    broker = _stack(make_broker, stack, retry_when=lambda r, e: middleware_asked.append(r) or True)
    queue = unique("compat")

    @dramatiq.actor(broker=broker, queue_name=queue, retry_when=lambda r, e: r < 1, **FAST)
    def once_more():
        runs.append(1)
        raise RuntimeError("again")

    once_more.send()
    start_worker(broker)
    broker.join(queue, fail_fast=False, timeout=10_000)
    assert (len(runs), middleware_asked) == (2, []), "the actor's retry_when decided: one retry"


def _exhaust(make_broker, start_worker, stack: str) -> tuple[dramatiq.Message, list[tuple[dict, dict]]]:
    """An actor that always fails, with ``max_retries=2`` and ``on_retry_exhausted``: what its target got."""
    broker = make_broker("stub")
    if stack == "suite":
        install(broker)  # everything on, defaults: a drop-in must not change what the target is sent
    queue = unique("compat")
    received: list[tuple[dict, dict]] = []

    @dramatiq.actor(broker=broker, queue_name=queue, max_retries=2, on_retry_exhausted="on_exhausted", **FAST)
    def always_fails(x, *, y):
        raise RuntimeError(f"boom {x} {y}")

    @dramatiq.actor(broker=broker, queue_name=queue)
    def on_exhausted(message_data, retry_info):
        received.append((message_data, retry_info))

    message = always_fails.send(1, y="two")
    worker = start_worker(broker)
    broker.join(queue, fail_fast=False, timeout=10_000)
    worker.stop()
    return message, received


def test_on_retry_exhausted_gets_the_message_and_retry_info_as_dramatiq_sends_them(make_broker, start_worker):
    sent = {}
    for stack in ("dramatiq", "suite"):
        message, received = _exhaust(make_broker, start_worker, stack)
        assert len(received) == 1, f"{stack}: the named actor is sent one message when retries run out"
        sent[stack] = (message, *received[0])

    (ours, data, info), (theirs, their_data, their_info) = sent["suite"], sent["dramatiq"]
    assert info == their_info == {"retries": 2, "max_retries": 2}
    assert data.keys() == their_data.keys(), "the whole message, as Message.asdict() gives it"
    for original, got in ((ours, data), (theirs, their_data)):
        assert got["message_id"] == original.message_id
        assert got["message_timestamp"] == original.message_timestamp
        assert (got["queue_name"], got["actor_name"]) == (original.queue_name, "always_fails")
        assert (got["args"], got["kwargs"]) == ([1], {"y": "two"})
        assert got["options"]["retries"] == 3, "counted as Retries counts: the failed attempt included"
        assert "RuntimeError: boom 1 two" in got["options"]["traceback"]
        assert isinstance(got["options"]["requeue_timestamp"], int)
    extra = data["options"].keys() - their_data["options"].keys()
    assert not their_data["options"].keys() - data["options"].keys(), "every option Dramatiq sends is there"
    assert all(name.startswith("turbo_") for name in extra), (
        f"the suite's own options are namespaced: {extra}"
    )


# SIGHUP ------------------------------------------------------------------------------------------


def _pids(redis_client, key: str) -> set[int]:
    return {int(pid) for pid in redis_client.lrange(key, 0, -1)}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.integration
@pytest.mark.multiprocess
@pytest.mark.slow
def test_sighup_reloads_a_dramatiq_process_running_the_suite(
    make_broker, worker_processes, redis_client, redis_url
):
    """Dramatiq's reload (SIGHUP to the main process) replaces the workers, and the suite takes it.

    The old workers shut down gracefully: the job running when the signal
    arrives finishes (its concurrency slot renewed, then released) and no
    hook complains.  The new workers boot the suite again and run what is
    sent after the reload.
    """
    namespace = unique("compat-hup")
    broker = make_broker("redis", namespace=namespace)
    workers = worker_processes(
        "tests.apps.compat_app",
        processes=2,
        threads=2,
        env={
            "TURBO_TEST_REDIS_URL": redis_url,
            "TURBO_TEST_NAMESPACE": namespace,
            # Dramatiq reloads by re-executing "python -m dramatiq", found on
            # PATH: this interpreter's, as in an activated virtualenv.
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        },
    )
    (main,) = workers.start(ready_timeout=60)

    def booted(count: int) -> set[int] | None:
        pids = _pids(redis_client, f"{namespace}:booted")
        return pids if len(pids) == count else None

    first = wait_for(lambda: booted(2), timeout=10, what="two worker processes to boot")

    def ran(jobs: list[str]) -> bool:
        return all(redis_client.get(f"{namespace}:runs:{job}") for job in jobs)

    before = [f"before-{i}" for i in range(6)]
    for job in before:
        send_by_name(broker, "work", job, queue=namespace)
    wait_for(lambda: ran(before), timeout=15, what="the jobs sent before the reload")
    send_by_name(broker, "work", "in-flight", 0.5, queue=namespace)
    wait_for(
        lambda: redis_client.get(f"{namespace}:started:in-flight"), timeout=10, what="the long job to start"
    )

    main.send_signal(signal.SIGHUP)
    wait_for(
        lambda: workers.output().count("is ready for action") >= 4,
        timeout=60,
        interval=0.1,
        what="the reloaded workers to be ready",
    )
    every = wait_for(lambda: booted(4), timeout=10, what="two new worker processes to boot")
    second = every - first
    assert len(second) == 2, f"two new worker processes (first {first}, all {every})"
    assert not any(_alive(pid) for pid in first), "the old workers exited"
    assert main.poll() is None, "the main process lives on (it re-executes itself in place)"

    after = [f"after-{i}" for i in range(6)]
    for job in after:
        send_by_name(broker, "work", job, queue=namespace)
    wait_for(lambda: ran(after), timeout=15, what="the jobs sent after the reload")
    time.sleep(0.3)  # a duplicate run would show up here
    runs = {
        job: int(redis_client.get(f"{namespace}:runs:{job}") or 0) for job in [*before, "in-flight", *after]
    }
    assert set(runs.values()) == {1}, f"every job ran exactly once: {runs}"
    assert int(redis_client.get(f"{namespace}:pid:in-flight")) in first, (
        "the running job finished before its worker left"
    )
    assert {int(redis_client.get(f"{namespace}:pid:{job}")) for job in after} <= second, (
        "the new workers ran them"
    )

    workers.stop()
    assert main.returncode == 0, workers.output()[-3000:]
    assert not workers.unexpected_tracebacks(), workers.unexpected_tracebacks()[0][-3000:]
    complaints = [
        line
        for line in workers.output().splitlines()
        if "dramatiq_turbo" in line and any(level in line for level in ("[ERROR]", "[CRITICAL]", "[WARNING]"))
    ]
    assert not complaints, f"the suite complained during the reload: {complaints[:5]}"
