"""One message through the whole stack costs at most one Redis round trip before the actor and one after.

The suite's Redis client talks to a private ``redis-server`` through a
counting TCP proxy, so the round trips are counted at the socket, below the
suite and below redis-py: a burst of bytes from the client after the server
last answered is one.  The broker is a ``StubBroker`` (no Redis of its own),
so every round trip counted is the suite's.
"""

from __future__ import annotations

import dramatiq
import pytest
from dramatiq.results import Results
from dramatiq.results.backends import StubBackend

from dramatiq_turbo import MultiLevelCache, ResultCache, connect_redis, install
from dramatiq_turbo.core.delivery import flush_outbox
from tests.harness import unique
from tests.tcp_proxy import TcpProxy

pytestmark = pytest.mark.integration


@pytest.fixture
def counted_stack(make_broker, spare_redis, start_worker):
    proxy = TcpProxy("127.0.0.1", spare_redis.port)
    port = proxy.start()
    client = connect_redis(f"redis://127.0.0.1:{port}/0")
    broker = make_broker("stub")
    backend = StubBackend()
    broker.add_middleware(Results(backend=backend))
    cache = MultiLevelCache(redis=client, namespace=unique("trips"))
    install(broker, redis=client, cache=ResultCache(cache=cache))
    queue = unique("trips")

    @dramatiq.actor(
        broker=broker,
        queue_name=queue,
        store_results=True,
        cache=True,
        rate_limit={"max": 1_000_000, "duration": 1_000, "concurrency": 100},
        breaker="dependency",
    )
    def double(x: int) -> int:
        return 2 * x

    start_worker(broker, worker_threads=1)

    def trips_of(x: int) -> int:
        """The round trips of one message of ``double(x)``, its after-the-actor calls included."""
        flush_outbox()
        before = proxy.round_trips
        message = double.send(x)
        assert message.get_result(backend=backend, block=True, timeout=10_000) == 2 * x
        broker.join(queue)
        flush_outbox()
        return proxy.round_trips - before

    trips_of(0)  # warm up: connections, script loading, the invalidation channel
    yield trips_of, cache
    cache.close()
    proxy.stop()
    client.close()


def test_a_miss_costs_one_round_trip_before_the_actor_and_one_after(counted_stack):
    trips_of, _ = counted_stack
    # cache lookup and lease, rate-limit slot (with a concurrency lease) and
    # breaker admission before; result store, slot release and outcome after.
    assert trips_of(1) <= 2


def test_an_l1_hit_costs_no_round_trip(counted_stack):
    trips_of, _ = counted_stack
    trips_of(2)
    assert trips_of(2) == 0, "an L1 hit asks Redis nothing: no slot, no admission"


def test_an_l2_hit_costs_at_most_two_round_trips(counted_stack):
    trips_of, cache = counted_stack
    trips_of(3)
    cache.l1.clear()  # as in another process: the value is in Redis only
    # The value, found in the same trip as a slot and an admission; the slot goes back after.
    assert trips_of(3) <= 2
