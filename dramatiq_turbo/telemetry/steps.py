"""``step(name)``: time one step of a job as a child span and a row of its step table.

Inside an actor run by a worker with the ``Telemetry`` middleware, every step
becomes a child span of the message's ``process`` span, and at the end of the
job the middleware logs the job's step table, in the form::

    download: 1250ms
    extract: 850ms
    ai: 12500ms <- Bottleneck!
    Total: 14600ms

Outside a job (or without ``Telemetry``), ``with StepTable() as table:``
collects the steps of a block of code the same way.
"""

from __future__ import annotations

import contextvars
import functools
import inspect
import threading
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any, TypeVar, cast

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Span, Status, StatusCode, Tracer

from .semconv import ERROR_TYPE

__all__ = ["StepTable", "current_steps", "step"]

F = TypeVar("F", bound=Callable[..., Any])

_TRACER_NAME = "dramatiq_turbo"
_current: contextvars.ContextVar[StepTable | None] = contextvars.ContextVar("turbo_steps", default=None)


class StepTable:
    """The steps of one job, in the order they first ran, with their total time.

    A step that runs several times (in a loop, or from parallel threads) is
    one row, with its durations summed and its count shown.  Thread-safe.

    Parameters:
      tracer(Tracer|None): Used for the steps' spans; ``None`` means the
        global tracer provider's.
    """

    def __init__(self, *, tracer: Tracer | None = None) -> None:
        self.tracer = tracer
        self._lock = threading.Lock()
        self._rows: dict[str, list[float]] = {}  # name -> [total ms, count]
        self._start = time.perf_counter()
        self._token: contextvars.Token[StepTable | None] | None = None

    def add(self, name: str, ms: float, *, count: int = 1) -> None:
        """Add ``ms`` milliseconds, taken by ``count`` runs, to step ``name``.

        ``count`` lets a table be rebuilt from another's ``rows`` (a job's
        result, say) with its counts.
        """
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise ValueError(f"count must be an int >= 1, got {count!r}")
        with self._lock:
            row = self._rows.get(name)
            if row is None:
                self._rows[name] = [ms, count]
            else:
                row[0] += ms
                row[1] += count

    def __len__(self) -> int:
        """How many distinct steps ran."""
        return len(self._rows)

    @property
    def rows(self) -> list[tuple[str, float, int]]:
        """``(name, total ms, count)`` per step, in first-run order."""
        with self._lock:
            return [(name, total, int(count)) for name, (total, count) in self._rows.items()]

    @property
    def bottleneck(self) -> str | None:
        """The step that took the most time in total (``None`` with fewer than two steps)."""
        rows = self.rows
        if len(rows) < 2:
            return None
        return max(rows, key=lambda row: row[1])[0]

    def format(self, total_ms: float | None = None) -> str:
        """The table as text; ``Total`` is ``total_ms`` (the job's duration) or the time since creation."""
        slowest = self.bottleneck
        lines = []
        for name, ms, count in self.rows:
            times = f" (x{count})" if count > 1 else ""
            mark = " <- Bottleneck!" if name == slowest else ""
            lines.append(f"{name}: {_ms(ms)}{times}{mark}")
        total = total_ms if total_ms is not None else (time.perf_counter() - self._start) * 1000.0
        lines.append(f"Total: {_ms(total)}")
        return "\n".join(lines)

    def activate(self) -> contextvars.Token[StepTable | None]:
        """Make this the table that ``step`` records into, in the current context."""
        return _current.set(self)

    @staticmethod
    def deactivate(token: contextvars.Token[StepTable | None]) -> None:
        """Undo ``activate``."""
        _current.reset(token)

    def __enter__(self) -> StepTable:
        self._token = self.activate()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._token is not None:
            self.deactivate(self._token)
            self._token = None


def current_steps() -> StepTable | None:
    """The step table of the job running in this context, if any."""
    return _current.get()


def _ms(ms: float) -> str:
    # Whole milliseconds as in the guide, but keep precision for short steps.
    return f"{ms:.0f}ms" if ms >= 10 else f"{ms:.2f}ms"


class _Scope:
    """One run of a step: its span, its context token and its clock."""

    __slots__ = ("name", "span", "start", "table", "token")

    def __init__(self, name: str) -> None:
        self.name = name
        self.table = _current.get()
        tracer = self.table.tracer if self.table is not None and self.table.tracer else None
        if tracer is None:
            tracer = trace.get_tracer(_TRACER_NAME)
        self.span: Span = tracer.start_span(name, attributes={"turbo.step": name})
        self.token = otel_context.attach(trace.set_span_in_context(self.span))
        self.start = time.perf_counter()

    def close(self, exc: BaseException | None) -> float:
        ms = (time.perf_counter() - self.start) * 1000.0
        try:
            if exc is not None:
                self.span.record_exception(exc)
                self.span.set_attribute(ERROR_TYPE, type(exc).__qualname__)
                self.span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))
            self.span.end()
        finally:
            otel_context.detach(self.token)
            if self.table is not None:
                self.table.add(self.name, ms)
        return ms


class step:  # used like a function: ``with step("download"):``
    """Time a step of a job: a context manager and a decorator (sync or async).

    ::

        with step("download"):
            data = download_file(url)

        @step("extract")
        def extract(data): ...

    Each run is a child span of the current span (the message's ``process``
    span inside an actor) and is added to the job's step table.  An exception
    marks the span as failed and propagates.

    Parameters:
      name(str): The step's name: the span's name and the table's row.
    """

    def __init__(self, name: str) -> None:
        if not isinstance(name, str) or not name:
            raise ValueError(f"step takes a non-empty name, got {name!r}")
        self.name = name
        # One object may be entered again while open (recursion); each
        # entry pushes its own scope.
        self._scopes: list[_Scope] = []

    @property
    def elapsed(self) -> float | None:
        """Milliseconds the innermost open run has taken so far (``None`` when not running)."""
        return (time.perf_counter() - self._scopes[-1].start) * 1000.0 if self._scopes else None

    def __enter__(self) -> step:
        self._scopes.append(_Scope(self.name))
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._scopes.pop().close(exc)

    def __call__(self, fn: F) -> F:
        name = self.name
        if inspect.iscoroutinefunction(fn):

            @functools.wraps(fn)
            async def run_async(*args: Any, **kwargs: Any) -> Any:
                scope = _Scope(name)
                try:
                    result = await fn(*args, **kwargs)
                except BaseException as error:
                    scope.close(error)
                    raise
                scope.close(None)
                return result

            return cast(F, run_async)

        @functools.wraps(fn)
        def run(*args: Any, **kwargs: Any) -> Any:
            scope = _Scope(name)
            try:
                result = fn(*args, **kwargs)
            except BaseException as error:
                scope.close(error)
                raise
            scope.close(None)
            return result

        return cast(F, run)
