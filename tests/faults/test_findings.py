"""Races the fault runs surfaced, each pinned by a test (all three are fixed).

The lease renewers: a renewer copies the holds it renews, then renews them;
a hold that ends in between (its job finished and released its slot or
lease) fails to renew, and the renewer takes that for a lease lost while its
work runs.  The fault runs logged both warnings below for jobs that had
just finished normally.  And ``Outage``: a success handled just after a
failure at the start of an outage ends it.
"""

from __future__ import annotations

import logging
import threading

import pytest
import redis

from dramatiq_turbo.cache import MultiLevelCache
from dramatiq_turbo.core.fallback import Fallback
from dramatiq_turbo.ratelimit.leases import Hold, LeaseRenewer
from dramatiq_turbo.redis import connect_redis


def test_a_concurrency_slot_released_during_its_renewal_is_not_reported_expired(caplog):
    renewer = LeaseRenewer()

    class Store:
        """Between the renewer's copy of the holds and its renewal, the block ends and frees its slot."""

        def renew(self, key: str, tokens: list[str], lease: int) -> int:
            renewer.discard(hold)
            return 0  # nothing to renew: the slot was released, not lost

    hold = Hold(Store(), "key:llm", "token-1", 30_000)  # type: ignore[arg-type]
    renewer.add(hold)
    try:
        with caplog.at_level(logging.WARNING):
            renewer._renew_all()
    finally:
        renewer.stop()
    false_alarms = [r.getMessage() for r in caplog.records if "expired while running" in r.getMessage()]
    assert not false_alarms, false_alarms


@pytest.mark.integration
def test_a_failed_renewal_of_a_finished_lease_leaves_a_newer_lease_of_the_key_renewed(spare_redis, caplog):
    cache = MultiLevelCache(redis=connect_redis(spare_redis.url), namespace="finding", lease_ttl=60)
    leases = cache._leases
    assert leases is not None
    lease_key = cache._store.flight_keys("k")[1]
    renew = leases.store.script("renew.lua")
    renewed_once = threading.Event()

    def racing_renew(*, keys, args, client):
        # The old computation finished (lease released) and a new one of the same key took a lease,
        # between the renewer's copy of the holds and this call for the old token.
        with leases._held_lock:
            leases._held[lease_key] = "new-token"
        renewed_once.set()
        return 0

    leases.store.script = lambda name: racing_renew if name == "renew.lua" else renew  # type: ignore[method-assign]
    with caplog.at_level(logging.WARNING):
        leases._hold(lease_key, "old-token")
        assert renewed_once.wait(5)
        leases._stop.set()
        assert leases._renewer is not None
        leases._renewer.join(5)  # the renewer has handled the failed renewal
    assert leases._held.get(lease_key) == "new-token", "the newer lease of the key is still renewed"
    cache.close()


def test_a_call_answered_before_an_outage_began_does_not_end_it(caplog):
    """At a crash, a reply read just before it can be handled just after another call's failure.

    The fault runs logged "stall: Redis is unreachable", "reachable again"
    1 ms later, and "unreachable" again: two warnings for one outage, and a
    recovery that never was.
    """
    fallback: Fallback[str] = Fallback(shared="redis", local="local", component="stall", retry_interval=1_000)
    answered = threading.Event()
    failed = threading.Event()

    def slow_success(store: str) -> str:
        answered.set()  # the server has answered this call...
        failed.wait(5)  # ...but its thread handles the reply only after another call failed
        return store

    def failure(store: str) -> str:
        if store == "redis":
            raise redis.ConnectionError("Connection closed by the Redis server")
        return store  # the local store answers instead

    early = threading.Thread(target=fallback.run, args=(slow_success,))
    with caplog.at_level(logging.WARNING):
        early.start()
        assert answered.wait(5)
        fallback.run(failure)  # the crash: this call fails, the outage starts
        failed.set()
        early.join(5)
        fallback.run(failure)  # still down
    back = [r.getMessage() for r in caplog.records if "reachable again" in r.getMessage()]
    assert fallback.outage.outages == 1 and not back, (fallback.outage.outages, back)
