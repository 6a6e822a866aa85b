"""A small pipeline on an embedded broker: no server needed.

Three actors chained with ``dramatiq.pipeline`` (split a text into
paragraphs, count each paragraph's words, summarize the counts), run by an
in-process worker on Dramatiq's ``StubBroker`` with the whole dramatiq_turbo
stack installed.  The pipeline runs twice: the second time the slow step's
result comes from the cache.  Point ``--broker`` at Redis to run the same
pipeline there:

    python examples/quickstart.py
    python examples/quickstart.py --broker redis://127.0.0.1:6379/1
"""

from __future__ import annotations

import argparse
import collections
import time
from typing import Any

import dramatiq
from dramatiq import Worker
from dramatiq.brokers.stub import StubBroker
from dramatiq.results import Results
from dramatiq.results.backends import RedisBackend, StubBackend

from dramatiq_turbo import install

TEXT = """\
Dramatiq runs background jobs in worker processes and threads.

dramatiq_turbo adds a result cache, a circuit breaker, global rate limits,
exponential backoff and OpenTelemetry tracing as middleware.

Each of them keeps its shared state in Redis, so every worker agrees.
"""


def build(broker_url: str | None) -> tuple[dramatiq.Broker, Any]:
    """The broker with the suite installed, and a results backend."""
    if broker_url:
        from dramatiq.brokers.redis import RedisBroker

        broker: dramatiq.Broker = RedisBroker(url=broker_url, namespace="turbo-quickstart")
        backend: Any = RedisBackend(url=broker_url, namespace="turbo-quickstart-results")
    else:
        broker, backend = StubBroker(), StubBackend()
    broker.add_middleware(Results(backend=backend))
    install(broker)
    dramatiq.set_broker(broker)
    return broker, backend


#: How often each actor's body was computed in this process (the cached one: once).
BODY_COUNTS: collections.Counter[str] = collections.Counter()


def declare_actors(broker: dramatiq.Broker) -> tuple[dramatiq.Actor[Any, Any], ...]:
    @dramatiq.actor(broker=broker, store_results=True)
    def split(text: str) -> list[str]:
        return [part.strip() for part in text.split("\n\n") if part.strip()]

    # Cached: the same paragraphs are never counted twice (L1 here; L1 + Redis with --broker).
    @dramatiq.actor(broker=broker, store_results=True, cache=True, cache_ttl=60_000)
    def count_words(paragraphs: list[str]) -> list[int]:
        BODY_COUNTS["count_words"] += 1
        time.sleep(0.2)  # stands in for slow work: a parser, a model, an API call
        return [len(paragraph.split()) for paragraph in paragraphs]

    @dramatiq.actor(broker=broker, store_results=True)
    def summarize(counts: list[int]) -> dict[str, int]:
        return {"paragraphs": len(counts), "words": sum(counts), "longest": max(counts, default=0)}

    return split, count_words, summarize


def main(argv: list[str] | None = None) -> dict[str, int]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--broker", help="a Redis URL; the embedded StubBroker when omitted")
    args = parser.parse_args(argv)

    broker, _backend = build(args.broker)
    split, count_words, summarize = declare_actors(broker)
    middleware = ", ".join(type(m).__name__ for m in broker.middleware)
    print(f"broker: {type(broker).__name__}\nmiddleware: {middleware}")

    worker = Worker(broker, worker_threads=2, worker_timeout=100)
    worker.start()
    try:
        for run in ("first run", "second run (count_words served from the cache)"):
            started = time.perf_counter()
            pipe = dramatiq.pipeline(
                [split.message(TEXT), count_words.message(), summarize.message()], broker=broker
            )
            pipe.run()
            summary: dict[str, int] = pipe.get_result(block=True, timeout=10_000)
            print(f"{run}: {summary}  ({(time.perf_counter() - started) * 1000:.1f} ms)")
        print(f"count_words' body computed {BODY_COUNTS['count_words']} time(s) for 2 pipelines")
    finally:
        worker.stop()
        broker.close()
    return summary


if __name__ == "__main__":
    main()
