"""The pipeline in one process, no server needed: for the CLI without ``--broker`` and the demo.

``Embedded`` runs Dramatiq's ``StubBroker`` with an in-process worker, the
whole suite installed (L1-only cache, per-process limits and breakers), the
notes in SQLite and, unless a model URL is given, the bundled notes model on
127.0.0.1, so every request still goes over real HTTP through the limiter,
the breaker and ``Backoff``.
"""

from __future__ import annotations

import os
import textwrap
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import dramatiq
from dramatiq import Worker
from dramatiq.results import ResultTimeout

from dramatiq_turbo.telemetry.steps import StepTable

from .app import App, create_app
from .model_server import ModelServer
from .pipeline import Settings

__all__ = ["Embedded", "Outcome", "collect", "format_notes", "format_steps", "wait_result"]

#: How long one job's result is waited for (ms): retries with backoff included.
RESULT_TIMEOUT = 600_000


@dataclass
class Outcome:
    """One job's end: its result, or the reason it failed."""

    source: str
    result: dict[str, Any] | None = None
    error: str | None = None


#: The longest single blocking wait: a Redis client's socket timeout (5 s by default) must outlast it.
_POLL = 4_000


def wait_result(app: App, message: dramatiq.Message[Any], *, timeout: int = RESULT_TIMEOUT) -> Any:
    """The result of ``message``, waiting up to ``timeout`` ms in waits shorter than a socket timeout.

    Raises:
      ResultFailure: the job failed (its text names the reason).
      ResultTimeout: no result within ``timeout``.
    """
    deadline = time.monotonic() + timeout / 1000
    while True:
        left = int((deadline - time.monotonic()) * 1000)
        try:
            return message.get_result(backend=app.backend, block=True, timeout=max(1_000, min(_POLL, left)))
        except ResultTimeout:
            if time.monotonic() >= deadline:
                raise


def collect(
    app: App, messages: Sequence[tuple[str, dramatiq.Message[Any]]], *, timeout: int = RESULT_TIMEOUT
) -> list[Outcome]:
    """Wait for every message's result, in order; a failure is kept with its reason, never dropped."""
    outcomes = []
    for source, message in messages:
        try:
            result = wait_result(app, message, timeout=timeout)
        except Exception as error:  # ResultFailure carries the job's exception text
            outcomes.append(Outcome(source, error=_reason(error)))
        else:
            outcomes.append(Outcome(source, result=result))
    return outcomes


def _reason(error: BaseException) -> str:
    text = str(error)
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


class Embedded:
    """A broker, a worker and (by default) the bundled notes model, all in this process.

    Parameters:
      db(str): SQLite path or ``postgresql://`` DSN for the notes.
      model_url(str | None): A notes model's base URL; ``None`` uses
        ``OPENAI_BASE_URL`` when set, else starts the bundled server.
      latency(int): The bundled server's latency per call, in ms.
      settings(Settings): The pipeline's settings.
      threads(int): Worker threads.
    """

    def __init__(
        self,
        *,
        db: str,
        model_url: str | None = None,
        latency: int = 50,
        settings: Settings | None = None,
        threads: int = 4,
    ) -> None:
        self.db = db
        self.model_url = model_url or os.environ.get("OPENAI_BASE_URL") or None
        self.latency = latency
        self.settings = settings
        self.threads = threads
        self.server: ModelServer | None = None
        self.app: App | None = None
        self.worker: Worker | None = None

    def __enter__(self) -> Embedded:
        if self.model_url is None:
            self.server = ModelServer(latency=self.latency).start()
            self.model_url = self.server.url
        self.app = create_app(db=self.db, model_url=self.model_url, settings=self.settings)
        self.worker = Worker(self.app.broker, worker_threads=self.threads, worker_timeout=50)
        self.worker.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self.worker is not None:
            self.worker.stop()
        if self.app is not None:
            self.app.broker.close()
        if self.server is not None:
            self.server.stop()

    def run(self, sources: Iterable[str]) -> list[Outcome]:
        """Enqueue a job per source, then wait for them all."""
        assert self.app is not None, "use Embedded as a context manager"
        messages = [(source, self.app.actor.send(source)) for source in sources]
        return collect(self.app, messages)


def format_steps(rows: Sequence[Sequence[Any]], total_ms: float) -> str:
    """A result's ``steps`` as the guide's step table, bottleneck marked."""
    table = StepTable()
    for name, ms, count in rows:
        table.add(name, float(ms), count=int(count))
    return table.format(total_ms)


def format_notes(result: dict[str, Any], *, points: int = 4, width: int = 96) -> str:
    """A result as a few lines: title, key points (shortened), key terms, then the step table."""
    served = {"l1": "served from the cache (L1)", "l2": "served from the cache (Redis)"}
    how = served.get(result.get("cached") or "", "")
    if result.get("cached") == "wait":
        how = "computed once by another job (single-flight)"
    header = (
        f"{result['title']}  [{result['pages']} pages, {result['chunks']} chunks{', ' + how if how else ''}]"
    )
    lines = [header]
    for point in result["key_points"][:points]:
        lines.append(textwrap.shorten(f"- {point}", width=width, placeholder=" ..."))
    if len(result["key_points"]) > points:
        lines.append(f"  ... {len(result['key_points']) - points} more key points")
    lines.append(textwrap.shorten("key terms: " + ", ".join(result["key_terms"]), width=width))
    for warning in result.get("warnings", []):
        lines.append(f"warning: {warning}")
    lines.append(textwrap.indent(format_steps(result["steps"], result["elapsed_ms"]), "  "))
    return "\n".join(lines)
