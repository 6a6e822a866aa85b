"""Unique tokens for leases, slots and permits, without a system call each.

``uuid.uuid4()`` reads the operating system's randomness every time, which
costs more than the rest of a gate's work for a message.  A token here is a
random prefix, drawn once per process (again after a fork), and a counter:
unique across processes and hosts as long as the prefixes are, which 96
random bits make certain in practice.
"""

from __future__ import annotations

import itertools
import os

__all__ = ["new_token"]


def _fresh() -> tuple[str, itertools.count[int]]:
    return os.urandom(12).hex(), itertools.count()


_prefix, _counter = _fresh()


def new_token() -> str:
    """A token no other call of this function, in any process, returns."""
    return f"{_prefix}{next(_counter):x}"


def _after_fork() -> None:
    global _prefix, _counter
    _prefix, _counter = _fresh()


os.register_at_fork(after_in_child=_after_fork)
