"""The ``Telemetry`` middleware: OpenTelemetry spans and metrics for every message."""

from __future__ import annotations

import logging
import math
import threading
import time
import traceback
from collections.abc import Mapping
from typing import Any

import dramatiq
from dramatiq.common import q_name
from dramatiq.middleware import Middleware
from opentelemetry import context as otel_context
from opentelemetry import metrics, trace
from opentelemetry.context import Context
from opentelemetry.metrics import MeterProvider
from opentelemetry.trace import Link, Span, SpanKind, Status, StatusCode, TracerProvider

from .. import events
from ..options import require_ms
from ..redact import redact_text
from . import semconv as sc
from .collector import MetricsCollector
from .event_metrics import EventMetrics
from .instruments import Instruments
from .propagation import CONTEXT_OPTION, DELAYED_OPTION, READY_AT_OPTION, extract, inject
from .runtime import Runtime
from .setup import configured, fork_generation
from .steps import StepTable

__all__ = ["Telemetry"]

logger = logging.getLogger("dramatiq_turbo.telemetry")

_SCOPE = "dramatiq_turbo"
_FLUSH_TIMEOUT = 5_000
# The context a message runs in when it carries none: never the previous one.
_ROOT = Context()


class _SendKind:
    """What the sends of one actor to one queue share, built once: span name and attributes."""

    __slots__ = ("metric_attributes", "name", "span_attributes")

    def __init__(self, queue: str, actor: str, metric_attributes: dict[str, Any]) -> None:
        self.name = f"send {queue}"
        self.metric_attributes = metric_attributes
        self.span_attributes = {**metric_attributes, sc.ACTOR: actor}


class _ProcessKind:
    """What the deliveries of one actor from one queue share, built once."""

    __slots__ = ("attributes", "labels", "name")

    def __init__(self, queue: str, actor: str) -> None:
        self.name = f"process {queue}"
        # The span's attributes and the metrics' (span attributes add the
        # message id and retries, which would explode the series count).
        self.attributes = {
            sc.SYSTEM: sc.SYSTEM_NAME,
            sc.DESTINATION: queue,
            sc.OPERATION_TYPE: "process",
            sc.OPERATION_NAME: "process",
            sc.ACTOR: actor,
        }
        self.labels = {sc.DESTINATION: queue, sc.ACTOR: actor}  # of the suite's events


class _ThreadState(threading.local):
    """The send and the delivery in progress on one thread.

    Class-level defaults: reading a missing ``threading.local`` attribute
    with ``getattr(..., None)`` raises and catches an AttributeError, a
    microsecond on every hook.
    """

    send: _Send | None = None
    delivery: _Delivery | None = None


class _Send:
    __slots__ = ("attributes", "message_id", "runtime", "span", "start")

    def __init__(
        self, message_id: str, span: Span | None, attributes: dict[str, Any], start: float, runtime: Runtime
    ) -> None:
        self.message_id = message_id
        self.span = span  # None when the tracer is a no-op
        self.attributes = attributes
        self.start = start
        self.runtime = runtime


class _Delivery:
    __slots__ = (
        "actor",
        "kind",
        "message_id",
        "runtime",
        "span",
        "start",
        "steps",
        "steps_token",
        "token",
        "wait",
    )

    def __init__(
        self,
        message_id: str,
        actor: str,
        kind: _ProcessKind | None,
        runtime: Runtime,
        span: Span | None,
        token: object,
        steps: StepTable,
    ) -> None:
        self.message_id = message_id
        self.actor = actor
        self.kind = kind  # None when neither spans nor metrics are made
        self.runtime = runtime
        self.span = span  # None when the tracer is a no-op
        self.token = token
        self.steps = steps
        self.steps_token: Any = None  # set once the table is active
        self.wait: float | None = None  # seconds since the message was due
        self.start = time.perf_counter()


class Telemetry(Middleware):
    """OpenTelemetry spans and metrics for producers and consumers, per the messaging conventions.

    A ``send {queue}`` span (kind PRODUCER) covers each enqueue and its
    context travels in ``message.options``; a ``process {queue}`` span (kind
    CONSUMER) covers each delivery, from the first ``before_process_message``
    hook to the last ``after_*`` hook when this middleware is first in the
    list (``install()`` puts it there).  Failures set ``error.type`` and the
    ERROR status; retries and deferrals stay in the message's trace; the
    context is detached after every message, whatever happened.

    Metrics: ``messaging.process.duration``,
    ``messaging.client.operation.duration``, ``messaging.client.sent.messages``,
    ``messaging.client.consumed.messages``, ``turbo.queue.wait.duration`` and
    one counter per suite event (``turbo.cache.hits`` by ``level``, ...).

    With OpenTelemetry's no-op providers (or the global ones before a real
    provider is set) no span or record is made at all, but, as with a
    no-op tracer, a message's trace context still travels on to the
    messages it sends; collectors and step tables work as ever.

    Parameters:
      tracer_provider(TracerProvider|None): Default: the one set up by
        ``configure_telemetry`` in this process, else the global provider.
      meter_provider(MeterProvider|None): Likewise for metrics.
      use_links(bool): Start each ``process`` span in a new trace linked to
        the producer's span, instead of as its child (for fan-out, where
        one trace per consumer reads better).  Default ``False``.
      log_interval(int|None): Every this many milliseconds (checked when a
        message ends), log each actor's ``MetricsCollector`` line.  Default
        ``None``: off.
      log_steps(bool): Log a job's step table (see ``step``) when it ends.
        Default ``True``; jobs without steps log nothing.
    """

    def __init__(
        self,
        *,
        tracer_provider: TracerProvider | None = None,
        meter_provider: MeterProvider | None = None,
        use_links: bool = False,
        log_interval: int | None = None,
        log_steps: bool = True,
    ) -> None:
        if log_interval is not None:
            require_ms("log_interval", log_interval, allow_zero=False)
        self.tracer_provider = tracer_provider
        self.meter_provider = meter_provider
        self.use_links = bool(use_links)
        self.log_interval = log_interval
        self.log_steps = log_steps
        self.collectors: dict[str, MetricsCollector] = {}
        self._collectors_lock = threading.Lock()
        self._last_log = time.monotonic()
        self._local = _ThreadState()
        self._runtime_lock = threading.Lock()
        self._runtime_cache: Runtime | None = None
        self._event_metrics: EventMetrics | None = None
        # Span names and attribute sets are built once per (queue, actor) and
        # reused: LocalCounter keys metric attribute sets by identity, and
        # they are never mutated.
        self._send_kinds: dict[tuple[str, str], _SendKind] = {}
        self._send_attributes: dict[str, dict[str, Any]] = {}
        self._process_kinds: dict[tuple[str, str], _ProcessKind] = {}
        self._error_attributes: dict[tuple[int, str], dict[str, Any]] = {}
        events.listen_while_alive(self, "_on_event")

    # -- per-process state -------------------------------------------------

    def _runtime(self) -> Runtime:
        runtime = self._runtime_cache
        if runtime is not None and runtime.current():
            return runtime
        with self._runtime_lock:
            runtime = self._runtime_cache
            if runtime is None or not runtime.current():
                runtime = self._build_runtime()
                self._runtime_cache = runtime
            return runtime

    def _providers(self) -> tuple[TracerProvider, MeterProvider]:
        setup = configured()
        tracer_provider = self.tracer_provider
        if tracer_provider is None:
            tracer_provider = setup.tracer_provider if setup is not None else trace.get_tracer_provider()
        meter_provider = self.meter_provider
        if meter_provider is None:
            meter_provider = setup.meter_provider if setup is not None else metrics.get_meter_provider()
        return tracer_provider, meter_provider

    def _build_runtime(self) -> Runtime:
        from .. import __version__

        tracer_provider, meter_provider = self._providers()
        previous = self._runtime_cache
        if previous is not None and previous.meter_provider is meter_provider:
            # A fork with providers that were not rebuilt for it (passed in,
            # or set globally by hand): keep the instruments, which the meter
            # already knows, but do not count the parent's messages again.
            meter, instruments = previous.meter, previous.instruments
            if previous.generation != fork_generation():
                instruments.sent.reset()
                instruments.consumed.reset()
        else:
            meter = meter_provider.get_meter(_SCOPE, __version__)
            instruments = Instruments(meter)
            self._event_metrics = EventMetrics(meter, self._current_labels)
        return Runtime(
            tracer=tracer_provider.get_tracer(_SCOPE, __version__),
            meter_provider=meter_provider,
            meter=meter,
            instruments=instruments,
            generation=fork_generation(),
            setup=configured(),
        )

    def _flush(self) -> None:
        for provider in self._providers():
            flush = getattr(provider, "force_flush", None)
            if flush is None:
                continue
            try:
                flush(_FLUSH_TIMEOUT)
            except Exception:
                logger.exception("Telemetry: flushing %r failed.", provider)

    def after_process_boot(self, broker: dramatiq.Broker) -> None:
        # A forked worker process: build its own providers and instruments now.
        self._runtime()

    def before_worker_shutdown(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        # Workers leave with os._exit: what is not exported now is lost.
        if self.log_interval is not None:
            self.log_metrics()
        self._flush()

    def after_worker_shutdown(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        # Messages still running at before_worker_shutdown have ended by now.
        self._flush()

    # -- producer ----------------------------------------------------------

    def before_enqueue(
        self, broker: dramatiq.Broker, message: dramatiq.Message[Any], delay: int | None
    ) -> None:
        local = self._local
        stale = local.send
        if stale is not None:
            # The previous enqueue on this thread raised before after_enqueue.
            local.send = None
            self._end_send(stale, failed=True)
        options = message.options
        if delay is not None:
            options[DELAYED_OPTION] = True
            options[READY_AT_OPTION] = int(time.time() * 1000) + delay
        elif options.pop(DELAYED_OPTION, None):
            # The worker moving a due delayed message to its queue: the same
            # send, already traced when it was enqueued with its delay.
            return
        elif READY_AT_OPTION in options:
            del options[READY_AT_OPTION]
        runtime = self._runtime()
        # Most messages carry no context yet: skip the call for them.
        parent = _send_parent(options) if CONTEXT_OPTION in options else None
        if not runtime.tracing:
            _carry(options, parent)
            if not runtime.metering:
                return  # nothing to end in after_enqueue
        kind = self._send_kind(message.queue_name, message.actor_name)
        span = None
        if runtime.tracing:
            span = runtime.tracer.start_span(
                kind.name,
                context=parent,
                kind=SpanKind.PRODUCER,
                attributes={**kind.span_attributes, sc.MESSAGE_ID: message.message_id},
            )
            if span.get_span_context().is_valid:
                options[CONTEXT_OPTION] = inject(trace.set_span_in_context(span, parent))
        local.send = _Send(message.message_id, span, kind.metric_attributes, time.perf_counter(), runtime)

    def _send_kind(self, queue_name: str, actor: str) -> _SendKind:
        kind = self._send_kinds.get((queue_name, actor))
        if kind is None:
            queue = q_name(queue_name)  # a delayed enqueue names the delay queue
            attributes = self._send_attributes.get(queue)
            if attributes is None:
                # setdefault is atomic: racing threads end up sharing one dict.
                attributes = self._send_attributes.setdefault(
                    queue,
                    {
                        sc.SYSTEM: sc.SYSTEM_NAME,
                        sc.DESTINATION: queue,
                        sc.OPERATION_TYPE: "send",
                        sc.OPERATION_NAME: "send",
                    },
                )
            kind = self._send_kinds.setdefault((queue_name, actor), _SendKind(queue, actor, attributes))
        return kind

    def after_enqueue(
        self, broker: dramatiq.Broker, message: dramatiq.Message[Any], delay: int | None
    ) -> None:
        local = self._local
        send = local.send
        if send is None or send.message_id != message.message_id:
            return
        local.send = None
        self._end_send(send, failed=False)

    def _end_send(self, send: _Send, *, failed: bool) -> None:
        attributes = send.attributes
        span = send.span
        if failed:
            attributes = self._with_error(attributes, "_OTHER")
            if span is not None:
                span.set_attribute(sc.ERROR_TYPE, "_OTHER")
                span.set_status(Status(StatusCode.ERROR, "enqueue did not complete"))
        if span is not None:
            span.end()
        if send.runtime.metering:
            instruments = send.runtime.instruments
            if not failed:  # a failed send's duration is unknown: it is noticed later
                instruments.operation_duration.record(time.perf_counter() - send.start, attributes)
            instruments.sent.add(attributes)

    def _with_error(self, attributes: dict[str, Any], error_type: str) -> dict[str, Any]:
        """``attributes`` plus ``error.type``: one shared dict per pair, as the counters need."""
        key = (id(attributes), error_type)
        known = self._error_attributes.get(key)
        if known is None:
            known = self._error_attributes.setdefault(key, {**attributes, sc.ERROR_TYPE: error_type})
        return known

    # -- consumer ----------------------------------------------------------

    def before_process_message(self, broker: dramatiq.Broker, message: dramatiq.MessageProxy) -> None:
        local = self._local
        stale = local.delivery
        if stale is not None:
            # Never leave a previous message's context attached.
            local.delivery = None
            self._end_delivery(stale, None, skipped=True)
        runtime = self._runtime()
        # The proxy forwards every field through __getattr__, which costs an
        # AttributeError each time: read the message behind it.
        inner = getattr(message, "_message", message)
        carried = extract(inner.options)
        steps = StepTable(tracer=runtime.tracer)
        if runtime.tracing or runtime.metering:
            delivery = self._start_delivery(runtime, inner, carried, steps)
        else:
            token = otel_context.attach(self._untraced_context(carried))
            delivery = _Delivery(inner.message_id, inner.actor_name, None, runtime, None, token, steps)
        delivery.steps_token = steps.activate()
        local.delivery = delivery

    def _untraced_context(self, carried: Context | None) -> Context:
        # What a no-op tracer's span leaves current: the carried context, so
        # that the messages this one sends stay in its trace.
        return carried if carried is not None and not self.use_links else _ROOT

    def _start_delivery(
        self,
        runtime: Runtime,
        message: dramatiq.Message[Any] | dramatiq.MessageProxy,
        carried: Context | None,
        steps: StepTable,
    ) -> _Delivery:
        options = message.options
        kind = self._process_kind(message.queue_name, message.actor_name)
        span = None
        if runtime.tracing:
            span, context = self._start_process(runtime, kind, message.message_id, options, carried)
        else:
            context = self._untraced_context(carried)
        token = otel_context.attach(context)
        delivery = _Delivery(message.message_id, message.actor_name, kind, runtime, span, token, steps)
        if runtime.metering:
            # A due time the sender garbled: the wait since it sent the message instead.
            wait = _queue_wait(options.get(READY_AT_OPTION))
            delivery.wait = wait if wait is not None else _queue_wait(message.message_timestamp)
        return delivery

    def _process_kind(self, queue_name: str, actor: str) -> _ProcessKind:
        kind = self._process_kinds.get((queue_name, actor))
        if kind is None:
            kind = _ProcessKind(q_name(queue_name), actor)
            kind = self._process_kinds.setdefault((queue_name, actor), kind)
        return kind

    def _start_process(
        self,
        runtime: Runtime,
        kind: _ProcessKind,
        message_id: str,
        options: dict[str, Any],
        carried: Context | None,
    ) -> tuple[Span, Context]:
        """The ``process`` span of a delivery, and the context to run the message in."""
        links: tuple[Link, ...] = ()
        if self.use_links:
            if carried is not None:
                producer = trace.get_current_span(carried).get_span_context()
                if producer.is_valid:
                    links = (Link(producer),)
            parent = _ROOT
        else:
            parent = carried if carried is not None else _ROOT
        span = runtime.tracer.start_span(
            kind.name,
            context=parent,
            kind=SpanKind.CONSUMER,
            attributes={
                **kind.attributes,
                sc.MESSAGE_ID: message_id,
                sc.RETRIES: _retries(options),
            },
            links=links,
        )
        return span, trace.set_span_in_context(span, parent)

    def after_process_message(
        self,
        broker: dramatiq.Broker,
        message: dramatiq.MessageProxy,
        *,
        result: Any = None,
        exception: BaseException | None = None,
    ) -> None:
        local = self._local
        delivery = local.delivery
        if delivery is not None:
            local.delivery = None
            self._end_delivery(delivery, exception, skipped=False)

    def after_skip_message(self, broker: dramatiq.Broker, message: dramatiq.MessageProxy) -> None:
        local = self._local
        delivery = local.delivery
        if delivery is not None:
            local.delivery = None
            self._end_delivery(delivery, None, skipped=True)

    def _end_delivery(self, delivery: _Delivery, exception: BaseException | None, *, skipped: bool) -> None:
        elapsed = time.perf_counter() - delivery.start
        try:
            if delivery.kind is not None:
                self._end_signals(delivery, delivery.kind, exception, elapsed, skipped=skipped)
            if not skipped:
                self._collect(delivery.actor, elapsed * 1000.0, exception)
                if self.log_steps and len(delivery.steps):
                    logger.info(
                        "Steps of %s (message %s):\n%s",
                        delivery.actor,
                        delivery.message_id,
                        delivery.steps.format(elapsed * 1000.0),
                    )
        finally:
            # Detach in reverse order of attaching, whatever failed above.
            # (try/except rather than contextlib.suppress: this runs for every message)
            try:  # noqa: SIM105
                StepTable.deactivate(delivery.steps_token)
            except ValueError:  # set in another context: nothing of ours to undo
                pass
            otel_context.detach(delivery.token)  # type: ignore[arg-type]

    def _end_signals(
        self,
        delivery: _Delivery,
        kind: _ProcessKind,
        exception: BaseException | None,
        elapsed: float,
        *,
        skipped: bool,
    ) -> None:
        """End the delivery's span and record its metrics."""
        error_type = _error_type(exception) if exception is not None else None
        if delivery.span is not None:
            _end_process_span(delivery.span, exception, error_type, skipped=skipped)
        if delivery.runtime.metering:
            attributes = kind.attributes
            if error_type is not None:
                attributes = self._with_error(attributes, error_type)
            self._record_delivery(delivery, attributes, elapsed, skipped=skipped)

    @staticmethod
    def _record_delivery(
        delivery: _Delivery, attributes: dict[str, Any], elapsed: float, *, skipped: bool
    ) -> None:
        # Still in the message's context: the histograms' exemplars point at its span.
        instruments = delivery.runtime.instruments
        instruments.consumed.add(attributes)
        if delivery.wait is not None:
            instruments.queue_wait.record(max(delivery.wait, 0.0), attributes)
        if not skipped:
            instruments.process_duration.record(elapsed, attributes)

    # -- collectors ---------------------------------------------------------

    def _collect(self, actor: str, ms: float, exception: BaseException | None) -> None:
        collector = self.collectors.get(actor)
        if collector is None:
            with self._collectors_lock:
                collector = self.collectors.setdefault(actor, MetricsCollector(actor))
        if exception is None:
            collector.record_success(ms)
        else:
            collector.record_failure()
        if self.log_interval is not None:
            now = time.monotonic()
            if (now - self._last_log) * 1000.0 >= self.log_interval:
                with self._collectors_lock:
                    if (now - self._last_log) * 1000.0 < self.log_interval:
                        return
                    self._last_log = now
                self.log_metrics()

    def log_metrics(self) -> None:
        """Log every actor's ``MetricsCollector`` line now."""
        for collector in list(self.collectors.values()):
            collector.log_metrics()

    # -- events --------------------------------------------------------------

    def _current_labels(self) -> Mapping[str, Any]:
        delivery = self._local.delivery
        if delivery is None or delivery.kind is None:
            return {}
        return delivery.kind.labels

    def _on_event(self, name: str, attributes: Mapping[str, Any]) -> None:
        runtime = self._runtime()
        if runtime.metering and self._event_metrics is not None:
            self._event_metrics(name, attributes)


def _send_parent(options: dict[str, Any]) -> Context | None:
    """The parent of a send span: ``None`` means the current context.

    A message that already carries a context (a retry, a deferral, a
    re-send) stays in its trace: its new send span is a child of the
    current span only if that span is in the same trace, else of the
    carried one.  Its carried context is never replaced by another
    trace's, nor by nothing.
    """
    carried = extract(options)
    if carried is None:
        return None
    carried_trace = trace.get_current_span(carried).get_span_context().trace_id
    current = trace.get_current_span().get_span_context()
    if current.is_valid and current.trace_id == carried_trace:
        return None
    return carried


def _carry(options: dict[str, Any], parent: Context | None) -> None:
    """Without spans, do what a no-op tracer's span does: let a current trace travel on.

    A message sent inside a traced context carries that context; one that
    already carries its own (``parent`` is not ``None``) keeps it as it is.
    """
    if parent is None and trace.get_current_span().get_span_context().is_valid:
        options[CONTEXT_OPTION] = inject(None)


def _queue_wait(ready_at: Any) -> float | None:
    """Seconds since ``ready_at`` (epoch ms, from the message), or ``None`` when it is not a finite number."""
    if isinstance(ready_at, bool) or not isinstance(ready_at, int | float):
        return None
    try:
        wait = time.time() - ready_at / 1000.0
    except OverflowError:  # an int beyond any float
        return None
    return wait if math.isfinite(wait) else None


def _retries(options: Mapping[str, Any]) -> int:
    """The message's retry count for its span: only a plain int is one (the sender wrote it)."""
    retries = options.get("retries", 0)
    return retries if isinstance(retries, int) and not isinstance(retries, bool) else 0


def _end_process_span(
    span: Span, exception: BaseException | None, error_type: str | None, *, skipped: bool
) -> None:
    if exception is not None:
        span.set_attribute(sc.ERROR_TYPE, error_type)
        # An exception's text is what most often carries a secret (a DSN in a
        # connection error): the span event and status get it redacted.
        text = redact_text(str(exception))
        span.record_exception(
            exception,
            attributes={
                "exception.message": text,
                "exception.stacktrace": redact_text(
                    "".join(traceback.format_exception(type(exception), exception, exception.__traceback__))
                ),
            },
        )
        span.set_status(Status(StatusCode.ERROR, f"{type(exception).__name__}: {text}"[:1024]))
    elif skipped:
        span.set_attribute(sc.SKIPPED, True)
    span.end()


def _error_type(exception: BaseException) -> str:
    cls = type(exception)
    module = cls.__module__
    return cls.__qualname__ if module == "builtins" else f"{module}.{cls.__qualname__}"
