"""Worker app for the StallGuard proof: an actor that kills its own worker process.

Configured by environment: ``TURBO_TEST_BROKER`` (``redis`` or ``rabbitmq``),
``TURBO_TEST_REDIS_URL``, ``TURBO_TEST_RABBITMQ_URL`` and
``TURBO_TEST_NAMESPACE``.  The whole suite is installed; results are stored
in Redis.  Every start of an actor's body is logged to Redis first, so the
test sees how often each message started and in which process.
"""

import os
import signal

import dramatiq
import redis
from dramatiq.brokers.rabbitmq import RabbitmqBroker
from dramatiq.brokers.redis import RedisBroker
from dramatiq.results import Results
from dramatiq.results.backends import RedisBackend

from dramatiq_turbo import connect_redis, install

REDIS_URL = os.environ["TURBO_TEST_REDIS_URL"]
NAMESPACE = os.environ["TURBO_TEST_NAMESPACE"]

if os.environ.get("TURBO_TEST_BROKER") == "rabbitmq":
    broker: dramatiq.Broker = RabbitmqBroker(url=os.environ["TURBO_TEST_RABBITMQ_URL"])
else:
    broker = RedisBroker(
        url=REDIS_URL,
        namespace=NAMESPACE,
        # A dead worker's messages come back in a maintenance pass once its
        # heartbeat is 2 s old: run the pass on every fetch.
        heartbeat_timeout=2_000,
        maintenance_chance=1_000_000,
    )
broker.add_middleware(Results(backend=RedisBackend(url=REDIS_URL, namespace=f"{NAMESPACE}:results")))
install(broker, redis=connect_redis(REDIS_URL))
dramatiq.set_broker(broker)
store = redis.Redis.from_url(REDIS_URL)
QUEUE = f"{NAMESPACE}-q"


def _started(job: str) -> None:
    store.rpush(f"{NAMESPACE}:starts:{job}", os.getpid())


@dramatiq.actor(queue_name=QUEUE, store_results=True, max_retries=0)
def crash_worker(job: str) -> None:
    """Dies like a segfault or the OOM killer: no exception, no ack, no cleanup."""
    _started(job)
    os.kill(os.getpid(), signal.SIGKILL)


@dramatiq.actor(queue_name=QUEUE, store_results=True, max_retries=0, max_stalls=0)
def crash_worker_no_second_chance(job: str) -> None:
    _started(job)
    os.kill(os.getpid(), signal.SIGKILL)


@dramatiq.actor(queue_name=QUEUE, store_results=True, max_retries=0)
def record_run(job: str) -> str:
    _started(job)
    store.rpush(f"{NAMESPACE}:done", job)
    return job.upper()
