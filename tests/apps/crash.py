"""Worker app for the redelivery test: a job that can hang on its first delivery.

Configured by environment: ``TURBO_TEST_REDIS_URL`` and ``TURBO_TEST_NAMESPACE``;
``TURBO_TEST_INSTALL=1`` puts the whole suite on the broker (``install()``) and
gives the actor a cached result and a concurrency slot, whose leases a killed
worker holds until they expire.
Every delivery is logged to Redis, so the test can see which process ran what.
"""

import os
import time

import dramatiq
import redis
from dramatiq.brokers.redis import RedisBroker

REDIS_URL = os.environ["TURBO_TEST_REDIS_URL"]
NAMESPACE = os.environ["TURBO_TEST_NAMESPACE"]

broker = RedisBroker(
    url=REDIS_URL,
    namespace=NAMESPACE,
    # Dead workers' messages come back only in a maintenance pass: make it
    # run on every command, and declare a worker dead after 2 s of silence.
    heartbeat_timeout=2_000,
    maintenance_chance=1_000_000,
)
SUITE = os.environ.get("TURBO_TEST_INSTALL") == "1"
options: dict[str, object] = {}
if SUITE:
    from dramatiq_turbo import MultiLevelCache, ResultCache, connect_redis, install

    client = connect_redis(REDIS_URL)
    cache = MultiLevelCache(redis=client, namespace=f"{NAMESPACE}:cache", lease_ttl=2_000)
    install(broker, redis=client, cache=ResultCache(cache=cache))
    options = {"cache": True, "rate_limit": {"concurrency": 1, "lease": 2_000, "key": "queue"}}
dramatiq.set_broker(broker)
store = redis.Redis.from_url(REDIS_URL)


@dramatiq.actor(max_retries=0, **options)
def record_run(job: str, hang_first_time: bool = False) -> None:
    delivery = store.incr(f"{NAMESPACE}:deliveries:{job}")
    store.rpush(f"{NAMESPACE}:runs:{job}", os.getpid())
    if hang_first_time and delivery == 1:
        time.sleep(300)  # killed long before this ends
    store.rpush(f"{NAMESPACE}:done", job)
