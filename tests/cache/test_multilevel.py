"""MultiLevelCache: L1 + L2 behaviour on fakeredis, and the parts that need a real Redis."""

from __future__ import annotations

import logging
import threading
import time

import pytest

from dramatiq_turbo.cache import MultiLevelCache
from dramatiq_turbo.cache.serializers import Codec, PickleSerializer
from tests import harness
from tests.cache.counting import CountingConnection, counting_client


def run_together(targets) -> None:
    """Start one thread per callable at once and wait for all of them."""
    threads = [threading.Thread(target=target) for target in targets]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def test_get_set_delete_and_stats(fake_redis, make_cache):
    cache = make_cache(redis=fake_redis)
    assert cache.get("k") is None
    assert cache.get("k", "default") == "default"
    cache.set("k", {"notes": [1, 2]})
    assert cache.get("k") == {"notes": [1, 2]}
    assert cache.delete("k") is True
    assert cache.get("k") is None
    assert cache.delete("k") is False
    stats = cache.stats()
    assert stats["l1_hits"] == 1
    assert stats["misses"] == 3
    assert stats["errors"] == 0


def test_an_l2_hit_fills_l1_without_outliving_the_l2_ttl(fake_redis, make_cache):
    writer = make_cache(redis=fake_redis)
    reader = make_cache(redis=fake_redis, namespace=writer.namespace)
    writer.set("k", "v", ttl=150)
    assert reader.get("k") == "v"
    assert reader.stats()["l2_hits"] == 1
    assert reader.get("k") == "v"
    assert reader.stats()["l1_hits"] == 1
    time.sleep(0.25)
    assert reader.get("k") is None  # gone from L2 and from L1


def test_none_and_falsy_values_are_cached_values(fake_redis, make_cache):
    cache = make_cache(redis=fake_redis)
    calls = []
    for value in (None, 0, "", []):
        calls.clear()
        key = f"k{value!r}"
        assert cache.get_or_compute(key, lambda v=value: calls.append(1) or v) == value
        assert cache.get_or_compute(key, lambda: calls.append(1) or "recomputed") == value
        assert len(calls) == 1


def test_get_many_and_set_many(fake_redis, make_cache):
    cache = make_cache(redis=fake_redis)
    other = make_cache(redis=fake_redis, namespace=cache.namespace)
    cache.set_many({"a": 1, "b": [2], "c": {"x": 3}}, ttl=60_000)
    assert other.get_many(["a", "missing", "c", "b"]) == {"a": 1, "c": {"x": 3}, "b": [2]}
    assert other.stats()["l2_hits"] == 3
    assert other.stats()["misses"] == 1
    assert other.get_many(["a", "b"]) == {"a": 1, "b": [2]}
    assert other.stats()["l1_hits"] == 2
    assert 0 < fake_redis.pttl(f"{cache.namespace}:{{a}}") <= 60_000


def test_an_undecodable_value_is_a_miss_and_is_overwritten(fake_redis, make_cache, caplog):
    cache = make_cache(redis=fake_redis)
    fake_redis.set(f"{cache.namespace}:{{k}}", b"Tj0{broken")
    with caplog.at_level(logging.WARNING):
        assert cache.get("k") is None
    assert "is a miss" in caplog.text
    assert cache.get_or_compute("k", lambda: "fresh") == "fresh"
    assert fake_redis.get(f"{cache.namespace}:{{k}}") == b'Tj0"fresh"'
    assert cache.stats()["errors"] == 2


def test_a_json_cache_never_unpickles_what_is_in_redis(fake_redis, make_cache):
    cache = make_cache(redis=fake_redis)
    evil = Codec(PickleSerializer()).encode({"x": 1})
    fake_redis.set(f"{cache.namespace}:{{k}}", evil)
    assert cache.get("k") is None
    assert cache.get_or_compute("k", lambda: {"x": 2}) == {"x": 2}


def test_pickle_is_opt_in(fake_redis, make_cache):
    cache = make_cache(redis=fake_redis, serializer="pickle")
    cache.set("k", {1, 2})
    reader = make_cache(redis=fake_redis, namespace=cache.namespace, serializer="pickle")
    assert reader.get("k") == {1, 2}
    with pytest.raises(TypeError, match="JSON"):
        make_cache(redis=fake_redis).set("k", {1, 2})


def test_large_values_are_compressed_in_redis(fake_redis, make_cache):
    cache = make_cache(redis=fake_redis, compress_threshold=1024)
    text = "The quick brown fox. " * 5_000
    cache.set("k", text)
    stored = fake_redis.get(f"{cache.namespace}:{{k}}")
    assert stored[:3] == b"Tjz"
    assert len(stored) < len(text) / 20
    assert make_cache(redis=fake_redis, namespace=cache.namespace).get("k") == text


def test_exceptions_are_not_cached(fake_redis, make_cache):
    cache = make_cache(redis=fake_redis)

    def boom() -> str:
        raise RuntimeError("transient")

    with pytest.raises(RuntimeError, match="transient"):
        cache.get_or_compute("k", boom)
    assert cache.get_or_compute("k", lambda: "ok") == "ok"
    assert fake_redis.get(f"{cache.namespace}:{{k}}:lease") is None


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"l1_ttl": 1.5}, "l1_ttl must be an int of milliseconds"),
        ({"l2_ttl": 0}, "l2_ttl must be > 0"),
        ({"l1_maxsize": -1}, "l1_maxsize"),
        ({"namespace": ""}, "namespace"),
        ({"serializer": "yaml"}, "unknown serializer"),
        ({"redis": 42}, "redis must be"),
    ],
)
def test_bad_settings_are_named(options, message):
    with pytest.raises((ValueError, TypeError), match=message):
        MultiLevelCache(**options)


def test_bad_keys_and_ttls_are_named(make_cache):
    cache = make_cache()
    with pytest.raises(ValueError, match="non-empty str"):
        cache.get("")
    with pytest.raises(ValueError, match="non-empty str"):
        cache.set(b"k", 1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="ttl must be an int of milliseconds"):
        cache.set("k", 1, ttl=2.5)  # type: ignore[arg-type]


def test_without_redis_it_is_an_l1_cache_with_single_flight(make_cache):
    cache = make_cache(redis=None)
    calls = []
    results = []

    def slow() -> str:
        calls.append(1)
        time.sleep(0.3)
        return "value"

    run_together([lambda: results.append(cache.get_or_compute("k", slow))] * 8)
    assert results == ["value"] * 8
    assert len(calls) == 1
    assert cache.stats()["waits"] == 7
    assert cache.delete("k") is False
    assert cache.get("k") is None


def test_waiters_of_a_failed_computation_compute_on_their_own(make_cache):
    cache = make_cache(redis=None)
    attempts = []
    outcomes = []
    started = threading.Event()

    def flaky() -> str:
        attempts.append(1)
        if len(attempts) == 1:
            started.set()
            time.sleep(0.2)
            raise RuntimeError("first attempt fails")
        return "value"

    def call() -> None:
        try:
            outcomes.append(cache.get_or_compute("k", flaky))
        except RuntimeError as error:
            outcomes.append(error)

    first = threading.Thread(target=call)
    first.start()
    started.wait(2)
    others = [threading.Thread(target=call) for _ in range(4)]
    for thread in others:
        thread.start()
    for thread in [first, *others]:
        thread.join()
    errors = [o for o in outcomes if isinstance(o, RuntimeError)]
    # Only the caller whose computation failed saw the error; a waiter computed again.
    assert len(errors) == 1
    assert outcomes.count("value") == 4
    assert len(attempts) == 2


def test_a_waiter_gives_up_after_wait_timeout_and_computes_itself(make_cache):
    cache = make_cache(redis=None, wait_timeout=200)
    release = threading.Event()
    calls = []

    def stuck() -> str:
        calls.append("stuck")
        release.wait(5)
        return "late"

    leader = threading.Thread(target=lambda: cache.get_or_compute("k", stuck))
    leader.start()
    time.sleep(0.05)
    start = time.monotonic()
    assert cache.get_or_compute("k", lambda: calls.append("own") or "own") == "own"
    assert time.monotonic() - start < 1
    release.set()
    leader.join()
    assert calls == ["stuck", "own"]


@pytest.mark.integration
def test_delete_drops_the_key_from_l1_in_every_process(redis_url, redis_client, make_cache):
    a = make_cache(redis=redis_url)
    b = make_cache(redis=redis_url, namespace=a.namespace)
    a.set("k", "v1")
    assert b.get("k") == "v1"  # now in b's L1
    harness.wait_for(lambda: b._listener and b._listener.subscribed.is_set(), timeout=5, what="b subscribed")
    a.delete("k")
    harness.wait_for(lambda: b.l1.get("k", None) is None, timeout=2, what="b's L1 to drop k")
    assert b.get("k") is None
    # A write replaces other processes' L1 copies too.
    a.set("k", "v2")
    assert b.get("k") == "v2"
    a.set("k", "v3")
    harness.wait_for(lambda: b.get("k") == "v3", timeout=2, what="b to see v3")


@pytest.mark.integration
def test_get_many_set_many_and_delete_are_one_round_trip_each(redis_url, redis_client, make_cache):
    client = counting_client(redis_url)
    cache = make_cache(redis=client)
    reader = make_cache(redis=client, namespace=cache.namespace)
    items = {f"k{i}": {"i": i} for i in range(500)}
    cache.set_many({"warm": 1})  # loads the script once
    before = CountingConnection.snapshot()
    cache.set_many(items)
    middle = CountingConnection.snapshot()
    assert reader.get_many(list(items)) == items
    after = CountingConnection.snapshot()
    assert middle[1] - before[1] == 1
    assert after[1] - middle[1] == 1
    before = CountingConnection.snapshot()
    cache.delete("k1")
    assert CountingConnection.snapshot()[1] - before[1] == 1


@pytest.mark.parametrize("backend", ["l1", pytest.param("redis", marks=pytest.mark.integration)])
def test_a_waiter_that_times_out_can_give_way_and_find_the_value_later(backend, make_cache, request):
    redis = request.getfixturevalue("redis_url") if backend == "redis" else None
    computing = make_cache(redis=redis)
    # With Redis, the waiters are another process's cache: they wait on the lease, not the local flight.
    waiting = make_cache(redis=redis, namespace=computing.namespace) if redis else computing
    lookups, _, calls = _timed_out_lookups_across(computing, waiting)
    assert calls == ["computed"], "nobody computed a second time"
    assert lookups and all(not lookup.found and lookup.waited == "timeout" for lookup in lookups)
    for lookup in lookups:
        lookup.give_way()
    assert waiting.get_or_compute("k", lambda: "second computation") == "value"
    turn = waiting.begin("other")
    with pytest.raises(ValueError, match="give_way"):
        turn.give_way()
    turn.abandon()


def _timed_out_lookups_across(computing, waiting) -> tuple[list, threading.Event, list[str]]:
    release, calls, lookups = threading.Event(), [], []

    def stuck() -> str:
        calls.append("computed")
        release.wait(5)
        return "value"

    leader = threading.Thread(target=lambda: computing.get_or_compute("k", stuck))
    leader.start()
    time.sleep(0.05)
    run_together([lambda: lookups.append(waiting.begin("k", wait_timeout=100)) for _ in range(3)])
    release.set()
    leader.join()
    return lookups, release, calls


@pytest.mark.integration
def test_threads_and_two_caches_on_real_redis_compute_once(redis_url, redis_client, make_cache):
    caches = [make_cache(redis=redis_url), None]
    caches[1] = make_cache(redis=redis_url, namespace=caches[0].namespace)
    calls = []
    results = []

    def slow() -> str:
        calls.append(1)
        time.sleep(0.4)
        return "value"

    run_together([lambda c=c: results.append(c.get_or_compute("k", slow)) for c in caches * 4])
    assert results == ["value"] * 8
    assert len(calls) == 1
    assert not redis_client.exists(f"{caches[0].namespace}:{{k}}:lease")


@pytest.mark.integration
def test_a_waiter_in_another_process_computes_when_the_computer_fails(redis_url, redis_client, make_cache):
    """Two caches stand for two processes: the waiter blocks on Redis, not on an in-process Event."""
    computer = make_cache(redis=redis_url)
    waiter = make_cache(redis=redis_url, namespace=computer.namespace)
    started = threading.Event()
    outcomes: dict[str, object] = {}

    def failing() -> str:
        started.set()
        time.sleep(0.3)
        raise RuntimeError("computer failed")

    def compute_and_fail() -> None:
        try:
            computer.get_or_compute("k", failing)
        except RuntimeError as error:
            outcomes["computer"] = error

    thread = threading.Thread(target=compute_and_fail)
    thread.start()
    started.wait(5)
    start = time.monotonic()
    outcomes["waiter"] = waiter.get_or_compute("k", lambda: "computed by the waiter")
    thread.join()
    assert isinstance(outcomes["computer"], RuntimeError)
    assert outcomes["waiter"] == "computed by the waiter"
    # Woken when the computation failed, not after the lease expired (10 s).
    assert time.monotonic() - start < 2
    assert computer.get("k") == "computed by the waiter"


@pytest.mark.integration
def test_a_waiter_that_waits_several_rounds_is_registered_and_woken_once(redis_url, redis_client):
    """The lease of another process is renewed while a waiter blocks on it round after round."""
    from dramatiq_turbo.cache.singleflight import Leases
    from dramatiq_turbo.cache.store import RedisStore
    from dramatiq_turbo.redis import connect_redis

    store = RedisStore(connect_redis(redis_url), namespace=harness.unique("turbo:cache"))
    leases = Leases(store, lease_ttl=1_000)
    value_key, lease_key, waiters_key, wake_key = store.flight_keys("k")
    redis_client.set(lease_key, "other-process", px=150)
    turns = []
    waiter = threading.Thread(target=lambda: turns.append(leases.begin("k", deadline=time.monotonic() + 5)))
    waiter.start()
    for _ in range(5):  # each renewal outlives the waiter's blocking pop: it comes back and waits again
        time.sleep(0.1)
        redis_client.pexpire(lease_key, 150)
    assert redis_client.scard(waiters_key) == 1
    leases.finish("k", "other-process", b'"done"', 60_000)
    waiter.join(timeout=5)
    assert [turn.kind for turn in turns] == ["hit"]
    assert redis_client.llen(wake_key) == 0  # one waiter, one wake-up: none left over
    redis_client.delete(value_key, waiters_key, wake_key)


def test_l1_serves_what_l2_would_serve_and_not_the_callers_object(fake_redis, make_cache):
    """JSON turns a tuple into a list and int keys into str ones: L1 must agree with L2."""
    cache = make_cache(redis=fake_redis)
    reader = make_cache(redis=fake_redis, namespace=cache.namespace)  # a cold L1: reads L2
    original = {"pair": (1, 2), 3: ["x"]}
    cache.set("k", original)
    original[3].append("changed later by the caller")
    assert cache.get("k") == {"pair": [1, 2], "3": ["x"]}
    assert reader.get("k") == cache.get("k")
    assert cache.get_or_compute("c", lambda: (1, 2)) == [1, 2]  # the computing caller too
    assert cache.get_or_compute("c", lambda: (3, 4)) == [1, 2]
    cache.set_many({"m": (5,)})
    assert cache.get("m") == [5]


@pytest.mark.integration
def test_a_waiter_that_gives_up_leaves_no_wake_up_behind(redis_url, redis_client):
    from dramatiq_turbo.cache.singleflight import Leases
    from dramatiq_turbo.cache.store import RedisStore
    from dramatiq_turbo.redis import connect_redis

    store = RedisStore(connect_redis(redis_url), namespace=harness.unique("turbo:cache"))
    leases = Leases(store, lease_ttl=5_000)
    value_key, lease_key, waiters_key, wake_key = store.flight_keys("k")
    redis_client.set(lease_key, "other-process", px=5_000)
    started = time.monotonic()
    turn = leases.begin("k", deadline=time.monotonic() + 0.3)
    assert turn.kind == "timeout"
    assert 0.25 < time.monotonic() - started < 2
    assert redis_client.scard(waiters_key) == 0
    leases.finish("k", "other-process", b'"done"', 60_000)
    assert redis_client.llen(wake_key) == 0
    redis_client.delete(value_key, lease_key, waiters_key, wake_key)


@pytest.mark.integration
def test_a_waiter_blocks_without_polling_even_with_a_short_socket_timeout(redis_url, redis_client):
    """The blocking pop does not have to end before the client's 500 ms socket timeout."""
    from dramatiq_turbo.cache.singleflight import Leases
    from dramatiq_turbo.cache.store import RedisStore

    namespace = harness.unique("turbo:cache")
    store = RedisStore(counting_client(redis_url, socket_timeout=500), namespace=namespace)
    leases = Leases(store, lease_ttl=5_000)
    value_key, lease_key, waiters_key, wake_key = store.flight_keys("k")
    redis_client.set(lease_key, "other-process", px=5_000)
    store.client.ping()  # the handshake is not part of the count

    def finish_later() -> None:
        time.sleep(1.5)
        holder = Leases(RedisStore(redis_client, namespace=namespace))
        holder.finish("k", "other-process", b'"v"', 60_000)

    finisher = threading.Thread(target=finish_later)
    finisher.start()
    before = CountingConnection.snapshot()
    turn = leases.begin("k", deadline=time.monotonic() + 5)
    commands = CountingConnection.snapshot()[0] - before[0]
    finisher.join()
    leases.close()
    assert turn.kind == "hit"
    assert commands <= 4, f"{commands} commands while waiting 1.5 s"
    redis_client.delete(value_key, lease_key, waiters_key, wake_key)
