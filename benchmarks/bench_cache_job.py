"""A cached job end to end on RedisBroker with a real worker process: enqueue to result, hit vs miss.

The worker is a separate process (this script with ``--worker``) running a
``dramatiq.Worker`` with the suite installed.  A miss runs a body that
simulates 1 s of work; a hit is served by ``ResultCache``.  The guide's
cache hit takes ~500 ms.  An uncached no-op job, timed in turn with the
hits, shows what Dramatiq itself costs; an idle Redis consumer polls with a
backoff of up to ``worker_timeout`` (Dramatiq's default: 1,000 ms; its first
steps are 5-10 ms), so the run is repeated with ``worker_timeout=5``.

    python benchmarks/bench_cache_job.py
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import dramatiq
from _cache_common import REDIS_URL, median, percentile, table
from dramatiq.brokers.redis import RedisBroker
from dramatiq.results import Results
from dramatiq.results.backends import RedisBackend

from dramatiq_turbo import connect_redis, install

HITS = 200
MISSES = 3
GUIDE_HIT_MS = 500


def make_broker(namespace: str) -> RedisBroker:
    broker = RedisBroker(url=REDIS_URL, namespace=namespace)
    broker.add_middleware(Results(backend=RedisBackend(url=REDIS_URL, namespace=f"{namespace}-results")))
    install(broker, redis=connect_redis(REDIS_URL), telemetry=False)
    dramatiq.set_broker(broker)
    return broker


def declare(namespace: str):
    @dramatiq.actor(cache=True, cache_ttl=600_000, store_results=True, max_retries=0)
    def make_notes(document: str) -> dict[str, str]:
        time.sleep(1.0)  # the expensive part (parsing, an LLM call, ...)
        return {"notes": f"notes of {document}"}

    @dramatiq.actor(store_results=True, max_retries=0)
    def no_op(document: str) -> dict[str, str]:
        return {"notes": document}

    return make_notes, no_op


def worker(namespace: str, worker_timeout: int) -> None:
    broker = make_broker(namespace)
    declare(namespace)
    w = dramatiq.Worker(broker, worker_threads=4, worker_timeout=worker_timeout)
    w.start()
    print("ready", flush=True)
    sys.stdin.read()  # until the parent closes the pipe
    w.stop()


#: Every message sent, so that their stored results can be deleted afterwards.
SENT: list[dramatiq.Message] = []


def timed(send) -> float:
    start = time.perf_counter()
    message = send()
    message.get_result(block=True, timeout=30_000)
    elapsed = (time.perf_counter() - start) * 1000
    SENT.append(message)
    return elapsed


def run(namespace: str, worker_timeout: int) -> tuple[list[float], list[float], list[float]]:
    """Start a worker process with ``worker_timeout`` and time misses, hits and the baseline."""
    proc = subprocess.Popen(
        [sys.executable, __file__, "--worker", namespace, str(worker_timeout)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)},
    )
    make_notes, no_op = declare(namespace)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == b"ready"
        misses = [timed(lambda i=i: make_notes.send(f"doc-{worker_timeout}-{i}.pdf")) for i in range(MISSES)]
        for _ in range(20):  # warm-up
            timed(lambda: make_notes.send(f"doc-{worker_timeout}-0.pdf"))
        hits, plain = [], []
        for _ in range(HITS):  # interleaved with the baseline, so both see the same load
            hits.append(timed(lambda: make_notes.send(f"doc-{worker_timeout}-0.pdf")))
            plain.append(timed(lambda: no_op.send("doc.pdf")))
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        proc.wait(timeout=30)
    return misses, hits, plain


def main() -> None:
    rows = []
    for worker_timeout in (1_000, 5):
        namespace = f"bench-{uuid.uuid4().hex[:8]}"
        broker = make_broker(namespace)
        try:
            misses, hits, plain = run(namespace, worker_timeout)
        finally:
            broker.close()
            client = connect_redis(REDIS_URL)
            # Results' keys are hashes of the message: found through the messages, not by a prefix.
            backend = RedisBackend(client=client, namespace=f"{namespace}-results")
            results = [backend.build_message_key(message) for message in SENT]
            SENT.clear()
            cached = client.scan_iter("turbo:cache:{make_notes:*")
            keys = [*client.scan_iter(f"{namespace}*"), *cached, *results]
            if keys:
                client.delete(*keys)
        hit, miss, base = median(hits), median(misses), median(plain)
        setting = f"worker_timeout={worker_timeout}"
        rows += [
            (setting, "miss (1 s of work)", f"{miss:.1f} ms", f"{max(misses):.1f} ms", "1x", "-"),
            (
                setting,
                "hit (ResultCache)",
                f"{hit:.2f} ms",
                f"{percentile(hits, 0.99):.2f} ms",
                f"{miss / hit:.0f}x faster",
                f"{GUIDE_HIT_MS / hit:.0f}x faster",
            ),
            (setting, "uncached no-op job", f"{base:.2f} ms", f"{percentile(plain, 0.99):.2f} ms", "-", "-"),
        ]
    table(
        f"Cached job on RedisBroker, enqueue to result ({HITS} hits, {MISSES} misses per setting, "
        "real worker process; target for a hit: <= 10 ms)",
        ("worker", "job", "median", "p99", "vs miss", "vs guide's 500 ms hit"),
        rows,
    )


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--worker":
        worker(sys.argv[2], int(sys.argv[3]))
    else:
        main()
