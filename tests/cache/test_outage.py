"""Redis stops mid-run: jobs still run, the outage is logged once, the cache recovers by itself."""

from __future__ import annotations

import logging
import time

import dramatiq
import pytest
from dramatiq.results import Results
from dramatiq.results.backends import StubBackend

from dramatiq_turbo import connect_redis, install
from dramatiq_turbo.cache import MultiLevelCache, ResultCache
from tests import harness

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_jobs_run_through_a_redis_outage_and_the_cache_recovers(
    spare_redis, make_broker, start_worker, caplog
):
    client = connect_redis(spare_redis.url, socket_timeout=500, connect_timeout=500)
    cache = MultiLevelCache(redis=client, namespace="outage", retry_interval=200)
    broker = make_broker("stub")
    broker.add_middleware(Results(backend=StubBackend()))
    install(
        broker,
        cache=ResultCache(cache=cache),
        breaker=False,
        rate_limit=False,
        backoff=False,
        telemetry=False,
    )
    runs = []

    @dramatiq.actor(cache=True, store_results=True, max_retries=0)
    def work(x: int) -> int:
        runs.append(x)
        return x * 10

    start_worker(broker)

    def run(x: int) -> int:
        return work.send(x).get_result(block=True, timeout=10_000)

    caplog.set_level(logging.WARNING)
    assert run(1) == 10
    assert client.exists("outage:{work:" + cache_key_suffix(1) + "}")
    spare_redis.stop()

    # Redis is gone: new keys still run and are served from L1 afterwards; old ones from L1.
    for x in (2, 3, 2, 1, 4, 3):
        assert run(x) == x * 10
        time.sleep(0.1)  # across several retry intervals
    assert runs == [1, 2, 3, 4]
    unreachable = [r for r in caplog.records if "unreachable" in r.getMessage()]
    assert len(unreachable) == 1  # logged once for the whole outage
    assert cache.stats()["outages"] == 1
    assert cache.stats()["errors"] >= 2  # counted, not logged

    spare_redis.start()
    time.sleep(0.3)  # past retry_interval
    assert run(5) == 50
    assert any("reachable again" in r.getMessage() for r in caplog.records)
    # L2 works again: the new result is in Redis, where another process would find it.
    other = MultiLevelCache(redis=connect_redis(spare_redis.url), namespace="outage")
    harness.wait_for(lambda: other.get("work:" + cache_key_suffix(5)) == 50, timeout=5, what="L2 to hold 5")
    assert runs == [1, 2, 3, 4, 5]
    cache.close()
    other.close()


def cache_key_suffix(x: int) -> str:
    from dramatiq_turbo.cache.hashing import args_key

    return args_key("work", [x], {}).split(":", 1)[1]


def test_get_or_compute_without_redis_reachable_still_computes_once_per_process(spare_redis, caplog):
    client = connect_redis(spare_redis.url, socket_timeout=500, connect_timeout=500)
    cache = MultiLevelCache(redis=client, namespace="outage2")
    spare_redis.stop()
    calls = []
    assert cache.get_or_compute("k", lambda: calls.append(1) or "v") == "v"
    assert cache.get_or_compute("k", lambda: calls.append(1) or "v") == "v"
    assert cache.get("missing") is None
    cache.set("x", 1)
    assert cache.get("x") == 1
    assert cache.delete("x") is False
    assert calls == [1]
    assert cache.stats()["outages"] == 1
    cache.close()


def test_after_an_outage_the_listener_resubscribes_and_clears_l1(spare_redis):
    """Invalidations sent while a process was cut off are lost, so its whole L1 goes."""
    writer = MultiLevelCache(redis=connect_redis(spare_redis.url), namespace="resub", retry_interval=100)
    reader = MultiLevelCache(redis=connect_redis(spare_redis.url), namespace="resub", retry_interval=100)
    writer.set("k", "v1")
    assert reader.get("k") == "v1"
    harness.wait_for(lambda: reader._listener.subscribed.is_set(), timeout=5, what="reader subscribed")
    assert reader.l1.get("k", None) == "v1"
    spare_redis.stop()
    harness.wait_for(
        lambda: not reader._listener.subscribed.is_set(), timeout=5, what="the listener to notice"
    )
    spare_redis.start()
    harness.wait_for(
        lambda: reader._listener.subscribed.is_set(), timeout=10, what="the listener to resubscribe"
    )
    assert reader.l1.get("k", None) is None
    writer.close()
    reader.close()
