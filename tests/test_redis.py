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
    assert replies[:2] == [b"1", 10_000]
    assert isinstance(replies[2], redis.ResponseError)
    with pytest.raises(redis.ResponseError, match="wrong number of arguments"):
        execute_transaction(client, [("SET", "c", "1"), ("SET", "d")], 2)
    assert client.get("c") is None  # the transaction was aborted as a whole
