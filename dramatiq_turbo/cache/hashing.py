"""Stable cache keys: ``content_hash`` for content, canonical JSON for arguments."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["args_key", "content_hash"]


def content_hash(data: bytes | bytearray | memoryview | str) -> str:
    """A stable hex digest of ``data``, for keying a cache on content (a PDF's bytes, say).

    SHA-256 from the standard library: collision-resistant, so nobody can
    craft a document that is served another document's cached result, and
    hardware-accelerated on current CPUs (about 1.8 GB/s here, so a 10 MB
    file takes under 10 ms).  ``benchmarks/bench_cache_hash.py`` compares it
    with BLAKE2b, BLAKE3 and xxHash; the one faster option there (xxh3) is
    not collision-resistant.  A ``str`` is hashed as its UTF-8 bytes.

    Returns:
      str: 64 lowercase hex digits.
    """
    if isinstance(data, str):
        # surrogatepass: the same bytes as UTF-8 for any valid text, and a
        # digest too for a lone surrogate (JSON arguments can carry one).
        data = data.encode("utf-8", "surrogatepass")
    elif not isinstance(data, bytes | bytearray | memoryview):
        raise TypeError(f"content_hash() takes bytes or str, got {type(data).__name__}")
    return hashlib.sha256(data).hexdigest()


def canonical_json(value: Any) -> str:
    """JSON with sorted keys and no spaces: equal arguments give equal text."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def args_key(
    actor_name: str, args: Sequence[Any], kwargs: Mapping[str, Any], version: str | int | None = None
) -> str:
    """The default cache key of an actor call: ``<actor>[:v<version>]:<hash of the canonical JSON of args>``.

    Raises:
      TypeError: naming the actor, when an argument is not JSON (give the
        actor a ``cache_key`` then).
    """
    try:
        text = canonical_json([list(args), dict(kwargs)])
    except (TypeError, ValueError) as error:
        raise TypeError(
            f"cannot make a cache key for {actor_name!r}: its arguments are not JSON ({error}); "
            "give the actor a cache_key callable"
        ) from None
    digest = content_hash(text)[:32]
    return f"{actor_name}:v{version}:{digest}" if version is not None else f"{actor_name}:{digest}"
