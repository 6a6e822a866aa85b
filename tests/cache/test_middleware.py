"""ResultCache middleware: a hit behaves exactly as if the actor had returned the cached value."""

from __future__ import annotations

import threading
import time

import dramatiq
import pytest
from dramatiq.middleware import Middleware, SkipMessage
from dramatiq.results import Results
from dramatiq.results.backends import RedisBackend, StubBackend

from dramatiq_turbo import install
from dramatiq_turbo.cache import MultiLevelCache, ResultCache, content_hash
from dramatiq_turbo.core.delivery import is_cache_hit
from dramatiq_turbo.events import add_listener, remove_listener
from tests import harness


class SeesHits(Middleware):
    """Stands where RateLimiter and CircuitBreaker stand: after ResultCache."""

    def __init__(self) -> None:
        self.seen: list[bool] = []

    def before_process_message(self, broker, message):
        self.seen.append(is_cache_hit(message))


def _stack(broker, cache: MultiLevelCache, backend=None):
    backend = backend or StubBackend()
    broker.add_middleware(Results(backend=backend))
    result_cache = ResultCache(cache=cache)
    install(broker, cache=result_cache, breaker=False, rate_limit=False, backoff=False, telemetry=False)
    spy = SeesHits()
    broker.add_middleware(spy)
    return result_cache, spy


@pytest.fixture
def stub_stack(make_broker, make_cache, fake_redis):
    broker = make_broker("stub")
    cache = make_cache(redis=fake_redis)
    _, spy = _stack(broker, cache)
    return broker, cache, spy


def test_a_hit_skips_the_body_stores_the_result_continues_pipelines_and_fires_on_success(
    stub_stack, start_worker
):
    broker, cache, spy = stub_stack
    runs, piped, successes = [], [], []

    @dramatiq.actor(cache=True, store_results=True)
    def summarize(doc: str) -> dict:
        runs.append(doc)
        return {"summary": doc.upper()}

    @dramatiq.actor(store_results=True)
    def publish(summary: dict) -> str:
        piped.append(summary)
        return "published"

    @dramatiq.actor
    def on_done(message_data, result):
        successes.append(result)

    events: list[tuple[str, dict]] = []
    listener = lambda name, attributes: events.append((name, dict(attributes)))  # noqa: E731
    add_listener(listener)
    start_worker(broker)
    first = summarize.send_with_options(args=("a",), on_success=on_done)
    assert first.get_result(block=True, timeout=5_000) == {"summary": "A"}
    pipe = (summarize.message("a") | publish.message()).run()
    assert pipe.get_result(block=True, timeout=5_000) == "published"
    second = summarize.send_with_options(args=("a",), on_success=on_done)
    assert second.get_result(block=True, timeout=5_000) == {"summary": "A"}
    broker.join(summarize.queue_name)

    assert runs == ["a"]  # the body ran once, for three messages
    assert piped == [{"summary": "A"}]
    harness.wait_for(lambda: len(successes) == 2, timeout=5, what="on_success for the miss and the hit")
    assert successes == [{"summary": "A"}, {"summary": "A"}]
    assert spy.seen.count(True) == 2  # the hits were marked for the gates behind the cache
    assert cache.stats()["computations"] == 1
    remove_listener(listener)
    names = [name for name, _ in events]
    assert names.count("cache.miss") == 1
    assert names.count("cache.store") == 1
    assert ("cache.hit", {"level": "l1"}) in events
    assert names.count("cache.hit") == 2


def test_actors_without_cache_options_run_every_time(stub_stack, start_worker):
    broker, _, _ = stub_stack
    runs = []

    @dramatiq.actor(store_results=True)
    def plain(x: int) -> int:
        runs.append(x)
        return x

    start_worker(broker)
    for _ in range(3):
        assert plain.send(1).get_result(block=True, timeout=5_000) == 1
    assert runs == [1, 1, 1]


def test_cache_key_callable_and_cache_ttl(stub_stack, start_worker, fake_redis):
    broker, cache, _ = stub_stack
    runs = []

    @dramatiq.actor(cache_key=lambda pdf, user_id: content_hash(pdf), cache_ttl=60_000, store_results=True)
    def notes(pdf: str, user_id: int) -> str:
        runs.append(user_id)
        return f"notes of {len(pdf)} chars"

    start_worker(broker)
    assert notes.send("same content", 1).get_result(block=True, timeout=5_000) == "notes of 12 chars"
    # Another user, same document: the key is the content, so it is a hit.
    assert notes.send("same content", 2).get_result(block=True, timeout=5_000) == "notes of 12 chars"
    assert runs == [1]
    key = f"{cache.namespace}:{{notes:{content_hash('same content')}}}"
    assert 0 < fake_redis.pttl(key) <= 60_000


def test_message_options_override_actor_options(stub_stack, start_worker):
    broker, _, _ = stub_stack
    runs = []

    @dramatiq.actor(cache=True, store_results=True)
    def work(x: int) -> int:
        runs.append(x)
        return x * 2

    start_worker(broker)
    assert work.send(1).get_result(block=True, timeout=5_000) == 2
    assert work.send_with_options(args=(1,), cache=False).get_result(block=True, timeout=5_000) == 2
    assert work.send_with_options(args=(1,), cache_version=2).get_result(block=True, timeout=5_000) == 2
    assert runs == [1, 1, 1]


def test_exceptions_are_not_cached_and_the_next_message_computes(stub_stack, start_worker):
    broker, _, _ = stub_stack
    runs = []

    @dramatiq.actor(cache=True, store_results=True, max_retries=0)
    def flaky(x: int) -> int:
        runs.append(x)
        if len(runs) == 1:
            raise RuntimeError("transient")
        return x

    start_worker(broker)
    first = flaky.send(7)
    broker.join(flaky.queue_name, fail_fast=False)
    with pytest.raises(Exception, match="transient"):
        first.get_result(block=True, timeout=5_000)
    assert flaky.send(7).get_result(block=True, timeout=5_000) == 7
    assert flaky.send(7).get_result(block=True, timeout=5_000) == 7
    assert runs == [7, 7]


def test_a_bad_cache_key_fails_the_message_with_a_clear_error(stub_stack, start_worker):
    broker, _, _ = stub_stack
    runs = []

    @dramatiq.actor(cache_key=lambda x: 42, store_results=True, max_retries=0)
    def keyed(x: int) -> int:
        runs.append(x)
        return x

    start_worker(broker)
    message = keyed.send(1)
    broker.join(keyed.queue_name, fail_fast=False)
    with pytest.raises(Exception, match="cache_key must return a non-empty str"):
        message.get_result(block=True, timeout=5_000)
    assert runs == []


def test_a_cache_key_that_raises_fails_the_message_instead_of_running_it_uncached(stub_stack, start_worker):
    broker, _, _ = stub_stack
    runs = []

    @dramatiq.actor(cache_key=lambda doc: doc["id"], store_results=True, max_retries=0)
    def keyed(doc: dict) -> int:
        runs.append(doc)
        return 1

    start_worker(broker)
    message = keyed.send({"name": "no id"})
    broker.join(keyed.queue_name, fail_fast=False)
    with pytest.raises(Exception, match="KeyError"):
        message.get_result(block=True, timeout=5_000)
    assert runs == []


def test_bad_cache_options_are_refused_when_the_actor_is_declared(stub_stack):
    with pytest.raises(ValueError, match="cache_ttl must be an int of milliseconds"):

        @dramatiq.actor(cache_ttl=1.5)
        def seconds_by_mistake() -> None:
            pass

    with pytest.raises(ValueError, match="cache_key must be a callable"):

        @dramatiq.actor(cache_key="not callable")
        def not_callable() -> None:
            pass


def test_an_uncachable_result_is_returned_and_not_cached(stub_stack, start_worker, caplog):
    broker, _, _ = stub_stack
    runs = []

    @dramatiq.actor(cache=True)
    def odd(x: int) -> set:
        runs.append(x)
        return {x}

    start_worker(broker)
    odd.send(1)
    odd.send(1)
    broker.join(odd.queue_name)
    assert runs == [1, 1]
    assert "not cached" in caplog.text


def test_a_message_skipped_after_the_lookup_releases_its_turn(
    make_broker, make_cache, fake_redis, start_worker
):
    broker = make_broker("stub")
    cache = make_cache(redis=fake_redis)
    _stack(broker, cache)
    skips = []

    class SkipOnce(Middleware):
        def before_process_message(self, broker, message):
            if not skips:
                skips.append(message.message_id)
                raise SkipMessage("deferred by a later gate")

    broker.add_middleware(SkipOnce())
    runs = []

    @dramatiq.actor(cache=True, store_results=True)
    def work(x: int) -> int:
        runs.append(x)
        return x

    start_worker(broker)
    work.send(1)
    broker.join(work.queue_name)
    start = time.monotonic()
    assert work.send(1).get_result(block=True, timeout=5_000) == 1
    assert time.monotonic() - start < 2  # did not wait for a turn nobody holds
    assert runs == [1]
    assert fake_redis.keys(f"{cache.namespace}:*lease") == []


def test_async_actors_are_served_from_the_cache_too(make_broker, make_cache, start_worker):
    from dramatiq.middleware import AsyncIO

    broker = make_broker("stub")
    broker.add_middleware(AsyncIO())
    _stack(broker, make_cache(redis=None))
    runs = []

    @dramatiq.actor(cache=True, store_results=True)
    async def fetch(x: int) -> int:
        runs.append(x)
        return x + 1

    start_worker(broker)
    assert fetch.send(1).get_result(block=True, timeout=5_000) == 2
    assert fetch.send(1).get_result(block=True, timeout=5_000) == 2
    assert runs == [1]


@pytest.mark.integration
def test_on_redis_broker_identical_messages_in_flight_compute_once(
    redis_url, redis_client, make_broker, make_cache, start_worker
):
    broker = make_broker("redis")
    cache = make_cache(redis=redis_url)
    _stack(broker, cache, backend=RedisBackend(url=redis_url, namespace=harness.unique("res")))
    runs = []
    lock = threading.Lock()

    @dramatiq.actor(cache=True, store_results=True)
    def slow(doc: str) -> str:
        with lock:
            runs.append(doc)
        time.sleep(0.5)
        return f"done {doc}"

    start_worker(broker, worker_threads=4)
    messages = [slow.send("x") for _ in range(8)]
    assert [m.get_result(block=True, timeout=10_000) for m in messages] == ["done x"] * 8
    assert runs == ["x"]
