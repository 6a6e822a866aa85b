"""Worker app for ``bench_ratelimit_accuracy.py``: one actor limited to 30 starts per 1,000 ms.

``BENCH_LIMITER`` picks the limiter: ``turbo`` (``RateLimiter``), ``window``
(Dramatiq's ``WindowRateLimiter``) or ``bucket`` (Dramatiq's
``BucketRateLimiter``), the latter two used as Dramatiq documents them: the
actor body acquires, and ``RateLimitExceeded`` goes to ``Retries``.  Every
start is logged to Redis with the server's time and the message's retries.
"""

import json
import os

import dramatiq
from dramatiq.brokers.redis import RedisBroker
from dramatiq.middleware import CurrentMessage

from dramatiq_turbo import install
from dramatiq_turbo.defer import deferral_count
from dramatiq_turbo.ratelimit import RateLimiter, admitted_at
from dramatiq_turbo.redis import connect_redis, redis_time_ms

REDIS_URL = os.environ["TURBO_BENCH_REDIS_URL"]
NAMESPACE = os.environ["BENCH_NAMESPACE"]
LIMITER = os.environ["BENCH_LIMITER"]
MAX, DURATION = 30, 1_000

broker = RedisBroker(url=REDIS_URL, namespace=NAMESPACE)
broker.add_middleware(CurrentMessage())
store = connect_redis(REDIS_URL)

if LIMITER == "turbo":
    limiter = RateLimiter(redis=store, namespace=f"{NAMESPACE}:rl")
    install(broker, rate_limit=limiter, cache=False, breaker=False, backoff=False, telemetry=False)
    options = {"rate_limit": (MAX, DURATION)}
else:
    from dramatiq.rate_limits import BucketRateLimiter, WindowRateLimiter
    from dramatiq.rate_limits.backends import RedisBackend

    backend = RedisBackend(client=store)
    key = f"{NAMESPACE}:dq-limit"
    if LIMITER == "window":
        dramatiq_limiter = WindowRateLimiter(backend, key, limit=MAX, window=DURATION // 1000)
    else:
        dramatiq_limiter = BucketRateLimiter(backend, key, limit=MAX, bucket=DURATION)
    # Short backoffs, so the run ends in seconds, not minutes.
    options = {"max_retries": 1_000, "min_backoff": 100, "max_backoff": 2_000}
dramatiq.set_broker(broker)


def log_start(job):
    message = CurrentMessage.get_current_message()
    entry = {
        "job": job,
        "start": admitted_at(message) or redis_time_ms(store),
        "body": redis_time_ms(store),
        "retries": message.options.get("retries", 0),
        "deferrals": deferral_count(message),
    }
    store.rpush(f"{NAMESPACE}:starts", json.dumps(entry))


@dramatiq.actor(queue_name=NAMESPACE, **options)
def limited(job):
    if LIMITER == "turbo":
        log_start(job)
    else:
        with dramatiq_limiter.acquire():
            log_start(job)
