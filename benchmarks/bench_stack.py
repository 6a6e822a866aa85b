"""The whole stack against bare Dramatiq: throughput and Redis round trips per message.

One worker process with 8 threads drains a queue of no-op messages on
``RedisBroker`` (a private ``redis-server``), once per set-up:

* ``bare``: Dramatiq's defaults, nothing of the suite;
* ``install()``: the suite on the broker, an actor with no options;
* ``cache`` (every message a miss), ``rate_limit`` (a limit never reached),
  ``breaker`` (closed): each gate alone;
* ``all three`` on a miss, on an L1 hit and on an L2 hit;
* ``all three + SDK``: the same miss with Telemetry on the OpenTelemetry
  SDK (batch span processor, exporters that drop everything).

Each set-up runs in a fresh process, in interleaved rounds; the best round
counts.  Two networks: loopback, and a delaying TCP proxy that adds 0.5 ms
each way between the worker and Redis (a Redis in the same zone).  Round
trips are counted at the proxy's socket, for the worker's connections only
(the queue is filled beforehand through a direct connection), and shown as
the number per message beyond bare Dramatiq's.

    .venv/bin/python benchmarks/bench_stack.py [--messages 3000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._cache_common import table  # noqa: E402

SETUPS = [
    "bare",
    "install()",
    "cache (miss)",
    "rate_limit",
    "breaker",
    "all three (miss)",
    "all three (L1 hit)",
    "all three (L2 hit)",
    "all three + SDK (miss)",
]
DELAY_MS = 0.5


# -- the worker side (a child process per run) ---------------------------------


def _actor_options(setup: str) -> dict[str, Any]:
    options: dict[str, Any] = {}
    if "cache" in setup or "all three" in setup:
        options["cache"] = True
    if "rate_limit" in setup or "all three" in setup:
        options["rate_limit"] = (1_000_000, 1_000)
    if "breaker" in setup or "all three" in setup:
        options["breaker"] = "dep"
    return options


def _configure_sdk() -> dict[str, Any]:
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import (
        MetricExporter,
        MetricExportResult,
        PeriodicExportingMetricReader,
    )
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

    class DropSpans(SpanExporter):
        def export(self, spans: Any) -> SpanExportResult:
            return SpanExportResult.SUCCESS

    class DropMetrics(MetricExporter):
        def export(self, metrics_data: Any, timeout_millis: float = 10_000, **kwargs: Any) -> MetricExportResult:
            return MetricExportResult.SUCCESS

        def force_flush(self, timeout_millis: float = 10_000) -> bool:
            return True

        def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
            return None

    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(BatchSpanProcessor(DropSpans()))
    reader = PeriodicExportingMetricReader(DropMetrics(), export_interval_millis=60_000)
    return {"tracer_provider": tracer_provider, "meter_provider": MeterProvider(metric_readers=[reader])}


def _build(setup: str, worker_url: str, namespace: str) -> tuple[Any, Any, Any]:
    import dramatiq
    from dramatiq.brokers.redis import RedisBroker
    from dramatiq.middleware import Middleware

    from dramatiq_turbo import MultiLevelCache, ResultCache, Telemetry, connect_redis, install

    broker = RedisBroker(url=worker_url, namespace=namespace)
    cache = None
    if setup != "bare":
        client = connect_redis(worker_url)
        flags: dict[str, Any] = {}
        if "L2 hit" in setup:
            cache = MultiLevelCache(redis=client, l1_maxsize=0, namespace=f"{namespace}:cache")
        else:
            cache = MultiLevelCache(redis=client, namespace=f"{namespace}:cache")
        flags["cache"] = ResultCache(cache=cache)
        if "SDK" in setup:
            flags["telemetry"] = Telemetry(**_configure_sdk())
        install(broker, redis=client, **flags)

    done = threading.Event()

    class Count(Middleware):
        def __init__(self) -> None:
            self.count = 0
            self.target = 0
            self.lock = threading.Lock()

        def after_process_message(self, broker: Any, message: Any, *, result: Any = None, exception: Any = None) -> None:
            with self.lock:
                self.count += 1
                if self.count >= self.target:
                    done.set()

    counter = Count()
    broker.add_middleware(counter)

    @dramatiq.actor(broker=broker, queue_name="stack", max_retries=0, **_actor_options(setup))
    def noop(i: int) -> int:
        return i

    return broker, noop, (counter, done, cache)


def run_child(setup: str, worker_url: str, direct_url: str, messages: int) -> dict[str, Any]:
    """Fill the queue directly, drain it through ``worker_url`` with 8 threads; msg/s and socket trips."""
    import dramatiq
    from dramatiq import Worker
    from dramatiq.brokers.redis import RedisBroker

    from dramatiq_turbo.cache.hashing import args_key

    namespace = f"bench-stack-{uuid.uuid4().hex[:8]}"
    broker, noop, (counter, done, cache) = _build(setup, worker_url, namespace)
    same_args = "L1 hit" in setup
    args = [0 if same_args else i for i in range(messages)]
    if cache is not None and "hit" in setup:
        keys = {args_key(noop.actor_name, (a,), {}, None): a for a in set(args)}
        cache.set_many(keys)
    producer = RedisBroker(url=direct_url, namespace=namespace)
    producer.declare_queue("stack")
    for a in args:
        producer.enqueue(dramatiq.Message(queue_name="stack", actor_name="noop", args=(a,), kwargs={}, options={}))
    counter.target = messages
    trips_before = _read_trips()
    worker = Worker(broker, worker_threads=8)
    started = time.perf_counter()
    worker.start()
    done.wait(300)
    elapsed = time.perf_counter() - started
    trips = _read_trips() - trips_before
    worker.stop()
    _cleanup(direct_url, namespace)
    return {"msgs": messages / elapsed, "trips": trips / messages}


def _read_trips() -> int:
    path = os.environ.get("TURBO_BENCH_TRIPS_FILE")
    if not path:
        return 0
    # The parent's proxy process writes its counter on demand: ask, then read.
    request = Path(path + ".ask")
    request.write_text("1")
    deadline = time.monotonic() + 5
    while request.exists() and time.monotonic() < deadline:
        time.sleep(0.005)
    return int(Path(path).read_text() or 0)


def _cleanup(url: str, namespace: str) -> None:
    import redis

    client = redis.Redis.from_url(url)
    keys = list(client.scan_iter(f"{namespace}*", count=1000)) + list(client.scan_iter("turbo:*", count=1000))
    for start in range(0, len(keys), 500):
        client.delete(*keys[start : start + 500])
    client.close()


# -- the parent: servers, proxy, rounds, table ----------------------------------


class _Proxy:
    """A delaying, counting proxy process, whose counter the children read through a file."""

    def __init__(self, port: int, delay_ms: float, trips_file: Path) -> None:
        from tests.tcp_proxy import ProxyProcess

        self.proxy = ProxyProcess("127.0.0.1", port, delay_ms=delay_ms)
        self.trips_file = trips_file
        self.port = self.proxy.start()
        self._stop = threading.Event()
        threading.Thread(target=self._answer, daemon=True).start()

    def _answer(self) -> None:
        ask = Path(str(self.trips_file) + ".ask")
        while not self._stop.is_set():
            if ask.exists():
                self.trips_file.write_text(str(self.proxy.round_trips))
                ask.unlink()
            time.sleep(0.002)

    def stop(self) -> None:
        self._stop.set()
        self.proxy.stop()


def _run(setup: str, worker_url: str, direct_url: str, messages: int, trips_file: Path | None) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    if trips_file is not None:
        env["TURBO_BENCH_TRIPS_FILE"] = str(trips_file)
    command = [sys.executable, __file__, "--child", setup, worker_url, direct_url, str(messages)]
    out = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"{setup}: {out.stderr[-2000:]}")
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def _measure(name: str, worker_url: str, direct_url: str, args: Any, trips_file: Path | None) -> dict[str, Any]:
    best: dict[str, dict[str, Any]] = {}
    total = len(SETUPS) * args.rounds
    for round_ in range(args.rounds):
        for index, setup in enumerate(SETUPS):
            done = round_ * len(SETUPS) + index
            print(f"\r{name}: {'#' * (30 * done // total):<30} {done}/{total} {setup:<24}", end="", flush=True)
            result = _run(setup, worker_url, direct_url, args.messages, trips_file)
            if setup not in best or result["msgs"] > best[setup]["msgs"]:
                best[setup] = result
    print(f"\r{name}: {'#' * 30} {total}/{total} done{' ' * 24}")
    return best


def _rows(best: dict[str, dict[str, Any]], trips: dict[str, dict[str, Any]]) -> list[list[str]]:
    bare = best["bare"]["msgs"]
    bare_trips = trips["bare"]["trips"]
    rows = []
    for setup in SETUPS:
        ratio = best[setup]["msgs"] / bare
        extra = trips[setup]["trips"] - bare_trips
        rows.append([setup, f"{best[setup]['msgs']:,.0f}", f"{ratio:.2f}", f"{extra:+.2f}"])
    return rows


def _verdicts(loopback: dict[str, Any], delayed: dict[str, Any]) -> list[list[str]]:
    def ratio(results: dict[str, Any], setup: str) -> float:
        return float(results[setup]["msgs"] / results["bare"]["msgs"])

    trips = {s: delayed[s]["trips"] - delayed["bare"]["trips"] for s in SETUPS}
    one_gate = min(ratio(r, s) for r in (loopback, delayed) for s in ("cache (miss)", "rate_limit", "breaker"))
    all_three = min(ratio(r, "all three (miss)") for r in (loopback, delayed))
    return [
        ["round trips beyond bare, all three (miss)", f"{trips['all three (miss)']:.2f}", "<= 2", _ok(trips["all three (miss)"] <= 2)],
        ["round trips beyond bare, L2 hit", f"{trips['all three (L2 hit)']:.2f}", "<= 2", _ok(trips["all three (L2 hit)"] <= 2)],
        ["round trips beyond bare, L1 hit", f"{trips['all three (L1 hit)']:.2f}", "0", _ok(trips["all three (L1 hit)"] <= 0.05)],
        ["all three (miss) vs bare, worst network", f"{all_three:.2f}", ">= 0.70", _ok(all_three >= 0.70)],
        ["any one gate vs bare, worst gate and network", f"{one_gate:.2f}", ">= 0.90", _ok(one_gate >= 0.90)],
    ]


def _ok(met: bool) -> str:
    return "met" if met else "**not met**"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    from tests.harness import RedisServer

    server = RedisServer()
    server.start()
    trips_file = Path(f"/tmp/bench-stack-trips-{os.getpid()}")
    try:
        direct = f"redis://127.0.0.1:{server.port}/1"
        loopback = _measure("loopback", direct, direct, args, None)
        proxy = _Proxy(server.port, DELAY_MS, trips_file)
        try:
            delayed_url = f"redis://127.0.0.1:{proxy.port}/1"
            delayed = _measure(f"+{DELAY_MS} ms each way", delayed_url, direct, args, trips_file)
        finally:
            proxy.stop()
    finally:
        server.stop()
        for path in (trips_file, Path(str(trips_file) + ".ask")):
            path.unlink(missing_ok=True)

    header = ["set-up", "msg/s", "vs bare", "round trips / msg beyond bare"]
    print(f"\nRedisBroker, 1 worker x 8 threads, no-op actor, {args.messages} messages, best of {args.rounds}")
    table("Loopback (round trips counted at the proxy's socket)", header, _rows(loopback, delayed))
    table(f"With {DELAY_MS} ms added each way (a delaying TCP proxy)", header, _rows(delayed, delayed))
    table("Targets", ["target", "measured", "goal", "verdict"], _verdicts(loopback, delayed))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        setup, worker_url, direct_url, messages = sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5])
        print(json.dumps(run_child(setup, worker_url, direct_url, messages)))
    else:
        main()
