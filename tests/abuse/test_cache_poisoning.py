"""Values written into the cache's Redis namespace by someone else are never unpickled nor executed.

Real Redis (``TURBO_TEST_REDIS_URL``, database 15), each test in a namespace
of its own that it deletes afterwards.  The decision the tests prove:

* a value this cache cannot decode - not its header, damaged, too large,
  inflating past ``max_value_size``, a key of another type - is a *miss*:
  ``get`` returns the default, and ``get_or_compute`` (so the
  ``ResultCache`` middleware) computes the value and *overwrites* the
  garbage with it;
* foreign single-flight keys (a lease without a TTL, keys of another type)
  never block a caller beyond its own computation, and never make the cache
  treat Redis as down;
* whatever is published on the invalidation channel is either a well-formed
  invalidation (keys are dropped from L1) or ignored with a warning; the
  listener keeps running and L1 is not flushed.
"""

from __future__ import annotations

import json
import os
import pickle
import time
import tracemalloc
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import dramatiq
import pytest
import redis

from dramatiq_turbo.cache import MultiLevelCache, ResultCache
from dramatiq_turbo.cache.hashing import args_key
from tests import harness

pytestmark = pytest.mark.integration


@pytest.fixture
def make_cache(client: redis.Redis, namespace: str) -> Iterator[Callable[..., MultiLevelCache]]:
    caches: list[MultiLevelCache] = []

    def factory(**options: Any) -> MultiLevelCache:
        options.setdefault("l1_maxsize", 0)  # every read goes to Redis unless a test says otherwise
        cache = MultiLevelCache(redis=client, namespace=namespace, **options)
        caches.append(cache)
        return cache

    yield factory
    for cache in caches:
        cache.close()


class _MakesADirectory:
    """Unpickling this runs ``os.mkdir(path)``: proof of execution if the directory appears."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> Any:
        return (os.mkdir, (str(self.path),))


def zlib_bomb(gib: int) -> bytes:
    """A zlib stream that inflates to ``gib`` GiB of zeros, in about a thousandth of that.

    Built from one compressed MiB repeated after full flushes, so it costs
    milliseconds; it has no valid trailer, which no reader gets to.
    """
    chunk = bytes(1 << 20)
    deflate = zlib.compressobj(9)
    head = deflate.compress(chunk) + deflate.flush(zlib.Z_FULL_FLUSH)
    body = deflate.compress(chunk) + deflate.flush(zlib.Z_FULL_FLUSH)
    return head + body * (gib * 1024 - 1)


def _garbage(tmp_path: Path) -> dict[str, bytes]:
    pickled = pickle.dumps(_MakesADirectory(tmp_path / "executed"))
    nested = b"[" * 200_000 + b"]" * 200_000
    return {
        "empty": b"",
        "text": b"hello",
        "pickle without header": pickled,
        "pickle behind a pickle header": b"Tp0" + pickled,
        "pickle behind a JSON header": b"Tj0" + pickled,
        "compressed pickle": b"Tpz" + zlib.compress(pickled),
        "damaged JSON": b"Tj0{not json",
        "not UTF-8": b"Tj0\xff\xfe\xfd",
        "JSON nested 200,000 deep": b"Tj0" + nested,
        "an int of 100,000 digits": b"Tj0" + b"7" * 100_000,
        "damaged zlib": b"Tjz" + os.urandom(64),
        "truncated zlib": b"Tjz" + zlib.compress(b'"value"')[:-6],
    }


def test_foreign_values_are_misses_never_unpickled_and_get_overwritten(
    make_cache, client: redis.Redis, tmp_path: Path
) -> None:
    cache = make_cache()
    for label, data in _garbage(tmp_path).items():
        key = f"poisoned:{label}"
        client.set(cache._store.value_key(key), data)
        assert cache.get(key, "miss") == "miss", label
        computed: list[str] = []

        def compute(label: str = label, computed: list[str] = computed) -> dict[str, str]:
            computed.append(label)
            return {"fresh": label}

        assert cache.get_or_compute(key, compute) == {"fresh": label}
        assert computed == [label]
        # Overwritten with the computed value, in this cache's own format.
        assert client.get(cache._store.value_key(key)).startswith(b"Tj")
        assert cache.get(key) == {"fresh": label}
    assert not (tmp_path / "executed").exists(), "a foreign pickle was unpickled"
    assert cache.stats()["outages"] == 0


@pytest.mark.parametrize("kind", ["list", "hash", "set", "zset", "stream"])
def test_a_foreign_key_of_another_type_is_a_miss_not_an_outage(make_cache, client, kind: str) -> None:
    cache = make_cache()
    key = f"typed:{kind}"
    name = cache._store.value_key(key)
    {
        "list": lambda: client.rpush(name, "a"),
        "hash": lambda: client.hset(name, "a", "b"),
        "set": lambda: client.sadd(name, "a"),
        "zset": lambda: client.zadd(name, {"a": 1}),
        "stream": lambda: client.xadd(name, {"a": "b"}),
    }[kind]()
    assert cache.get(key, "miss") == "miss"
    assert cache.get_many([key, "other"]) == {}
    assert cache.get_or_compute(key, lambda: 42) == 42
    assert client.type(name) == b"string"
    assert cache.get(key) == 42
    # One foreign key must not make the whole cache fall back to L1 as if Redis were down.
    assert cache.stats()["outages"] == 0


def test_a_zip_bomb_costs_at_most_max_value_size_to_refuse(make_cache, client) -> None:
    """4 GiB behind 4 MB of zlib: refused as a miss, with memory bounded by ``max_value_size``."""
    cache = make_cache(max_value_size=8 * 1024 * 1024)
    key = "bomb"
    client.set(cache._store.value_key(key), b"Tjz" + zlib_bomb(4))
    tracemalloc.start()
    started = time.monotonic()
    try:
        assert cache.get(key, "miss") == "miss"
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert time.monotonic() - started < 5
    # The compressed value itself (4 MB) plus at most max_value_size inflated.
    assert peak < 8 * 1024 * 1024 + 3 * 5 * 1024 * 1024, f"peak {peak:,} bytes"
    assert cache.get_or_compute(key, lambda: "defused") == "defused"


def test_the_default_max_value_size_bounds_a_bomb_too(make_cache, client) -> None:
    cache = make_cache()
    assert cache.codec.max_size == 64 * 1024 * 1024
    client.set(cache._store.value_key("bomb"), b"Tjz" + zlib_bomb(1))
    tracemalloc.start()
    try:
        assert cache.get("bomb", "miss") == "miss"
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 64 * 1024 * 1024 + 16 * 1024 * 1024, f"peak {peak:,} bytes"


def test_a_value_over_max_value_size_is_not_stored(make_cache, client) -> None:
    cache = make_cache(max_value_size=1024)
    with pytest.raises(TypeError, match="over the cache's max_size of 1,024 bytes"):
        cache.set("big", "x" * 2000)
    assert client.exists(cache._store.value_key("big")) == 0
    # The computation's turn ends all the same: no lease is left for waiters to wait on.
    with pytest.raises(TypeError, match="max_size"):
        cache.get_or_compute("big", lambda: "x" * 2000)
    assert client.exists(*cache._store.flight_keys("big")) == 0


def test_a_lease_without_ttl_does_not_make_callers_wait(make_cache, client) -> None:
    """A lease key someone wrote without expiry would block every caller for ``wait_timeout``."""
    cache = make_cache(wait_timeout=20_000)
    lease = cache._store.flight_keys("leased")[1]
    client.set(lease, "not-a-token-of-ours")
    started = time.monotonic()
    assert cache.get_or_compute("leased", lambda: "computed") == "computed"
    assert time.monotonic() - started < 2
    # The computation's own turn ended: the lease is gone, nothing waits.
    assert client.exists(lease) == 0
    assert cache.get("leased") == "computed"


@pytest.mark.parametrize("key_kind", ["lease", "waiters", "wake"])
def test_single_flight_keys_of_another_type_are_no_error(make_cache, client, key_kind: str) -> None:
    cache = make_cache(wait_timeout=20_000)
    _, lease, waiters, wake = cache._store.flight_keys("flight")
    target = {"lease": lease, "waiters": waiters, "wake": wake}[key_kind]
    client.hset(target, "foreign", "field")
    if key_kind != "lease":
        # Someone else computes (a live lease): the caller waits, and must meet the foreign key.
        client.set(lease, "someone", px=300)
    started = time.monotonic()
    assert cache.get_or_compute("flight", lambda: "computed") == "computed"
    assert time.monotonic() - started < 5
    assert cache.stats()["outages"] == 0


def test_a_turn_that_ends_wakes_waiters_despite_a_foreign_wake_key(make_cache, client) -> None:
    cache = make_cache()
    _, _, waiters, wake = cache._store.flight_keys("woken")
    lookup = cache.begin("woken")
    assert not lookup.found
    client.sadd(waiters, "a-waiter")
    client.hset(wake, "foreign", "field")
    lookup.complete("value")
    assert client.type(wake) == b"list"
    assert client.lrange(wake, 0, -1) == [b"1"]
    assert cache.stats()["outages"] == 0


def test_invalidation_channel_garbage_is_ignored_and_the_listener_keeps_working(
    make_cache, client, namespace: str, tmp_path: Path, log_records
) -> None:
    reader = make_cache(l1_maxsize=100)
    writer = make_cache(l1_maxsize=100)
    reader.set("kept", "a")
    reader.set("dropped", "b")
    reader._listener.ensure_started()
    assert reader._listener.subscribed.wait(5)
    channel = f"{namespace}:invalidate"
    garbage = [
        b"not json",
        b"\xff\xfe",
        b"[1, 2]",
        b'"a string"',
        b'{"o": "x"}',
        b'{"o": "x", "k": 5}',
        b'{"o": "x", "k": {"kept": 1}}',
        b"[" * 100_000 + b"]" * 100_000,
        pickle.dumps(_MakesADirectory(tmp_path / "executed")),
        b"x" * 1_000_000,
    ]
    for data in garbage:
        client.publish(channel, data)
    # A real invalidation after the garbage still arrives and is applied.
    writer.set("dropped", "new")
    harness.wait_for(lambda: reader.l1.get("dropped", None) is None, timeout=5, what="the invalidation")
    assert reader.l1.get("kept", None) == "a", "the garbage cleared L1 (the listener restarted)"
    assert not (tmp_path / "executed").exists()
    ignored = [r for r in log_records.records if "malformed cache invalidation" in r.getMessage()]
    assert len(ignored) == len(garbage)
    assert not [r for r in log_records.records if "listener failed" in r.getMessage()]


def test_result_cache_recomputes_a_poisoned_result_and_overwrites_it(
    make_stack, client, namespace: str, tmp_path: Path
) -> None:
    """Through the worker: the poisoned entry of an actor's call is a miss, run, and replaced."""
    runs: list[int] = []
    cache = MultiLevelCache(redis=client, namespace=namespace)
    holder: dict[str, Any] = {}

    def declare() -> None:
        @dramatiq.actor(queue_name="abuse", cache_ttl=60_000)
        def square(x: int) -> int:
            runs.append(x)
            return x * x

        holder["square"] = square

    stack = make_stack(declare, cache=ResultCache(cache=cache), rate_limit=False, breaker=False)
    try:
        name = cache._store.value_key(args_key("square", [3], {}))
        client.set(name, b"Tp0" + pickle.dumps(_MakesADirectory(tmp_path / "executed")))
        message = holder["square"].send(3)
        assert stack.fates.first(message.message_id).fate == "completed"
        assert runs == [3]
        assert json.loads(client.get(name)[3:]) == 9
        again = holder["square"].send(3)
        assert stack.fates.first(again.message_id).fate == "completed"
        assert runs == [3], "the overwritten result is served"
        assert not (tmp_path / "executed").exists()
    finally:
        cache.close()
