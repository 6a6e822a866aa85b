"""Global rate and concurrency limits for Dramatiq actors, exact across every worker process.

``RateLimiter`` is the middleware; ``RedisLimitStore`` and ``LocalLimitStore``
count the limits (shared in Redis, or per process); ``parse_rule`` reads a
``rate_limit`` option.
"""

from .middleware import OPTION, RateLimiter, admitted_at
from .rules import DEFAULT_LEASE, InvalidRateLimit, Rule, parse_rule
from .store import Decision, LimitStore, LocalLimitStore, RedisLimitStore

__all__ = [
    "DEFAULT_LEASE",
    "OPTION",
    "Decision",
    "InvalidRateLimit",
    "LimitStore",
    "LocalLimitStore",
    "RateLimiter",
    "RedisLimitStore",
    "Rule",
    "admitted_at",
    "parse_rule",
]
