"""Global rate and concurrency limits for Dramatiq actors, exact across every worker process.

``RateLimiter`` is the middleware; ``rate_limit(key, ...)`` limits a block of
actor code (per call, not per message) from the same store;
``RedisLimitStore`` and ``LocalLimitStore`` count the limits (shared in
Redis, or per process); ``parse_rule`` reads a ``rate_limit`` option.
"""

from .inline import DEFAULT_MAX_WAIT, Permit, RateLimitTimeout, current_permit, rate_limit
from .middleware import OPTION, RateLimiter, admitted_at
from .rules import DEFAULT_LEASE, InvalidRateLimit, Rule, parse_rule
from .store import Decision, LimitStore, LocalLimitStore, RedisLimitStore

__all__ = [
    "DEFAULT_LEASE",
    "DEFAULT_MAX_WAIT",
    "OPTION",
    "Decision",
    "InvalidRateLimit",
    "LimitStore",
    "LocalLimitStore",
    "Permit",
    "RateLimitTimeout",
    "RateLimiter",
    "RedisLimitStore",
    "Rule",
    "admitted_at",
    "current_permit",
    "parse_rule",
    "rate_limit",
]
