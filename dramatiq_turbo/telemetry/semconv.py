"""Names from the OpenTelemetry messaging semantic conventions, and the suite's own.

Kept in one place so spans, metrics, tests and docs cannot drift apart.
"""

from __future__ import annotations

__all__ = [
    "ACTOR",
    "DESTINATION",
    "DURATION_BUCKETS",
    "ERROR_TYPE",
    "MESSAGE_ID",
    "OPERATION_NAME",
    "OPERATION_TYPE",
    "RETRIES",
    "SKIPPED",
    "SYSTEM",
    "SYSTEM_NAME",
]

SYSTEM = "messaging.system"
SYSTEM_NAME = "dramatiq"
DESTINATION = "messaging.destination.name"
MESSAGE_ID = "messaging.message.id"
OPERATION_TYPE = "messaging.operation.type"
OPERATION_NAME = "messaging.operation.name"
ERROR_TYPE = "error.type"

# Dramatiq-specific attributes: the conventions leave system-specific names
# to a ``messaging.<system>.`` namespace.
ACTOR = "messaging.dramatiq.actor"
RETRIES = "messaging.dramatiq.retries"
SKIPPED = "messaging.dramatiq.skipped"

#: The bucket advice of the messaging duration histograms, in seconds.
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)
