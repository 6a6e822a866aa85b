"""Broker URLs without their secrets, for every line the monitor prints or logs."""

from __future__ import annotations

import logging
import urllib.parse

__all__ = ["Redactor", "redact_url"]

_MASK = "***"


def redact_url(url: str) -> str:
    """``url`` with its password (if any) replaced by ``***``: ``redis://:***@host:6379/0``."""
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        return _MASK
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{user}:{_MASK}@{host}" + (f":{parts.port}" if parts.port is not None else "")
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


class Redactor(logging.Filter):
    """Removes the secrets of some URLs from any text, and from log records as a logging filter.

    For error texts and logs, which come from libraries: the command's own
    output only ever shows ``redact_url``'s form of a URL.

    Parameters:
      urls: The URLs whose passwords must never be shown (``None`` entries are skipped).
    """

    def __init__(self, *urls: str | None) -> None:
        super().__init__()
        self.secrets: list[str] = []
        self.replacements: list[tuple[str, str]] = []
        for url in urls:
            if not url:
                continue
            self.replacements.append((url, redact_url(url)))
            try:
                password = urllib.parse.urlsplit(url).password
            except ValueError:
                password = None
            # A password of one or two characters would mask every such letter of
            # a message; those are only removed as part of their URL.
            if password and len(password) >= 3:
                self.secrets += [password, urllib.parse.unquote(password), urllib.parse.quote(password)]

    def __call__(self, text: str) -> str:
        for url, redacted in self.replacements:
            text = text.replace(url, redacted)
        for secret in sorted(set(self.secrets), key=len, reverse=True):
            text = text.replace(secret, _MASK)
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = self(record.getMessage())
        record.args = None
        if record.exc_info and record.exc_info[1] is not None:
            record.exc_text = self(logging.Formatter().formatException(record.exc_info))
            record.exc_info = None
        return True
