"""Trace context in ``message.options``: it travels with the message on every broker."""

from __future__ import annotations

from typing import Any

from opentelemetry import propagate
from opentelemetry.context import Context

__all__ = ["CONTEXT_OPTION", "DELAYED_OPTION", "READY_AT_OPTION", "extract", "inject"]

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
    return propagate.extract(carrier, context=Context())
