"""The ``Telemetry`` middleware: OpenTelemetry spans and metrics for every message."""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import weakref
from collections.abc import Mapping
from typing import Any

import dramatiq
from dramatiq.common import q_name
from dramatiq.middleware import Middleware
from opentelemetry import context as otel_context
from opentelemetry import metrics, trace
from opentelemetry.context import Context
from opentelemetry.metrics import MeterProvider
from opentelemetry.trace import Link, Span, SpanKind, Status, StatusCode, Tracer, TracerProvider

from .. import events
from ..options import require_ms
from . import semconv as sc
from .collector import MetricsCollector
from .event_metrics import EventMetrics
from .instruments import Instruments
from .propagation import CONTEXT_OPTION, DELAYED_OPTION, READY_AT_OPTION, extract, inject
from .setup import configured, fork_generation
from .steps import StepTable

__all__ = ["Telemetry"]

logger = logging.getLogger("dramatiq_turbo.telemetry")

_SCOPE = "dramatiq_turbo"
_FLUSH_TIMEOUT = 5_000


class _Runtime:
    """The tracer and instruments of one process (rebuilt after a fork)."""

    def __init__(
        self,
        tracer: Tracer,
        meter_provider: MeterProvider,
        instruments: Instruments,
        generation: int,
        setup: object,
    ) -> None:
        self.tracer = tracer
        self.meter_provider = meter_provider
        self.instruments = instruments
        self.generation = generation
        self.setup = setup  # the configure_telemetry() setup it was built from

    def current(self) -> bool:
        """Built in this process from the latest ``configure_telemetry`` setup."""
        return self.generation == fork_generation() and self.setup is configured()


class _Send:
    __slots__ = ("attributes", "message_id", "span", "start")

    def __init__(self, message_id: str, span: Span, attributes: dict[str, Any], start: float) -> None:
        self.message_id = message_id
        self.span = span
        self.attributes = attributes
        self.start = start


class _Delivery:
    __slots__ = ("attributes", "message_id", "span", "start", "steps", "steps_token", "token", "wait")

    def __init__(
        self,
        message_id: str,
        span: Span,
        token: object,
        steps: StepTable,
        steps_token: Any,
        attributes: dict[str, Any],
        start: float,
        wait: float | None,
    ) -> None:
        self.message_id = message_id
        self.span = span
        self.token = token
        self.steps = steps
        self.steps_token = steps_token
        self.attributes = attributes
        self.start = start
        self.wait = wait


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
        self._local = threading.local()
        self._runtime_lock = threading.Lock()
        self._runtime_cache: _Runtime | None = None
        self._event_metrics: EventMetrics | None = None
        self._process_attributes: dict[tuple[str, str], dict[str, Any]] = {}
        self._send_attributes: dict[str, dict[str, Any]] = {}
        # Metric attribute sets are built once and reused: LocalCounter keys
        # them by identity, and they are never mutated.
        self._error_attributes: dict[tuple[int, str], dict[str, Any]] = {}
        _instances.add(self)

    # -- per-process state -------------------------------------------------

    def _runtime(self) -> _Runtime:
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

    def _build_runtime(self) -> _Runtime:
        from .. import __version__

        tracer_provider, meter_provider = self._providers()
        previous = self._runtime_cache
        if previous is not None and previous.meter_provider is meter_provider:
            # A fork with providers that were not rebuilt for it (passed in,
            # or set globally by hand): keep the instruments, which the meter
            # already knows, but do not count the parent's messages again.
            instruments = previous.instruments
            instruments.sent.reset()
            instruments.consumed.reset()
        else:
            meter = meter_provider.get_meter(_SCOPE, __version__)
            instruments = Instruments(meter)
            self._event_metrics = EventMetrics(meter, self._current_labels)
        return _Runtime(
            tracer_provider.get_tracer(_SCOPE, __version__),
            meter_provider,
            instruments,
            fork_generation(),
            configured(),
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
        options = message.options
        local = self._local
        stale: _Send | None = getattr(local, "send", None)
        if stale is not None:
            # The previous enqueue on this thread raised before after_enqueue.
            local.send = None
            self._end_send(stale, failed=True)
        if delay is None and options.pop(DELAYED_OPTION, None):
            # The worker moving a due delayed message to its queue: the same
            # send, already traced when it was enqueued with its delay.
            return
        runtime = self._runtime()
        queue = q_name(message.queue_name)
        parent = self._send_parent(options)
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
        span = runtime.tracer.start_span(
            f"send {queue}",
            context=parent,
            kind=SpanKind.PRODUCER,
            attributes={**attributes, sc.MESSAGE_ID: message.message_id, sc.ACTOR: message.actor_name},
        )
        if span.get_span_context().is_valid:
            options[CONTEXT_OPTION] = inject(trace.set_span_in_context(span, parent))
        if delay is not None:
            options[DELAYED_OPTION] = True
            options[READY_AT_OPTION] = int(time.time() * 1000) + delay
        elif READY_AT_OPTION in options:
            del options[READY_AT_OPTION]
        local.send = _Send(message.message_id, span, attributes, time.perf_counter())

    @staticmethod
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

    def after_enqueue(
        self, broker: dramatiq.Broker, message: dramatiq.Message[Any], delay: int | None
    ) -> None:
        local = self._local
        send: _Send | None = getattr(local, "send", None)
        if send is None or send.message_id != message.message_id:
            return
        local.send = None
        self._end_send(send, failed=False)

    def _end_send(self, send: _Send, *, failed: bool) -> None:
        attributes = send.attributes
        if failed:
            attributes = self._with_error(attributes, "_OTHER")
            send.span.set_attribute(sc.ERROR_TYPE, "_OTHER")
            send.span.set_status(Status(StatusCode.ERROR, "enqueue did not complete"))
        send.span.end()
        instruments = self._runtime().instruments
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
        stale: _Delivery | None = getattr(local, "delivery", None)
        if stale is not None:
            # Never leave a previous message's context attached.
            local.delivery = None
            self._end_delivery(stale, None, skipped=True)
        runtime = self._runtime()
        options = message.options
        queue = q_name(message.queue_name)
        carried = extract(options)
        links: tuple[Link, ...] = ()
        if self.use_links:
            if carried is not None:
                producer = trace.get_current_span(carried).get_span_context()
                if producer.is_valid:
                    links = (Link(producer),)
            parent = Context()
        else:
            parent = carried if carried is not None else Context()
        key = (queue, message.actor_name)
        attributes = self._process_attributes.get(key)
        if attributes is None:
            attributes = self._process_attributes.setdefault(
                key,
                {
                    sc.SYSTEM: sc.SYSTEM_NAME,
                    sc.DESTINATION: queue,
                    sc.OPERATION_TYPE: "process",
                    sc.OPERATION_NAME: "process",
                    sc.ACTOR: message.actor_name,
                },
            )
        span = runtime.tracer.start_span(
            f"process {queue}",
            context=parent,
            kind=SpanKind.CONSUMER,
            attributes={
                **attributes,
                sc.MESSAGE_ID: message.message_id,
                sc.RETRIES: options.get("retries", 0),
            },
            links=links,
        )
        token = otel_context.attach(trace.set_span_in_context(span, parent))
        steps = StepTable(tracer=runtime.tracer)
        steps_token = steps.activate()
        ready_at = options.get(READY_AT_OPTION) or message.message_timestamp
        wait = time.time() - ready_at / 1000.0 if isinstance(ready_at, int | float) else None
        local.delivery = _Delivery(
            message.message_id, span, token, steps, steps_token, attributes, time.perf_counter(), wait
        )

    def after_process_message(
        self,
        broker: dramatiq.Broker,
        message: dramatiq.MessageProxy,
        *,
        result: Any = None,
        exception: BaseException | None = None,
    ) -> None:
        self._finish(message, exception, skipped=False)

    def after_skip_message(self, broker: dramatiq.Broker, message: dramatiq.MessageProxy) -> None:
        self._finish(message, None, skipped=True)

    def _finish(
        self, message: dramatiq.MessageProxy, exception: BaseException | None, *, skipped: bool
    ) -> None:
        local = self._local
        delivery: _Delivery | None = getattr(local, "delivery", None)
        if delivery is None:
            return
        local.delivery = None
        self._end_delivery(delivery, exception, skipped=skipped, actor=message.actor_name)

    def _end_delivery(
        self,
        delivery: _Delivery,
        exception: BaseException | None,
        *,
        skipped: bool,
        actor: str | None = None,
    ) -> None:
        elapsed = time.perf_counter() - delivery.start
        try:
            span = delivery.span
            attributes = delivery.attributes
            if exception is not None:
                error_type = _error_type(exception)
                attributes = self._with_error(attributes, error_type)
                span.set_attribute(sc.ERROR_TYPE, error_type)
                span.record_exception(exception)
                span.set_status(Status(StatusCode.ERROR, f"{type(exception).__name__}: {exception}"[:1024]))
            elif skipped:
                span.set_attribute(sc.SKIPPED, True)
            span.end()
            instruments = self._runtime().instruments
            instruments.consumed.add(attributes)
            if delivery.wait is not None:
                instruments.queue_wait.record(max(delivery.wait, 0.0), attributes)
            if not skipped:
                instruments.process_duration.record(elapsed, attributes)
                if actor is not None:
                    self._collect(actor, elapsed * 1000.0, exception)
                if self.log_steps and len(delivery.steps):
                    logger.info(
                        "Steps of %s (message %s):\n%s",
                        actor,
                        delivery.message_id,
                        delivery.steps.format(elapsed * 1000.0),
                    )
        finally:
            # Detach in reverse order of attaching, whatever failed above.
            with contextlib.suppress(ValueError):
                StepTable.deactivate(delivery.steps_token)
            otel_context.detach(delivery.token)  # type: ignore[arg-type]

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
        delivery: _Delivery | None = getattr(self._local, "delivery", None)
        if delivery is None:
            return {}
        attributes = delivery.attributes
        return {sc.DESTINATION: attributes[sc.DESTINATION], sc.ACTOR: attributes[sc.ACTOR]}

    def _on_event(self, name: str, attributes: Mapping[str, Any]) -> None:
        self._runtime()
        if self._event_metrics is not None:
            self._event_metrics(name, attributes)


# Every live Telemetry instance hears the suite's events through one listener,
# held weakly, so a discarded broker's middleware is not kept alive by it.
_instances: weakref.WeakSet[Telemetry] = weakref.WeakSet()


def _dispatch(name: str, attributes: Mapping[str, Any]) -> None:
    for telemetry in list(_instances):
        telemetry._on_event(name, attributes)


events.add_listener(_dispatch)


def _error_type(exception: BaseException) -> str:
    cls = type(exception)
    module = cls.__module__
    return cls.__qualname__ if module == "builtins" else f"{module}.{cls.__qualname__}"
