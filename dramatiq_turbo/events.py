"""The suite's events: what its middleware did for the current message.

Cache hits, deferrals, waits, breaker changes and outages are recorded here
once.  Each event becomes an event on the current OpenTelemetry span (a no-op
when no SDK is configured) and is passed to every listener, which is how the
``Telemetry`` middleware turns them into metrics without the other middleware
knowing about it.

The vocabulary (name: attributes).  Attributes named here are low-cardinality
and may become metric attributes; others (such as ``delay_ms``) only go on
the span.

=================  ==========================================================
``cache.hit``      ``level`` (``"l1"`` or ``"l2"``)
``cache.miss``     -
``cache.store``    -
``cache.wait``     single-flight: waited for another computer; ``outcome``
``defer``          ``reason`` (``"rate_limit"``, ``"circuit_open"``); ``delay_ms``
``ratelimit.wait`` waited in-thread for a slot; ``wait_ms``
``breaker.state``  ``breaker``, ``state``, ``previous``: a transition
``breaker.reject`` ``breaker``: a call refused while open
``retry``          ``reason`` (exception type); ``delay_ms``, ``retries``
``giveup``         ``reason``: retries exhausted or not retryable
``outage``         ``component``, ``error_type``: Redis became unreachable
``recovered``      ``component``: Redis is reachable again
=================  ==========================================================
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections.abc import Callable, Mapping
from typing import Any

from opentelemetry import trace

__all__ = ["EventListener", "add_listener", "listen_while_alive", "record", "remove_listener"]

logger = logging.getLogger(__name__)

#: A listener gets the event's name (``"cache.hit"``) and its attributes.
EventListener = Callable[[str, Mapping[str, Any]], None]

_listeners: tuple[EventListener, ...] = ()
_listeners_lock = threading.Lock()


def add_listener(listener: EventListener) -> None:
    """Call ``listener(name, attributes)`` for every event from now on."""
    global _listeners
    with _listeners_lock:
        if listener not in _listeners:
            _listeners = (*_listeners, listener)


def listen_while_alive(owner: object, method: str) -> None:
    """Call ``owner.<method>(name, attributes)`` for every event while ``owner`` lives.

    ``owner`` is held weakly, so a discarded broker's middleware is not kept
    alive by its listener, which goes when it does.  One listener per owner
    keeps ``record`` a loop over a tuple: every event of every message pays
    for whatever a listener does before it can decide to do nothing.
    """
    reference = weakref.ref(owner)

    def listener(name: str, attributes: Mapping[str, Any]) -> None:
        target = reference()
        if target is not None:
            getattr(target, method)(name, attributes)

    add_listener(listener)
    weakref.finalize(owner, remove_listener, listener)


def remove_listener(listener: EventListener) -> None:
    """Stop calling ``listener``; unknown listeners are ignored."""
    global _listeners
    with _listeners_lock:
        _listeners = tuple(known for known in _listeners if known != listener)


def record(name: str, /, **attributes: Any) -> None:
    """Record event ``name`` (such as ``"cache.hit"``) with low-cardinality attributes.

    A listener that raises is logged and does not stop the message: events
    are observations, never control flow.
    """
    span = trace.get_current_span()
    if span.is_recording():
        span.add_event(f"turbo.{name}", attributes)
    # Read the tuple once: listeners may be added by another thread meanwhile.
    for listener in _listeners:
        try:
            listener(name, attributes)
        except Exception:
            logger.exception("Event listener %r failed on %r.", listener, name)
