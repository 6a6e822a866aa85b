"""``configure_telemetry``: OpenTelemetry providers for this process, from ``OTEL_*`` variables.

Why not build the providers once, at import?  Dramatiq's workers are forked
processes that exit with ``os._exit``.  Providers inherited through a fork
carry the parent's unexported spans and cumulative metric state (each child
would report the parent's counts again) and share its HTTP connections.  So
the providers are per process: built on first use in each process (the
``Telemetry`` middleware asks in ``after_process_boot``, right after the fork)
and flushed by the middleware in ``before_worker_shutdown``, since ``atexit``
never runs.
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Any

from opentelemetry import metrics, trace
from opentelemetry.metrics import Meter, MeterProvider, NoOpMeterProvider
from opentelemetry.sdk.metrics import MeterProvider as SdkMeterProvider
from opentelemetry.sdk.metrics.export import (
    ConsoleMetricExporter,
    MetricExporter,
    PeriodicExportingMetricReader,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider as SdkTracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter
from opentelemetry.trace import NoOpTracerProvider, Tracer, TracerProvider

__all__ = ["TelemetrySetup", "configure_telemetry", "configured", "fork_generation"]

logger = logging.getLogger("dramatiq_turbo.telemetry")

_EXTRA_HINT = "the OTLP exporter is an extra: pip install 'dramatiq-turbo[otlp]'"
_EXPORTERS = ("otlp", "console", "none")

# Bumped in every forked child: anything built per process compares it.
_generation = [0]


def _after_fork_in_child() -> None:
    _generation[0] += 1


os.register_at_fork(after_in_child=_after_fork_in_child)


def fork_generation() -> int:
    """Changes in each forked child, so per-process objects know to rebuild."""
    return _generation[0]


class TelemetrySetup:
    """The configuration given to ``configure_telemetry``, and this process's providers.

    Parameters:
      service_name(str): The ``service.name`` resource attribute.
      endpoint(str|None): The OTLP/HTTP base URL; ``None`` lets the
        exporters read ``OTEL_EXPORTER_OTLP_ENDPOINT`` (and the per-signal
        variables), default ``http://localhost:4318``.
    """

    def __init__(self, service_name: str, *, endpoint: str | None = None) -> None:
        self.service_name = service_name
        self.endpoint = endpoint.rstrip("/") if endpoint else None
        self.traces_exporter = _exporter_choice("OTEL_TRACES_EXPORTER")
        self.metrics_exporter = _exporter_choice("OTEL_METRICS_EXPORTER")
        self.disabled = os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true"
        protocol = os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf").strip()
        if protocol != "http/protobuf" and "otlp" in (self.traces_exporter, self.metrics_exporter):
            raise ValueError(
                f"OTEL_EXPORTER_OTLP_PROTOCOL={protocol!r} is not supported: "
                "configure_telemetry exports over OTLP/HTTP ('http/protobuf')"
            )
        if "otlp" in (self.traces_exporter, self.metrics_exporter) and not self.disabled:
            _otlp_module("trace_exporter")  # fail now, with the extra's name, not in a worker
        self._lock = threading.Lock()
        self._generation = -1
        self._tracer_provider: TracerProvider = NoOpTracerProvider()
        self._meter_provider: MeterProvider = NoOpMeterProvider()

    @property
    def tracer_provider(self) -> TracerProvider:
        """This process's tracer provider (built on first use in each process)."""
        self._ensure()
        return self._tracer_provider

    @property
    def meter_provider(self) -> MeterProvider:
        """This process's meter provider (built on first use in each process)."""
        self._ensure()
        return self._meter_provider

    def force_flush(self, timeout: int = 5_000) -> bool:
        """Export what this process has buffered; ``timeout`` in ms per provider."""
        if self._generation != _generation[0]:
            return True  # nothing was built in this process
        ok = True
        for provider in (self._tracer_provider, self._meter_provider):
            flush = getattr(provider, "force_flush", None)
            if flush is not None:
                ok = bool(flush(timeout)) and ok
        return ok

    def shutdown(self) -> None:
        """Flush and stop this process's providers (they are rebuilt if used again)."""
        with self._lock:
            if self._generation != _generation[0]:
                return
            for provider in (self._tracer_provider, self._meter_provider):
                stop = getattr(provider, "shutdown", None)
                if stop is not None:
                    stop()
            self._generation = -1

    def _ensure(self) -> None:
        if self._generation == _generation[0]:
            return
        with self._lock:
            if self._generation == _generation[0]:
                return
            # Whatever a parent built is abandoned, not shut down: shutting it
            # down here would export the parent's buffered data a second time.
            self._tracer_provider, self._meter_provider = self._build()
            self._generation = _generation[0]

    def _build(self) -> tuple[TracerProvider, MeterProvider]:
        if self.disabled:
            return NoOpTracerProvider(), NoOpMeterProvider()
        resource = Resource.create({"service.name": self.service_name, "process.pid": os.getpid()})
        tracer_provider = SdkTracerProvider(resource=resource)
        span_exporter = self._span_exporter()
        if span_exporter is not None:
            tracer_provider.add_span_processor(BatchSpanProcessor(span_exporter))
        metric_exporter = self._metric_exporter()
        readers = [PeriodicExportingMetricReader(metric_exporter)] if metric_exporter is not None else []
        return tracer_provider, SdkMeterProvider(resource=resource, metric_readers=readers)

    def _span_exporter(self) -> SpanExporter | None:
        if self.traces_exporter == "none":
            return None
        if self.traces_exporter == "console":
            return ConsoleSpanExporter()
        module = _otlp_module("trace_exporter")
        kwargs: dict[str, Any] = {"endpoint": f"{self.endpoint}/v1/traces"} if self.endpoint else {}
        exporter: SpanExporter = module.OTLPSpanExporter(**kwargs)
        return exporter

    def _metric_exporter(self) -> MetricExporter | None:
        if self.metrics_exporter == "none":
            return None
        if self.metrics_exporter == "console":
            return ConsoleMetricExporter()
        module = _otlp_module("metric_exporter")
        kwargs: dict[str, Any] = {"endpoint": f"{self.endpoint}/v1/metrics"} if self.endpoint else {}
        exporter: MetricExporter = module.OTLPMetricExporter(**kwargs)
        return exporter


def _exporter_choice(variable: str) -> str:
    value = os.environ.get(variable, "otlp").strip().lower() or "otlp"
    if value not in _EXPORTERS:
        raise ValueError(f"{variable}={value!r} is not supported; use one of {', '.join(_EXPORTERS)}")
    return value


def _otlp_module(name: str) -> Any:
    import importlib

    try:
        return importlib.import_module(f"opentelemetry.exporter.otlp.proto.http.{name}")
    except ImportError as error:
        raise ImportError(f"configure_telemetry: {_EXTRA_HINT} ({error})") from error


class _ProcessTracerProvider(TracerProvider):
    """The global tracer provider after ``configure_telemetry``: this process's, after any fork."""

    def get_tracer(self, *args: Any, **kwargs: Any) -> Tracer:
        setup = _setup
        provider = setup.tracer_provider if setup is not None else NoOpTracerProvider()
        return provider.get_tracer(*args, **kwargs)

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return _setup.force_flush(timeout_millis) if _setup is not None else True


class _ProcessMeterProvider(MeterProvider):
    """The global meter provider after ``configure_telemetry``: this process's, after any fork."""

    def get_meter(self, *args: Any, **kwargs: Any) -> Meter:
        setup = _setup
        provider = setup.meter_provider if setup is not None else NoOpMeterProvider()
        return provider.get_meter(*args, **kwargs)

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return _setup.force_flush(timeout_millis) if _setup is not None else True


_setup: TelemetrySetup | None = None
_globals_installed = False


def configured() -> TelemetrySetup | None:
    """The setup made by the last ``configure_telemetry`` call, if any."""
    return _setup


def configure_telemetry(service_name: str, *, endpoint: str | None = None) -> TelemetrySetup:
    """Export traces and metrics of this service over OTLP/HTTP, configured by ``OTEL_*`` variables.

    Call it once at import time of the module that creates your broker (so
    in every worker process).  Providers are built per process after any
    fork; the ``Telemetry`` middleware builds them in ``after_process_boot``
    and flushes them in ``before_worker_shutdown``.  The global OpenTelemetry
    providers are pointed at them, so your own ``trace.get_tracer(...)``
    spans go to the same place.

    Standard variables honoured: ``OTEL_EXPORTER_OTLP_ENDPOINT`` (and
    ``..._TRACES_ENDPOINT`` / ``..._METRICS_ENDPOINT``), ``..._HEADERS``,
    ``..._TIMEOUT``, ``..._COMPRESSION``, ``OTEL_TRACES_EXPORTER`` /
    ``OTEL_METRICS_EXPORTER`` (``otlp``, ``console`` or ``none``),
    ``OTEL_RESOURCE_ATTRIBUTES``, ``OTEL_TRACES_SAMPLER``, ``OTEL_BSP_*``,
    ``OTEL_METRIC_EXPORT_INTERVAL``, ``OTEL_PROPAGATORS`` and
    ``OTEL_SDK_DISABLED``.

    Parameters:
      service_name(str): The ``service.name`` of every span and metric.
      endpoint(str|None): The OTLP/HTTP base URL, as in
        ``OTEL_EXPORTER_OTLP_ENDPOINT`` (``/v1/traces`` and ``/v1/metrics``
        are appended); ``None`` reads the variables.

    Returns:
      TelemetrySetup: with ``force_flush()`` and ``shutdown()``.

    Raises:
      ImportError: naming the ``otlp`` extra when the exporter is missing.
      ValueError: for an empty service name, a bad endpoint or an
        unsupported ``OTEL_*`` value.
    """
    global _setup, _globals_installed
    if not isinstance(service_name, str) or not service_name.strip():
        raise ValueError(f"configure_telemetry needs a non-empty service_name, got {service_name!r}")
    if endpoint is not None and (
        not isinstance(endpoint, str) or not endpoint.startswith(("http://", "https://"))
    ):
        raise ValueError(
            f"endpoint must be an http(s):// URL such as 'http://collector:4318', got {endpoint!r}"
        )
    setup = TelemetrySetup(service_name, endpoint=endpoint)
    previous, _setup = _setup, setup
    if previous is not None:
        # Called again: the new configuration replaces the old one, whose
        # providers (if built in this process) are flushed and stopped.
        previous.shutdown()
    if not _globals_installed:
        _globals_installed = True
        # set_*_provider refuses to replace a provider someone already set:
        # then only the Telemetry middleware uses ours, and it logs why.
        trace.set_tracer_provider(_ProcessTracerProvider())
        metrics.set_meter_provider(_ProcessMeterProvider())
        if not isinstance(trace.get_tracer_provider(), _ProcessTracerProvider):
            logger.warning(
                "configure_telemetry: a global tracer provider was already set; "
                "only the Telemetry middleware will use the configured exporters."
            )
    return setup
