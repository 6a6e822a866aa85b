"""Worker app for the telemetry end-to-end test: traced jobs exported over OTLP/HTTP.

Configured by environment: ``TURBO_TEST_REDIS_URL``, ``TURBO_TEST_NAMESPACE``,
``TURBO_TEST_QUEUE`` and the standard ``OTEL_*`` variables (the collector's
address in ``OTEL_EXPORTER_OTLP_ENDPOINT``).
"""

import os
import time

import dramatiq
import redis
from dramatiq.brokers.redis import RedisBroker

from dramatiq_turbo import configure_telemetry, install, step

REDIS_URL = os.environ["TURBO_TEST_REDIS_URL"]
NAMESPACE = os.environ["TURBO_TEST_NAMESPACE"]
QUEUE = os.environ["TURBO_TEST_QUEUE"]

configure_telemetry("turbo-e2e")
broker = RedisBroker(url=REDIS_URL, namespace=NAMESPACE)
install(broker, cache=False, breaker=False, rate_limit=False, backoff=False)
dramatiq.set_broker(broker)
store = redis.Redis.from_url(REDIS_URL)


@dramatiq.actor(queue_name=QUEUE, max_retries=0)
def traced_job(number: int, fail: bool = False) -> None:
    with step("compute"):
        # Long enough that one process cannot drain the queue before the
        # other's idle poll (backing off up to 1 s) comes back.
        time.sleep(0.08)
    store.rpush(f"{NAMESPACE}:done", number)
    if fail:
        raise RuntimeError(f"job {number} failed on purpose")
