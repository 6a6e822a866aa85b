"""The result cache: ``MultiLevelCache`` (L1 in process, L2 in Redis, single-flight) and ``ResultCache``.

One concern per module:

``l1``            the in-process TTL + LRU layer
``store``         the Redis layer (values, TTLs, invalidation messages) and its ``.lua`` scripts
``serializers``   value formats (JSON by default) and compression
``singleflight``  one computation per missing key, in the process and across processes
``invalidation``  the listener that drops other processes' writes from L1
``multilevel``    ``MultiLevelCache``, which ties them together
``middleware``    ``ResultCache``, the Dramatiq middleware
``hashing``       ``content_hash`` and the default key of an actor call
"""

from .hashing import content_hash
from .middleware import ResultCache
from .multilevel import Lookup, MultiLevelCache
from .serializers import JSONSerializer, PickleSerializer, UndecodableValue

__all__ = [
    "JSONSerializer",
    "Lookup",
    "MultiLevelCache",
    "PickleSerializer",
    "ResultCache",
    "UndecodableValue",
    "content_hash",
]
