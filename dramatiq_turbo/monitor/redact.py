"""Broker URLs without their secrets, for every line the monitor prints or logs.

The helpers live in ``dramatiq_turbo.redact`` (the telemetry and HTTP
tools use them too); this module keeps the monitor's names.
"""

from __future__ import annotations

from ..redact import MASK, RedactingFilter, Redactor, protect_logs, redact_text, redact_url

__all__ = ["MASK", "RedactingFilter", "Redactor", "protect_logs", "redact_text", "redact_url"]
