"""Worker app for the job-utilities test: actors that download, batch and chunk.

Configured by environment: ``TURBO_TEST_REDIS_URL``, ``TURBO_TEST_NAMESPACE``
and ``TURBO_TEST_HTTP_URL`` (a server the test runs on 127.0.0.1).  Each job
records, in Redis, which process ran it and which session and pool it used.
"""

import json
import os

import dramatiq
import redis
from dramatiq.brokers.redis import RedisBroker

from dramatiq_turbo import download_file, http_session, parallel, process_batch, smart_chunk
from dramatiq_turbo import http as turbo_http
from dramatiq_turbo.batch import shared_pool

REDIS_URL = os.environ["TURBO_TEST_REDIS_URL"]
NAMESPACE = os.environ["TURBO_TEST_NAMESPACE"]
HTTP_URL = os.environ["TURBO_TEST_HTTP_URL"]

broker = RedisBroker(url=REDIS_URL, namespace=NAMESPACE)
dramatiq.set_broker(broker)
store = redis.Redis.from_url(REDIS_URL)


@dramatiq.actor(max_retries=0)
def fetch_pages(job: int) -> None:
    # Three documents at once, each through the process's pooled session.
    urls = [f"{HTTP_URL}/doc/{job}/{part}" for part in range(3)]
    bodies = process_batch(urls, download_file, concurrency=3)
    bodies.raise_errors()
    text = "\n\n".join(body.decode() for body in bodies.results if body is not None)
    chunks, status = parallel(
        lambda: smart_chunk(text, 60, 10),
        lambda: http_session().get(f"{HTTP_URL}/status", timeout=10).status_code,
    )
    state = turbo_http._state.peek()
    assert state is not None
    store.rpush(
        f"{NAMESPACE}:done",
        json.dumps(
            {
                "job": job,
                "pid": os.getpid(),
                "session": id(http_session()),
                "session_pid": state.pid,
                "pool_size": state.pool_size,
                "pool": id(shared_pool()),
                "chunks": len(chunks),
                "chars": len(text),
                "status": status,
            }
        ),
    )
