"""Pooled HTTP: per-job cost of a fresh connection vs http_session(), the
connections a 16-thread worker opens, and a 50 MB download's speed and memory.

    .venv/bin/python benchmarks/bench_utils_http.py

Everything runs against an HTTP server this script starts on 127.0.0.1
(TCP_NODELAY set, or keep-alive requests wait on delayed ACKs).
"""

from __future__ import annotations

import multiprocessing
import os
import socket
import threading
import time
import tracemalloc
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import requests
from requests.adapters import HTTPAdapter

from dramatiq_turbo import download_file, http_session

SMALL = b'{"status": "ok", "pages": 12}' * 8
LARGE_SIZE = 50 * 1024 * 1024
LARGE = os.urandom(LARGE_SIZE)
JOBS = 500


class Server(ThreadingHTTPServer):
    daemon_threads = True
    # Shared with the benchmark process: the server runs in its own process,
    # so that it does not compete with the client for the GIL.
    opened: Any = None

    @property
    def connections(self) -> int:
        return int(self.opened.value)

    def server_bind(self) -> None:
        super().server_bind()
        self.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: Server

    def setup(self) -> None:
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with self.server.opened.get_lock():
            self.server.opened.value += 1

    def do_GET(self) -> None:
        body = LARGE if self.path == "/large" else SMALL
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


def per_job(url: str) -> list[tuple[str, float]]:
    def fresh() -> None:
        # What a job does without a shared session: a new connection each time.
        with requests.Session() as session:
            session.get(url, timeout=10).raise_for_status()

    def pooled() -> None:
        http_session().get(url, timeout=10).raise_for_status()

    rows = []
    for name, job in (("fresh connection per job", fresh), ("http_session() (pooled)", pooled)):
        job()  # warm up
        best = float("inf")
        for _ in range(2):  # best of two: the machine is shared
            started = time.perf_counter()
            for _ in range(JOBS):
                job()
            best = min(best, (time.perf_counter() - started) / JOBS)
        rows.append((name, best))
    return rows


def connections_opened(opened: Any, url: str, session: requests.Session) -> tuple[int, float]:
    opened.value = 0

    def worker() -> None:
        for _ in range(50):
            session.get(url, timeout=10).raise_for_status()

    threads = [threading.Thread(target=worker) for _ in range(16)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return int(opened.value), time.perf_counter() - started


def large_download(url: str) -> list[tuple[str, float, float]]:
    rows = []

    def naive() -> bytes:
        return requests.get(url, timeout=60).content

    def ours() -> bytes:
        return download_file(url)

    for name, fetch in (("requests.get(url).content", naive), ("download_file(url)", ours)):
        tracemalloc.start()
        started = time.perf_counter()
        body = fetch()
        elapsed = time.perf_counter() - started
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        assert len(body) == LARGE_SIZE
        del body
        rows.append((name, LARGE_SIZE / 1e6 / elapsed, peak / LARGE_SIZE))
    return rows


def serve(port: Any, opened: Any) -> None:
    server = Server(("127.0.0.1", 0), Handler)
    server.opened = opened
    port.value = server.server_address[1]
    server.serve_forever()


def main() -> None:
    context = multiprocessing.get_context("fork")
    port, opened = context.Value("i", 0), context.Value("i", 0)
    process = context.Process(target=serve, args=(port, opened), daemon=True)
    process.start()
    deadline = time.monotonic() + 10
    while not port.value and time.monotonic() < deadline:
        time.sleep(0.01)
    base = f"http://127.0.0.1:{port.value}"
    try:
        rows = per_job(f"{base}/small")
        print(f"Per-job cost of one small GET ({JOBS} jobs, one thread; server in another process)")
        print(f"{'method':<28} {'ms/job':>8} {'speed-up':>9}")
        print("-" * 47)
        for name, seconds in rows:
            print(f"{name:<28} {seconds * 1000:8.3f} {rows[0][1] / seconds:8.1f}x")

        naive = requests.Session()
        naive.mount("http://", HTTPAdapter(pool_maxsize=2, pool_block=False))
        naive_count, naive_time = connections_opened(opened, f"{base}/small", naive)
        naive.close()
        ours_count, ours_time = connections_opened(opened, f"{base}/small", http_session())
        print("\n16 threads x 50 requests through one session")
        print(f"{'pool':<36} {'connections':>11} {'seconds':>8}")
        print("-" * 57)
        print(f"{'non-blocking, pool_maxsize=2':<36} {naive_count:>11} {naive_time:8.2f}")
        print(f"{'http_session() (blocking, sized)':<36} {ours_count:>11} {ours_time:8.2f}")

        print(f"\n{LARGE_SIZE // 2**20} MB download")
        print(f"{'method':<28} {'MB/s':>8} {'peak memory / size':>19}")
        print("-" * 57)
        for name, rate, ratio in large_download(f"{base}/large"):
            print(f"{name:<28} {rate:8.0f} {ratio:18.2f}x")
    finally:
        process.terminate()
        process.join(5)


if __name__ == "__main__":
    main()
