"""The counter stores: per-minute sums across processes, heartbeats, retention, round trips."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
import redis

from dramatiq_turbo.monitor.counters import (
    MINUTE,
    Batch,
    CounterStore,
    MemoryCounterStore,
    RedisCounterStore,
)
from dramatiq_turbo.monitor.scripts import ScriptCall, run_pipeline

from .conftest import RoundTrips


def batch(now: int, queue: str = "q1", **counts: int) -> Batch:
    key = (queue, now // MINUTE)
    return Batch(counts={key: dict(counts)}, first={key: now})


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.integration)])
def store(request: pytest.FixtureRequest) -> Iterator[CounterStore]:
    if request.param == "memory":
        yield MemoryCounterStore()
        return
    client = request.getfixturevalue("client")
    yield RedisCounterStore(client, namespace=request.getfixturevalue("monitor_namespace"))


def now_of(store: CounterStore) -> int:
    return store.now()  # type: ignore[attr-defined, no-any-return]


def test_writes_of_several_processes_add_up(store: CounterStore) -> None:
    now = now_of(store)
    store.write(batch(now, completed=3, failed=1, **{"p:20": 4}))
    store.write(batch(now, completed=2, **{"p:20": 1, "p:22": 1}))
    store.write(batch(now, queue="q2", completed=7))
    reading = store.read(["q1", "q2", "q3"], window=300_000)
    q1 = reading.buckets["q1"][now // MINUTE]
    assert (q1["completed"], q1["failed"], q1["p:20"], q1["p:22"]) == (5, 1, 5, 1)
    assert reading.buckets["q2"][now // MINUTE]["completed"] == 7
    assert reading.buckets["q3"] == {}
    assert {"q1", "q2"} <= reading.queues


def test_heartbeats_come_and_go(store: CounterStore) -> None:
    beat = {"id": "w1", "queues": ["q1"], "threads": 8, "interval": 1_000}
    store.write(Batch(), worker="w1", beat=beat)
    reading = store.read([], window=60_000)
    assert [b.payload["threads"] for b in reading.workers] == [8]
    assert reading.workers[0].live(reading.at)
    assert not reading.workers[0].live(reading.at + 10_000)  # three intervals and two seconds
    store.write(Batch(), worker="w1", beat=None)  # a clean shutdown
    assert store.read([], window=60_000).workers == ()


@pytest.mark.integration
def test_redis_store_writes_and_reads_fifty_queues_in_one_round_trip(
    client: redis.Redis, monitor_namespace: str
) -> None:
    store = RedisCounterStore(client, namespace=monitor_namespace)
    now = store.now()
    queues = [f"q{i}" for i in range(50)]
    many = Batch(
        counts={(q, now // MINUTE): {"completed": 1, "proc_ms": 5} for q in queues},
        first={(q, now // MINUTE): now for q in queues},
    )
    store.write(Batch(), worker="w", beat={"id": "w", "interval": 1_000})  # connects, loads the script
    trips = RoundTrips()
    try:
        store.write(many, worker="w", beat={"id": "w", "interval": 1_000})
        assert trips.count == 1
        trips.reset()
        reading = store.read(queues, window=300_000)
        assert trips.count == 1
    finally:
        trips.undo()
    assert sum(bucket["completed"] for q in queues for bucket in reading.buckets[q].values()) == 50


@pytest.mark.integration
def test_redis_counters_expire_after_the_retention(client: redis.Redis, monitor_namespace: str) -> None:
    store = RedisCounterStore(client, namespace=monitor_namespace, retention=120_000)
    now = store.now()
    store.write(batch(now, completed=1), worker="w", beat={"id": "w", "interval": 1_000})
    for key in (store.bucket_key("q1", now // MINUTE), store.workers_key, store.seen_key, store.queues_key):
        assert 0 < client.pttl(key) <= 120_000, key


@pytest.mark.integration
def test_a_dead_workers_heartbeat_is_removed_by_the_next_beat(
    client: redis.Redis, monitor_namespace: str
) -> None:
    store = RedisCounterStore(client, namespace=monitor_namespace)
    store.write(Batch(), worker="dead", beat={"id": "dead", "interval": 1_000})
    client.zadd(store.seen_key, {"dead": store.now() - 61_000})  # silent for longer than 60 s
    store.write(Batch(), worker="alive", beat={"id": "alive", "interval": 1_000})
    assert [b.payload["id"] for b in store.read([], window=60_000).workers] == ["alive"]
    assert client.hkeys(store.workers_key) == [b"alive"]


@pytest.mark.integration
def test_reads_follow_redis_time_when_this_hosts_clock_is_off(
    client: redis.Redis, monitor_namespace: str
) -> None:
    store = RedisCounterStore(client, namespace=monitor_namespace)
    now = store.now()
    store.write(batch(now, completed=4))
    store.offset = -10 * MINUTE  # as if this host's clock ran ten minutes ahead
    reading = store.read(["q1"], window=120_000)
    assert reading.buckets["q1"][now // MINUTE]["completed"] == 4
    assert abs(store.offset) < 5_000  # learnt again from the reply


@pytest.mark.integration
def test_a_script_the_server_does_not_know_is_loaded_and_run_once(client: redis.Redis) -> None:
    source = f"-- {uuid.uuid4()}\nreturn redis.call('INCR', KEYS[1])"
    script = client.register_script(source)
    key = f"turbo:monitor-test:{uuid.uuid4().hex}"
    try:
        replies = run_pipeline(client, [("PING",), ScriptCall(script, (key,), ())])
        assert replies == [b"PONG", 1]
        assert run_pipeline(client, [ScriptCall(script, (key,), ())]) == [2]
    finally:
        client.delete(key)
