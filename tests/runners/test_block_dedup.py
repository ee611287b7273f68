"""The greedy filter over blocks gives the single-machine filter's decisions, nearest ids and scores.

These run the block functions in this process (`InlineExecutor`); tests/runners/test_ray.py runs
the same driver over a real Ray cluster.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service.stages.dedup import deduplicate
from service.stages.dedup._blocks import BlockDedup, InlineExecutor, decide_block, pairs_within

CORPUS = Path(__file__).resolve().parent.parent / "data" / "r_help_corpus.jsonl"

WORDS = "mean median of the x vector compute a t.test lm in R NA 平均".split()


@st.composite
def near_duplicates(draw: st.DrawFn) -> list[tuple[str, str]]:
    bases = draw(st.lists(st.lists(st.sampled_from(WORDS), max_size=10), min_size=1, max_size=4))
    texts = []
    for _ in range(draw(st.integers(1, 24))):
        tokens = list(draw(st.sampled_from(bases)))
        for _ in range(draw(st.integers(0, 3))):
            if tokens and draw(st.booleans()):
                del tokens[draw(st.integers(0, len(tokens) - 1))]
            else:
                tokens.insert(draw(st.integers(0, len(tokens))), draw(st.sampled_from(WORDS)))
        texts.append(" ".join(tokens) or "?")
    return [(f"i{i}", t) for i, t in enumerate(texts)]


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(
    near_duplicates(),
    st.sampled_from([0.0, 0.3, 0.5, 0.7, 0.8, 1.0]),
    st.integers(1, 6),
    st.integers(0, 5),
    st.sampled_from(["rouge", "auto"]),
)
def test_blocks_equal_the_greedy_filter(
    items: list[tuple[str, str]], threshold: float, block: int, history: int, tokenizer: str
) -> None:
    existing, batch = items[:history], items[history:]
    expected = deduplicate(batch, existing=existing, threshold=threshold, tokenizer=tokenizer)
    blocks = BlockDedup(InlineExecutor(), threshold=threshold, tokenizer=tokenizer, block_size=block)
    assert list(blocks.run(batch, existing=existing)) == expected


def corpus() -> list[str]:
    with CORPUS.open(encoding="utf-8") as f:
        return [json.loads(line)["text"] for line in f]


def test_blocks_equal_the_greedy_filter_on_the_r_help_corpus_with_variants() -> None:
    texts = corpus()[:1500]
    rng = random.Random(5)
    variants = []
    for _ in range(1500):
        words = rng.choice(texts).split()
        if len(words) > 3:
            del words[rng.randrange(len(words))]
        variants.append(" ".join(words))
    pool = texts + variants + ["Rで平均と分散を計算する", "Rを使って平均と分散を計算する方法"]
    rng.shuffle(pool)
    items = [(f"r{i}", t) for i, t in enumerate(pool)]
    expected = deduplicate(items[300:], existing=items[:300])
    blocks = BlockDedup(InlineExecutor(), block_size=400, slices=3)
    got = list(blocks.run(items[300:], existing=items[:300]))
    assert got == expected
    dropped = sum(not d.kept for d in expected)
    assert dropped > 500  # the variants really are near-duplicates
    assert blocks.stats.blocks == 7 and blocks.stats.pairs > 0


def test_an_earlier_block_wins_a_tie_and_a_kept_pair_drops() -> None:
    # "b" ties "a" (an earlier block) and "c" inside its own block: the earlier one is the nearest.
    items = [("a", "mean of x"), ("b", "mean of x"), ("c", "mean of x"), ("d", "median of y")]
    expected = deduplicate(items)
    assert [d.nearest_id for d in expected] == [None, "a", "a", "a"]
    assert list(BlockDedup(InlineExecutor(), block_size=2).run(items)) == expected


def test_the_sequential_pass_reads_only_candidates() -> None:
    texts = ["mean of x", "mean of x", "the mean of x", "plot y"]
    pairs = pairs_within(texts, 0.7, "rouge")
    assert [(int(i), int(j)) for i, j in zip(pairs[0], pairs[1], strict=True)] == [(1, 0), (2, 0), (2, 1)]
    kept, by, score = decide_block([0.0, 0.0, 0.0, 0.9], pairs, 0.7)
    assert kept == [True, False, False, False]
    assert by == [-1, 0, 0, -1] and score[1] == 1.0


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError):
        BlockDedup(InlineExecutor(), threshold=2.0)
    with pytest.raises(ValueError):
        BlockDedup(InlineExecutor(), block_size=0)
