"""install(): the suite's middleware in the one right order, never twice."""

from __future__ import annotations

import dramatiq
import pytest
from dramatiq.brokers.stub import StubBroker
from dramatiq.middleware import (
    AgeLimit,
    Callbacks,
    Middleware,
    Pipelines,
    Retries,
    ShutdownNotifications,
    TimeLimit,
)

from dramatiq_turbo import install
from dramatiq_turbo.install import _BACKOFF, _GATES, _TELEMETRY


class StandIn(Middleware):
    """A configured instance for one install() slot."""

    def __init__(self, label: str) -> None:
        self.label = label

    def __repr__(self) -> str:
        return f"StandIn({self.label})"


def _stand_ins() -> dict[str, Middleware]:
    # One class per slot, as the real middleware are.
    return {
        flag: type(f"StandIn_{flag}", (StandIn,), {})(flag)
        for flag in ("telemetry", "monitor", "cache", "stall", "rate_limit", "breaker", "backoff")
    }


def _order(broker: dramatiq.Broker) -> list[str]:
    return [m.label if isinstance(m, StandIn) else type(m).__name__ for m in broker.middleware]


def test_install_orders_the_suite_around_dramatiqs_defaults():
    broker = StubBroker()
    assert install(broker, **_stand_ins()) is broker

    assert _order(broker) == [
        "telemetry",  # first: its span covers every other hook
        "monitor",  # its counts see every gate's deferral and Backoff's decision
        "AgeLimit",
        "TimeLimit",
        "ShutdownNotifications",
        "Callbacks",
        "Pipelines",
        "backoff",  # where Retries stood
        "cache",  # a hit is marked before the limiter and breaker look
        "stall",  # after the cache: an L1 hit runs no actor code and counts no start
        "rate_limit",
        "breaker",
    ]
    assert not any(isinstance(m, Retries) for m in broker.middleware), (
        "two retry middleware would retry twice"
    )


def test_install_twice_adds_nothing_twice():
    broker = StubBroker()
    stand_ins = _stand_ins()
    install(broker, **stand_ins)
    first = list(broker.middleware)

    install(broker, **stand_ins)
    install(broker, **{flag: type(m)(f"{flag}-again") for flag, m in stand_ins.items()})

    assert broker.middleware == first


def test_install_fills_gaps_in_order_when_called_again():
    broker = StubBroker()
    stand_ins = _stand_ins()
    install(
        broker,
        cache=stand_ins["cache"],
        breaker=stand_ins["breaker"],
        rate_limit=False,
        backoff=False,
        telemetry=False,
        monitor=False,
        stall=False,
    )
    install(
        broker,
        rate_limit=stand_ins["rate_limit"],
        cache=False,
        breaker=False,
        backoff=False,
        telemetry=False,
        monitor=False,
        stall=False,
    )
    install(broker, stall=stand_ins["stall"], cache=False, telemetry=False, monitor=False, backoff=False)

    assert _order(broker)[-4:] == ["cache", "stall", "rate_limit", "breaker"]


def test_install_with_everything_off_leaves_the_broker_alone():
    broker = StubBroker()
    before = list(broker.middleware)
    install(
        broker,
        cache=False,
        breaker=False,
        rate_limit=False,
        backoff=False,
        telemetry=False,
        monitor=False,
        stall=False,
    )
    assert broker.middleware == before


def test_install_keeps_user_middleware_and_replays_declared_actors():
    broker = StubBroker(
        middleware=[AgeLimit(), TimeLimit(), ShutdownNotifications(), Callbacks(), Pipelines(), Retries()]
    )
    declared: list[str] = []

    class Recorder(Middleware):
        def after_declare_actor(self, broker, actor):
            declared.append(actor.actor_name)

    @dramatiq.actor(broker=broker)
    def early() -> None: ...

    install(
        broker,
        cache=type("StandIn_cache", (Recorder,), {})(),
        breaker=False,
        rate_limit=False,
        backoff=False,
        telemetry=False,
    )
    assert declared == ["early"], "a middleware added after an actor still sees it"


@pytest.mark.parametrize("bad", [None, "yes", 1, Retries])
def test_install_rejects_flags_that_are_not_bool_or_middleware(bad):
    with pytest.raises(TypeError, match=r"install\(cache=\.\.\.\)"):
        install(StubBroker(), cache=bad)


def test_default_flags_add_only_the_middleware_the_suite_ships():
    broker = StubBroker()
    shipped = [slot.load() for slot in (_TELEMETRY, _BACKOFF, *_GATES)]
    install(broker)
    for cls in shipped:
        if cls is not None:
            assert sum(type(m) is cls for m in broker.middleware) == 1


def test_install_stays_the_function_after_its_module_is_imported():
    import subprocess
    import sys

    code = (
        "import dramatiq_turbo.install, dramatiq_turbo\n"
        "from dramatiq_turbo import install\n"
        "assert callable(install) and install.__module__ == 'dramatiq_turbo.install', install\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr


def test_a_retries_subclass_is_replaced_too():
    """Left beside Backoff, a Retries subclass would retry every failure a second time."""

    class MyRetries(Retries):
        pass

    broker = StubBroker(middleware=[MyRetries(max_retries=2)])
    install(broker, **_stand_ins())
    assert not any(isinstance(m, Retries) for m in broker.middleware)
    assert _order(broker)[-5:] == ["backoff", "cache", "stall", "rate_limit", "breaker"]


def test_a_subclass_of_a_suite_middleware_fills_its_slot():
    from dramatiq_turbo import ResultCache

    class MyCache(ResultCache):
        pass

    mine = MyCache()
    broker = StubBroker(middleware=[Retries(), mine])
    install(broker, telemetry=False, rate_limit=False, breaker=False)
    assert [m for m in broker.middleware if isinstance(m, ResultCache)] == [mine]


def test_install_puts_the_queue_stats_recorder_after_telemetry_or_first():
    from dramatiq_turbo import QueueStatsRecorder

    broker = StubBroker()
    install(broker, telemetry=False, cache=False, breaker=False, rate_limit=False, backoff=False)
    assert isinstance(broker.middleware[0], QueueStatsRecorder)
    install(broker)
    names = [type(m).__name__ for m in broker.middleware]
    assert names[:2] == ["Telemetry", "QueueStatsRecorder"], names
    assert names.count("QueueStatsRecorder") == 1
