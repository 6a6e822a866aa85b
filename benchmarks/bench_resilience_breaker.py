"""Circuit breaker costs: fail-fast when open vs a dependency that times out; a deferral's round trip.

    .venv/bin/python benchmarks/bench_resilience_breaker.py

Redis: ``TURBO_BENCH_REDIS_URL`` (default ``redis://127.0.0.1:6379/14``).
Everything it creates (breaker keys, broker namespace) is deleted at the end.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
import threading
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import dramatiq
from dramatiq.brokers.redis import RedisBroker
from dramatiq.middleware import Middleware

from dramatiq_turbo import CircuitBreaker, CircuitOpenError, breaker
from dramatiq_turbo.defer import defer, deferral_count
from dramatiq_turbo.redis import connect_redis

REDIS_URL = os.environ.get("TURBO_BENCH_REDIS_URL", "redis://127.0.0.1:6379/14")
TIMEOUT_MS = 200


def silent_server() -> tuple[socket.socket, int]:
    """A TCP server that accepts connections and never answers: a hung dependency."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(64)
    return server, server.getsockname()[1]


def call_hung_dependency(port: int) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT_MS / 1000) as conn:
        conn.sendall(b"GET / HTTP/1.1\r\n\r\n")
        conn.recv(1)  # times out


def bench_fail_fast(client, namespace: str) -> list[tuple[str, float, str]]:
    CircuitBreaker(redis=client, fail_max=1, reset_timeout=600_000, namespace=namespace)
    # Closed: every call is admitted and reported (two Redis round trips).
    n = 2_000
    started = time.perf_counter()
    for _ in range(n):
        with breaker("bench-closed"):
            pass
    closed_us = (time.perf_counter() - started) / n * 1e6

    with contextlib.suppress(ConnectionError), breaker("bench-open"):
        raise ConnectionError("down")
    n = 200_000
    started = time.perf_counter()
    for _ in range(n):
        try:
            with breaker("bench-open"):
                pass
        except CircuitOpenError:
            pass
    open_us = (time.perf_counter() - started) / n * 1e6

    server, port = silent_server()
    try:
        calls = 5
        started = time.perf_counter()
        for _ in range(calls):
            with contextlib.suppress(OSError):
                call_hung_dependency(port)
        hung_us = (time.perf_counter() - started) / calls * 1e6
    finally:
        server.close()
    return [
        (f"call a hung dependency ({TIMEOUT_MS} ms timeout)", hung_us, "1.0x (baseline)"),
        (
            "breaker closed: admit + report (2 Redis round trips)",
            closed_us,
            f"{hung_us / closed_us:,.0f}x faster",
        ),
        ("breaker open: reject (no Redis round trip)", open_us, f"{hung_us / open_us:,.0f}x faster"),
    ]


class DeferOnce(Middleware):
    def before_process_message(self, broker, message):
        if message.args[1] and deferral_count(message) == 0:
            defer(broker, message, delay=0, reason="bench")


def bench_deferral(client) -> list[tuple[str, float, str]]:
    namespace = f"bench-{uuid.uuid4().hex[:8]}"
    broker = RedisBroker(url=REDIS_URL, namespace=namespace)
    broker.add_middleware(DeferOnce())
    queue = "bench"
    done = threading.Semaphore(0)
    enqueues = []

    class CountEnqueues(Middleware):
        def after_enqueue(self, broker, message, delay):
            enqueues.append(delay)

    broker.add_middleware(CountEnqueues())

    @dramatiq.actor(queue_name=queue, broker=broker, max_retries=0)
    def job(i, deferred):
        done.release()

    worker = dramatiq.Worker(broker, worker_threads=1, worker_timeout=20)
    worker.start()
    try:
        rows = []
        n = 300
        timings = {}
        for deferred in (False, True):
            enqueues.clear()
            started = time.perf_counter()
            for i in range(n):
                job.send(i, deferred)
                done.acquire(timeout=10)
            timings[deferred] = (time.perf_counter() - started) / n * 1e3
            timings[(deferred, "enqueues")] = len(enqueues) / n
        extra = timings[True] - timings[False]
        rows.append(("send -> run, no deferral (ms per message)", timings[False], "1.0x (baseline)"))
        rows.append(
            (
                "send -> deferred -> run (ms per message)",
                timings[True],
                f"{timings[True] / timings[False]:.2f}x; +{extra:.2f} ms, "
                f"{timings[(True, 'enqueues')] - timings[(False, 'enqueues')]:.0f} extra enqueue(s)",
            )
        )
        return rows
    finally:
        worker.stop()
        keys = list(client.scan_iter(f"{namespace}:*"))
        if keys:
            client.delete(*keys)
        broker.close()


def main() -> None:
    import logging

    logging.basicConfig(level=logging.ERROR)
    client = connect_redis(REDIS_URL)
    namespace = f"bench-brk-{uuid.uuid4().hex[:8]}"
    try:
        rows = bench_fail_fast(client, namespace)
        print(f"{'fail-fast':58} {'µs/call':>12}  ratio")
        for name, value, ratio in rows:
            print(f"{name:58} {value:12,.2f}  {ratio}")
        print()
        print(f"{'deferral round trip on RedisBroker':58} {'ms':>12}  ratio")
        for name, value, ratio in bench_deferral(client):
            print(f"{name:58} {value:12,.2f}  {ratio}")
    finally:
        keys = list(client.scan_iter(f"{namespace}:*"))
        if keys:
            client.delete(*keys)


if __name__ == "__main__":
    main()
