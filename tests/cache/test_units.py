"""Serializers, L1, keys and hashing: no service needed."""

from __future__ import annotations

import hashlib
import pickle
import threading
import time

import pytest

from dramatiq_turbo.cache import content_hash
from dramatiq_turbo.cache.hashing import args_key
from dramatiq_turbo.cache.l1 import MISSING, LocalCache
from dramatiq_turbo.cache.serializers import (
    Codec,
    JSONSerializer,
    PickleSerializer,
    UndecodableValue,
    get_serializer,
)


def test_json_codec_round_trips_and_compresses_large_values():
    codec = Codec(JSONSerializer(), compress_threshold=100)
    small = {"a": [1, 2, "é"]}
    large = {"text": "lorem ipsum " * 1000}
    assert codec.decode(codec.encode(small)) == small
    encoded = codec.encode(large)
    assert encoded[:3] == b"Tjz"
    assert len(encoded) < len("lorem ipsum " * 1000) / 10
    assert codec.decode(encoded) == large
    assert codec.encode(small)[:3] == b"Tj0"


def test_json_codec_never_unpickles():
    json_codec = Codec(JSONSerializer())
    pickled = Codec(PickleSerializer()).encode({"x": 1})
    with pytest.raises(UndecodableValue, match="header"):
        json_codec.decode(pickled)
    with pytest.raises(UndecodableValue):
        json_codec.decode(pickle.dumps({"x": 1}))


def test_damaged_values_are_undecodable_not_crashes():
    codec = Codec(JSONSerializer())
    for data in (b"", b"Tj0{not json", b"Tjz\x00\x01garbage", b"\xff" * 10):
        with pytest.raises(UndecodableValue):
            codec.decode(data)


def test_json_refuses_what_it_cannot_hold_with_a_clear_error():
    with pytest.raises(TypeError, match="cannot be cached as JSON"):
        Codec(JSONSerializer()).encode({1, 2})
    with pytest.raises(TypeError, match="cannot be cached as JSON"):
        Codec(JSONSerializer()).encode(float("nan"))


def test_serializer_by_name_and_bad_names():
    assert isinstance(get_serializer("pickle"), PickleSerializer)
    with pytest.raises(ValueError, match="unknown serializer 'yaml'"):
        get_serializer("yaml")
    with pytest.raises(ValueError, match="one-byte 'tag'"):
        get_serializer(object())  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="compress_threshold"):
        Codec(JSONSerializer(), compress_threshold=-1)


def test_l1_is_lru_and_expires_entries():
    l1 = LocalCache(maxsize=2, ttl=10_000)
    l1.set("a", 1)
    l1.set("b", 2)
    assert l1.get("a") == 1  # a is now the most recent
    l1.set("c", 3)
    assert l1.get("b", MISSING) is MISSING
    assert l1.get("a") == 1
    l1.set("short", 4, ttl=50)  # an entry whose L2 copy expires soon
    assert l1.get("short") == 4
    time.sleep(0.08)
    assert l1.get("short", MISSING) is MISSING


def test_l1_is_thread_safe_under_contention():
    l1 = LocalCache(maxsize=50, ttl=60_000)
    errors = []

    def hammer(n: int) -> None:
        try:
            for i in range(2_000):
                l1.set(f"k{(i * n) % 97}", i)
                l1.get(f"k{i % 97}")
                if i % 7 == 0:
                    l1.pop(f"k{i % 13}")
        except Exception as error:  # pragma: no cover - the assertion below reports it
            errors.append(error)

    threads = [threading.Thread(target=hammer, args=(n,)) for n in range(1, 9)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert len(l1) <= 50


def test_content_hash_is_sha256_of_bytes_and_utf8_of_str():
    data = b"%PDF-1.7 ..." * 100
    assert content_hash(data) == hashlib.sha256(data).hexdigest()
    assert content_hash("héllo") == hashlib.sha256("héllo".encode()).hexdigest()
    assert content_hash(memoryview(data)) == content_hash(data)
    with pytest.raises(TypeError, match="bytes or str"):
        content_hash(123)  # type: ignore[arg-type]


def test_default_key_is_stable_across_kwarg_order_and_changes_with_version():
    a = args_key("summarize", [1, "x"], {"b": 2, "a": 1})
    b = args_key("summarize", (1, "x"), {"a": 1, "b": 2})
    assert a == b
    assert a.startswith("summarize:")
    assert args_key("summarize", [1, "x"], {"a": 1, "b": 2}, version=2).startswith("summarize:v2:")
    assert args_key("summarize", [1, "x"], {"a": 1, "b": 2}, version=2) != a
    assert args_key("summarize", [2, "x"], {}) != args_key("summarize", [1, "x"], {})
    assert args_key("other", [1, "x"], {"a": 1, "b": 2}) != a


def test_default_key_names_the_actor_when_arguments_are_not_json():
    with pytest.raises(TypeError, match=r"'summarize'.*cache_key"):
        args_key("summarize", [object()], {})


def test_a_value_the_serializer_refuses_ends_the_turn_for_everyone():
    from dramatiq_turbo.cache import MultiLevelCache

    cache = MultiLevelCache(serializer="pickle")

    class Local:  # a class defined in a function cannot be pickled
        pass

    with pytest.raises(TypeError, match="cannot pickle"):
        cache.get_or_compute("k", Local)
    started = time.monotonic()
    assert cache.get_or_compute("k", lambda: 7) == 7
    assert time.monotonic() - started < 1, "the failed turn left nobody waiting on it"


def test_a_forked_process_gets_its_own_invalidation_origin():
    """A real ``os.fork()``: the child's messages on the channel must not look like its parent's."""
    import os

    import fakeredis

    from dramatiq_turbo.cache import MultiLevelCache

    cache = MultiLevelCache(redis=fakeredis.FakeRedis())
    try:
        before = cache._store.origin
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: report its origin and leave at once
            try:
                os.write(write, cache._store.origin.encode())
            finally:
                os._exit(0)
        os.close(write)
        child_origin = os.read(read, 200).decode()
        os.close(read)
        os.waitpid(pid, 0)
        assert child_origin and child_origin != before, "the fork hook gave the child its own origin"
        assert cache._store.origin == before, "the parent keeps its own"
    finally:
        cache.close()


def test_a_value_read_before_an_invalidation_is_returned_but_not_kept_in_l1():
    import fakeredis

    from dramatiq_turbo.cache import MultiLevelCache
    from dramatiq_turbo.cache.l1 import MISSING

    cache = MultiLevelCache(redis=fakeredis.FakeRedis())
    try:
        cache.set("k", "v1")
        cache.l1.pop("k")
        read = cache._store.get

        def racing_read(key):
            found = read(key)
            cache._drop_local([key])  # another process's write is announced during the read
            return found

        cache._store.get = racing_read
        assert cache.get("k") == "v1"
        assert cache.l1.get("k") is MISSING, "an old value must not be served from L1 for l1_ttl"
        cache._store.get = read
        assert cache.get("k") == "v1" and cache.l1.get("k") == "v1", "a quiet read fills L1 as before"
    finally:
        cache.close()
