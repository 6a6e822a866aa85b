"""User-chosen key parts (braces, spaces, newlines, unicode, 10 KB) on real Redis: exact, distinct, one slot.

Rate-limit budgets and cache keys are named by users (a ``key`` function,
a ``cache_key``), so the names may hold anything, including the braces that
delimit a Redis Cluster hash tag.  Each name is escaped inside its tag
(``hash_key`` applies ``tag_safe``), so:

* the limits are still exact for every name;
* distinct names never share a key (``"k}:lease"`` and the lease of ``"k"`` stay apart);
* every key one script touches for a name is in one cluster slot
  (``redis.crc.key_slot``), whatever the name.
"""

from __future__ import annotations

import time
from typing import Any

import dramatiq
import pytest
import redis
from redis.crc import key_slot

from dramatiq_turbo.cache import MultiLevelCache
from dramatiq_turbo.options import MAX_MS
from dramatiq_turbo.ratelimit import RateLimiter
from dramatiq_turbo.ratelimit.rules import Rule, key_budget
from dramatiq_turbo.ratelimit.store import RedisLimitStore

pytestmark = pytest.mark.integration

NAMES = [
    "plain",
    "{",
    "}",
    "}starts-with-a-brace",
    "{tag}",
    "a}b{c",
    "{}",
    "%",
    "%7D",  # what "}" escapes to: must stay distinct from it
    "with spaces in it",
    "line\nbreak\r\nand\ttab",
    "ünïcødé ✓ 🚀 漢字",
    "\ud800lone surrogate",
    "x" * 10_000,
    "k",
    "k}:lease",  # names that end like another name's single-flight keys
    "k}:wake",
    "k}:waiters",
]


def _slots(keys: list[str]) -> set[int]:
    return {key_slot(key.encode("utf-8", "surrogatepass")) for key in keys}


@pytest.mark.parametrize("name", NAMES, ids=lambda n: repr(n[:24]))
def test_a_budgets_keys_share_one_slot_whatever_its_name(client, namespace: str, name: str) -> None:
    store = RedisLimitStore(client, namespace=namespace)
    assert len(_slots(store.keys(key_budget(name)))) == 1


def test_limits_stay_exact_and_apart_for_every_name(client, namespace: str) -> None:
    store = RedisLimitStore(client, namespace=namespace)
    rate = Rule(max=3, duration=60_000, burst=3)
    running = Rule(concurrency=2)
    admitted: dict[tuple[str, str], int] = {}
    for attempt in range(5):
        for name in NAMES:
            for kind, rule in (("rate", rate), ("running", running)):
                decision = store.acquire(f"{kind}:{name}", rule, f"token-{attempt}")
                admitted[kind, name] = admitted.get((kind, name), 0) + decision.admitted
    # 3 starts per window, and 2 running at once (no slot is released): per name, none shared.
    assert admitted == {
        **dict.fromkeys((("rate", n) for n in NAMES), 3),
        **dict.fromkeys((("running", n) for n in NAMES), 2),
    }
    keys = {key for name in NAMES for kind in ("rate", "running") for key in store.keys(f"{kind}:{name}")}
    assert len(keys) == 2 * 3 * len(NAMES), "two budgets share a key"


def test_the_largest_durations_are_no_redis_error(client, namespace: str) -> None:
    store = RedisLimitStore(client, namespace=namespace)
    rule = Rule(max=1, duration=MAX_MS, burst=1, concurrency=1, lease=MAX_MS)
    assert store.acquire(key_budget("forever"), rule, "t1").admitted
    assert not store.acquire(key_budget("forever"), rule, "t2").admitted
    assert 0 < client.pttl(store.keys(key_budget("forever"))[0]) <= MAX_MS + 1000


def test_a_key_function_with_any_name_limits_exactly_through_the_middleware(
    make_stack, client, namespace: str
) -> None:
    names = ["{", "}x", "a}b{c", "ünï\ncødé", "\ud800", "y" * 10_000]
    runs: list[str] = []
    holder: dict[str, Any] = {}

    def declare() -> None:
        @dramatiq.actor(
            queue_name="keys", rate_limit={"max": 2, "duration": 60_000, "key": lambda m: m.args[0]}
        )
        def limited(name: str, n: int) -> None:
            runs.append(name)

        holder["limited"] = limited

    limiter = RateLimiter(redis=client, namespace=namespace, max_wait=0)
    stack = make_stack(declare, rate_limit=limiter, cache=False, breaker=False)
    messages = [holder["limited"].send(name, n) for n in range(4) for name in names]
    fates = [stack.fates.first(message.message_id).fate for message in messages]
    assert fates.count("completed") == 2 * len(names) and fates.count("requeued") == 2 * len(names)
    assert sorted(runs) == sorted(names * 2)
    assert limiter.outage.outages == 0


@pytest.mark.parametrize("name", [n for n in NAMES if "\ud800" not in n], ids=lambda n: repr(n[:24]))
def test_a_cache_keys_flight_keys_share_one_slot(client, namespace: str, name: str) -> None:
    cache = MultiLevelCache(redis=client, namespace=namespace)
    try:
        assert len(_slots(cache._store.flight_keys(name))) == 1
    finally:
        cache.close()


def test_cache_keys_never_collide_and_single_flight_is_undisturbed(client, namespace: str) -> None:
    names = [n for n in NAMES if "\ud800" not in n]
    cache = MultiLevelCache(redis=client, namespace=namespace, l1_maxsize=0, wait_timeout=5_000)
    try:
        for index, name in enumerate(names):
            cache.set(name, {"index": index, "name": name})
        assert cache.get_many(names) == {name: {"index": i, "name": name} for i, name in enumerate(names)}
        # A computation of "k" whose lease key would be the value of "k}:lease" without escaping.
        cache.delete("k")
        started = time.monotonic()
        assert cache.get_or_compute("k", lambda: "computed") == "computed"
        assert time.monotonic() - started < 1
        assert cache.get("k}:lease") == {"index": names.index("k}:lease"), "name": "k}:lease"}
        keys = {key for name in names for key in cache._store.flight_keys(name)}
        assert len(keys) == 4 * len(names), "two cache keys share a Redis key"
        assert cache.stats()["outages"] == 0
    finally:
        cache.close()


def test_a_cache_key_that_redis_cannot_hold_is_a_clear_error(client, namespace: str) -> None:
    cache = MultiLevelCache(redis=client, namespace=namespace)
    try:
        with pytest.raises(ValueError, match="a cache key must be valid Unicode"):
            cache.set("\ud800", 1)
        with pytest.raises(ValueError, match="a cache key must be valid Unicode"):
            cache.get_or_compute("x\udfff", lambda: 1)
    finally:
        cache.close()


def test_a_call_that_cannot_be_packed_fails_alone_and_its_trip_still_goes(client, namespace: str) -> None:
    """One gate's unencodable argument is that call's error: the other calls of the trip (other
    gates', other messages') are sent and answered, so no gate is skipped."""
    from dramatiq_turbo.core.delivery import Call, send_calls

    script = client.register_script("return redis.call('INCR', KEYS[1])")
    counter = f"{namespace}:packed"
    good = [Call(client, script, [counter], []) for _ in range(3)]
    bad = [
        Call(client, script, [f"{namespace}:\ud800"], []),  # a lone surrogate: not UTF-8
        Call(client, script, [counter], [object()]),  # not a Redis value at all
    ]
    send_calls([good[0], bad[0], good[1], bad[1], good[2]])
    assert [call.result() for call in good] == [1, 2, 3], "the good calls ran, once each, in order"
    for call in bad:
        with pytest.raises(redis.DataError, match="could not be sent"):
            call.result()
    assert int(client.get(counter)) == 3
    client.delete(counter)
