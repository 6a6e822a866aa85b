"""Secrets out of every text the suite shows: logs, span attributes and events, metrics, ``stats``.

Passwords travel inside URLs (``redis://:secret@host``, ``postgres://user:
secret@db``), and API keys in query strings (``?api_key=...``).  They reach
the suite's output through error messages, exception texts and message
arguments.  ``redact_text`` masks both kinds wherever they appear in a text;
``redact_url`` shows one URL without its password; ``RedactingFilter`` does
``redact_text`` to every log record that passes through it, and
``Redactor`` additionally masks known URLs and passwords (the ``stats``
command knows its broker's).  ``protect_logs`` redacts every log record of
the process as it is made, Dramatiq's own included (its worker logs each
message with its arguments).
"""

from __future__ import annotations

import logging
import re
import urllib.parse
from collections.abc import Callable
from typing import Any

__all__ = ["MASK", "RedactingFilter", "Redactor", "protect_logs", "redact_text", "redact_url"]

MASK = "***"

# ``scheme://user:password@``: the password is everything up to the last "@"
# before the host, so a password with an unescaped "@" is masked whole.  Masking
# too much (up to a later "@" in the same word) is the safe way to be wrong.
_URL_PASSWORD = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.\-]*://[^\s:/@]*:)(?P<secret>[^\s/]*)(?=@)")
# Query parameters and key=value pairs whose name says they hold a secret.
_SECRET_NAMES = (
    r"password|passwd|pwd|secret|token|access_token|refresh_token|id_token|api[_-]?key|apikey|"
    r"auth|client_secret|signature|sig|x-amz-signature|x-amz-credential|x-amz-security-token"
)
_SECRET_PARAM = re.compile(
    rf"(?P<head>(?<![A-Za-z0-9_\-])(?:{_SECRET_NAMES})=)(?P<secret>[^&\s#'\",;]+)", re.I
)


def redact_text(text: str) -> str:
    """``text`` with every URL password and every secret-named parameter value replaced by ``***``.

    Parameters:
      text(str): Any text: an error message, a log line, a ``repr``.

    Returns:
      str: The text, unchanged when it holds nothing that looks secret.
    """
    if "://" not in text and "=" not in text:
        return text  # the common case, at the cost of two scans
    text = _URL_PASSWORD.sub(lambda m: m.group("head") + MASK, text)
    return _SECRET_PARAM.sub(lambda m: m.group("head") + MASK, text)


def redact_url(url: str) -> str:
    """``url`` with its password (if any) replaced by ``***``: ``redis://:***@host:6379/0``.

    Secret-named query parameters (``?api_key=``) are masked too.
    """
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        return MASK
    if parts.password is None:
        return redact_text(url)
    user = parts.username or ""
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{user}:{MASK}@{host}" + (f":{parts.port}" if parts.port is not None else "")
    return redact_text(urllib.parse.urlunsplit(parts._replace(netloc=netloc)))


class RedactingFilter(logging.Filter):
    """A logging filter that applies ``redact_text`` to each record: its message and its traceback.

    Add it to a handler (``handler.addFilter(RedactingFilter())``) to cover
    every logger that handler serves, or to one logger to cover the records
    logged on it.  Records without anything secret pass unchanged.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        self.apply(record, redact_text)
        return True

    @staticmethod
    def apply(record: logging.LogRecord, redact: Callable[[str], str]) -> None:
        """Redact ``record``'s message and traceback in place with ``redact``."""
        try:
            message = record.getMessage()
        except Exception:  # a bad format string: logging reports it when the record is emitted
            return
        clean = redact(message)
        if clean != message:
            record.msg, record.args = clean, None
        if record.exc_info and record.exc_info[1] is not None:
            formatted = logging.Formatter().formatException(record.exc_info)
            clean = redact(formatted)
            if clean != formatted:
                # Only then: handlers that report the exception object itself
                # (Sentry's, say) keep it whenever it holds no secret.
                record.exc_text, record.exc_info = clean, None
        elif record.exc_text:
            record.exc_text = redact(record.exc_text)


def protect_logs() -> None:
    """Redact every log record this process makes from now on, whoever logs it.

    Wraps the logging module's record factory, so the records of every
    logger - Dramatiq's worker, which logs each message with its arguments,
    and the actors' own loggers included - have their URL passwords and
    secret parameters masked before any handler or filter sees them.
    Calling it again changes nothing.
    """
    factory = logging.getLogRecordFactory()
    if getattr(factory, "_turbo_redacting", False):
        return

    def redacting(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = factory(*args, **kwargs)
        RedactingFilter.apply(record, redact_text)
        return record

    redacting._turbo_redacting = True  # type: ignore[attr-defined]
    logging.setLogRecordFactory(redacting)


class Redactor(logging.Filter):
    """Removes the secrets of some URLs from any text, and from log records as a logging filter.

    For error texts and logs, which come from libraries: the command's own
    output only ever shows ``redact_url``'s form of a URL.  Besides the given
    URLs and their passwords, whatever ``redact_text`` masks is masked too.

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
            text = text.replace(secret, MASK)
        return redact_text(text)

    def filter(self, record: logging.LogRecord) -> bool:
        RedactingFilter.apply(record, self)
        return True
