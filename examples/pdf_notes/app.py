"""Brokers and actors of the PDF-notes pipeline, for the worker modules, the CLI and the demo.

``create_app`` stacks the whole suite (``install()``) onto a broker and
declares ``generate_notes``; ``create_naive_app`` declares its naive twin,
``generate_notes_naive``, on a plain Dramatiq broker (Dramatiq's own
middleware, ``Retries`` included), as a deployment without the suite has.
Both take the same broker URLs: none for Dramatiq's in-process
``StubBroker``, ``redis://`` or ``amqp://`` for real servers.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import dramatiq
from dramatiq.middleware import CurrentMessage, Middleware
from dramatiq.results import Results
from dramatiq.results.backends import RedisBackend, StubBackend

from dramatiq_turbo import CircuitBreaker, MultiLevelCache, RateLimiter, connect_redis, install
from dramatiq_turbo.perprocess import PerProcess

from .extract import PdfError
from .model import ChatModel
from .pipeline import LLM, NotesPipeline, Settings, SourceError, llm_gate, naive_notes
from .storage import open_store

__all__ = ["QUEUE", "App", "app_from_env", "create_app", "create_naive_app", "make_broker", "size_pools"]

#: The queue both actors use by default.
QUEUE = "pdf-notes"
#: Results live this long (ms): long enough for a load test to collect them.
RESULT_TTL = 3_600_000


@dataclass
class App:
    """One configured pipeline: its broker, results backend and actor."""

    broker: dramatiq.Broker
    backend: Any
    actor: dramatiq.Actor[Any, Any]
    redis_url: str | None
    db: str


def make_broker(url: str | None, *, namespace: str = "pdf-notes") -> dramatiq.Broker:
    """A broker for ``url``: ``StubBroker`` when ``None``, else Redis or RabbitMQ."""
    if not url:
        from dramatiq.brokers.stub import StubBroker

        return StubBroker()
    if url.startswith(("redis://", "rediss://", "unix://")):
        from dramatiq.brokers.redis import RedisBroker

        return RedisBroker(url=url, namespace=namespace)
    if url.startswith(("amqp://", "amqps://")):
        from dramatiq.brokers.rabbitmq import RabbitmqBroker

        return RabbitmqBroker(url=url)
    raise ValueError(f"--broker must be a redis://, rediss://, unix:// or amqp:// URL, got {url!r}")


def _results(broker: dramatiq.Broker, redis_url: str | None, namespace: str) -> Any:
    if redis_url:
        backend: Any = RedisBackend(url=redis_url, namespace=f"{namespace}-results")
    elif type(broker).__name__ == "StubBroker":
        backend = StubBackend()
    else:
        raise ValueError("results of a RabbitMQ broker need a Redis: pass --redis URL")
    broker.add_middleware(Results(backend=backend, result_ttl=RESULT_TTL))
    return backend


def _redis_for(broker_url: str | None, redis_url: str | None) -> str | None:
    # A Redis broker's server is the shared store too, unless told otherwise.
    if redis_url:
        return redis_url
    if broker_url and broker_url.startswith(("redis://", "rediss://", "unix://")):
        return broker_url
    return None


def _broker(
    broker: dramatiq.Broker | None, broker_url: str | None, redis_url: str | None, namespace: str
) -> tuple[dramatiq.Broker, Any, str | None]:
    """The app's broker (made from ``broker_url`` unless given), its results backend and shared Redis."""
    redis_url = _redis_for(broker_url, redis_url)
    broker = broker or make_broker(broker_url, namespace=namespace)
    # `dramatiq examples.pdf_notes.worker` runs the module's global broker.
    dramatiq.set_broker(broker)
    return broker, _results(broker, redis_url, namespace), redis_url


def app_from_env(factory: Callable[..., App], *, module: str, db: str, namespace: str) -> App:
    """The app a worker module runs, configured by the environment (see ``examples.pdf_notes.worker``)."""
    url = os.environ.get("TURBO_BROKER_URL")
    if not url:
        raise RuntimeError(f"set TURBO_BROKER_URL (redis:// or amqp://) for dramatiq {module}")
    settings = Settings.from_env()
    size_pools(settings)  # this process is a worker: its pools are the pipeline's
    return factory(
        settings=settings,
        broker_url=url,
        redis_url=os.environ.get("TURBO_REDIS_URL") or None,
        db=os.environ.get("TURBO_NOTES_DB", db),
        namespace=os.environ.get("TURBO_NOTES_NAMESPACE", namespace),
        queue=os.environ.get("TURBO_NOTES_QUEUE", QUEUE),
    )


def size_pools(settings: Settings) -> None:
    """Size this process's thread pool and HTTP pool for the pipeline (call it where a process starts).

    Every worker thread may ask ``chunk_concurrency`` chunks at once: the
    pools must hold that many, or chunks queue behind each other.  It sets
    defaults of the environment (``TURBO_POOL_THREADS``, ``TURBO_HTTP_POOL_SIZE``),
    which the process and its children read; values already set win.
    """
    wanted = str(max(16, settings.chunk_concurrency * 8))
    os.environ.setdefault("TURBO_POOL_THREADS", wanted)
    os.environ.setdefault("TURBO_HTTP_POOL_SIZE", wanted)


def create_app(
    *,
    broker_url: str | None = None,
    redis_url: str | None = None,
    db: str = "pdf_notes.sqlite3",
    model_url: str | None = None,
    settings: Settings | None = None,
    namespace: str = "pdf-notes",
    queue: str = QUEUE,
    broker: dramatiq.Broker | None = None,
) -> App:
    """The optimized pipeline: the suite installed, ``generate_notes`` declared.

    Parameters:
      broker_url(str | None): ``redis://`` / ``amqp://``; ``None`` for ``StubBroker``.
      redis_url(str | None): The shared store (cache, limits, breakers, results);
        defaults to a Redis broker's own server; ``None`` with another broker
        means every process works on its own.
      db(str): An SQLite path or a ``postgresql://`` DSN for the notes.
      model_url(str | None): The notes model's base URL; ``OPENAI_BASE_URL`` when ``None``.
      settings(Settings): Chunking, concurrency and limits (``Settings.from_env()`` by default).
      namespace(str): Prefix of the broker's, results' and cache's keys.
      queue(str): The actor's queue.
      broker(dramatiq.Broker | None): Use this broker instead of making one from ``broker_url``.
    """
    settings = settings or Settings.from_env()
    broker, backend, redis_url = _broker(broker, broker_url, redis_url, namespace)
    _install_suite(broker, redis_url, settings, namespace)
    pipelines = PerProcess(lambda: _build_pipeline(redis_url, db, model_url, settings, namespace))
    broker.add_middleware(_BuildOnBoot(lambda: pipelines.get().warm_up()))
    # The pipeline defers its own message while the same PDF is computed elsewhere.
    broker.add_middleware(CurrentMessage())

    def generate_notes(source: str) -> dict[str, Any]:
        return pipelines.get().run(source)

    actor = dramatiq.actor(
        generate_notes,
        broker=broker,
        queue_name=queue,
        store_results=True,
        max_retries=settings.max_retries,
        min_backoff=settings.retry_min_backoff,
    )
    return App(broker=broker, backend=backend, actor=actor, redis_url=redis_url, db=db)


def _install_suite(
    broker: dramatiq.Broker, redis_url: str | None, settings: Settings, namespace: str
) -> None:
    client = connect_redis(redis_url) if redis_url else None
    # The gates get this app's namespace, so two apps on one Redis (the load
    # test's runs, say) never share limits or breakers by accident.
    install(
        broker,
        redis=client,
        rate_limit=RateLimiter(redis=client, namespace=f"turbo:rl:{namespace}"),
        breaker=CircuitBreaker(
            redis=client,
            namespace=f"turbo:breaker:{namespace}",
            settings={LLM: {"fail_max": settings.breaker_fail_max, "reset_timeout": settings.breaker_reset}},
            jitter=min(1_000, settings.breaker_reset // 5),
        ),
    )


class _BuildOnBoot(Middleware):
    """Builds a worker process's pipeline when the worker boots, so no job pays for it.

    The guide's "initialize resources once": the HTTP pool, the database
    connection and the tokenizer's vocabulary (about 0.1 s to load) are ready
    before the first message arrives.
    """

    def __init__(self, build: Callable[[], None]) -> None:
        self.build = build

    def after_worker_boot(self, broker: dramatiq.Broker, worker: Any) -> None:
        self.build()


def _build_pipeline(
    redis_url: str | None, db: str, model_url: str | None, settings: Settings, namespace: str
) -> NotesPipeline:
    return NotesPipeline(
        model=ChatModel(base_url=model_url, around_request=llm_gate(settings)),
        store=open_store(db),
        cache=MultiLevelCache(redis=redis_url, namespace=f"turbo:notes:{namespace}"),
        settings=settings,
    )


def create_naive_app(
    *,
    broker_url: str | None = None,
    redis_url: str | None = None,
    db: str = "pdf_notes_naive.sqlite3",
    model_url: str | None = None,
    settings: Settings | None = None,
    namespace: str = "pdf-notes-naive",
    queue: str = QUEUE,
    broker: dramatiq.Broker | None = None,
) -> App:
    """The naive twin: a plain broker (no suite), ``generate_notes_naive`` declared; see ``create_app``."""
    settings = settings or Settings.from_env()
    broker, backend, redis_url = _broker(broker, broker_url, redis_url, namespace)

    def generate_notes_naive(source: str) -> dict[str, Any]:
        return naive_notes(source, model_url=model_url, db=db, settings=settings)

    # Even a naive deployment does not retry a document that can never work.
    actor = dramatiq.actor(
        generate_notes_naive,
        broker=broker,
        queue_name=queue,
        store_results=True,
        max_retries=3,
        min_backoff=1_000,
        throws=(PdfError, SourceError),
    )
    return App(broker=broker, backend=backend, actor=actor, redis_url=redis_url, db=db)
