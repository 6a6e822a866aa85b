"""batch_set / batch_get: any number of keys in one round trip, counted at the connection."""

from __future__ import annotations

import threading

import fakeredis
import pytest
import redis

from dramatiq_turbo import batch_get, batch_set, connect_redis
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
        ([("a", b"1", 1.5)], r"positive int of milliseconds \(at most [\d,]+\) or None, got 1\.5"),
        ([("a", b"1", 0)], "ttl must be a positive int"),
        ([("a", b"1", 10**16)], r"at most 1,000,000,000,000,000\) or None, got 10000000000000000"),
        (["abc"], r"item 0 must be \(key, value, ttl_ms_or_None\), got 'abc'"),
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
@pytest.mark.parametrize(("count", "expiring"), [(1, False), (1, True), (1_000, True), (20_000, True)])
def test_one_round_trip_for_any_number_of_keys(redis_url, redis_client, count, expiring):
    """Counted at the socket: the commands written, and how often the client waited for replies."""
    client = counting_client(redis_url)
    client.ping()  # the connection's handshake is not part of the count
    items = [(f"bk:{i}", f"value-{i}", 60_000 if expiring and i % 2 == 0 else None) for i in range(count)]

    before = CountingConnection.snapshot()
    assert batch_set(client, items) == count
    middle = CountingConnection.snapshot()
    values = batch_get(client, [key for key, _, _ in items])
    after = CountingConnection.snapshot()

    # Nothing expires: one MSET.  Otherwise MULTI, one SET per key, EXEC: still one round trip.
    commands = count + 2 if expiring else 1
    assert (middle[0] - before[0], middle[1] - before[1]) == (commands, 1)
    assert (after[0] - middle[0], after[1] - middle[1]) == (1, 1)  # one MGET
    assert values == [value.encode() for _, value, _ in items]
    if expiring:
        assert 0 < redis_client.pttl("bk:0") <= 60_000
    else:
        assert redis_client.pttl("bk:0") == -1
    if count > 1:
        assert redis_client.pttl("bk:1") == -1


@pytest.mark.integration
def test_a_later_item_for_the_same_key_wins_and_clears_its_ttl(redis_client, redis_url):
    client = connect_redis(redis_url)
    batch_set(client, [("dup", b"first", 60_000), ("other", b"x", 5_000), ("dup", b"last", None)])
    assert redis_client.get("dup") == b"last"
    assert redis_client.pttl("dup") == -1
    batch_set(client, [("dup", b"again", None), ("dup", b"expiring", 30_000)])
    assert redis_client.get("dup") == b"expiring"
    assert 0 < redis_client.pttl("dup") <= 30_000


@pytest.mark.integration
def test_readers_never_see_part_of_a_batch(redis_url, redis_client):
    """The SETs run as one MULTI/EXEC: a reader polling the first and last keys always sees one version."""
    client = connect_redis(redis_url)
    keys = [f"atomic:{i}" for i in range(2_000)]
    stop = threading.Event()
    torn: list[list[bytes | None]] = []
    reads = 0

    def read() -> None:
        nonlocal reads
        reader = connect_redis(redis_url)
        while not stop.is_set():
            first, last = reader.mget(keys[0], keys[-1])
            reads += 1
            if first != last:
                torn.append([first, last])

    batch_set(client, [(key, b"0", 60_000) for key in keys])
    thread = threading.Thread(target=read)
    thread.start()
    try:
        for version in range(1, 60):
            batch_set(client, [(key, str(version), 60_000) for key in keys])
    finally:
        stop.set()
        thread.join()
    assert reads > 50
    assert torn == []


@pytest.mark.integration
def test_a_refused_batch_writes_nothing_and_names_the_reason(spare_redis):
    """On a private server: its memory limit is lowered until every write is refused (OOM)."""
    client = connect_redis(spare_redis.url)
    client.set("before", b"kept")
    client.config_set("maxmemory", 1)
    try:
        # redis-py's own class for the server's OOM reply
        with pytest.raises(redis.exceptions.OutOfMemoryError, match="used memory > 'maxmemory'"):
            batch_set(client, [(f"oom:{i}", b"x" * 100, 60_000) for i in range(100)])
    finally:
        client.config_set("maxmemory", 0)
    assert client.keys("oom:*") == []
    assert client.get("before") == b"kept"
    # The connection is still in step: the next batch goes through.
    assert batch_set(client, [("after", b"ok", 60_000)]) == 1
    assert client.get("after") == b"ok"


def test_str_and_int_subclasses_are_accepted():
    import enum

    class Key(str, enum.Enum):  # noqa: UP042 - its str() is "Key.A": the value must be stored, not that
        A = "enum-key"

    class Count(enum.IntEnum):
        THREE = 3

    client = fakeredis.FakeRedis(server=fakeredis.FakeServer())
    assert batch_set(client, [(Key.A, Count.THREE, 10_000)]) == 1
    assert client.get("enum-key") == b"3"
    with pytest.raises(ValueError, match=r"item 1 \('b'\): the value must be bytes, str, int or float"):
        batch_set(client, [(Key.A, Count.THREE, None), ("b", True, None)])
