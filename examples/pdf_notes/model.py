"""The notes model: ``ChatModel`` asks any OpenAI-compatible chat-completions endpoint for notes.

``ChatModel().notes(chunk)`` sends one chunk and returns its ``ChunkNotes``;
``merge_notes`` joins a document's chunk notes.  The endpoint defaults to
``OPENAI_BASE_URL`` / ``OPENAI_API_KEY`` / ``OPENAI_MODEL``, as OpenAI's own
clients do; ``examples.pdf_notes.model_server`` serves an offline model there.

Failures are sorted the way the ``Backoff`` middleware needs them: a 429 is
retried after its ``Retry-After``, a 5xx or a broken connection after an
exponential backoff with jitter, both within ``max_retries`` and the total
``timeout``; what is left raises ``ModelError(retryable=True)`` so the job is
retried later.  Other 4xx answers are the request's fault and raise
``ModelError(retryable=False)`` at once.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import re
import time
from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import requests

from dramatiq_turbo.backoff import compute_delay, parse_retry_after
from dramatiq_turbo.options import require_ms

from .textrank import STOPWORDS, stem

__all__ = ["DEFAULT_BASE_URL", "DEFAULT_MODEL", "ChatModel", "ChunkNotes", "ModelError", "merge_notes"]

logger = logging.getLogger(__name__)

DEFAULT_BASE_URL = "https://api.openai.com/v1"
DEFAULT_MODEL = "gpt-4o-mini"
#: Backoff before retry n + 1 after a 5xx or a connection error: full jitter below
#: ``min(max_backoff, min_backoff * 2^n)`` ms.
DEFAULT_MIN_BACKOFF = 500
DEFAULT_MAX_BACKOFF = 8_000
#: The 4xx statuses that say "later" (request timeout, throttling); any 5xx says so too.
RETRYABLE_STATUSES = frozenset({408, 429})

SYSTEM_PROMPT = (
    "You write study notes. Answer with one JSON object and nothing else, of the form "
    '{{"title": string, "key_points": [string, ...], "key_terms": [string, ...]}}. '
    "title: a short title for the text. key_points: at most {max_points} key points, each one "
    "complete sentence faithful to the text, in the order the text presents them. key_terms: "
    "up to {max_terms} key terms (words or short phrases), most important first."
)


# -- the notes -----------------------------------------------------------------------------


def _strings(value: Any) -> tuple[str, ...]:
    """A tuple of non-empty strings from a list, tuple or single value (models vary)."""
    if value is None:
        return ()
    if isinstance(value, str | dict) or not isinstance(value, Iterable):
        value = [value]
    items = []
    for item in value:
        if isinstance(item, dict):  # {"term": ..., "definition": ...}
            item = ": ".join(str(v) for v in item.values() if v not in (None, ""))
        text = " ".join(str(item).split()) if item is not None else ""
        if text:
            items.append(text)
    return tuple(items)


def _field_name(name: Any) -> str:
    return re.sub(r"[^a-z]", "", str(name).lower())  # "Key Points", "keyPoints", "key_points"


@dataclass(frozen=True)
class ChunkNotes:
    """Study notes for one chunk (or, merged, one document).

    Attributes:
      title(str): A short title; may be empty.
      key_points(tuple): Key sentences, in document order.
      key_terms(tuple): Key words and phrases, most important first.
    """

    title: str
    key_points: tuple[str, ...]
    key_terms: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        """The notes as JSON-ready data: ``{"title", "key_points": [...], "key_terms": [...]}``."""
        return {"title": self.title, "key_points": list(self.key_points), "key_terms": list(self.key_terms)}

    @classmethod
    def from_dict(cls, data: Any) -> ChunkNotes:
        """Notes from a dict as ``to_dict`` makes it, or as a model wrote it.

        Tolerant: lists or tuples, a single string for a list, missing keys,
        and key spellings such as ``"keyPoints"`` or ``"Key terms"``.

        Parameters:
          data(dict): The mapping to read.
        """
        if not isinstance(data, dict):
            raise TypeError(f"notes must be a dict, got {type(data).__name__}")
        fields = {_field_name(key): value for key, value in data.items()}
        title = fields.get("title")
        return cls(
            title=" ".join(str(title).split()) if title is not None else "",
            key_points=_strings(fields.get("keypoints", fields.get("points"))),
            key_terms=_strings(fields.get("keyterms", fields.get("terms"))),
        )

    @classmethod
    def from_text(cls, text: str) -> ChunkNotes:
        """Notes from a plain-text answer (a model that ignored the JSON format).

        The first non-empty line is the title, the others are key points
        (bullets and numbering stripped); there are no key terms.

        Parameters:
          text(str): The model's answer.
        """
        lines = [
            re.sub(r"^\s*(?:[#*•\u2013-]+|\d{1,2}[.)])\s*", "", line).strip() for line in text.splitlines()
        ]
        lines = [line for line in lines if line]
        if not lines:
            return cls("", (), ())
        return cls(lines[0].strip("*_ "), tuple(lines[1:]), ())


def _words(text: str) -> list[str]:
    """Stemmed content words, for comparing sentences."""
    words = re.findall(r"[^\W_]+", text.lower())
    return [stem(w) for w in words if w not in STOPWORDS]


def _near_duplicate(a: set[str], b: set[str]) -> bool:
    """Whether two key points say the same: nearly the same words, or one a piece of the other."""
    if not a or not b:
        return a == b
    common = len(a & b)
    # A sentence cut at a chunk boundary is mostly contained in its whole version.
    return common >= 0.8 * len(a | b) or (min(len(a), len(b)) >= 4 and common >= 0.9 * min(len(a), len(b)))


def _merge_points(parts: Sequence[ChunkNotes]) -> list[tuple[int, str]]:
    """Every part's key points in order, as ``(part, point)``, without exact or near duplicates."""
    kept: list[tuple[int, str]] = []
    keys: list[set[str]] = []
    exact: dict[str, int] = {}
    neighbours = 0  # where the previous part's points start in ``kept``
    for number, part in enumerate(parts):
        start = len(kept)
        for point in part.key_points:
            normal = " ".join(re.findall(r"[^\W_]+", point.lower()))
            words = set(_words(point))
            match = exact.get(normal)
            if match is None:
                # Chunks overlap only with their neighbours, so a cut-off copy of a
                # sentence can only be among the previous part's points (or this
                # part's): comparing with those keeps a 2,000-page merge linear.
                candidates = range(neighbours, len(keys))
                match = next((k for k in candidates if _near_duplicate(words, keys[k])), None)
            if match is None:
                exact[normal] = len(kept)
                kept.append((number, point))
                keys.append(words)
            elif len(words) > len(keys[match]):
                kept[match] = (kept[match][0], point)  # keep the whole sentence, not its cut-off piece
                keys[match] = words
        neighbours = start
    return kept


def _spread(points: list[tuple[int, str]], limit: int) -> list[str]:
    """At most ``limit`` points, taken in turn from each part so the whole document is covered."""
    if len(points) <= limit:
        return [point for _, point in points]
    rank: dict[int, int] = {}
    order = []
    for index, (part, _) in enumerate(points):
        order.append((rank.get(part, 0), index))
        rank[part] = rank.get(part, 0) + 1
    chosen = sorted(index for _, index in sorted(order)[:limit])
    return [points[index][1] for index in chosen]


def _term_key(term: str) -> str:
    """What makes two key terms the same: "Light energies" and "light energy" are."""
    return " ".join(stem(word) for word in term.lower().split())


def merge_notes(
    parts: Sequence[ChunkNotes], *, max_points: int | None = None, max_terms: int = 12
) -> ChunkNotes:
    """One document's notes from its chunks' notes, in chunk order.

    The title is the first non-empty one.  Key points are concatenated in
    order; the same sentence coming back from two overlapping chunks (the
    same words, or one a cut-off piece of the other) is kept once.  Key
    terms are ranked by how many chunks name them, then by first appearance.

    Parameters:
      parts(Sequence): The chunks' notes, in document order.
      max_points(int): At most this many key points (``None``: all); when
        there are more, each chunk gives its first points in turn.
      max_terms(int): At most this many key terms.
    """
    title = next((part.title for part in parts if part.title), "")
    points = _merge_points(parts)
    limit = len(points) if max_points is None else max_points
    chunks: dict[str, int] = {}
    forms: dict[str, str] = {}
    for part in parts:
        for key in dict.fromkeys(_term_key(term) for term in part.key_terms):  # once per chunk
            chunks[key] = chunks.get(key, 0) + 1
        for term in part.key_terms:
            forms.setdefault(_term_key(term), term)
    ranked = sorted(forms, key=lambda key: -chunks[key])  # stable: first appearance breaks ties
    return ChunkNotes(title, tuple(_spread(points, limit)), tuple(forms[key] for key in ranked[:max_terms]))


# -- the client ----------------------------------------------------------------------------


class ModelError(Exception):
    """The notes endpoint failed.

    Attributes:
      status(int | None): The HTTP status, when the endpoint answered.
      retryable(bool): Whether trying again later may succeed; read by the ``Backoff`` middleware.
      retry_after(int | None): The endpoint's requested pause in milliseconds, if any.
      url(str | None): The endpoint URL.
    """

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        retryable: bool = True,
        retry_after: int | None = None,
        url: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.retryable = retryable
        self.retry_after = retry_after
        self.url = url

    def __reduce__(self) -> Any:
        # Keep the attributes when the error is pickled (results backends, process pools).
        kwargs = {"status": self.status, "retryable": self.retryable, "retry_after": self.retry_after}
        return _rebuild_error, (type(self), str(self), kwargs, self.url)


def _rebuild_error(
    cls: type[ModelError], message: str, kwargs: dict[str, Any], url: str | None
) -> ModelError:
    error = cls.__new__(cls)
    ModelError.__init__(error, message, url=url, **kwargs)
    return error


class _AttemptFailed(ModelError):
    """One HTTP attempt failed in a way worth another try (raised inside ``around_request``)."""


def _without_credentials(url: str) -> str:
    """The URL without a ``user:password@`` part, for messages."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[1]))


def _server_message(response: requests.Response) -> str:
    """The error message an OpenAI-style endpoint put in its answer, else the start of the body."""
    try:
        data = response.json()
    except ValueError:
        return " ".join(response.text[:200].split())
    error = data.get("error") if isinstance(data, dict) else None
    if isinstance(error, dict) and error.get("message"):
        return str(error["message"])[:300]
    if isinstance(error, str):
        return error[:300]
    return " ".join(response.text[:200].split())


def _content(data: Any) -> str:
    """``choices[0].message.content`` of a chat completion; ``ValueError`` when it is not there."""
    try:
        content = data["choices"][0]["message"]["content"]
    except (KeyError, IndexError, TypeError):
        raise ValueError("the answer has no choices[0].message.content") from None
    if isinstance(content, list):  # content parts
        content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
    if not isinstance(content, str):
        raise ValueError(f"choices[0].message.content is {type(content).__name__}, not text")
    return content


def _notes_from_content(content: str) -> ChunkNotes:
    """Parse the model's answer: JSON notes (possibly in a Markdown fence), else plain text."""
    text = content.strip()
    fenced = re.fullmatch(r"```(?:json)?\s*(.*?)\s*```", text, re.DOTALL | re.IGNORECASE)
    if fenced:
        text = fenced.group(1)
    try:
        data = json.loads(text)
    except ValueError:
        return ChunkNotes.from_text(content)
    return ChunkNotes.from_dict(data) if isinstance(data, dict) else ChunkNotes.from_text(content)


class ChatModel:
    """Study notes from an OpenAI-compatible chat-completions endpoint, with retries.

    Safe to share between threads.  The API key is sent only as
    ``Authorization: Bearer <key>``; it is never logged, put in an error
    message, or shown by ``repr``.

    Parameters:
      base_url(str): The API base URL (ends in ``/v1``); default
        ``OPENAI_BASE_URL``, else ``https://api.openai.com/v1``.
      api_key(str): Default ``OPENAI_API_KEY``; without a key no
        ``Authorization`` header is sent (local servers).
      model(str): Default ``OPENAI_MODEL``, else ``gpt-4o-mini``.
      timeout(int): Milliseconds one ``notes()`` call may take in all, its
        retries and their waits included.
      max_retries(int): Retries after the first attempt (429, 5xx, connection errors).
      session(requests.Session): Default: the process's pooled session,
        ``dramatiq_turbo.http_session()`` (which never retries a POST itself).
      around_request(Callable): Returns a context manager that each HTTP
        attempt runs inside (a rate limiter, a circuit breaker).  A 429, a
        5xx or a connection error is raised through it, so a breaker counts
        it; an error it raises itself propagates at once, never retried.
      max_points(int): At most this many key points per chunk.
      max_terms(int): At most this many key terms per chunk.
      min_backoff(int): Base of the exponential backoff, in ms.
      max_backoff(int): Its cap, in ms.
    """

    def __init__(
        self,
        *,
        base_url: str | None = None,
        api_key: str | None = None,
        model: str | None = None,
        timeout: int = 60_000,
        max_retries: int = 3,
        session: requests.Session | None = None,
        around_request: Callable[[], AbstractContextManager[Any]] | None = None,
        max_points: int = 5,
        max_terms: int = 8,
        min_backoff: int = DEFAULT_MIN_BACKOFF,
        max_backoff: int = DEFAULT_MAX_BACKOFF,
    ) -> None:
        base = base_url or os.environ.get("OPENAI_BASE_URL") or DEFAULT_BASE_URL
        self.base_url = base.rstrip("/")
        self.url = f"{self.base_url}/chat/completions"
        self.model = model or os.environ.get("OPENAI_MODEL") or DEFAULT_MODEL
        self._api_key = api_key if api_key is not None else os.environ.get("OPENAI_API_KEY") or None
        self.timeout = require_ms("timeout", timeout, allow_zero=False)
        if isinstance(max_retries, bool) or not isinstance(max_retries, int) or max_retries < 0:
            raise ValueError(f"max_retries must be an int >= 0, got {max_retries!r}")
        self.max_retries = max_retries
        self.min_backoff = require_ms("min_backoff", min_backoff)
        self.max_backoff = require_ms("max_backoff", max_backoff)
        self.max_points = max_points
        self.max_terms = max_terms
        self._session = session
        self._around_request = around_request
        self._random = random.Random()
        self._shown_url = _without_credentials(self.url)

    def __repr__(self) -> str:
        key = "<set>" if self._api_key else None
        base = _without_credentials(self.base_url)
        return f"ChatModel(base_url={base!r}, model={self.model!r}, api_key={key})"

    @property
    def session(self) -> requests.Session:
        """The session requests go through (the pooled per-process one unless one was given)."""
        if self._session is not None:
            return self._session
        from dramatiq_turbo import http_session

        return http_session()

    def notes(self, text: str) -> ChunkNotes:
        """Study notes for one chunk of text.

        Raises ``ModelError`` when the endpoint fails (``retryable`` says
        whether a later try may succeed), and whatever ``around_request``
        raises (an open circuit, a rate-limit timeout).

        Parameters:
          text(str): The chunk.
        """
        body = self._body(text)
        deadline = time.monotonic() + self.timeout / 1000
        retries = 0
        while True:
            try:
                return self._exchange(body, deadline, retries)
            except _AttemptFailed as failure:
                delay = self._retry_delay(failure, retries, deadline)
                if delay is None:
                    raise self._gave_up(failure, retries + 1) from failure
                logger.info("%s (attempt %d); retrying in %d ms.", failure, retries + 1, delay)
                time.sleep(delay / 1000)
                retries += 1

    # -- one attempt --------------------------------------------------------------------

    def _body(self, text: str) -> dict[str, Any]:
        prompt = SYSTEM_PROMPT.format(max_points=self.max_points, max_terms=self.max_terms)
        return {
            "model": self.model,
            "messages": [{"role": "system", "content": prompt}, {"role": "user", "content": text}],
            "response_format": {"type": "json_object"},
            "temperature": 0,
        }

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        return headers

    def _exchange(self, body: dict[str, Any], deadline: float, retries: int) -> ChunkNotes:
        """One HTTP attempt inside ``around_request``: the notes, or ``_AttemptFailed`` / ``ModelError``."""
        outcome: ChunkNotes | ModelError | None = None
        guard = self._around_request() if self._around_request is not None else contextlib.nullcontext()
        with guard:
            response = self._post(body, deadline)
            # Retryable failures are raised in here so a circuit breaker counts them; a 4xx
            # is the request's fault, not the endpoint's, and leaves the block normally.
            outcome = self._outcome(response)
        if outcome is None:  # around_request swallowed the failure
            raise _AttemptFailed(f"POST {self._shown_url} failed", url=self._shown_url)
        if isinstance(outcome, ModelError):
            raise outcome
        logger.debug("POST %s answered 200 (attempt %d).", self._shown_url, retries + 1)
        return outcome

    def _post(self, body: dict[str, Any], deadline: float) -> requests.Response:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            message = f"POST {self._shown_url} ran out of its {self.timeout} ms timeout"
            raise _AttemptFailed(message, url=self._shown_url)
        try:
            return self.session.post(self.url, json=body, headers=self._headers(), timeout=remaining)
        except (requests.ConnectionError, requests.Timeout) as error:
            # requests names the host and port only (credentials in a URL become a header).
            reason = " ".join(str(error).split())[:300]
            raise _AttemptFailed(
                f"POST {self._shown_url} failed: {type(error).__name__}: {reason}", url=self._shown_url
            ) from None
        except requests.RequestException as error:
            raise ModelError(
                f"POST {self._shown_url} cannot be sent: {type(error).__name__}",
                retryable=False,
                url=self._shown_url,
            ) from None

    def _outcome(self, response: requests.Response) -> ChunkNotes | ModelError:
        status = response.status_code
        if status == 200:
            try:
                return _notes_from_content(_content(response.json()))
            except ValueError as error:  # a proxy's HTML page, a truncated body
                raise self._failure(status, f"an unreadable answer ({error})") from None
        message = self._scrub(_server_message(response))
        if status in RETRYABLE_STATUSES or status >= 500:
            hint = parse_retry_after(response.headers.get("Retry-After"))
            raise self._failure(status, f"{status}: {message}", hint)
        return ModelError(
            f"POST {self._shown_url} answered {status}: {message}",
            status=status,
            retryable=False,
            url=self._shown_url,
        )

    def _failure(self, status: int, what: str, retry_after: int | None = None) -> _AttemptFailed:
        message = f"POST {self._shown_url} answered {what}"
        return _AttemptFailed(message, status=status, retry_after=retry_after, url=self._shown_url)

    def _scrub(self, message: str) -> str:
        """The server's message without our key (some servers echo what they were sent)."""
        if self._api_key and len(self._api_key) >= 4:
            message = message.replace(self._api_key, "***")
        return message

    # -- retries ------------------------------------------------------------------------

    def _retry_delay(self, failure: _AttemptFailed, retries: int, deadline: float) -> int | None:
        """Milliseconds to wait before the next attempt, or ``None`` to give up now."""
        if retries >= self.max_retries:
            return None
        if failure.retry_after is not None:
            delay = failure.retry_after  # the server said when: sooner would be refused again
        else:
            delay = compute_delay(
                retries, min_backoff=self.min_backoff, max_backoff=self.max_backoff, rng=self._random
            )
        # Waiting past the deadline would only end in a timeout; the Backoff middleware waits instead.
        if (deadline - time.monotonic()) * 1000 <= delay:
            return None
        return delay

    def _gave_up(self, failure: _AttemptFailed, attempts: int) -> ModelError:
        return ModelError(
            f"{failure} (gave up after {attempts} attempt{'s' if attempts > 1 else ''})",
            status=failure.status,
            retryable=True,
            retry_after=failure.retry_after,
            url=self._shown_url,
        )
