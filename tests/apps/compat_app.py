"""Worker app for the drop-in proofs: a plain Dramatiq app with ``install(broker)`` and nothing else.

Configured by environment: ``TURBO_TEST_REDIS_URL``, ``TURBO_TEST_NAMESPACE``
(broker namespace, queue and bookkeeping keys).

The whole suite is installed with its defaults, sharing the broker's Redis.
``work`` goes through every gate (cached, rate- and concurrency-limited,
behind a breaker, retried by ``Backoff``), so its threads (lease renewal,
the trip after the actor, the stats recorder) are running when the process
is told to reload.  Each worker process records its pid when it boots, each
run records its pid and how many times the job ran.
"""

import os
import time

import dramatiq
import redis
from dramatiq.brokers.redis import RedisBroker
from dramatiq.middleware import Middleware

from dramatiq_turbo import install

REDIS_URL = os.environ["TURBO_TEST_REDIS_URL"]
NAMESPACE = os.environ["TURBO_TEST_NAMESPACE"]
QUEUE = NAMESPACE

book = redis.Redis.from_url(REDIS_URL)  # bookkeeping, apart from the suite's client


class BootRecorder(Middleware):
    """Records each worker process's pid once it has booted (after the fork)."""

    def after_process_boot(self, broker: dramatiq.Broker) -> None:
        book.rpush(f"{NAMESPACE}:booted", os.getpid())


broker = RedisBroker(url=REDIS_URL, namespace=NAMESPACE)
broker.add_middleware(BootRecorder())
install(broker)
dramatiq.set_broker(broker)


@dramatiq.actor(
    queue_name=QUEUE,
    max_retries=3,
    cache=True,
    rate_limit={"max": 100, "duration": 1000, "concurrency": 4},
    breaker="compat-dependency",
)
def work(job: str, seconds: float = 0.0) -> int:
    book.set(f"{NAMESPACE}:started:{job}", os.getpid())
    time.sleep(seconds)
    book.incr(f"{NAMESPACE}:runs:{job}")
    book.set(f"{NAMESPACE}:pid:{job}", os.getpid())
    return os.getpid()
