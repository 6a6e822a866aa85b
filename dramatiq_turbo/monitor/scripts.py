"""Pipelines that mix plain commands and the monitor's Lua scripts, in one round trip.

``packed.execute_pipeline`` sends commands back to back; a script goes as
``EVALSHA``.  When the server does not know a script (it restarted, or
flushed its cache), only those calls are sent again after loading it: an
``EVALSHA`` refused with ``NOSCRIPT`` did not run, so nothing is applied twice.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import redis
from redis.commands.core import Script

from ..packed import execute_pipeline
from ..redis import load_script

__all__ = ["ScriptCall", "monitor_script", "run_pipeline"]


@dataclass(frozen=True)
class ScriptCall:
    """One call of a Lua script inside a pipeline."""

    script: Script
    keys: Sequence[Any]
    args: Sequence[Any]

    def command(self) -> tuple[Any, ...]:
        return ("EVALSHA", self.script.sha, len(self.keys), *self.keys, *self.args)


def monitor_script(client: redis.Redis, filename: str) -> Script:
    """The monitor's Lua script ``filename``, registered once per client."""
    return load_script(client, "dramatiq_turbo.monitor", filename)


def run_pipeline(client: redis.Redis, commands: Sequence[tuple[Any, ...] | ScriptCall]) -> list[Any]:
    """Run ``commands`` in one round trip (two when a script had to be loaded) and return the replies.

    Error replies are returned in place, as ``redis.ResponseError`` objects.
    """
    packed = [c.command() if isinstance(c, ScriptCall) else c for c in commands]
    replies = execute_pipeline(client, packed, len(packed))
    missing = [
        i
        for i, reply in enumerate(replies)
        if isinstance(reply, redis.exceptions.NoScriptError) and isinstance(commands[i], ScriptCall)
    ]
    if missing:
        scripts = {commands[i].script.sha: commands[i].script for i in missing}  # type: ignore[union-attr]
        loads = [("SCRIPT", "LOAD", script.script) for script in scripts.values()]
        again = loads + [packed[i] for i in missing]
        retried = execute_pipeline(client, again, len(again))[len(loads) :]
        for i, reply in zip(missing, retried, strict=True):
            replies[i] = reply
    return replies
