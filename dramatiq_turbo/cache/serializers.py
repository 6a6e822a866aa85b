"""How cached values become bytes in Redis and back.

A stored value is a three-byte header followed by the payload: a magic byte,
the serializer's tag and the compression's tag.  A reader only decodes what
its own serializer wrote, so a cache configured for JSON never unpickles a
value that someone else put in Redis; anything it cannot decode is reported
as ``UndecodableValue`` and treated as a miss by the cache.  Nor does a
reader inflate more than ``max_size`` bytes: a small compressed value that
expands to gigabytes (a zip bomb written under the cache's namespace) is
undecodable too, having cost at most ``max_size`` bytes of memory.
"""

from __future__ import annotations

import json
import pickle
import zlib
from typing import Any, Protocol

__all__ = [
    "SERIALIZERS",
    "Codec",
    "JSONSerializer",
    "PickleSerializer",
    "Serializer",
    "UndecodableValue",
    "get_serializer",
]

_MAGIC = b"T"
_PLAIN = b"0"
_ZLIB = b"z"


class UndecodableValue(ValueError):
    """A stored value this cache cannot (or must not) decode."""


class Serializer(Protocol):
    """Turns values into bytes and back.  ``tag`` is one byte naming the format."""

    tag: bytes

    def dumps(self, value: Any) -> bytes: ...

    def loads(self, data: bytes) -> Any: ...


class JSONSerializer:
    """Compact JSON (the default): safe to read from a shared store.

    Tuples come back as lists and dict keys as strings, as with Dramatiq's
    own JSON encoder, so a cached actor result looks exactly like a result
    read from Dramatiq's ``Results`` backend.
    """

    tag = b"j"

    def dumps(self, value: Any) -> bytes:
        try:
            return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()
        except (TypeError, ValueError) as error:
            raise TypeError(
                f"value of type {type(value).__name__} cannot be cached as JSON: {error}"
            ) from None

    def loads(self, data: bytes) -> Any:
        return json.loads(data)


class PickleSerializer:
    """Pickle, for values JSON cannot hold.  Opt-in: unpickling runs code.

    Use it only when every process that can write to the cache's Redis
    namespace is trusted.
    """

    tag = b"p"

    def dumps(self, value: Any) -> bytes:
        try:
            return pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
        except Exception as error:
            # The same signal as JSON's: this value cannot be cached.
            raise TypeError(f"cannot pickle {type(value).__name__}: {error}") from error

    def loads(self, data: bytes) -> Any:
        return pickle.loads(data)  # opt-in, documented above


#: The default ``max_size``: far above any result worth caching, far below a host's memory.
DEFAULT_MAX_SIZE = 64 * 1024 * 1024
#: How much a compressed value is inflated at a time.
_INFLATE_PIECE = 1024 * 1024

#: Serializers by name, for ``MultiLevelCache(serializer="pickle")``.
SERIALIZERS: dict[str, type[JSONSerializer] | type[PickleSerializer]] = {
    "json": JSONSerializer,
    "pickle": PickleSerializer,
}


def get_serializer(value: str | Serializer) -> Serializer:
    """A serializer by name (``"json"``, ``"pickle"``), or an object with ``tag``, ``dumps`` and ``loads``."""
    if isinstance(value, str):
        try:
            return SERIALIZERS[value]()
        except KeyError:
            raise ValueError(f"unknown serializer {value!r}; expected one of {sorted(SERIALIZERS)}") from None
    if not all(hasattr(value, name) for name in ("tag", "dumps", "loads")) or len(value.tag) != 1:
        raise ValueError(
            f"serializer must be a name or have a one-byte 'tag', 'dumps' and 'loads', got {value!r}"
        )
    return value


class Codec:
    """A serializer plus compression above a size threshold, behind a header.

    Parameters:
      serializer(Serializer): The value format.
      compress_threshold(int): Payloads of at least this many bytes are
        compressed with zlib (level 1: fast, and JSON shrinks several fold).
        ``0`` disables compression.
      max_size(int): The largest payload, in bytes, that is stored or
        decoded (after decompression).  A larger value is not cached
        (``TypeError``, as for any value the cache cannot hold), and a
        stored one that would inflate beyond it is ``UndecodableValue``.
    """

    def __init__(
        self, serializer: Serializer, *, compress_threshold: int = 4096, max_size: int = DEFAULT_MAX_SIZE
    ) -> None:
        for name, value, least in (("compress_threshold", compress_threshold, 0), ("max_size", max_size, 1)):
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise ValueError(f"{name} must be an int of bytes >= {least}, got {value!r}")
        self.serializer = serializer
        self.compress_threshold = compress_threshold
        self.max_size = max_size
        self._plain = _MAGIC + serializer.tag + _PLAIN
        self._zlib = _MAGIC + serializer.tag + _ZLIB

    def encode(self, value: Any) -> bytes:
        """The stored form of ``value``; ``TypeError`` when the serializer cannot hold it."""
        return self._frame(self.serializer.dumps(value))

    def encode_and_copy(self, value: Any) -> tuple[bytes, Any]:
        """The stored form of ``value``, and ``value`` as a reader of it gets it back.

        L1 keeps the copy, not ``value`` itself: a hit from L1 then looks
        exactly like a hit from L2 (JSON gives a list for a tuple, str keys
        for int ones), and a caller that later mutates ``value`` does not
        change what the cache serves.
        """
        payload = self.serializer.dumps(value)
        return self._frame(payload), self.serializer.loads(payload)

    def _frame(self, payload: bytes) -> bytes:
        if len(payload) > self.max_size:
            raise TypeError(
                f"value of {len(payload):,} bytes is over the cache's max_size of {self.max_size:,} bytes"
            )
        if self.compress_threshold and len(payload) >= self.compress_threshold:
            return self._zlib + zlib.compress(payload, 1)
        return self._plain + payload

    def decode(self, data: bytes) -> Any:
        """The value stored as ``data``; ``UndecodableValue`` when it is not ours, is damaged or too large."""
        header = data[:3]
        # A view: the payload of a large value is not copied before it is inflated.
        payload: bytes | memoryview = memoryview(data)[3:]
        if header not in (self._plain, self._zlib):
            raise UndecodableValue(
                f"cached value has header {header[:3]!r}, this cache writes {self._plain!r}"
            )
        if len(payload) > self.max_size:
            raise UndecodableValue(f"cached value of {len(payload):,} bytes is over max_size")
        try:
            return self.serializer.loads(self._inflate(payload) if header == self._zlib else bytes(payload))
        except UndecodableValue:
            raise
        except Exception as error:
            raise UndecodableValue(f"damaged cached value ({type(error).__name__}: {error})") from error

    def _inflate(self, payload: bytes | memoryview) -> bytes:
        """Decompress ``payload``, but never to more than ``max_size`` bytes.

        Piece by piece: a bomb is refused having held at most ``max_size``
        bytes of output (one ``decompress`` call to the limit would need
        twice that while its buffer grows).
        """
        inflater = zlib.decompressobj()
        pieces: list[bytes] = []
        size = 0
        pending: bytes | memoryview = payload
        while not inflater.eof:
            if not pending:
                # All input is in: what is left comes out now, or the stream is cut short.
                piece = inflater.flush()
                if not inflater.eof:
                    raise UndecodableValue("damaged cached value (truncated compressed data)")
            else:
                piece = inflater.decompress(pending, _INFLATE_PIECE)
                pending = inflater.unconsumed_tail
            size += len(piece)
            if size > self.max_size:
                raise UndecodableValue(
                    f"cached value inflates to more than max_size ({self.max_size:,} bytes)"
                )
            pieces.append(piece)
        return b"".join(pieces)
