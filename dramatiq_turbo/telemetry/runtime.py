"""The tracer and instruments of one process, and whether they record anything.

OpenTelemetry's no-op providers (and its global proxies, until a real
provider is set) make spans and records that go nowhere, yet building them
costs the ``Telemetry`` middleware more than everything else it does.  So a
``Runtime`` finds out when it is built whether its tracer and meter are
no-ops (a proxy: on every message until a provider is set, a cheap check),
and the middleware skips that work for them, keeping only what a no-op
tracer still does: carrying a message's trace context along.
"""

from __future__ import annotations

from opentelemetry import trace
from opentelemetry.metrics import Meter, MeterProvider, NoOpMeter
from opentelemetry.trace import NoOpTracer, ProxyTracer, Tracer

from . import setup as _setup
from .instruments import Instruments

__all__ = ["Runtime"]

try:  # private, so looked up defensively: without it a proxy meter counts as recording
    from opentelemetry.metrics._internal import _ProxyMeter
except ImportError:  # pragma: no cover - another opentelemetry-api layout
    _ProxyMeter = None  # type: ignore[assignment,misc]

_UNKNOWN = object()


class Runtime:
    """The tracer and instruments of one process (rebuilt after a fork).

    Parameters:
      tracer(Tracer): Makes the spans.
      meter_provider(MeterProvider): Where ``meter`` came from.
      meter(Meter): Made ``instruments``.
      instruments(Instruments): The middleware's metric instruments.
      generation(int): ``fork_generation()`` when built.
      setup(object): The ``configure_telemetry`` setup it was built from.
    """

    __slots__ = (
        "generation",
        "instruments",
        "meter",
        "meter_provider",
        "metering",
        "setup",
        "tracer",
        "tracing",
        "waiting",
    )

    def __init__(
        self,
        *,
        tracer: Tracer,
        meter_provider: MeterProvider,
        meter: Meter,
        instruments: Instruments,
        generation: int,
        setup: object,
    ) -> None:
        self.tracer = tracer
        self.meter_provider = meter_provider
        self.meter = meter
        self.instruments = instruments
        self.generation = generation
        self.setup = setup
        self.tracing = False  # spans are made (else: only the context is carried)
        self.metering = False  # records and counts are made
        self.waiting = False  # a global proxy may start recording later
        self._resolve()

    def current(self) -> bool:
        """Built in this process from the latest ``configure_telemetry`` setup."""
        if self.waiting:
            self._resolve()
        # Asked on every message: read the setup module's state directly.
        return self.generation == _setup._generation[0] and self.setup is _setup._setup

    def _resolve(self) -> None:
        # A proxy follows the global provider once one is set: from then on
        # its spans and records are real, through the same objects.
        tracer_waiting = _tracer_waiting(self.tracer)
        meter_waiting = _meter_waiting(self.meter)
        self.tracing = not (tracer_waiting or isinstance(self.tracer, NoOpTracer))
        self.metering = not (meter_waiting or isinstance(self.meter, NoOpMeter))
        self.waiting = tracer_waiting or meter_waiting


def _tracer_waiting(tracer: Tracer) -> bool:
    """A proxy tracer while no global tracer provider is set."""
    if not isinstance(tracer, ProxyTracer):
        return False
    # Private, so read defensively: if it is gone, the proxy counts as recording.
    return getattr(trace, "_TRACER_PROVIDER", _UNKNOWN) is None


def _meter_waiting(meter: Meter) -> bool:
    """A proxy meter while no real meter is behind it."""
    if _ProxyMeter is None or not isinstance(meter, _ProxyMeter):
        return False
    return getattr(meter, "_real_meter", _UNKNOWN) is None
