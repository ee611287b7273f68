"""The dedup filter against rouge-score itself: tokens, F values, and whole greedy runs."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rouge_score import rouge_scorer
from rouge_score import tokenize as rouge_tokenize

from service.stages.dedup import Decision, Deduplicator, deduplicate, rouge_f, tokenize

CORPUS = Path(__file__).resolve().parent.parent / "data" / "r_help_corpus.jsonl"
SCORER = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)


@pytest.fixture(scope="module")
def corpus() -> list[str]:
    with CORPUS.open(encoding="utf-8") as f:
        return [json.loads(line)["text"] for line in f]


def alpaca_loop(
    items: list[tuple[str, str]], threshold: float, existing: list[tuple[str, str]] = ()
) -> list[tuple[str, bool, str | None, float]]:
    """Alpaca's filter with rouge-score: `_score_lcs(new, kept)` against everything kept, drop if max > threshold."""
    kept = [(id, SCORER._tokenizer.tokenize(text)) for id, text in existing]
    rows = []
    for id, text in items:
        tokens = SCORER._tokenizer.tokenize(text)
        scores = [rouge_scorer._score_lcs(tokens, other).fmeasure for _, other in kept]
        best = max(scores, default=0.0)
        nearest = kept[scores.index(best)][0] if best > 0 else None
        rows.append((id, best <= threshold, nearest, float(best)))
        if best <= threshold:
            kept.append((id, tokens))
    return rows


def rows(decisions: list[Decision]) -> list[tuple[str, bool, str | None, float]]:
    return [(d.id, d.kept, d.nearest_id, d.score) for d in decisions]


# Near-duplicates: texts drawn from a small vocabulary, then copied with small edits.
WORDS = [
    "mean",
    "median",
    "of",
    "the",
    "x",
    "vector",
    "compute",
    "a",
    "t.test",
    "lm",
    "in",
    "R",
    "data",
    "NA",
]
words = st.lists(st.sampled_from(WORDS), min_size=0, max_size=14)
separators = st.sampled_from([" ", "  ", ", ", "; ", "-", " (", ") ", "\n", " é ", " 平均 "])


@st.composite
def near_duplicates(draw: st.DrawFn) -> list[tuple[str, str]]:
    bases = draw(st.lists(words, min_size=1, max_size=4))
    texts = []
    for _ in range(draw(st.integers(1, 10))):
        tokens = list(draw(st.sampled_from(bases)))
        for _ in range(draw(st.integers(0, 3))):
            op = draw(st.integers(0, 2))
            if op == 0 and tokens:
                del tokens[draw(st.integers(0, len(tokens) - 1))]
            elif op == 1:
                tokens.insert(draw(st.integers(0, len(tokens))), draw(st.sampled_from(WORDS)))
            elif tokens:
                i = draw(st.integers(0, len(tokens) - 1))
                tokens[i] = tokens[i].upper()
        sep = draw(separators)
        texts.append(sep.join(tokens) or draw(st.sampled_from(["?", "平均値", "x"])))
    return [(f"i{i}", t) for i, t in enumerate(texts)]


@given(st.text(max_size=200))
def test_rouge_tokenizer_is_rouge_scores(text: str) -> None:
    assert tokenize("rouge", text) == rouge_tokenize.tokenize(text, None)


@given(st.integers(0, 60), st.integers(0, 60), st.integers(0, 60))
def test_f_is_rouge_scores_float_for_float(lcs: int, m: int, n: int) -> None:
    lcs = min(lcs, m, n)
    target, prediction = ["t"] * m, ["t"] * lcs + ["p"] * (n - lcs)
    assert rouge_f(lcs, m, n) == rouge_scorer._score_lcs(target, prediction).fmeasure


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(near_duplicates())
def test_pair_scores_equal_rouge_score(items: list[tuple[str, str]]) -> None:
    dedup = Deduplicator(tokenizer="rouge")
    for (_, a), (_, b) in zip(items, items[1:] + items[:1], strict=True):
        assert dedup.score(a, b) == SCORER.score(a, b)["rougeL"].fmeasure


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(near_duplicates(), st.sampled_from([0.0, 0.25, 0.5, 0.6, 0.7, 0.75, 0.8, 1.0]))
def test_greedy_filter_equals_alpaca_loop_on_near_duplicates(
    items: list[tuple[str, str]], threshold: float
) -> None:
    history, batch = items[: len(items) // 3], items[len(items) // 3 :]
    got = deduplicate(batch, existing=history, threshold=threshold, tokenizer="rouge")
    assert rows(got) == alpaca_loop(batch, threshold, history)


def test_boundary_follows_rouge_scores_arithmetic_not_the_algebra() -> None:
    # LCS 7, new item 7 tokens, kept item 13: 2PR/(P+R) = 0.7000000000000001 but 2*7/(7+13) = 0.7.
    kept = "a b c d e f g h i j k l m"
    new = "a b c d e f g"
    assert SCORER.score(new, kept)["rougeL"].fmeasure > 0.7
    assert 2 * 7 / (7 + 13) == 0.7
    [decision] = deduplicate([("new", new)], existing=[("kept", kept)], threshold=0.7, tokenizer="rouge")
    assert decision == Decision(id="new", kept=False, nearest_id="kept", score=0.7000000000000001)
    # LCS 7 of 10 and 10: exactly 0.7, which is not above the threshold, so it stays.
    [decision] = deduplicate(
        [("new", "a b c d e f g x y z")], existing=[("kept", "a b c d e f g u v w")], tokenizer="rouge"
    )
    assert decision.score == 0.7
    assert decision.kept


def test_corpus_pair_scores_equal_rouge_score(corpus: list[str]) -> None:
    rng = random.Random(3)
    dedup = Deduplicator(tokenizer="rouge")
    pairs = [(rng.choice(corpus), rng.choice(corpus)) for _ in range(1500)]
    # Close pairs too: each sampled text against its nearest earlier text.
    sample = corpus[:600]
    for d in deduplicate([(str(i), t) for i, t in enumerate(sample)], tokenizer="rouge"):
        if d.nearest_id is not None:
            pairs.append((sample[int(d.id)], sample[int(d.nearest_id)]))
    assert sum(SCORER.score(a, b)["rougeL"].fmeasure > 0.5 for a, b in pairs) > 100
    for a, b in pairs:
        assert dedup.score(a, b) == SCORER.score(a, b)["rougeL"].fmeasure, (a, b)


def test_greedy_filter_equals_alpaca_loop_on_the_corpus(corpus: list[str]) -> None:
    rng = random.Random(5)
    items = [(f"c{i}", t) for i, t in enumerate(rng.sample(corpus[:3000], 200) + corpus[:250])]
    expected = alpaca_loop(items, 0.7)
    assert 0 < sum(not row[1] for row in expected) < len(items)
    assert rows(deduplicate(items, threshold=0.7, tokenizer="rouge")) == expected


def test_history_is_kept_unconditionally_and_not_reported() -> None:
    existing = [("e1", "compute the mean of x"), ("e2", "compute the mean of x")]
    got = deduplicate([("n1", "compute the mean of x please")], existing=existing, tokenizer="rouge")
    assert [d.id for d in got] == ["n1"]
    assert got[0].nearest_id == "e1"  # ties go to the earliest kept item
    assert not got[0].kept


def test_nothing_in_common_scores_zero_without_nearest() -> None:
    got = deduplicate([("a", "plot a histogram"), ("b", "?!"), ("c", "fit lm")], tokenizer="rouge")
    assert rows(got) == [("a", True, None, 0.0), ("b", True, None, 0.0), ("c", True, None, 0.0)]


def test_incremental_offers_equal_the_batch(corpus: list[str]) -> None:
    items = [(f"c{i}", t) for i, t in enumerate(corpus[:400])]
    dedup = Deduplicator(threshold=0.5, tokenizer="rouge")
    dedup.add_existing(items[:50])
    offered = [dedup.offer(id, text) for id, text in items[50:]]
    assert offered == deduplicate(items[50:], existing=items[:50], threshold=0.5, tokenizer="rouge")
    assert len(dedup) == 50 + sum(d.kept for d in offered)


def test_threshold_zero_drops_anything_sharing_a_token_and_one_keeps_everything() -> None:
    items = [("a", "mean of x"), ("b", "x"), ("c", "plot y")]
    assert [d.kept for d in deduplicate(items, threshold=0.0)] == [True, False, True]
    assert all(d.kept for d in deduplicate([*items, ("d", "mean of x")], threshold=1.0))


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="threshold"):
        Deduplicator(threshold=1.5)
    with pytest.raises(ValueError, match="tokenizer"):
        Deduplicator(tokenizer="words")
    dedup = Deduplicator()
    dedup.add_existing([("a", "x")])
    with pytest.raises(ValueError, match="already kept"):
        dedup.add_existing([("a", "y")])
