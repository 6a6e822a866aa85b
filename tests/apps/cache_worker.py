"""Worker app for the ResultCache tests: a cached actor whose body takes a while.

Configured by environment: ``TURBO_TEST_REDIS_URL``, ``TURBO_TEST_NAMESPACE``
(broker, results and cache namespace), ``CACHE_WORK`` (seconds the body
takes).  The cache's Redis client counts its commands; a small middleware in
front of ``ResultCache`` reports each message's count to
``<ns>:counts``.
"""

import json
import os
import time

import dramatiq
import redis
from dramatiq.brokers.redis import RedisBroker
from dramatiq.middleware import Middleware
from dramatiq.results import Results
from dramatiq.results.backends import RedisBackend

from dramatiq_turbo import install
from dramatiq_turbo.cache import MultiLevelCache, ResultCache
from dramatiq_turbo.core.delivery import is_cache_hit
from tests.cache.counting import CountingConnection, counting_client

REDIS_URL = os.environ["TURBO_TEST_REDIS_URL"]
NAMESPACE = os.environ["TURBO_TEST_NAMESPACE"]
WORK = float(os.environ.get("CACHE_WORK", "1.0"))

book = redis.Redis.from_url(REDIS_URL)  # bookkeeping: not counted


class CountCommands(Middleware):
    """Reports the cache's Redis commands for each message (counted per thread)."""

    def before_process_message(self, broker, message):
        message._count_start = CountingConnection.snapshot()
        message._began = time.time()

    def after_process_message(self, broker, message, *, result=None, exception=None):
        commands = CountingConnection.snapshot()[0] - message._count_start[0]
        book.rpush(
            f"{NAMESPACE}:counts",
            json.dumps(
                {
                    "pid": os.getpid(),
                    "commands": commands,
                    "hit": is_cache_hit(message),
                    "began": message._began,
                }
            ),
        )


broker = RedisBroker(url=REDIS_URL, namespace=NAMESPACE)
broker.add_middleware(Results(backend=RedisBackend(url=REDIS_URL, namespace=f"{NAMESPACE}-results")))
broker.add_middleware(CountCommands())
cache = MultiLevelCache(redis=counting_client(REDIS_URL), namespace=f"{NAMESPACE}-cache")
install(
    broker, cache=ResultCache(cache=cache), breaker=False, rate_limit=False, backoff=False, telemetry=False
)
dramatiq.set_broker(broker)


@dramatiq.actor(cache=True, store_results=True, max_retries=0)
def expensive(document: str) -> dict[str, object]:
    book.incr(f"{NAMESPACE}:computations")
    started = time.time()
    time.sleep(WORK)
    book.set(f"{NAMESPACE}:computed", json.dumps([os.getpid(), started, time.time()]))
    return {"notes": f"notes of {document}", "computed_by": os.getpid()}
