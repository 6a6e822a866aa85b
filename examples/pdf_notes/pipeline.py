"""The PDF-notes job, step by step: the optimized pipeline and its naive twin.

``NotesPipeline.run(source)`` is the body of the ``generate_notes`` actor::

    download (pooled) -> content_hash -> cache (a hit returns at once)
      -> extract -> smart_chunk -> notes per chunk, in parallel, each request
         under the global rate limit and breaker("llm") -> merge
      -> save to the database and the cache at once

``naive_notes(source, ...)`` does the same work the way the guide's "before"
does it: a new HTTP session and database connection per job, no cache, the
chunks one after another, no breaker and no limiter, with the same
extractor and the same model.  The load test runs both on the same jobs.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import dramatiq
import requests
from dramatiq.middleware import CurrentMessage

from dramatiq_turbo import (
    CircuitOpenError,
    MetricsCollector,
    MultiLevelCache,
    breaker,
    content_hash,
    download_file,
    process_batch,
    rate_limit,
    smart_chunk,
    step,
)
from dramatiq_turbo.batch import parallel
from dramatiq_turbo.cache import Lookup
from dramatiq_turbo.defer import Deferred, defer
from dramatiq_turbo.telemetry.steps import StepTable, current_steps

from .extract import Extracted, extract_text
from .model import ChatModel, ChunkNotes, merge_notes
from .storage import NotesStore, open_store

__all__ = [
    "NotesPipeline",
    "Settings",
    "SourceError",
    "build_record",
    "llm_gate",
    "naive_notes",
    "read_source",
]

#: The breaker and rate-limit budget every request to the notes model goes through.
LLM = "llm"


class SourceError(Exception):
    """The source cannot be read: no such file, or larger than the size cap.  Never retried."""

    retryable = False


@dataclass(frozen=True)
class Settings:
    """How the pipeline works; every field can be set from the environment (``TURBO_NOTES_<FIELD>``).

    Parameters:
      chunk_tokens(int): Most tokens (cl100k) per chunk sent to the model.
      overlap(int): Tokens each chunk repeats from the one before.
      chunk_concurrency(int): Chunks of one job asked at once.
      llm_max(int): Requests to the model allowed in any ``llm_duration`` ms,
        across every worker process (with Redis).
      llm_duration(int): The rate limit's window in milliseconds.
      llm_concurrency(int): Requests in flight at once across every worker.
      llm_max_wait(int): Milliseconds a request waits for a slot before the
        job is retried later (``RateLimitTimeout``).
      max_bytes(int): Largest PDF accepted, in bytes.
      download_timeout(int): Deadline of a download in milliseconds.
      cache_ttl(int): Milliseconds a document's notes stay cached.
      ocr(bool | None): OCR pages without text: ``None`` when tesseract is installed.
      max_points(int): Key points in a document's notes, taken from its chunks in turn.
      busy_wait(int): Milliseconds a job waits for another job computing the same
        PDF before it defers its message (and frees its worker thread).
      busy_defer(int): The delay of that deferral, in milliseconds.
      breaker_fail_max(int): Failed requests in a row that open ``breaker("llm")``.
      breaker_reset(int): Milliseconds the breaker stays open before a trial request.
      retry_min_backoff(int): The first retry's delay (ms) of a job that failed
        for a reason worth retrying (the model was down, say).
      max_retries(int): Retries of such a job before it is given up (dead-lettered).
    """

    chunk_tokens: int = 2_000
    overlap: int = 100
    chunk_concurrency: int = 32
    llm_max: int = 1_000
    llm_duration: int = 1_000
    llm_concurrency: int = 256
    llm_max_wait: int = 30_000
    max_bytes: int = 64 * 1024 * 1024
    download_timeout: int = 120_000
    cache_ttl: int = 86_400_000
    ocr: bool | None = None
    max_points: int = 24
    busy_wait: int = 250
    busy_defer: int = 500
    breaker_fail_max: int = 5
    breaker_reset: int = 30_000
    retry_min_backoff: int = 1_000
    max_retries: int = 10

    def __post_init__(self) -> None:
        # A bad setting fails when the worker starts, not as a retried job.
        for field in fields(self):
            value = getattr(self, field.name)
            if field.name == "ocr":
                continue
            low = 0 if field.name in ("overlap", "max_retries", "retry_min_backoff") else 1
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"Settings.{field.name} must be an int >= {low}, got {value!r}")
        if self.overlap * 2 > self.chunk_tokens:
            raise ValueError(
                f"Settings.overlap ({self.overlap}) must be at most half of "
                f"chunk_tokens ({self.chunk_tokens})"
            )

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> Settings:
        """Settings with each ``TURBO_NOTES_<FIELD>`` variable that is set (ints; ``ocr``: 0/1)."""
        environ = dict(os.environ if environ is None else environ)
        values: dict[str, Any] = {}
        for field in fields(cls):
            raw = environ.get(f"TURBO_NOTES_{field.name.upper()}")
            if raw is None or raw == "":
                continue
            try:
                values[field.name] = bool(int(raw)) if field.name == "ocr" else int(raw)
            except ValueError:
                raise ValueError(
                    f"TURBO_NOTES_{field.name.upper()} must be an integer, got {raw!r}"
                ) from None
        return cls(**values)


def read_source(
    source: str,
    *,
    max_bytes: int,
    timeout: int,
    fetch: Callable[..., bytes] = download_file,
) -> bytes:
    """The bytes of ``source``: an ``http(s)://`` URL (through ``fetch``) or a file path."""
    if source.startswith(("http://", "https://")):
        return fetch(source, timeout=timeout, max_bytes=max_bytes)
    path = Path(source[len("file://") :] if source.startswith("file://") else source).expanduser()
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise SourceError(f"no such file: {str(path)!r}") from None
    if size > max_bytes:
        raise SourceError(f"{str(path)!r} has {size} bytes, over the {max_bytes}-byte cap")
    return path.read_bytes()


def build_record(
    source: str, key: str, extracted: Extracted, chunks: int, notes: ChunkNotes
) -> dict[str, Any]:
    """What is saved and cached for one document (JSON)."""
    return {
        "content_hash": key,
        "source": source,
        "title": notes.title,
        "key_points": list(notes.key_points),
        "key_terms": list(notes.key_terms),
        "pages": extracted.pages,
        "ocr_pages": extracted.ocr_pages,
        "engine": extracted.engine,
        "warnings": list(extracted.warnings),
        "chunks": chunks,
    }


@contextlib.contextmanager
def _step_table() -> Iterator[StepTable]:
    """The job's step table: the ``Telemetry`` middleware's, or one of our own outside a worker."""
    table = current_steps()
    if table is not None:
        yield table
        return
    with StepTable() as own:
        yield own


def _answer(
    record: dict[str, Any], *, cached: str | None, table: StepTable, started: float
) -> dict[str, Any]:
    return {
        **record,
        "cached": cached,
        "steps": [[name, round(ms, 3), count] for name, ms, count in table.rows],
        "bottleneck": table.bottleneck,
        "elapsed_ms": round((time.perf_counter() - started) * 1000, 3),
        "finished_at": time.time(),
        "pid": os.getpid(),
    }


class _Skipped(Exception):
    """A chunk not asked because another chunk of the job already failed."""


def _first_error(errors: Sequence[tuple[int, Exception]]) -> Exception:
    # An open circuit is raised as such: the CircuitBreaker middleware turns
    # it into a deferral of the message instead of a failure.
    real = [error for _, error in errors if not isinstance(error, _Skipped)]
    for error in real:
        if isinstance(error, CircuitOpenError):
            return error
    return real[0]


def llm_gate(settings: Settings) -> Callable[[], contextlib.AbstractContextManager[None]]:
    """What each request to the model runs inside: a slot of the global limit, then ``breaker("llm")``.

    Per request, not per job: a job asks the model once per chunk, so only a
    limit on the requests themselves holds the model's rate.
    """
    limit = rate_limit(
        LLM,
        max=settings.llm_max,
        duration=settings.llm_duration,
        concurrency=settings.llm_concurrency,
        max_wait=settings.llm_max_wait,
    )

    @contextlib.contextmanager
    def gate() -> Iterator[None]:
        with limit, breaker(LLM):
            yield

    return gate


class NotesPipeline:
    """The optimized job: shares one HTTP pool, one cache and one store per worker process.

    Parameters:
      model(ChatModel): The notes model, its requests made inside ``llm_gate(settings)``.
      store(NotesStore): Where notes are saved.
      cache(MultiLevelCache): Notes by content hash; single-flight across workers.
      settings(Settings): Chunking, concurrency and limits.
      metrics(MetricsCollector): Counts jobs and their durations.
    """

    def __init__(
        self,
        *,
        model: ChatModel,
        store: NotesStore,
        cache: MultiLevelCache,
        settings: Settings | None = None,
        metrics: MetricsCollector | None = None,
    ) -> None:
        self.model = model
        self.store = store
        self.cache = cache
        self.settings = settings or Settings()
        self.metrics = metrics or MetricsCollector("generate_notes")

    def warm_up(self) -> None:
        """Load what the first job would otherwise wait for: the tokenizer and this thread's database link."""
        smart_chunk("warm up", self.settings.chunk_tokens, 0)
        self.store.count()

    def run(self, source: str) -> dict[str, Any]:
        """Notes for ``source`` (a URL or a path), from the cache when this PDF was seen before."""
        started = time.perf_counter()
        try:
            with _step_table() as table:
                record, cached = self._run(source)
                answer = _answer(record, cached=cached, table=table, started=started)
        except (CircuitOpenError, Deferred):
            raise  # a deferral, not a failure of the job
        except Exception:
            self.metrics.record_failure()
            raise
        self.metrics.record_success(answer["elapsed_ms"])
        return answer

    def _run(self, source: str) -> tuple[dict[str, Any], str | None]:
        settings = self.settings
        with step("download"):
            data = read_source(source, max_bytes=settings.max_bytes, timeout=settings.download_timeout)
        with step("hash"):
            key = content_hash(data)
        with step("cache"):
            lookup = self._lookup(f"notes:{key}")
        if lookup.found:
            return lookup.value, "wait" if lookup.waited == "value" else lookup.level
        try:
            record = self._compute(source, data, key)
        except BaseException:
            lookup.abandon()
            raise
        with step("save"):
            parallel(lambda: self.store.save(record), lambda: lookup.complete(record, settings.cache_ttl))
        return record, None

    def _lookup(self, key: str) -> Lookup:
        """The cached notes, or the turn to compute them (single-flight).

        While another job computes the same PDF, wait ``busy_wait`` ms for it,
        then defer this message rather than hold a worker thread: it comes
        back as a hit.  Outside a worker there is no message to defer, so the
        wait lasts as long as the computation.
        """
        lookup = self.cache.begin(key, wait_timeout=self.settings.busy_wait)
        if lookup.found or lookup.waited != "timeout":
            return lookup
        lookup.give_way()
        message = CurrentMessage.get_current_message()
        if message is None:
            return self.cache.begin(key)
        broker = dramatiq.get_broker()
        defer(broker, message, delay=self.settings.busy_defer, reason="single_flight", jitter=200)

    def _compute(self, source: str, data: bytes, key: str) -> dict[str, Any]:
        settings = self.settings
        with step("extract"):
            extracted = extract_text(data, ocr=settings.ocr)
        del data  # the text is all the rest needs; let the PDF's bytes go
        with step("chunk"):
            chunks = smart_chunk(extracted.text, settings.chunk_tokens, settings.overlap)
        with step("notes"):
            parts = self._notes(chunks)
        with step("merge"):
            merged = merge_notes(parts, max_points=settings.max_points)
        return build_record(source, key, extracted, len(chunks), merged)

    def _notes(self, chunks: Sequence[str]) -> list[ChunkNotes]:
        failed = threading.Event()

        def ask(chunk: str) -> ChunkNotes:
            # Once one chunk failed the job fails: the rest are not asked.
            if failed.is_set():
                raise _Skipped()
            try:
                return self.model.notes(chunk)
            except Exception:
                failed.set()
                raise

        batch = process_batch(
            chunks, ask, batch_size=max(1, len(chunks)), concurrency=self.settings.chunk_concurrency
        )
        if batch.errors:
            raise _first_error(batch.errors)
        return [part for part in batch.results if part is not None]


def naive_notes(
    source: str, *, model_url: str | None, db: str, settings: Settings | None = None
) -> dict[str, Any]:
    """The same job the way the guide's "before" does it (see the module's docstring).

    ``model_url`` ``None`` means ``OPENAI_BASE_URL``, as for ``ChatModel``.
    """
    settings = settings or Settings()
    started = time.perf_counter()
    with StepTable() as table, requests.Session() as session:
        with step("download"):
            data = read_source(
                source,
                max_bytes=settings.max_bytes,
                timeout=settings.download_timeout,
                fetch=lambda url, **_: _naive_get(session, url, settings.download_timeout),
            )
        key = content_hash(data)
        with step("extract"):
            extracted = extract_text(data, ocr=settings.ocr)
        with step("chunk"):
            chunks = smart_chunk(extracted.text, settings.chunk_tokens, settings.overlap)
        model = ChatModel(base_url=model_url, session=session)
        with step("notes"):
            parts = [model.notes(chunk) for chunk in chunks]
        with step("merge"):
            merged = merge_notes(parts, max_points=settings.max_points)
            record = build_record(source, key, extracted, len(chunks), merged)
        with step("save"):
            store = open_store(db)
            try:
                store.save(record)
            finally:
                store.close()
        return _answer(record, cached=None, table=table, started=started)


def _naive_get(session: requests.Session, url: str, timeout: int) -> bytes:
    response = session.get(url, timeout=timeout / 1000)
    response.raise_for_status()
    return response.content
