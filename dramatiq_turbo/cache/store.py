"""L2: the cache's values in Redis, with TTLs and an invalidation channel.

Each cache key ``k`` owns a few Redis keys that share the hash tag ``{k}``
(``hash_key``), so the single-flight scripts touch one cluster slot:

``<ns>:{k}``          the encoded value, with its TTL
``<ns>:{k}:lease``    the single-flight lease (a random token, with a TTL)
``<ns>:{k}:waiters``  the tokens of the waiters from other processes that are blocked
``<ns>:{k}:wake``     the list those waiters block on (``BLPOP``)

Every write and delete publishes the key on ``<ns>:invalidate`` in the same
round trip, so other processes drop their L1 copy.

Cache keys are the caller's (a ``cache_key`` may return any text), so the
tag holds them escaped (``hash_key`` escapes them): a key with ``{``, ``}`` or ``%`` can
neither move its keys to other cluster slots nor name another key's lease.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from itertools import repeat
from typing import Any

import redis
from redis.exceptions import NoScriptError

from ..packed import execute_pipeline, execute_transaction, raise_first_error
from ..redis import hash_key, load_script, set_commands

__all__ = ["NoL2", "RedisStore"]

_PACKAGE = "dramatiq_turbo.cache"


class RedisStore:
    """The Redis side of one ``MultiLevelCache``: bytes in, bytes out, one round trip per call.

    Parameters:
      client(redis.Redis): The client (from ``connect_redis``).
      namespace(str): The prefix of every key and of the channel.
    """

    def __init__(self, client: redis.Redis, *, namespace: str) -> None:
        self.client = client
        self.namespace = namespace
        self.channel = f"{namespace}:invalidate"
        #: Identifies this process's messages on the channel, so it skips its own.
        self.origin = uuid.uuid4().hex
        self._scripts: dict[str, Any] = {}

    # Key names -----------------------------------------------------------
    def value_key(self, key: str) -> str:
        return hash_key(self.namespace, key)

    def flight_keys(self, key: str) -> list[str]:
        """Value, lease, waiters and wake keys of ``key``, in the scripts' order."""
        base = hash_key(self.namespace, key)
        return [base, f"{base}:lease", f"{base}:waiters", f"{base}:wake"]

    def invalidation(self, keys: Sequence[str]) -> str:
        return json.dumps({"o": self.origin, "k": list(keys)}, separators=(",", ":"))

    def script(self, filename: str) -> Any:
        # Kept per store: load_script takes a lock, and this is on every L2 hit.
        script = self._scripts.get(filename)
        if script is None:
            script = self._scripts[filename] = load_script(self.client, _PACKAGE, filename)
        return script

    # Reads -----------------------------------------------------------------
    def get(self, key: str) -> tuple[bytes, int] | None:
        """The stored bytes of ``key`` and their remaining TTL (ms, -1 when none), or ``None``."""
        script = self.script("get.lua")
        try:
            # EVALSHA straight away: this is the path of every L2 hit.
            reply = self.client.evalsha(script.sha, 1, self.value_key(key))
        except NoScriptError:
            reply = script(keys=[self.value_key(key)], client=self.client)
        if not reply:
            return None
        return reply[0], int(reply[1])

    def get_many(self, keys: Sequence[str]) -> list[tuple[bytes, int] | None]:
        """``get`` for many keys in one round trip: one ``MGET`` and one ``PTTL`` per key."""
        names = [self.value_key(key) for key in keys]
        commands = [("MGET", *names), *zip(repeat("PTTL"), names)]
        replies = execute_pipeline(self.client, commands, len(commands))
        raise_first_error(replies)
        values, *ttls = replies
        return [None if value is None else (value, int(ttl)) for value, ttl in zip(values, ttls, strict=True)]

    # Writes ----------------------------------------------------------------
    def set(self, key: str, data: bytes, ttl: int | None) -> None:
        pipe = self.client.pipeline(transaction=False)
        pipe.set(self.value_key(key), data, px=ttl)
        pipe.publish(self.channel, self.invalidation([key]))
        pipe.execute()

    def set_many(self, items: Sequence[tuple[str, bytes, int | None]]) -> None:
        """Write every item, then publish one invalidation: one round trip.

        The writes are ``batch_set``'s transaction (``MULTI``, one ``SET`` per
        key, ``EXEC``); the ``PUBLISH`` follows it in the same write.
        """
        keys = [self.value_key(key) for key, _, _ in items]
        values = [data for _, data, _ in items]
        ttls = [ttl for _, _, ttl in items]
        invalidation = ("PUBLISH", self.channel, self.invalidation([key for key, _, _ in items]))
        execute_transaction(self.client, set_commands(keys, values, ttls), len(keys), then=invalidation)

    def delete(self, keys: Sequence[str]) -> int:
        pipe = self.client.pipeline(transaction=False)
        pipe.delete(*(self.value_key(key) for key in keys))
        pipe.publish(self.channel, self.invalidation(keys))
        deleted, _ = pipe.execute()
        return int(deleted)


class NoL2:
    """The L2 of a cache without Redis, or while Redis is down: nothing is found and nothing kept.

    It answers as ``RedisStore`` does, so the cache reads and writes "L2"
    the same way whether Redis is there or not (``Fallback`` picks which).
    """

    def get(self, key: str) -> tuple[bytes, int] | None:
        return None

    def get_many(self, keys: Sequence[str]) -> list[tuple[bytes, int] | None]:
        return [None] * len(keys)

    def set(self, key: str, data: bytes, ttl: int | None) -> None:
        return None

    def set_many(self, items: Sequence[tuple[str, bytes, int | None]]) -> None:
        return None

    def delete(self, keys: Sequence[str]) -> int:
        return 0
