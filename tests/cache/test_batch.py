"""batch_set / batch_get: any number of keys in one round trip, counted at the connection."""

from __future__ import annotations

import fakeredis
import pytest

from dramatiq_turbo import batch_get, batch_set
from tests.cache.counting import CountingConnection, counting_client


def test_batch_set_and_get_with_per_item_ttls_on_fakeredis():
    client = fakeredis.FakeRedis(server=fakeredis.FakeServer())
    assert batch_set(client, [("a", b"1", 10_000), ("b", "two", None), ("c", 3, 500)]) == 3
    assert batch_get(client, ["c", "missing", "a", "b"]) == [b"3", None, b"1", b"two"]
    assert 9_000 < client.pttl("a") <= 10_000
    assert client.pttl("b") == -1
    assert 0 < client.pttl("c") <= 500
    assert batch_set(client, []) == 0
    assert batch_get(client, []) == []


@pytest.mark.parametrize(
    ("items", "message"),
    [
        ([("a", b"1")], r"item 0 must be \(key, value, ttl_ms_or_None\)"),
        ([("", b"1", None)], "item 0: the key must be a non-empty str"),
        (
            [("a", b"1", None), ("b", {"x": 1}, None)],
            r"item 1 \('b'\): the value must be bytes, str, int or float",
        ),
        ([("a", b"1", 1.5)], r"ttl must be a positive int of milliseconds or None, got 1.5"),
        ([("a", b"1", 0)], "ttl must be a positive int"),
    ],
)
def test_batch_set_names_bad_items(items, message):
    client = fakeredis.FakeRedis(server=fakeredis.FakeServer())
    with pytest.raises(ValueError, match=message):
        batch_set(client, items)
    assert client.dbsize() == 0  # nothing written when any item is bad


def test_batch_get_refuses_a_single_key_string():
    with pytest.raises(ValueError, match="sequence of keys"):
        batch_get(fakeredis.FakeRedis(), "abc")


@pytest.mark.integration
@pytest.mark.parametrize("count", [1, 1_000, 20_000])
def test_one_round_trip_for_any_number_of_keys(redis_url, redis_client, count):
    client = counting_client(redis_url)
    batch_set(client, [("warm-up", b"x", 1_000)])  # the script is loaded once per server
    items = [(f"bk:{i}", f"value-{i}", 60_000 if i % 2 else None) for i in range(count)]

    before = CountingConnection.snapshot()
    assert batch_set(client, items) == count
    middle = CountingConnection.snapshot()
    values = batch_get(client, [key for key, _, _ in items])
    after = CountingConnection.snapshot()

    assert (middle[0] - before[0], middle[1] - before[1]) == (1, 1)  # one command, one round trip
    assert (after[0] - middle[0], after[1] - middle[1]) == (1, 1)
    assert values == [value.encode() for _, value, _ in items]
    assert redis_client.pttl("bk:0") == -1
    if count > 1:
        assert 0 < redis_client.pttl("bk:1") <= 60_000


@pytest.mark.integration
def test_scripts_are_reloaded_after_a_script_flush(spare_redis):
    """On a private server: SCRIPT FLUSH would disturb everyone else's scripts on the shared one."""
    from dramatiq_turbo.cache import MultiLevelCache

    client = counting_client(spare_redis.url)
    batch_set(client, [("k", b"1", None)])
    cache = MultiLevelCache(redis=client, namespace="flush")
    cache.set_many({"a": 1})
    client.script_flush()
    assert batch_set(client, [("k", b"2", None)]) == 1
    assert client.get("k") == b"2"
    cache.set_many({"a": 2})
    assert MultiLevelCache(redis=client, namespace="flush").get("a") == 2
    cache.close()
