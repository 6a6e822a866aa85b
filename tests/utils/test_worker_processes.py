"""The utilities inside real ``dramatiq`` worker processes: one session and one pool per process."""

from __future__ import annotations

import json
import time
from http.server import BaseHTTPRequestHandler

import pytest
import redis
from dramatiq.brokers.redis import RedisBroker

from dramatiq_turbo.batch import pool_threads
from tests.harness import REDIS_URL, send_by_name, unique, wait_for

from .conftest import LocalServer, send_body

pytestmark = [pytest.mark.integration, pytest.mark.multiprocess, pytest.mark.slow]

PARAGRAPH = " ".join(f"Sentence number {n} of the document says something." for n in range(30))


def test_each_worker_process_has_its_own_session_and_pool(
    redis_client: redis.Redis, worker_processes, http_server: LocalServer
) -> None:
    @http_server.route("/status")
    def status(request: BaseHTTPRequestHandler) -> None:
        send_body(request, b"ok")

    for job in range(40):
        for part in range(3):

            @http_server.route(f"/doc/{job}/{part}")
            def doc(request: BaseHTTPRequestHandler) -> None:
                # Slow enough that one process alone would need longer than
                # an idle consumer's longest poll back-off (1 s): both take jobs.
                time.sleep(0.15)
                send_body(request, PARAGRAPH.encode())

    namespace = unique("utils")
    env = {
        "TURBO_TEST_REDIS_URL": REDIS_URL,
        "TURBO_TEST_NAMESPACE": namespace,
        "TURBO_TEST_HTTP_URL": http_server.url,
        "TURBO_POOL_THREADS": "6",
    }
    producer = RedisBroker(url=REDIS_URL, namespace=namespace)
    workers = worker_processes("tests.apps.utils_jobs", processes=2, threads=4, env=env)
    workers.start(1)
    try:
        for job in range(40):
            send_by_name(producer, "fetch_pages", job)
        wait_for(
            lambda: redis_client.llen(f"{namespace}:done") >= 40,
            timeout=60,
            what=f"40 jobs to finish; worker output:\n{workers.output()[-2000:]}",
        )
    finally:
        workers.stop()
        producer.close()
    runs = [json.loads(item) for item in redis_client.lrange(f"{namespace}:done", 0, -1)]
    assert sorted(run["job"] for run in runs) == list(range(40))
    assert all(run["status"] == 200 and run["chars"] == 3 * len(PARAGRAPH) + 4 for run in runs)
    assert all(run["chunks"] >= 6 for run in runs)
    pids = {run["pid"] for run in runs}
    assert len(pids) == 2, "both worker processes ran jobs"
    for pid in pids:
        mine = [run for run in runs if run["pid"] == pid]
        assert {run["session"] for run in mine} == {mine[0]["session"]}, "one session per process"
        assert {run["pool"] for run in mine} == {mine[0]["pool"]}, "one pool per process"
        assert {run["session_pid"] for run in mine} == {pid}, "the session was built in this process"
    # The pool is sized from the worker's real thread count (--threads 4) plus the shared pool.
    assert {run["pool_size"] for run in runs} == {4 + 6}
    assert pool_threads() >= 1
    # 160 documents and 40 status calls over pooled keep-alive connections.
    assert sum(http_server.hits.values()) == 160
    assert 2 <= http_server.connections <= 2 * (4 + 6)
