"""Trace context in ``message.options``: it travels with the message on every broker."""

from __future__ import annotations

import logging
from typing import Any

from opentelemetry import propagate
from opentelemetry.context import Context

from ..redact import redact_text

__all__ = ["CONTEXT_OPTION", "DELAYED_OPTION", "READY_AT_OPTION", "extract", "inject"]

logger = logging.getLogger("dramatiq_turbo.telemetry")

#: The message option holding the producer's context, as W3C trace-context
#: headers (``{"traceparent": ..., "tracestate": ...}``) or whatever the
#: configured propagator writes.
CONTEXT_OPTION = "turbo_trace"

#: Set while a message waits in a delay queue, so that the broker moving it
#: to its queue when due is not mistaken for a new send.
DELAYED_OPTION = "turbo_trace_delayed"

#: When a delayed message became due, in epoch milliseconds (the queue wait
#: of a delayed or retried message starts then, not when it was created).
READY_AT_OPTION = "turbo_ready_at"


def inject(context: Context | None) -> dict[str, str]:
    """``context`` (``None``: the current one) as a JSON-safe carrier for ``message.options``."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier, context=context)
    return carrier


def extract(options: dict[str, Any]) -> Context | None:
    """The context carried by a message's options, or ``None`` when it carries none.

    Never the caller's current context: a message without context must start
    a new trace, not join whatever ran before it on this thread.
    """
    carrier = options.get(CONTEXT_OPTION)
    if not isinstance(carrier, dict) or not carrier:
        return None
    # The carrier is the sender's: only text headers are headers, and a
    # propagator that chokes on one (a 100 KB baggage, say) gives no parent.
    headers = {
        key: value for key, value in carrier.items() if isinstance(key, str) and isinstance(value, str)
    }
    if not headers:
        return None
    try:
        return propagate.extract(headers, context=Context())
    except Exception:
        logger.debug("Ignoring a malformed trace context %s.", redact_text(str(carrier)[:200]))
        return None
