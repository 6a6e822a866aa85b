"""What queue statistics cost: round trips and time for 50 queues, and the recorder's cost per job.

    .venv/bin/python benchmarks/bench_monitor.py

Three measurements, each against a baseline measured in the same run:

1. Statistics of 50 queues on Redis (``RedisBroker`` keys and the
   recorder's per-minute counters over 5 minutes): ``QueueMonitor.get_stats``
   against the same reads made one command at a time (the naive monitor)
   and one redis-py pipeline per queue.  Through a TCP proxy that counts
   round trips at the socket, once as is (loopback) and once with 0.5 ms
   added each way (a LAN).
2. The same for RabbitMQ: passive declares of ``<queue>``, ``.DQ`` and
   ``.XQ``, one by one on a ``BlockingChannel`` against all at once
   (``rabbitmq.passive_counts``).
3. The recorder on the worker: its hooks' CPU time per job, and end to end
   (a ``StubBroker`` worker running no-op jobs) without it, with it (counts
   written by the flush thread once a second) and with a naive recorder that
   writes one pipeline per job.

``TURBO_BENCH_REDIS_URL`` (default ``redis://127.0.0.1:6379/13``) and
``TURBO_BENCH_RABBITMQ_URL`` pick the services; every key and queue made
here has a unique name and is removed at the end.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import threading
import time
import urllib.parse
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import dramatiq  # noqa: E402
import redis  # noqa: E402
from dramatiq.brokers.redis import RedisBroker  # noqa: E402
from dramatiq.brokers.stub import StubBroker  # noqa: E402
from dramatiq.middleware import Middleware  # noqa: E402

from dramatiq_turbo.monitor import QueueMonitor, QueueStatsRecorder  # noqa: E402
from dramatiq_turbo.monitor.counters import MINUTE, Batch, RedisCounterStore  # noqa: E402
from dramatiq_turbo.redis import connect_redis  # noqa: E402
from tests.tcp_proxy import ProxyProcess  # noqa: E402

REDIS_URL = os.environ.get("TURBO_BENCH_REDIS_URL", "redis://127.0.0.1:6379/13")
RABBITMQ_URL = os.environ.get("TURBO_BENCH_RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672")
QUEUES = 50
ROUNDS = 7
WINDOW = 300_000


def median_time(
    fn: Callable[[], Any], rounds: int = ROUNDS, clock: Callable[[], float] = time.perf_counter
) -> float:
    times = []
    for _ in range(rounds):
        started = clock()
        fn()
        times.append(clock() - started)
    return statistics.median(times)


def print_table(title: str, header: tuple[str, ...], rows: list[tuple[Any, ...]]) -> None:
    print(f"\n{title}")
    widths = [max(len(str(h)), *(len(str(r[i])) for r in rows)) for i, h in enumerate(header)]
    line = "  ".join(
        str(h).ljust(w) if i == 0 else str(h).rjust(w)
        for i, (h, w) in enumerate(zip(header, widths, strict=True))
    )
    print(line)
    print("-" * len(line))
    for row in rows:
        print(
            "  ".join(
                str(c).ljust(w) if i == 0 else str(c).rjust(w)
                for i, (c, w) in enumerate(zip(row, widths, strict=True))
            )
        )


# -- 1. Redis ------------------------------------------------------------------


def seed_redis(namespace: str, monitor_ns: str, queues: list[str]) -> None:
    client = connect_redis(REDIS_URL)
    broker = RedisBroker(url=REDIS_URL, namespace=namespace)
    failure = {"reason": "retries exhausted", "error": "RuntimeError", "detail": "down", "retries": 3}
    for index, queue in enumerate(queues):
        broker.declare_queue(queue)
        for number in range(20):
            broker.enqueue(
                dramatiq.Message(queue_name=queue, actor_name="job", args=(number,), kwargs={}, options={})
            )
        if index % 5 == 0:
            for _ in range(2):
                message = dramatiq.Message(
                    queue_name=queue, actor_name="job", args=(), kwargs={}, options={"turbo_failure": failure}
                )
                client.zadd(f"{namespace}:{queue}.XQ", {message.message_id: int(time.time() * 1000)})
                client.hset(f"{namespace}:{queue}.XQ.msgs", message.message_id, message.encode())
    store = RedisCounterStore(client, namespace=monitor_ns)
    now = store.now()
    for back in range(5):
        minute = now // MINUTE - back
        counts = {
            (q, minute): {"completed": 50, "failed": 1, "proc_ms": 5_000, "p:27": 51, "w:30": 51}
            for q in queues
        }
        store.write(Batch(counts=counts, first={key: minute * MINUTE for key in counts}))
    for worker in range(4):
        beat = {"id": f"w{worker}", "host": "h", "queues": queues, "threads": 8, "interval": 1_000}
        store.write(Batch(), worker=f"w{worker}", beat=beat)
    broker.close()
    client.close()


def naive_redis(client: redis.Redis, namespace: str, monitor_ns: str, queues: list[str]) -> None:
    """The same reads a monitor needs, one command (one round trip) each."""
    seconds, _ = client.time()
    minute = int(seconds) * 1000 // MINUTE
    client.hgetall(f"{monitor_ns}:{{workers}}")
    client.zrange(f"{monitor_ns}:{{workers}}:seen", 0, -1, withscores=True)
    for queue in queues:
        key = f"{namespace}:{queue}"
        client.llen(key)
        head = client.lindex(key, 0)
        if head is not None:
            client.hget(f"{key}.msgs", head)
        client.hlen(f"{key}.msgs")
        client.hlen(f"{key}.DQ.msgs")
        client.zcard(f"{key}.XQ")
        client.zcount(f"{key}.XQ", int(seconds) * 1000 - WINDOW, "+inf")
        ids = client.zrevrange(f"{key}.XQ", 0, 2)
        if ids:
            client.hmget(f"{key}.XQ.msgs", ids)
        for back in range(5):
            client.hgetall(f"{monitor_ns}:{{{queue}}}:m:{minute - back}")


def pipelined_per_queue(client: redis.Redis, namespace: str, monitor_ns: str, queues: list[str]) -> None:
    """One redis-py pipeline per queue (the head's payload needs its id first: a second one)."""
    seconds, _ = client.time()
    minute = int(seconds) * 1000 // MINUTE
    client.hgetall(f"{monitor_ns}:{{workers}}")
    for queue in queues:
        key = f"{namespace}:{queue}"
        pipe = client.pipeline(transaction=False)
        pipe.llen(key).lindex(key, 0).hlen(f"{key}.msgs").hlen(f"{key}.DQ.msgs").zcard(f"{key}.XQ")
        pipe.zcount(f"{key}.XQ", int(seconds) * 1000 - WINDOW, "+inf").zrevrange(f"{key}.XQ", 0, 2)
        for back in range(5):
            pipe.hgetall(f"{monitor_ns}:{{{queue}}}:m:{minute - back}")
        replies = pipe.execute()
        if replies[1] is not None or replies[6]:
            second = client.pipeline(transaction=False)
            if replies[1] is not None:
                second.hget(f"{key}.msgs", replies[1])
            if replies[6]:
                second.hmget(f"{key}.XQ.msgs", replies[6])
            second.execute()


def redis_part(delay_ms: float) -> list[tuple[Any, ...]]:
    parts = urllib.parse.urlsplit(REDIS_URL)
    proxy = ProxyProcess(parts.hostname or "127.0.0.1", parts.port or 6379, delay_ms=delay_ms)
    port = proxy.start()
    url = f"redis://127.0.0.1:{port}{parts.path}"
    namespace, monitor_ns = f"bench-{uuid.uuid4().hex[:8]}", f"turbo:monitor-bench-{uuid.uuid4().hex[:8]}"
    queues = [f"q{i:02d}" for i in range(QUEUES)]
    seed_redis(namespace, monitor_ns, queues)
    broker = RedisBroker(url=url, namespace=namespace)
    monitor = QueueMonitor(broker, namespace=monitor_ns)
    client = redis.Redis.from_url(url)
    methods: list[tuple[str, Callable[[], Any]]] = [
        ("one command at a time", lambda: naive_redis(client, namespace, monitor_ns, queues)),
        ("a pipeline per queue", lambda: pipelined_per_queue(client, namespace, monitor_ns, queues)),
        ("QueueMonitor.get_stats", lambda: monitor.get_stats(queues)),
    ]
    rows = []
    try:
        stats = monitor.get_stats(queues)  # connects, loads the scripts
        assert stats[0].waiting == 20 and stats[0].completed == 250 and stats[0].dead == 2, stats[0]
        for name, fn in methods:
            fn()
            before = proxy.round_trips
            fn()
            trips = proxy.round_trips - before
            rows.append((name, trips, median_time(fn)))
    finally:
        proxy.stop()
        cleanup = connect_redis(REDIS_URL)
        for pattern in (f"{namespace}:*", f"{monitor_ns}:*"):
            keys = list(cleanup.scan_iter(match=pattern, count=1_000))
            if keys:
                cleanup.delete(*keys)
        cleanup.close()
    base_trips, base_time = rows[0][1], rows[0][2]
    return [
        (name, trips, f"{seconds * 1000:.1f}", f"{base_trips / trips:.0f}x", f"{base_time / seconds:.1f}x")
        for name, trips, seconds in rows
    ]


# -- 2. RabbitMQ ---------------------------------------------------------------


def rabbitmq_part(delay_ms: float) -> list[tuple[Any, ...]] | None:
    import pika
    from dramatiq.brokers.rabbitmq import RabbitmqBroker

    from dramatiq_turbo.monitor.rabbitmq import passive_counts

    parts = urllib.parse.urlsplit(RABBITMQ_URL)
    try:
        setup = RabbitmqBroker(url=RABBITMQ_URL)
        queues = [f"bench-{uuid.uuid4().hex[:8]}" for _ in range(QUEUES)]
        for queue in queues:
            setup.declare_queue(queue, ensure=True)
    except Exception as error:
        print(f"\nRabbitMQ at {parts.hostname}:{parts.port} unavailable: {type(error).__name__}")
        return None
    proxy = ProxyProcess(parts.hostname or "127.0.0.1", parts.port or 5672, delay_ms=delay_ms)
    port = proxy.start()
    proxied = f"{parts.scheme}://{parts.username}:{parts.password}@127.0.0.1:{port}{parts.path}"
    names = [name for q in queues for name in (q, f"{q}.DQ", f"{q}.XQ")]
    connection = pika.BlockingConnection(pika.URLParameters(proxied))
    channel = connection.channel()

    def one_by_one() -> None:
        for name in names:
            channel.queue_declare(name, passive=True)

    def connect_then_one_by_one() -> None:
        fresh = pika.BlockingConnection(pika.URLParameters(proxied))
        ch = fresh.channel()
        for name in names:
            ch.queue_declare(name, passive=True)
        fresh.close()

    methods: list[tuple[str, Callable[[], Any]]] = [
        ("one by one, connection open", one_by_one),
        ("connect, then one by one", connect_then_one_by_one),
        ("passive_counts (connects)", lambda: passive_counts(pika.URLParameters(proxied), names)),
    ]
    rows = []
    try:
        for name, fn in methods:
            fn()
            before = proxy.round_trips
            fn()
            trips = proxy.round_trips - before
            rows.append((name, trips, median_time(fn, 5)))
    finally:
        connection.close()
        proxy.stop()
        for queue in queues:
            for name in (queue, f"{queue}.DQ", f"{queue}.XQ"):
                setup.channel.queue_delete(name)
        setup.close()
    base_trips, base_time = rows[0][1], rows[0][2]
    return [
        (name, trips, f"{seconds * 1000:.1f}", f"{base_trips / trips:.1f}x", f"{base_time / seconds:.1f}x")
        for name, trips, seconds in rows
    ]


# -- 3. The recorder on the worker ------------------------------------------------


class NaiveRecorder(Middleware):
    """The obvious design: one pipelined write per job, on the worker thread."""

    def __init__(self, client: redis.Redis, namespace: str) -> None:
        self.client = client
        self.namespace = namespace
        self.local = threading.local()

    def before_process_message(self, broker: Any, message: Any) -> None:
        self.local.start = time.perf_counter()

    def after_process_message(
        self, broker: Any, message: Any, *, result: Any = None, exception: Any = None
    ) -> None:
        ms = int((time.perf_counter() - self.local.start) * 1000)
        key = f"{self.namespace}:{{{message.queue_name}}}:m:{int(time.time() * 1000) // MINUTE}"
        pipe = self.client.pipeline(transaction=False)
        pipe.hincrby(key, "completed" if exception is None else "failed", 1).hincrby(key, "proc_ms", ms)
        pipe.hincrby(key, "p:0", 1).pexpire(key, 3_600_000)
        pipe.execute()


def hook_cost() -> list[tuple[Any, ...]]:
    """CPU time of the recorder's hooks for one job (enqueue on the producer, process on the worker).

    In rounds of 1,000 jobs, each followed by a flush (as the flush thread
    does once a second), so that records do not pile up beyond what a
    second of work leaves; the median round of 30.
    """
    broker = StubBroker()
    recorder = QueueStatsRecorder(flush_interval=3_600_000)
    broker.add_middleware(recorder)
    broker.declare_queue("q")
    message = dramatiq.Message(queue_name="q", actor_name="a", args=(), kwargs={}, options={})
    proxy = dramatiq.MessageProxy(message)
    jobs = 1_000

    def baseline() -> None:
        for _ in range(jobs):
            message.options.pop("x", None)

    def enqueue_hooks() -> None:
        for _ in range(jobs):
            recorder.before_enqueue(broker, message, None)
            recorder.after_enqueue(broker, message, None)

    def process_hooks() -> None:
        for _ in range(jobs):
            recorder.before_process_message(broker, proxy)
            recorder.after_process_message(broker, proxy, result=None)

    def rounds(fn: Callable[[], None]) -> tuple[float, float]:
        hooks, flushes = [], []
        for _ in range(30):
            started = time.process_time()
            fn()
            hooks.append(time.process_time() - started)
            started = time.process_time()
            recorder.flush(broker)
            flushes.append(time.process_time() - started)
        return statistics.median(hooks) / jobs, statistics.median(flushes) / jobs

    floor, _ = rounds(baseline)
    enqueue, enqueue_flush = rounds(enqueue_hooks)
    process, process_flush = rounds(process_hooks)
    return [
        ("empty loop", f"{floor * 1e6:.2f}"),
        ("producer: before/after_enqueue", f"{enqueue * 1e6:.2f}"),
        ("worker: before/after_process_message", f"{process * 1e6:.2f}"),
        ("flush thread: summing one job's records", f"{(enqueue_flush + process_flush) * 1e6:.2f}"),
    ]


def end_to_end() -> list[tuple[Any, ...]]:
    client = connect_redis(REDIS_URL)
    namespace = f"turbo:monitor-bench-{uuid.uuid4().hex[:8]}"
    jobs = 5_000
    kinds = ("no recorder", "QueueStatsRecorder (flush 1 s)", "naive: a pipeline per job")
    times: dict[str, list[float]] = {kind: [] for kind in kinds}
    writes: dict[str, int] = {}
    try:
        # Interleaved rounds: a busy moment of the shared machine hits every kind alike.
        for _ in range(5):
            for kind in kinds:
                seconds, writes[kind] = run_jobs(kind, client, namespace, jobs)
                times[kind].append(seconds)
        rows = [(kind, min(times[kind]), writes[kind]) for kind in kinds]
    finally:
        keys = list(client.scan_iter(match=f"{namespace}:*"))
        if keys:
            client.delete(*keys)
        client.close()
    base = rows[0][1]
    return [
        (
            name,
            f"{seconds / jobs * 1e6:.0f}",
            f"{(seconds - base) / jobs * 1e6:+.0f}",
            f"{writes / jobs:.4f}",
            f"{seconds / base:.2f}x",
        )
        for name, seconds, writes in rows
    ]


def run_jobs(kind: str, client: redis.Redis, namespace: str, jobs: int) -> tuple[float, int]:
    broker = StubBroker()
    writes = [0]
    if kind.startswith("QueueStatsRecorder"):
        recorder = QueueStatsRecorder(redis=client, namespace=namespace, flush_interval=1_000)
        broker.add_middleware(recorder, before=type(broker.middleware[0]))
        store = recorder._store_for(broker)
        original = store.write

        def counted(*args: Any, **kwargs: Any) -> int:
            writes[0] += 1
            return original(*args, **kwargs)

        store.write = counted  # type: ignore[method-assign]
    elif kind.startswith("naive"):
        broker.add_middleware(NaiveRecorder(client, namespace))
    queue = f"q{uuid.uuid4().hex[:6]}"

    @dramatiq.actor(queue_name=queue, broker=broker)
    def job() -> None:
        pass

    for _ in range(jobs):
        job.send()
    worker = dramatiq.Worker(broker, worker_threads=4, worker_timeout=50)
    started = time.perf_counter()
    worker.start()
    broker.join(queue)
    elapsed = time.perf_counter() - started
    worker.stop()
    return elapsed, writes[0] if not kind.startswith("naive") else jobs


def main() -> None:
    header = ("method", "round trips", "ms", "fewer trips", "speed-up")
    for delay in (0.0, 0.5):
        where = "loopback" if not delay else f"{delay} ms added each way"
        print_table(
            f"Statistics of {QUEUES} queues on RedisBroker, 5 minutes of counters ({where})",
            header,
            redis_part(delay),
        )
    for delay in (0.0, 0.5):
        where = "loopback" if not delay else f"{delay} ms added each way"
        rows = rabbitmq_part(delay)
        if rows:
            print_table(
                f"Counts of {QUEUES} queues on RabbitMQ, 150 passive declares ({where})", header, rows
            )
    print_table("The recorder's hooks, CPU time per job", ("what", "us/job"), hook_cost())
    print_table(
        "End to end: 5,000 no-op jobs, StubBroker worker, 4 threads (best of 5, interleaved)",
        ("recorder", "us/job", "overhead", "writes/job", "time"),
        end_to_end(),
    )
    print(json.dumps({"queues": QUEUES}))


if __name__ == "__main__":
    main()
