"""Malformed message options never crash a worker thread and never lose a message.

Options arrive in ``message.options`` from whoever sent the message: another
process, an older version, or someone hostile.  Actor declarations are
checked when the actor is declared (``OptionError``); a message's options
are only ever checked by the middleware that reads them, while the message
is processed.  For every option the suite reads, whatever JSON a sender puts
there, each delivery must end *completed*, *requeued* (retried or deferred)
or *dead-lettered*, the worker thread must go on to run the next message,
and no exception may escape from ``dramatiq_turbo`` code except in a log
line that reports a refusal on purpose.

The decisions, per option (see ``docs/reliability.md``):

* ``cache``, ``cache_ttl``, ``cache_key``, ``cache_version``,
  ``rate_limit``: a malformed message value is ignored with a warning that
  names the option, and the actor's own (declared, checked) setting applies.
* ``turbo_deferrals``: a count that is not a non-negative int counts as 0.
* ``turbo_trace``, ``turbo_ready_at``, ``retries`` (as a span attribute): a
  malformed value is ignored (no parent, no queue-wait sample, no attribute).
* ``max_stalls``: a malformed value is ignored with a warning (``StallGuard``'s default).
* ``min_backoff``, ``max_backoff``, ``jitter``, ``backoff``,
  ``turbo_backoff_delay``: the failed message is dead-lettered with the
  reason in its ``turbo_failure`` option (``Backoff``).
"""

from __future__ import annotations

import itertools
import math
import threading
import time
from typing import Any

import dramatiq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dramatiq_turbo import RateLimiter
from dramatiq_turbo.options import OptionError
from dramatiq_turbo.ratelimit.rules import InvalidRateLimit

from .conftest import Stack, TracebackLog

# -- what a sender may put in an option: any JSON, and values close to valid ones ---------------

_ODD_STRINGS = ["", " ", "full", "bounded", "none", "None", "true", "1000", "-1", "\ud800", "{x}"]
_ODD_STRINGS.append("a" * 10_000)
_ODD_NUMBERS = [0, 1, -1, -(2**63), 2**63, 2**64 + 1, 10**30, -(10**30), 0.5, 1.5, -0.0, 1e300]

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**80), max_value=2**80)
    | st.sampled_from(_ODD_NUMBERS)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20)
    | st.sampled_from(_ODD_STRINGS)
)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=6,
)
numbers = st.sampled_from(_ODD_NUMBERS) | st.integers() | st.floats(allow_nan=True, allow_infinity=True)
_RULE_KEYS = ["max", "duration", "key", "burst", "concurrency", "lease"]
rate_limits = (
    json_values
    | st.lists(numbers | json_values, min_size=0, max_size=3)
    | st.dictionaries(st.sampled_from([*_RULE_KEYS, "bogus"]), numbers | json_values, max_size=4)
)
carriers = json_values | st.dictionaries(
    st.sampled_from(["traceparent", "tracestate", "baggage"]), json_values, min_size=1, max_size=3
)


def _values_for(name: str) -> st.SearchStrategy[Any]:
    if name == "rate_limit":
        return rate_limits
    if name == "turbo_trace":
        return carriers
    return numbers | json_values


#: Options each actor's messages are fuzzed with (the names the middleware read for such a message).
_GATE_OPTIONS = {
    "plain": [
        "cache",
        "cache_key",
        "cache_ttl",
        "cache_version",
        "rate_limit",
        "breaker",
        "retries",
        "max_stalls",
    ],
    "cached": ["cache", "cache_key", "cache_ttl", "cache_version"],
    "rated": ["rate_limit", "turbo_deferrals", "turbo_deferred_by"],
    "exclusive": ["rate_limit", "turbo_deferrals", "turbo_deferred_by"],
    "breakered": ["breaker", "turbo_deferrals"],
}
_TELEMETRY_OPTIONS = ["turbo_trace", "turbo_trace_delayed", "turbo_ready_at"]
#: Every option Backoff reads from a message (Dramatiq's Retries options and its own).
_BACKOFF_OPTIONS = [
    "min_backoff",
    "max_backoff",
    "jitter",
    "backoff",
    "turbo_backoff_delay",
    "retries",
    "max_retries",
    "retry_when",
    "throws",
]


def _options(names: list[str]) -> st.SearchStrategy[dict[str, Any]]:
    return st.dictionaries(st.sampled_from(names), st.just(None), min_size=1, max_size=3).flatmap(
        lambda chosen: st.fixed_dictionaries({name: _values_for(name) for name in chosen})
    )


gate_messages = st.sampled_from(sorted(_GATE_OPTIONS)).flatmap(
    lambda actor: st.tuples(
        st.just(actor), _options([*_GATE_OPTIONS[actor], *_TELEMETRY_OPTIONS, "turbo_due"])
    )
)

# -- the stack -------------------------------------------------------------------------------


class Actors:
    """The actors the fuzzed messages are sent to, and what they ran."""

    def __init__(self) -> None:
        self.runs: list[tuple[str, Any]] = []
        self.release = threading.Event()
        self.count = itertools.count()

    def declare(self) -> None:
        runs, release = self.runs, self.release

        @dramatiq.actor(queue_name="abuse")
        def plain(x: Any) -> Any:
            runs.append(("plain", x))
            return x

        @dramatiq.actor(queue_name="abuse", cache_ttl=60_000)
        def cached(x: Any) -> Any:
            runs.append(("cached", x))
            return x

        # One start per hour: every message after the first is deferred.
        @dramatiq.actor(queue_name="abuse", rate_limit=(1, 3_600_000))
        def rated(x: Any) -> Any:
            runs.append(("rated", x))

        # One at a time, and the first one holds the slot until the test ends.
        @dramatiq.actor(queue_name="abuse", rate_limit={"concurrency": 1})
        def exclusive(x: Any) -> Any:
            runs.append(("exclusive", x))
            if x == "hold":
                release.wait(30)

        # A budget per customer, named from the message's own arguments.
        @dramatiq.actor(
            queue_name="abuse", rate_limit={"max": 5, "duration": 1_000, "key": lambda m: m.kwargs["c"]}
        )
        def per_customer(x: Any, c: str = "") -> Any:
            runs.append(("per_customer", x))

        @dramatiq.actor(queue_name="abuse", breaker="dependency")
        def breakered(x: Any) -> Any:
            runs.append(("breakered", x))

        @dramatiq.actor(queue_name="abuse", max_retries=1, min_backoff=10, max_backoff=20)
        def failing(x: Any) -> Any:
            runs.append(("failing", x))
            raise RuntimeError("the dependency is down")

        self.actors = {
            a.actor_name: a for a in (plain, cached, rated, exclusive, per_customer, breakered, failing)
        }

    def unique(self) -> str:
        return f"x{next(self.count)}"


@pytest.fixture
def fuzz_stack(make_stack, log_records) -> tuple[Stack, Actors, TracebackLog]:
    actors = Actors()
    stack = make_stack(actors.declare, worker_threads=3, rate_limit=RateLimiter(max_wait=0))
    # Take the hourly start of `rated`, and the slot of `exclusive`, before fuzzing.
    first = actors.actors["rated"].send("first")
    stack.fates.first(first.message_id)
    actors.actors["exclusive"].send("hold")
    wait_for_run(actors, ("exclusive", "hold"))
    yield stack, actors, log_records
    actors.release.set()


def send(stack: Stack, actor: Any, x: Any, options: dict[str, Any], *, foreign: bool) -> dramatiq.Message:
    """Send ``x`` to ``actor`` with ``options``: through the broker, or as a foreign sender would.

    A foreign sender (another version, another stack, someone hostile) puts
    the encoded message on the queue without this stack's ``before_enqueue``
    hooks, which would otherwise normalize some options (``turbo_due``,
    ``turbo_ready_at``) on the way out.
    """
    message = actor.message_with_options(args=(x,), **options)
    if not foreign:
        return stack.broker.enqueue(message)
    stack.broker.queues[message.queue_name].put(message.encode())
    return message


def wait_for_run(actors: Actors, run: tuple[str, Any], timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while run not in actors.runs:
        if time.monotonic() > deadline:
            raise AssertionError(f"{run} never ran")
        time.sleep(0.005)


def _deliberate(record: Any) -> bool:
    """A log line that reports, on purpose, a refusal of a bad option (not a crash)."""
    error = record.exc_info[1] if record.exc_info else None
    return isinstance(error, OptionError | InvalidRateLimit) or record.getMessage().startswith(
        "Could not retry message"
    )


def check_survives(stack: Stack, actors: Actors, log: TracebackLog, mark: int, message_id: str) -> str:
    """The guarantees: a fate for the message, a live worker, and no stray traceback from our code."""
    fate = stack.fates.first(message_id).fate
    assert fate in ("completed", "requeued", "dead"), f"message {message_id} was {fate}"
    # The worker thread that had the bad message runs the next good one.
    good = actors.unique()
    actors.actors["plain"].send(good)
    wait_for_run(actors, ("plain", good))
    assert stack.threads_alive()
    stray = [
        r
        for r in log.since(mark)
        if (log.from_library(r) and not _deliberate(r)) or r.getMessage().startswith("Unexpected failure in")
    ]
    assert not stray, "an exception escaped from dramatiq_turbo:\n" + "\n".join(
        f"{r.getMessage()}: {r.exc_info[1]!r}" if r.exc_info else r.getMessage() for r in stray[:3]
    )
    return fate


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=gate_messages, foreign=st.booleans())
def test_malformed_gate_and_telemetry_options_never_crash_nor_lose_a_message(
    fuzz_stack, case, foreign
) -> None:
    stack, actors, log = fuzz_stack
    actor, options = case
    if not foreign:
        options.pop("turbo_due", None)  # this stack's sender writes its own
    mark = log.mark()
    message = send(stack, actors.actors[actor], actors.unique(), options, foreign=foreign)
    check_survives(stack, actors, log, mark, message.message_id)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(options=_options(_BACKOFF_OPTIONS), foreign=st.booleans())
def test_malformed_backoff_options_retry_or_dead_letter_with_the_reason(fuzz_stack, options, foreign) -> None:
    stack, actors, log = fuzz_stack
    mark = log.mark()
    message = send(stack, actors.actors["failing"], actors.unique(), options, foreign=foreign)
    fate = check_survives(stack, actors, log, mark, message.message_id)
    assert fate in ("requeued", "dead")
    if fate == "dead":
        (dead,) = [m for m in stack.broker.dead_letters if m.message_id == message.message_id]
        assert dead.options["turbo_failure"]["reason"]


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("cache_ttl", "60s"),
        ("cache_ttl", -5),
        ("cache_ttl", 10**30),
        ("cache_key", "not a function"),
        ("cache", "yes"),
        ("rate_limit", {"max": "ten"}),
        ("rate_limit", [1, -1_000]),
        ("rate_limit", {"max": 1, "duration": 10**30}),
    ],
)
def test_a_malformed_option_falls_back_to_the_actor_setting_with_a_warning(
    fuzz_stack, option: str, value: Any
) -> None:
    stack, actors, log = fuzz_stack
    mark = log.mark()
    x = actors.unique()
    message = actors.actors["plain"].send_with_options(args=(x,), **{option: value})
    assert stack.fates.first(message.message_id).fate == "completed"
    assert ("plain", x) in actors.runs
    warnings = [r.getMessage() for r in log.since(mark) if r.levelname == "WARNING"]
    assert any(option in text and message.message_id in text for text in warnings), warnings


def test_a_message_its_rate_limit_key_cannot_name_is_dead_lettered_not_run_unlimited(fuzz_stack) -> None:
    """A key function that fails on a message's arguments: the message must not run past every limit."""
    stack, actors, _ = fuzz_stack
    x = actors.unique()
    message = send(stack, actors.actors["per_customer"], x, {}, foreign=True)  # no "c" keyword
    assert stack.fates.first(message.message_id).fate == "dead"
    assert ("per_customer", x) not in actors.runs
    (dead,) = [m for m in stack.broker.dead_letters if m.message_id == message.message_id]
    failure = dead.options["turbo_failure"]
    assert failure["error"] == "InvalidRateLimit" and "key function failed" in failure["detail"]
    assert "KeyError" in failure["detail"]


@pytest.mark.parametrize("count", [-5, "three", 2.5, [1], None, 10**30])
def test_a_malformed_deferral_count_still_defers_the_message(fuzz_stack, count: Any) -> None:
    """The concurrency deferral grows with ``turbo_deferrals``: a bad count must not let the message run."""
    stack, actors, _log = fuzz_stack
    x = actors.unique()
    message = actors.actors["exclusive"].send_with_options(args=(x,), turbo_deferrals=count)
    delivery = stack.fates.first(message.message_id)
    assert delivery.fate == "requeued"
    # Deferred, not run past its limit while the slot is held.
    assert ("exclusive", x) not in actors.runs
    (delay,) = delivery.enqueued_again
    assert isinstance(delay, int) and 0 < delay <= 10_100


def _queue_waits(stack: Stack) -> tuple[int, float]:
    """How many queue-wait samples were recorded, and their sum."""
    data = stack.metrics.get_metrics_data()
    points = [
        point
        for rm in (data.resource_metrics if data else ())
        for sm in rm.scope_metrics
        for metric in sm.metrics
        if metric.name == "turbo.queue.wait.duration"
        for point in metric.data.data_points
    ]
    return sum(p.count for p in points), sum(p.sum for p in points)


@pytest.mark.parametrize("ready_at", [math.nan, -math.inf, "yesterday", [1], 10**400])
def test_a_malformed_ready_time_falls_back_to_the_send_time(fuzz_stack, ready_at: Any) -> None:
    """The queue wait of a message with a bad ``turbo_ready_at`` is measured from when it was sent."""
    stack, actors, log = fuzz_stack
    count, total = _queue_waits(stack)
    mark = log.mark()
    message = send(stack, actors.actors["plain"], actors.unique(), {"turbo_ready_at": ready_at}, foreign=True)
    assert stack.fates.first(message.message_id).fate == "completed"
    new_count, new_total = _queue_waits(stack)
    assert new_count == count + 1
    assert 0 <= new_total - total < 60
    assert not [r for r in log.since(mark) if "not finite" in r.getMessage()]


# -- Backoff's own and Dramatiq's retry options, as a sender may set them ------------------------


# A bad "throws" would reach Dramatiq's own isinstance check and kill the worker thread.
@pytest.mark.parametrize(
    ("option", "value"),
    [("retries", "many"), ("max_retries", "ten"), ("retry_when", "always"), ("throws", "ValueError")],
)
def test_bad_retry_options_are_ignored_and_the_message_kept(fuzz_stack, option: str, value: Any) -> None:
    stack, actors, log = fuzz_stack
    mark = log.mark()
    message = actors.actors["failing"].send_with_options(args=(actors.unique(),), **{option: value})
    check_survives(stack, actors, log, mark, message.message_id)


@pytest.mark.parametrize("due", [math.nan, math.inf, -math.inf, 10**400])
def test_a_non_finite_due_time_is_ignored_by_the_monitor(fuzz_stack, due: float) -> None:
    stack, actors, log = fuzz_stack
    mark = log.mark()
    message = send(stack, actors.actors["plain"], actors.unique(), {"turbo_due": due}, foreign=True)
    check_survives(stack, actors, log, mark, message.message_id)


def test_finite_due_times_of_any_size_are_fine(fuzz_stack) -> None:
    stack, actors, log = fuzz_stack
    for due in (-(10**30), 10**30, 1.5, "soon", None, [1]):
        mark = log.mark()
        message = send(stack, actors.actors["plain"], actors.unique(), {"turbo_due": due}, foreign=True)
        assert check_survives(stack, actors, log, mark, message.message_id) == "completed"


def test_backoff_dead_letters_an_unknown_jitter_with_the_reason(fuzz_stack) -> None:
    stack, actors, _log = fuzz_stack
    message = actors.actors["failing"].send_with_options(args=(actors.unique(),), jitter="gaussian")
    assert stack.fates.first(message.message_id).fate == "dead"
    (dead,) = [m for m in stack.broker.dead_letters if m.message_id == message.message_id]
    assert "jitter must be one of" in dead.options["turbo_failure"]["reason"]
