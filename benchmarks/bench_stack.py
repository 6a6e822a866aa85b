"""The whole stack against bare Dramatiq: throughput and Redis round trips per message.

One worker process with 8 threads drains a queue of no-op messages on
``RedisBroker`` (a private ``redis-server``), once per set-up:

* ``bare``: Dramatiq's defaults, nothing of the suite;
* ``install()``: the suite on the broker, an actor with no options;
* ``cache`` (every message a miss), ``rate_limit`` (a limit never reached),
  ``breaker`` (closed): each gate alone;
* ``all three`` on a miss, on an L1 hit and on an L2 hit;
* ``all three + SDK``: the same miss with Telemetry on the OpenTelemetry
  SDK (batch span processor, exporters that drop everything);
* ``bare + 1 round trip`` and ``+ 2``: bare Dramatiq with a middleware that
  makes one (two) Redis round trips per message and nothing else (an
  ``EVALSHA`` of ``return 1``, sent as the suite sends its trips): the floor
  of a design that needs that many trips, on this machine, in this run.

Each set-up runs in a fresh process, in interleaved rounds; the best round
counts.  Two networks: loopback, and a delaying TCP proxy that adds 0.5 ms
each way between the worker and Redis (a Redis in the same zone).  Round
trips are counted at the proxies' sockets, for the worker's connections only
(the queue is filled beforehand through a direct connection): the suite's
client and the broker's go through two proxies, so the suite's round trips
per message (all of them beyond bare Dramatiq's) are counted exactly, and
the broker's are shown beside them.  The first messages of each run warm
up and are not measured.

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
    "bare + 1 round trip",
    "bare + 2 round trips",
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
#: Messages of each run processed before measuring.
WARM_UP = 200


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
        def export(
            self, metrics_data: Any, timeout_millis: float = 10_000, **kwargs: Any
        ) -> MetricExportResult:
            return MetricExportResult.SUCCESS

        def force_flush(self, timeout_millis: float = 10_000) -> bool:
            return True

        def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
            return None

    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(BatchSpanProcessor(DropSpans()))
    reader = PeriodicExportingMetricReader(DropMetrics(), export_interval_millis=60_000)
    return {"tracer_provider": tracer_provider, "meter_provider": MeterProvider(metric_readers=[reader])}


def _round_trips_middleware() -> type:
    from dramatiq.middleware import Middleware

    from dramatiq_turbo import connect_redis
    from dramatiq_turbo.core.delivery import Call, send_calls

    class RoundTrips(Middleware):
        """Makes ``count`` Redis round trips per message, and nothing else: the floor of a trip."""

        def __init__(self, url: str, count: int) -> None:
            self.client = connect_redis(url)
            self.count = count
            self.script = self.client.register_script("return 1")

        def before_process_message(self, broker: Any, message: Any) -> None:
            for _ in range(self.count):
                send_calls([Call(self.client, self.script, [], [])])

    return RoundTrips


def _round_trips(url: str, count: int) -> Any:
    return _round_trips_middleware()(url, count)


def _build(setup: str, worker_url: str, gates_url: str, namespace: str) -> tuple[Any, Any, Any]:
    import dramatiq
    from dramatiq.brokers.redis import RedisBroker
    from dramatiq.middleware import Middleware

    from dramatiq_turbo import MultiLevelCache, ResultCache, Telemetry, connect_redis, install

    broker = RedisBroker(url=worker_url, namespace=namespace)
    cache = None
    if setup.startswith("bare +"):
        broker.add_middleware(_round_trips(gates_url, int(setup.split()[2])))
    elif setup != "bare":
        client = connect_redis(gates_url)
        flags: dict[str, Any] = {}
        l1_size = 0 if "L2 hit" in setup else 100
        cache = MultiLevelCache(redis=client, l1_maxsize=l1_size, namespace=f"{namespace}:cache")
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

        def after_process_message(
            self, broker: Any, message: Any, *, result: Any = None, exception: Any = None
        ) -> None:
            with self.lock:
                self.count += 1
                if self.count >= self.target:
                    done.set()

    counter = Count()
    broker.add_middleware(counter)

    @dramatiq.actor(broker=broker, queue_name="stack", max_retries=0, **_actor_options(setup))
    def noop(i: int) -> None:
        # Returns None: Dramatiq logs a warning for any other value without Results.
        return None

    return broker, noop, (counter, done, cache)


def run_child(setup: str, urls: list[str], messages: int) -> dict[str, Any]:
    """Fill the queue directly, drain it with 8 threads; msg/s and the trips counted at each proxy.

    ``urls``: the broker's, the suite's and a direct one (to fill the queue):
    the same server, through two counting proxies or not.
    """
    import dramatiq
    from dramatiq import Worker
    from dramatiq.brokers.redis import RedisBroker

    from dramatiq_turbo.cache.hashing import args_key

    worker_url, gates_url, direct_url = urls
    namespace = f"bench-stack-{uuid.uuid4().hex[:8]}"
    broker, noop, (counter, done, cache) = _build(setup, worker_url, gates_url, namespace)
    args = [0 if "L1 hit" in setup else i for i in range(messages)]
    if cache is not None and "hit" in setup:
        cache.set_many({args_key(noop.actor_name, (a,), {}, None): None for a in set(args)})
    producer = RedisBroker(url=direct_url, namespace=namespace)
    producer.declare_queue("stack")
    for a in args:
        producer.enqueue(
            dramatiq.Message(queue_name="stack", actor_name="noop", args=(a,), kwargs={}, options={})
        )
    worker = Worker(broker, worker_threads=8)
    # The first messages warm up (connections, scripts, threads); the rest are measured.
    counter.target = WARM_UP
    worker.start()
    done.wait(300)
    done.clear()
    counter.target = messages
    before = _read_trips()
    started, cpu = time.perf_counter(), time.process_time()
    done.wait(300)
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
    after = _read_trips()
    worker.stop()
    _cleanup(direct_url, namespace)
    measured = messages - WARM_UP
    return {
        "msgs": measured / elapsed,
        "cpu_us": cpu / measured * 1e6,
        "broker_trips": (after[0] - before[0]) / measured,
        "trips": (after[1] - before[1]) / measured,
    }


def _read_trips() -> tuple[int, int]:
    """The round trips counted so far by the broker's proxy and the suite's."""
    path = os.environ.get("TURBO_BENCH_TRIPS_FILE")
    if not path:
        return 0, 0
    # The parent writes the proxies' counts on demand: ask, then read.
    request = Path(path + ".ask")
    request.write_text("1")
    deadline = time.monotonic() + 5
    while request.exists() and time.monotonic() < deadline:
        time.sleep(0.005)
    broker, gates = Path(path).read_text().split()
    return int(broker), int(gates)


def _cleanup(url: str, namespace: str) -> None:
    import redis

    client = redis.Redis.from_url(url)
    keys = list(client.scan_iter(f"{namespace}*", count=1000)) + list(client.scan_iter("turbo:*", count=1000))
    for start in range(0, len(keys), 500):
        client.delete(*keys[start : start + 500])
    client.close()


# -- the parent: servers, proxies, rounds, tables -------------------------------


class _Proxies:
    """Two counting proxy processes, the broker's and the suite's; children read their counts from a file."""

    def __init__(self, port: int, delay_ms: float, trips_file: Path) -> None:
        from tests.tcp_proxy import ProxyProcess

        self.broker = ProxyProcess("127.0.0.1", port, delay_ms=delay_ms)
        self.gates = ProxyProcess("127.0.0.1", port, delay_ms=delay_ms)
        self.trips_file = trips_file
        self.ports = (self.broker.start(), self.gates.start())
        self._stop = threading.Event()
        threading.Thread(target=self._answer, daemon=True).start()

    def _answer(self) -> None:
        ask = Path(str(self.trips_file) + ".ask")
        while not self._stop.is_set():
            if ask.exists():
                self.trips_file.write_text(f"{self.broker.round_trips} {self.gates.round_trips}")
                ask.unlink()
            time.sleep(0.002)

    def stop(self) -> None:
        self._stop.set()
        self.broker.stop()
        self.gates.stop()


def _run(setup: str, urls: list[str], messages: int, trips_file: Path | None) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    if trips_file is not None:
        env["TURBO_BENCH_TRIPS_FILE"] = str(trips_file)
    command = [sys.executable, __file__, "--child", setup, *urls, str(messages)]
    out = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"{setup}: {out.stderr[-2000:]}")
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def _measure(name: str, urls: list[str], args: Any, trips_file: Path | None) -> dict[str, Any]:
    best: dict[str, dict[str, Any]] = {}
    total = len(SETUPS) * args.rounds
    for round_ in range(args.rounds):
        for index, setup in enumerate(SETUPS):
            done = round_ * len(SETUPS) + index
            print(
                f"\r{name}: {'#' * (30 * done // total):<30} {done}/{total} {setup:<24}", end="", flush=True
            )
            result = _run(setup, urls, args.messages, trips_file)
            if setup not in best or result["msgs"] > best[setup]["msgs"]:
                best[setup] = result
    print(f"\r{name}: {'#' * 30} {total}/{total} done{' ' * 24}")
    return best


def _rows(best: dict[str, dict[str, Any]], trips: dict[str, dict[str, Any]]) -> list[list[str]]:
    bare = best["bare"]["msgs"]
    return [
        [
            setup,
            f"{best[setup]['msgs']:,.0f}",
            f"{best[setup]['msgs'] / bare:.2f}",
            f"{best[setup]['cpu_us']:,.0f}",
            f"{trips[setup]['trips']:.2f}",
            f"{trips[setup]['broker_trips']:.2f}",
        ]
        for setup in SETUPS
    ]


def _verdicts(loopback: dict[str, Any], delayed: dict[str, Any]) -> list[list[str]]:
    def ratio(results: dict[str, Any], setup: str) -> float:
        return float(results[setup]["msgs"] / results["bare"]["msgs"])

    def row(target: str, value: float, goal: str, met: bool) -> list[str]:
        return [target, f"{value:.2f}", goal, "met" if met else "**not met**"]

    trips = {s: delayed[s]["trips"] for s in SETUPS}
    gates = ("cache (miss)", "rate_limit", "breaker")
    one_gate = min(ratio(r, s) for r in (loopback, delayed) for s in gates)
    all_three = min(ratio(r, "all three (miss)") for r in (loopback, delayed))

    def floor(count: int) -> float:
        name = f"bare + {count} round trip" + ("s" if count > 1 else "")
        return min(ratio(r, name) for r in (loopback, delayed))

    return [
        row(
            "suite's round trips / msg, all three (miss)",
            trips["all three (miss)"],
            "<= 2",
            trips["all three (miss)"] <= 2,
        ),
        row(
            "suite's round trips / msg, L2 hit",
            trips["all three (L2 hit)"],
            "<= 2",
            trips["all three (L2 hit)"] <= 2,
        ),
        row(
            "suite's round trips / msg, L1 hit",
            trips["all three (L1 hit)"],
            "0",
            trips["all three (L1 hit)"] < 0.01,
        ),
        row("all three (miss) vs bare, worse network", all_three, ">= 0.70", all_three >= 0.70),
        row("one gate vs bare, worst gate and network", one_gate, ">= 0.90", one_gate >= 0.90),
        row("floor: bare + 1 round trip vs bare, worse network", floor(1), "-", True),
        row("floor: bare + 2 round trips vs bare, worse network", floor(2), "-", True),
    ]


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
        loopback = _measure("loopback", [direct, direct, direct], args, None)
        proxies = _Proxies(server.port, DELAY_MS, trips_file)
        try:
            broker_url, gates_url = (f"redis://127.0.0.1:{port}/1" for port in proxies.ports)
            delayed = _measure(f"+{DELAY_MS} ms each way", [broker_url, gates_url, direct], args, trips_file)
        finally:
            proxies.stop()
    finally:
        server.stop()
        for path in (trips_file, Path(str(trips_file) + ".ask")):
            path.unlink(missing_ok=True)

    header = [
        "set-up",
        "msg/s",
        "vs bare",
        "worker CPU µs / msg",
        "suite's round trips / msg",
        "broker's round trips / msg",
    ]
    print(
        f"\nRedisBroker, 1 worker x 8 threads, no-op actor, {args.messages} messages, best of {args.rounds}"
    )
    table("Loopback (round trips counted at the proxies' sockets)", header, _rows(loopback, delayed))
    table(f"With {DELAY_MS} ms added each way (a delaying TCP proxy)", header, _rows(delayed, delayed))
    table("Targets", ["target", "measured", "goal", "verdict"], _verdicts(loopback, delayed))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        print(json.dumps(run_child(sys.argv[2], sys.argv[3:6], int(sys.argv[6]))))
    else:
        main()
