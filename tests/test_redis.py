"""connect_redis and the shared-store helpers, against a real Redis."""

from __future__ import annotations

import contextlib
import time

import pytest
import redis

from dramatiq_turbo.redis import (
    connect_redis,
    connect_redis_like,
    hash_key,
    load_script,
    redis_time_ms,
    resolve_redis,
)

# A script that counts its runs, then keeps Redis busy for 300 ms: longer than
# the client's 100 ms socket timeout, so the reply is lost after it ran.
SLOW_INCR = """
redis.call('incr', KEYS[1])
local start = redis.call('time')
local deadline = tonumber(start[1]) * 1000000 + tonumber(start[2]) + 300000
while true do
  local now = redis.call('time')
  if tonumber(now[1]) * 1000000 + tonumber(now[2]) > deadline then break end
end
return 1
"""


@pytest.mark.integration
def test_connect_redis_never_runs_a_timed_out_script_twice(redis_url, redis_client):
    client = connect_redis(redis_url, socket_timeout=100)
    with pytest.raises(redis.TimeoutError):
        client.eval(SLOW_INCR, 1, "runs")
    time.sleep(0.5)
    assert int(redis_client.get("runs")) == 1


@pytest.mark.integration
def test_redis_pys_default_client_does_run_it_twice(redis_url, redis_client):
    """The hazard connect_redis exists for, shown on the same server."""
    settings = redis_client.connection_pool.connection_kwargs
    client = redis.Redis(host=settings["host"], port=settings["port"], db=settings["db"], socket_timeout=0.1)
    with contextlib.suppress(redis.TimeoutError):
        client.eval(SLOW_INCR, 1, "runs")
    time.sleep(1.5)
    assert int(redis_client.get("runs")) > 1


@pytest.mark.integration
def test_connect_redis_like_shares_server_and_database_with_safe_settings(redis_url, redis_client):
    broker_client = redis.Redis.from_url(redis_url)
    safe = connect_redis_like(broker_client)
    safe.set("shared", "yes")
    assert broker_client.get("shared") == b"yes"
    assert safe.connection_pool is not broker_client.connection_pool
    assert safe.get_retry().get_retries() == 0  # type: ignore[union-attr]


@pytest.mark.parametrize("url", ["127.0.0.1:6379", "", None])
def test_connect_redis_names_a_bad_url(url):
    with pytest.raises(ValueError, match="Redis URL"):
        connect_redis(url)  # type: ignore[arg-type]


def test_connect_redis_rejects_timeouts_in_seconds():
    with pytest.raises(ValueError, match="socket_timeout must be a positive number of milliseconds"):
        connect_redis("redis://127.0.0.1:6379/1", socket_timeout=0)


def test_resolve_redis_accepts_client_url_or_none():
    client = connect_redis("redis://127.0.0.1:6379/3")
    assert resolve_redis(None) is None
    assert resolve_redis(client) is client
    assert resolve_redis("redis://127.0.0.1:6379/4").connection_pool.connection_kwargs["db"] == 4
    with pytest.raises(TypeError, match="redis must be"):
        resolve_redis(6379)  # type: ignore[arg-type]


def test_hash_key_tags_the_object_for_one_cluster_slot():
    assert hash_key("turbo:rl", "send_email", "log") == "turbo:rl:{send_email}:log"
    assert hash_key("turbo:cache", "k") == "turbo:cache:{k}"
    with pytest.raises(ValueError):
        hash_key("turbo", "")


@pytest.mark.integration
def test_redis_time_is_the_servers_clock_in_ms(redis_client):
    assert abs(redis_time_ms(redis_client) - time.time() * 1000) < 1_000


@pytest.mark.integration
def test_load_script_registers_once_and_survives_a_script_flush(redis_client):
    script = load_script(redis_client, "tests.lua", "incr.lua")
    assert load_script(redis_client, "tests.lua", "incr.lua") is script
    assert script(keys=["n"], args=[2]) == 2
    redis_client.script_flush()  # as after a server restart
    assert script(keys=["n"], args=[3]) == 5


@pytest.mark.integration
def test_connect_redis_fails_fast_while_the_server_is_down_and_recovers(spare_redis):
    client = connect_redis(spare_redis.url, connect_timeout=500)
    client.set("k", "v")
    spare_redis.stop()
    started = time.monotonic()
    with pytest.raises(redis.ConnectionError):
        client.get("k")
    assert time.monotonic() - started < 2
    spare_redis.start()
    client.set("k", "again")  # the pool reconnects by itself
    assert client.get("k") == b"again"


@pytest.mark.integration
def test_execute_packed_runs_one_command_and_never_retries(spare_redis):
    from dramatiq_turbo.packed import execute_packed

    client = connect_redis(spare_redis.url, connect_timeout=500)
    assert execute_packed(client, ("MSET", "a", "1", "b", 2, "c", 2.5)) == b"OK"
    assert execute_packed(client, ("MGET", "a", "b", "c", "missing")) == [b"1", b"2", b"2.5", None]
    with pytest.raises(redis.ResponseError, match="wrong number of arguments"):
        execute_packed(client, ("MSET", "odd"))
    spare_redis.stop()
    with pytest.raises(redis.ConnectionError):
        execute_packed(client, ("MGET", "a"))
    spare_redis.start()
    assert execute_packed(client, ("MGET", "a")) == [None]  # a new server: empty, and the pool reconnected


@pytest.mark.integration
def test_execute_pipeline_returns_errors_in_place_and_stays_in_step(spare_redis):
    from dramatiq_turbo.packed import execute_pipeline, execute_transaction

    client = connect_redis(spare_redis.url, connect_timeout=500)
    commands = [("SET", f"p{i}", i) for i in range(2_000)] + [("LPUSH", "p0", "x"), ("INCR", "p1")]
    replies = execute_pipeline(client, commands, len(commands))
    assert replies[:2_000] == [b"OK"] * 2_000
    assert isinstance(replies[2_000], redis.ResponseError) and "WRONGTYPE" in str(replies[2_000])
    assert replies[2_001] == 2
    assert client.get("p1999") == b"1999"  # the connection is still in step
    assert execute_transaction(client, [("SET", "t", "1")], 1, then=("PUBLISH", "nobody", "x")) == 0
    spare_redis.stop()
    with pytest.raises(redis.ConnectionError):
        execute_pipeline(client, [("GET", "t")], 1)
    spare_redis.start()
    assert execute_pipeline(client, [("GET", "t")], 1) == [None]  # a new server, and the pool reconnected


def test_packed_helpers_fall_back_to_the_parser_without_a_socket():
    """fakeredis connections have no socket of their own: replies go through redis-py's parser."""
    import fakeredis

    from dramatiq_turbo.packed import execute_pipeline, execute_transaction

    client = fakeredis.FakeRedis(server=fakeredis.FakeServer())
    execute_transaction(client, [("SET", "a", "1"), ("SET", "b", "2", "PX", 10_000)], 2)
    replies = execute_pipeline(client, [("GET", "a"), ("PTTL", "b"), ("LPUSH", "a", "x")], 3)
    assert replies[0] == b"1" and 9_000 < replies[1] <= 10_000  # PTTL: a millisecond may pass
    assert isinstance(replies[2], redis.ResponseError)
    with pytest.raises(redis.ResponseError, match="wrong number of arguments"):
        execute_transaction(client, [("SET", "c", "1"), ("SET", "d")], 2)
    assert client.get("c") is None  # the transaction was aborted as a whole


class _Interrupted(BaseException):
    """Stands for Dramatiq's TimeLimitExceeded or Shutdown, raised in a worker thread at any point."""


@pytest.mark.integration
def test_a_batch_stopped_half_way_never_leaves_its_connection_to_the_next_caller(redis_url, monkeypatch):
    from dramatiq_turbo import packed

    client = connect_redis(redis_url, max_connections=1)  # one connection: the next caller gets the same
    client.set("victim", "real-value")

    # Interrupted while waiting for the replies: they are still on their way.
    def interrupted(sock):
        raise _Interrupted

    with monkeypatch.context() as patch:
        patch.setattr(packed, "_receive", interrupted)
        with pytest.raises(_Interrupted):
            packed.execute_transaction(client, [("SET", f"i{i}", i) for i in range(500)], 500)
    assert client.get("victim") == b"real-value"

    # A value that cannot be packed, after MULTI and a first slice were sent.
    commands = [("SET", f"j{i}", i) for i in range(200)] + [("SET", "bad", None)]
    with pytest.raises(TypeError):
        packed.execute_transaction(client, commands, len(commands))
    assert client.get("victim") == b"real-value"
    assert client.exists("j0") == 0  # the transaction was never executed
    client.delete("victim", *[f"i{i}" for i in range(500)])


@pytest.mark.integration
def test_a_health_check_never_lands_inside_the_transaction(redis_url, redis_client):
    """A health check falls due between two slices: it must run before the first, or not at all."""
    from dramatiq_turbo.packed import execute_transaction

    client = connect_redis(redis_url, health_check_interval=1_000)  # ms

    def slow_commands():
        for i in range(1_000):
            if i == 500:
                time.sleep(1.1)  # the check falls due while the slices are being written
            yield ("SET", f"hc{i}", i)

    client.ping()
    time.sleep(1.1)  # and it is due already at the first write
    execute_transaction(client, slow_commands(), 1_000)
    assert redis_client.get("hc999") == b"999"
    redis_client.delete(*[f"hc{i}" for i in range(1_000)])


@pytest.mark.integration
def test_a_transaction_aborted_by_a_watch_raises_and_writes_nothing(redis_url, redis_client):
    from dramatiq_turbo import batch_set

    client = connect_redis(redis_url, max_connections=1)
    connection = client.connection_pool.get_connection()
    connection.send_command("WATCH", "watched")  # left behind by someone else's code
    assert connection.read_response() in (b"OK", "OK")
    client.connection_pool.release(connection)
    redis_client.set("watched", "changed")
    with pytest.raises(redis.WatchError):
        batch_set(client, [("watched", b"mine", 60_000), ("other", b"mine", 60_000)])
    assert redis_client.get("watched") == b"changed"
    assert redis_client.exists("other") == 0
    redis_client.delete("watched")


@pytest.mark.integration
def test_a_resp3_false_reply_is_a_reply(redis_url):
    from dramatiq_turbo.packed import execute_pipeline

    client = connect_redis(redis_url)
    started = time.monotonic()
    assert execute_pipeline(client, [("EVAL", "redis.setresp(3); return false", 0), ("PING",)], 2) in (
        [False, b"PONG"],
        [None, b"PONG"],  # a RESP2 connection
    )
    assert time.monotonic() - started < 1


def test_a_cluster_client_is_refused_with_a_clear_error():
    from dramatiq_turbo import batch_get, batch_set

    class ClusterLike:  # like redis.RedisCluster: no connection pool of its own
        pass

    with pytest.raises(TypeError, match="ClusterLike is not supported"):
        batch_set(ClusterLike(), [("a", b"1", 1_000)])
    with pytest.raises(TypeError, match="ClusterLike is not supported"):
        batch_get(ClusterLike(), ["a"])


@pytest.mark.integration
def test_a_read_only_replica_refuses_the_batch_and_the_connection_is_replaced(spare_redis):
    """After a failover the old master answers READONLY: the pooled connection is dropped, so a
    Sentinel pool asks for the new master instead of writing to the replica again."""
    from dramatiq_turbo import batch_set

    client = connect_redis(spare_redis.url, max_connections=1)
    client.replicaof("127.0.0.1", 1)  # a replica of nothing: read-only, as after a failover
    try:
        before = client.client_id()
        with pytest.raises(redis.ReadOnlyError):
            batch_set(client, [("a", b"1", 60_000), ("b", b"2", 60_000)])
        assert client.client_id() != before  # a new connection
        assert client.exists("a", "b") == 0
    finally:
        client.replicaof("NO", "ONE")


@pytest.mark.integration
def test_unix_socket_urls_and_clients_work(spare_redis):
    """``unix://`` URLs are documented: the TCP-only keepalive option must not be passed to them."""
    from dramatiq_turbo import batch_get, batch_set

    client = connect_redis(spare_redis.unix_url)
    assert client.ping()
    assert batch_set(client, [("a", b"1", 60_000), ("b", b"2", None)]) == 2  # replies read from the socket
    assert batch_get(client, ["a", "b"]) == [b"1", b"2"]
    shared = connect_redis_like(redis.Redis(unix_socket_path=spare_redis.socket_path, db=1))
    assert shared.get("a") == b"1"


def test_health_check_interval_is_kept_in_milliseconds_and_zero_turns_it_off():
    def interval(ms):
        return connect_redis(
            "redis://127.0.0.1:1/0", health_check_interval=ms
        ).connection_pool.connection_kwargs["health_check_interval"]

    assert (interval(1_500), interval(500), interval(0)) == (1.5, 0.5, 0)
    with pytest.raises(ValueError, match="health_check_interval must be 0"):
        connect_redis("redis://127.0.0.1:1/0", health_check_interval=-5)
