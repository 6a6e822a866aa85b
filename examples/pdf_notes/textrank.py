"""Extractive study notes without a model: TextRank over sentences and over words.

``extract_notes(text)`` returns ``{"title", "key_points", "key_terms"}`` for
one chunk of PDF text:

* The text is cleaned the way PDF extraction needs: ligatures folded
  (NFKC), words hyphenated across a line break rejoined, page numbers and
  running headers dropped, bullets and headings kept apart from the prose,
  and lines broken mid-sentence joined again before sentences are split.
* Key points are the most central sentences by TextRank (Mihalcea & Tarau,
  2004): sentences are nodes, edges weigh the overlap of their stemmed
  content words normalised by ``log |Si| + log |Sj|``, and PageRank (damping
  0.85, power iteration until no score moves by more than 1e-4) ranks them.
  They come back in document order.
* Key terms are ranked by TextRank over a co-occurrence graph of content
  words (window of 3), its random jump weighted by word frequency; adjacent
  top words that recur together become two-word phrases.
* The title is a heading-like first line when there is one, else the top
  key term capitalised.

Everything is pure Python and deterministic: no set or dict of strings is
iterated in an order that depends on hashing, so the same text gives the
same notes in every process.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from operator import mul, sub

__all__ = ["STOPWORDS", "extract_notes", "split_sentences", "stem"]

#: PageRank damping factor, as in the TextRank paper.
DAMPING = 0.85
#: Convergence: stop once no score (mean 1) moves by more than this between iterations.
TOLERANCE = 1e-4
#: A bound on iterations; the graphs here converge in 15-40.
MAX_ITERATIONS = 100
#: Edges kept per sentence (its strongest).  A dense graph of a long chunk
#: would cost n^2 per iteration; the strongest edges carry the ranking.
SENTENCE_NEIGHBOURS = 10
#: Words this many positions apart (or closer) co-occur.
WORD_WINDOW = 3
#: The word graph keeps at most this many candidate words, the most frequent.
MAX_WORD_NODES = 250
#: A key point has at least this many words ...
MIN_WORDS = 5
#: ... and at most this many: longer "sentences" are tables or run-on extraction noise.
MAX_WORDS = 60
MAX_CHARS = 400

#: A small English stopword list (function words plus words common in any prose).
_STOPWORD_TEXT = """
    a about above across after afterwards again against all almost alone along already also although
    always am among amongst an and another any anyhow anyone anything anyway anywhere are around as at
    back be became because become becomes becoming been before beforehand behind being below beside
    besides between beyond both but by can cannot could did do does doing done down due during each
    either else elsewhere enough etc even ever every everyone everything everywhere except few first
    for former formerly from further furthermore get gets getting give given gives go goes going got
    had has have having he hence her here hereby herein hers herself him himself his how however i if
    in indeed instead into is it its itself just last latter least less let like likely made mainly
    make makes many may me meanwhile might mine more moreover most mostly much must my myself namely
    near nearly neither never nevertheless next no nobody none nor not nothing now nowhere of off often
    on once one only onto or other others otherwise our ours ourselves out over own per perhaps put
    quite rather really said same say says see seem seemed seeming seems several shall she should
    since so some somehow someone something sometimes somewhere still such than that the their theirs
    them themselves then thence there thereafter thereby therefore therein these they this those
    though through throughout thus to together too toward towards two under unless until up upon us
    use used uses using usually very via was we well were what whatever when whenever where whereas
    wherever whether which while who whoever whole whom whose why will with within without would yet
    you your yours yourself yourselves e.g i.e et al fig figure table page chapter section can't don't
    doesn't isn't it's aren't wasn't weren't won't also three four five six seven eight nine ten
"""
STOPWORDS = frozenset(_STOPWORD_TEXT.split())

_ABBREVIATION_TEXT = (
    "e.g i.e cf vs mr mrs ms dr prof sr jr st fig figs eq eqs no nos vol vols pp approx ca al inc ltd "
    "co corp dept univ jan feb mar apr jun jul aug sep sept oct nov dec ed eds est resp sec"
)
_ABBREVIATIONS = frozenset(_ABBREVIATION_TEXT.split())

_WORD = re.compile(r"[^\W\d_](?:[\w'\u2019-]*[^\W_])?")
_HYPHEN_BREAK = re.compile(r"(?<=[^\W\d_])[-\u00ad\u2010\u2011][ \t]*\n[ \t]*(?=[a-z])")
# "12", "Page 3 of 40", "- 7 -", "iv"
_PAGE_NUMBER = re.compile(
    r"(?:page\s+)?\d{1,4}(?:\s*(?:of|/)\s*\d{1,4})?"
    r"|[-\u2013\u2014]\s*\d{1,4}\s*[-\u2013\u2014]"
    r"|[ivxlc]{1,6}",
    re.IGNORECASE,
)
_BULLET = re.compile(r"(?:[•◦▪▫‣\u2043●○■□►▸∙·*\u2013\u2014-]|\(?\d{1,2}[.)]|\(?[a-z]\)|\([ivx]{1,4}\))\s+")
_INLINE_BULLET = re.compile(r"\s+[•◦▪▫‣\u2043●○■□►▸]\s+")
_NUMBERED = re.compile(r"(?:\d{1,2}(?:\.\d{1,2})*\.?|[IVX]{1,4}\.|chapter\s+\w+:?|part\s+\w+:?)\s", re.I)
_BOUNDARY = re.compile(r"[.!?]+[\"'\u201d\u2019)\]]*\s+(?=[\"'\u201c\u2018(\[]?[A-Z0-9])")
_INITIALISM = re.compile(r"(?:[a-z]\.)+[a-z]")
_SPACES = re.compile(r"\s+")


# -- stemming ------------------------------------------------------------------------------


@lru_cache(maxsize=65_536)
def stem(word: str) -> str:
    """A light suffix-stripping stem of a lowercase word, enough to join inflections.

    "studies", "studied" and "studying" become "study"; "plants" "plant";
    "produces", "produced" and "producing" "produc".  Stems are only
    compared with each other, never shown.

    Parameters:
      word(str): A lowercase word.
    """
    if len(word) <= 3:
        return word
    if word.endswith("ies") or word.endswith("ied"):
        return word[:-3] + "y"
    if word.endswith("sses"):
        word = word[:-2]
    elif word.endswith("s") and not word.endswith(("ss", "us", "is")):
        word = word[:-1]
    for suffix in ("ing", "ed"):
        base = word[: -len(suffix)]
        if word.endswith(suffix) and len(base) >= 3 and any(c in "aeiouy" for c in base):
            # Undo consonant doubling ("stopped" -> "stop"), except where English keeps it.
            if len(base) > 3 and base[-1] == base[-2] and base[-1] not in "lsz":
                base = base[:-1]
            word = base
            break
    if word.endswith("e") and len(word) > 4:
        word = word[:-1]
    return word


# -- cleaning and segmenting PDF text ------------------------------------------------------


def _clean(text: str) -> str:
    """Fold ligatures and odd spaces, rejoin words hyphenated across lines, unify line breaks."""
    text = unicodedata.normalize("NFKC", text)
    text = text.replace("\r\n", "\n").replace("\r", "\n").replace("\f", "\n\n")
    text = _HYPHEN_BREAK.sub("", text)
    return text.replace("\u00ad", "")


def _is_heading(line: str, following: str) -> bool:
    """Whether a line looks like a heading rather than a piece of a sentence.

    Parameters:
      line(str): The stripped line.
      following(str): The next non-empty line ("" at the end); a heading is
        not followed by a line that continues a sentence (lowercase start).
    """
    words = line.split()
    if not 1 <= len(words) <= 12 or len(line) > 90 or line[-1] in ".,;:!?":
        return False
    if not (line[0].isupper() or line[0].isdigit()) or not any(c.isalpha() for c in line):
        return False
    if (following and following[0].islower()) or words[-1].lower() in STOPWORDS:
        return False
    if len(words) <= 6 or line.isupper() or _NUMBERED.match(line):
        return True
    long_words = [w for w in words if len(w) > 3]
    return sum(w[0].isupper() for w in long_words) * 2 >= len(long_words)


def _content_lines(text: str) -> list[str]:
    """The text's lines, stripped, without page numbers or running headers ("" marks a blank line)."""
    lines = [line.strip() for line in text.split("\n")]
    counts: dict[str, int] = {}
    for line in lines:
        if line and len(line) < 80:
            counts[line] = counts.get(line, 0) + 1
    seen: set[str] = set()
    kept = []
    for line in lines:
        if line and _PAGE_NUMBER.fullmatch(line):
            continue
        if line and counts.get(line, 0) >= 3:
            # A short line on every page is a running header or footer: keep it once.
            if line in seen:
                continue
            seen.add(line)
        kept.append(line)
    return kept


@dataclass
class _Segments:
    """A text cut into units that sentences never cross: paragraphs, bullet items, headings."""

    title: str = ""
    headings: list[str] = field(default_factory=list)
    blocks: list[str] = field(default_factory=list)  # prose paragraphs and bullet items
    order: list[tuple[bool, int]] = field(default_factory=list)  # (is_heading, index), in document order


def _segment(text: str) -> _Segments:
    """Cut cleaned text into headings and prose blocks, joining lines broken mid-sentence."""
    lines = _content_lines(text)
    segments = _Segments()
    buffer: list[str] = []

    def flush() -> None:
        if buffer:
            segments.order.append((False, len(segments.blocks)))
            segments.blocks.append(" ".join(buffer))
            buffer.clear()

    nonblank = [i for i, line in enumerate(lines) if line]
    for position, index in enumerate(nonblank):
        line = lines[index]
        following = lines[nonblank[position + 1]] if position + 1 < len(nonblank) else ""
        gap = position > 0 and index - nonblank[position - 1] > 1
        if _is_heading(line, following):
            flush()
            if position == 0:
                segments.title = _SPACES.sub(" ", line)
            segments.order.append((True, len(segments.headings)))
            segments.headings.append(line)
            continue
        bullet = _BULLET.match(line)
        # A paragraph ends at a blank line, unless the sentence plainly runs on (page breaks).
        runs_on = bool(buffer) and buffer[-1][-1] not in '.!?:;"\u201d)' and line[0].islower()
        if bullet or (gap and not runs_on):
            flush()
        for number, item in enumerate(_INLINE_BULLET.split(line[bullet.end() :] if bullet else line)):
            if number:
                flush()
            buffer.append(item)
    flush()
    return segments


def _is_abbreviation(unit: str, dot: int) -> bool:
    """Whether the period at ``unit[dot]`` ends an abbreviation or an initial, not a sentence."""
    if unit[dot] != ".":
        return False
    word = unit[unit.rfind(" ", 0, dot) + 1 : dot].lstrip("([\"'\u201c\u2018").lower()
    return (len(word) == 1 and word.isalpha()) or word in _ABBREVIATIONS or bool(_INITIALISM.fullmatch(word))


def _sentences_of(block: str) -> Iterator[str]:
    start = 0
    for match in _BOUNDARY.finditer(block):
        if _is_abbreviation(block, match.start()):
            continue
        yield block[start : match.end()].strip()
        start = match.end()
    tail = block[start:].strip()
    if tail:
        yield tail


def split_sentences(text: str) -> list[str]:
    """The sentences of (PDF) text in document order; headings are left out.

    Parameters:
      text(str): Raw extracted text: hyphenated line breaks, lines broken
        mid-sentence, bullets and page numbers are handled.
    """
    return [s for block in _segment(_clean(text)).blocks for s in _sentences_of(block)]


# -- tokens --------------------------------------------------------------------------------


@dataclass
class _Sentence:
    text: str
    words: int  # all word tokens
    stems: list[str]  # content-word stems in order, repeats kept
    surfaces: list[str]  # the content words as written
    positions: list[int]  # each content word's position among all the words


def _tokens(text: str) -> _Sentence:
    """Tokenise one unit: content words are non-stopwords of 3+ letters, or acronyms ("UV", "ATP")."""
    stems: list[str] = []
    surfaces: list[str] = []
    positions: list[int] = []
    words = _WORD.findall(text)
    for position, word in enumerate(words):
        if word.endswith(("'s", "\u2019s")):
            word = word[:-2]
        lower = word.lower()
        if lower in STOPWORDS or not (len(word) >= 3 or (len(word) == 2 and word.isupper())):
            continue
        stems.append(stem(lower))
        surfaces.append(word)
        positions.append(position)
    return _Sentence(text, len(words), stems, surfaces, positions)


def _is_junk(sentence: _Sentence) -> bool:
    """Too short or long to be a key point, or mostly digits and symbols (tables, references)."""
    if not MIN_WORDS <= sentence.words <= MAX_WORDS or len(sentence.text) > MAX_CHARS:
        return True
    letters = sum(map(str.isalpha, sentence.text))
    digits = sum(map(str.isdigit, sentence.text))
    visible = len(sentence.text) - sentence.text.count(" ")
    return digits * 3 > letters or letters * 10 < visible * 6


# -- PageRank ------------------------------------------------------------------------------

_Graph = list[tuple[list[int], list[float]]]  # per node: neighbour indexes and edge weights


def _pagerank(graph: _Graph, teleport: list[float] | None = None) -> list[float]:
    """Weighted PageRank by power iteration: ``s_i = (1 - d) * t_i + d * sum_j w_ji / W_j * s_j``.

    Parameters:
      graph(list): Per node, its neighbours and the (symmetric) edge weights.
      teleport(list): Per node, the weight ``t_i`` of the random jump (mean 1);
        uniform (TextRank) when ``None``.
    """
    out = [sum(weights) for _, weights in graph]
    rows = [(neighbours, [DAMPING * w for w in weights]) for neighbours, weights in graph]
    base = [(1 - DAMPING) * t for t in teleport] if teleport else [1 - DAMPING] * len(graph)
    scores = [1.0] * len(graph)
    for _ in range(MAX_ITERATIONS):
        share = [s / o if o else 0.0 for s, o in zip(scores, out, strict=True)]
        new = [
            b + sum(map(mul, weights, map(share.__getitem__, neighbours)))
            for b, (neighbours, weights) in zip(base, rows, strict=True)
        ]
        change = max(map(abs, map(sub, new, scores)), default=0.0)
        scores = new
        if change < TOLERANCE:
            break
    return scores


def _sentence_graph(sentences: list[_Sentence]) -> _Graph:
    """TextRank's sentence graph, each node keeping its ``SENTENCE_NEIGHBOURS`` strongest edges."""
    vocabulary: dict[str, int] = {}
    masks = []
    for sentence in sentences:
        ids = {vocabulary.setdefault(s, len(vocabulary)) for s in sentence.stems}
        masks.append(sum(1 << i for i in ids))  # a bit set: overlaps are one AND and a popcount
    logs = [math.log(s.words) for s in sentences]
    strongest: list[list[tuple[float, int]]] = [[] for _ in sentences]  # (-weight, neighbour)
    for i, mask in enumerate(masks):
        overlaps = [(mask & other).bit_count() for other in masks[i + 1 :]]
        for j, overlap in enumerate(overlaps, i + 1):
            if overlap:
                weight = overlap / (logs[i] + logs[j])
                strongest[i].append((-weight, j))  # sorts strongest first, then by position
                strongest[j].append((-weight, i))
    edges: list[dict[int, float]] = [{} for _ in sentences]
    for i, candidates in enumerate(strongest):
        candidates.sort()
        for negative, j in candidates[:SENTENCE_NEIGHBOURS]:
            edges[i][j] = edges[j][i] = -negative
    return [(list(e), list(e.values())) for e in edges]


def _key_points(sentences: list[_Sentence], max_points: int) -> list[str]:
    """The ``max_points`` most central sentences, in document order."""
    seen: set[str] = set()
    candidates = []
    for sentence in sentences:
        key = sentence.text.lower()
        if not _is_junk(sentence) and key not in seen:  # a sentence repeated on every page counts once
            seen.add(key)
            candidates.append(sentence)
    if len(candidates) > max_points:
        scores = _pagerank(_sentence_graph(candidates))
        ranked = sorted(range(len(candidates)), key=lambda k: (-scores[k], k))[:max_points]
        candidates = [candidates[k] for k in sorted(ranked)]
    return [c.text for c in candidates]


# -- key terms -----------------------------------------------------------------------------


@dataclass
class _Terms:
    """Counts for the key terms: stem frequencies, surface forms, and adjacent stem pairs."""

    frequency: dict[str, int] = field(default_factory=dict)
    forms: dict[str, dict[str, int]] = field(default_factory=dict)
    pairs: dict[tuple[str, str], int] = field(default_factory=dict)
    pair_forms: dict[tuple[str, str], dict[str, int]] = field(default_factory=dict)


def _count_terms(units: list[_Sentence]) -> _Terms:
    terms = _Terms()
    for unit in units:
        for k, (s, word, position) in enumerate(zip(unit.stems, unit.surfaces, unit.positions, strict=True)):
            terms.frequency[s] = terms.frequency.get(s, 0) + 1
            # Lowercase unless it is an acronym or a name (capitalised where a sentence does not start).
            name = word.isupper() or (position > 0 and word[0].isupper())
            forms = terms.forms.setdefault(s, {})
            form = word if name else word.lower()
            forms[form] = forms.get(form, 0) + 1
            if k and unit.positions[k - 1] == position - 1 and unit.stems[k - 1] != s:
                pair = (unit.stems[k - 1], s)
                terms.pairs[pair] = terms.pairs.get(pair, 0) + 1
                phrase = f"{_phrase_form(unit.surfaces[k - 1])} {_phrase_form(word)}"
                pair_forms = terms.pair_forms.setdefault(pair, {})
                pair_forms[phrase] = pair_forms.get(phrase, 0) + 1
    return terms


def _phrase_form(word: str) -> str:
    """How a word is shown inside a key phrase: acronyms keep their case."""
    return word if word.isupper() and len(word) > 1 else word.lower()


def _word_graph(units: list[_Sentence], nodes: dict[str, int]) -> _Graph:
    """Co-occurrence graph over ``nodes``: words at most ``WORD_WINDOW - 1`` content words apart."""
    edges: list[dict[int, float]] = [{} for _ in nodes]
    for unit in units:
        ids = [nodes.get(s, -1) for s in unit.stems]
        for k, a in enumerate(ids):
            if a < 0:
                continue
            for b in ids[k + 1 : k + WORD_WINDOW]:
                if b >= 0 and b != a:
                    edges[a][b] = edges[a].get(b, 0.0) + 1.0
                    edges[b][a] = edges[b].get(a, 0.0) + 1.0
    return [(list(e), list(e.values())) for e in edges]


def _most_common(forms: dict[str, int]) -> str:
    return max(forms.items(), key=lambda item: item[1])[0]  # max keeps the first of equals


_Candidate = tuple[float, int, str, tuple[str, ...]]  # (-score, rank, shown form, stems)


def _key_terms(units: list[_Sentence], max_terms: int) -> list[str]:
    """Key words and two-word phrases ranked by TextRank over word co-occurrence."""
    terms = _count_terms(units)
    if not terms.frequency:
        return []
    # Words seen once rarely name a topic; keep them only when a chunk has little else.
    ranked = sorted(terms.frequency, key=lambda s: -terms.frequency[s])  # stable: first appearance
    recurring = [s for s in ranked if terms.frequency[s] > 1]
    ranked = (recurring if len(recurring) >= 2 * max_terms else ranked)[:MAX_WORD_NODES]
    nodes = {s: i for i, s in enumerate(ranked)}
    # The random jump favours frequent words (as PositionRank biases it): a word said once in an
    # aside would otherwise rank high just for sitting in a small, separate cluster of the graph.
    mean = sum(terms.frequency[s] for s in ranked) / len(ranked)
    teleport = [terms.frequency[s] / mean for s in ranked]
    scores = dict(zip(ranked, _pagerank(_word_graph(units, nodes), teleport), strict=True))
    candidates: list[_Candidate] = [
        (-scores[s], rank, _most_common(terms.forms[s]), (s,)) for rank, s in enumerate(ranked)
    ]
    for (a, b), count in terms.pairs.items():
        # A phrase must recur, and account for a good share of its words' uses.
        if count < 2 or a not in nodes or b not in nodes:
            continue
        if 3 * count >= max(terms.frequency[a], terms.frequency[b]):
            form = _most_common(terms.pair_forms[(a, b)])
            candidates.append((-(scores[a] + scores[b]), min(nodes[a], nodes[b]), form, (a, b)))
    candidates.sort(key=lambda c: (c[0], c[1], len(c[3])))
    return _choose_terms(candidates, max_terms)


def _choose_terms(candidates: list[_Candidate], max_terms: int) -> list[str]:
    """The best candidates, skipping words already inside a chosen phrase and pieces of one name."""
    chosen: list[str] = []
    covered: set[str] = set()
    starts: set[str] = set()
    ends: set[str] = set()
    for _, _, form, stems in candidates:
        if len(chosen) == max_terms:
            break
        if form in chosen or (len(stems) == 1 and stems[0] in covered):
            continue
        # "general public" after "public license": two pieces of one longer name, keep the first.
        if len(stems) == 2 and (stems[0] in ends or stems[1] in starts):
            continue
        chosen.append(form)
        covered.update(stems)
        if len(stems) == 2:
            starts.add(stems[0])
            ends.add(stems[1])
    return chosen


# -- the notes -----------------------------------------------------------------------------


def extract_notes(text: str, *, max_points: int = 5, max_terms: int = 8) -> dict:
    """Extractive study notes for one chunk of text.

    Returns ``{"title": str, "key_points": [str, ...], "key_terms": [str, ...]}``;
    the same text always gives the same notes.

    Parameters:
      text(str): The chunk, as extracted from a PDF.
      max_points(int): At most this many key points (the most central sentences, in document order).
      max_terms(int): At most this many key terms (words or two-word phrases, best first).
    """
    if max_points < 0 or max_terms < 0:
        raise ValueError(f"max_points and max_terms must be >= 0, got {max_points} and {max_terms}")
    segments = _segment(_clean(text))
    sentences: list[_Sentence] = []
    units: list[_Sentence] = []
    for is_heading, index in segments.order:
        if is_heading:
            units.append(_tokens(segments.headings[index]))
            continue
        for sentence in _sentences_of(segments.blocks[index]):
            sentences.append(_tokens(sentence))
            units.append(sentences[-1])
    key_points = _key_points(sentences, max_points) if max_points else []
    key_terms = _key_terms(units, max_terms) if max_terms else []
    title = segments.title
    if not title and key_terms:
        title = key_terms[0][:1].upper() + key_terms[0][1:]
    return {"title": title, "key_points": key_points, "key_terms": key_terms}
