"""ROUGE-L dedup: qasynth's filter against the rouge-score loop of Alpaca, side by side.

    .venv/bin/python benchmarks/bench_dedup.py                 # both parts below
    .venv/bin/python benchmarks/bench_dedup.py --skip-large    # only the side-by-side ratio

1. The first N (default 3,000) texts of tests/data/r_help_corpus.jsonl (help pages of R's own
   packages, written by people) go through Alpaca's loop (rouge-score's tokenizer and
   `_score_lcs(new, kept)` against every kept text, one process) and through `deduplicate`; the
   script asserts identical decisions, nearest ids and scores, and prints both times and the ratio.
2. The whole corpus extended with generated variants to 50,000 items (rewordings, dropped or
   swapped words, synonyms, prefixes, combinations) goes through `Deduplicator.offer` one item at
   a time, as the generation pipeline calls it; the script prints the total time and the latency
   of `offer`, and re-checks a random sample of decisions with rouge-score over the same kept set.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import time
from pathlib import Path

from rouge_score import rouge_scorer

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from service.stages.dedup import Decision, Deduplicator, deduplicate  # noqa: E402

CORPUS = ROOT / "tests" / "data" / "r_help_corpus.jsonl"
Row = tuple[str, bool, str | None, float]


def corpus() -> list[str]:
    with CORPUS.open(encoding="utf-8") as f:
        return [json.loads(line)["text"] for line in f]


def rouge_loop(items: list[tuple[str, str]], threshold: float) -> list[Row]:
    """Alpaca's filter, with nearest = the earliest kept text at the best score."""
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    kept_tokens: list[list[str]] = []
    kept_ids: list[str] = []
    rows: list[Row] = []
    for id, text in items:
        tokens = scorer._tokenizer.tokenize(text)
        scores = [rouge_scorer._score_lcs(tokens, other).fmeasure for other in kept_tokens]
        best = max(scores, default=0.0)
        nearest = kept_ids[scores.index(best)] if best > 0 else None
        kept = best <= threshold
        rows.append((id, kept, nearest, float(best)))
        if kept:
            kept_tokens.append(tokens)
            kept_ids.append(id)
    return rows


def as_rows(decisions: list[Decision]) -> list[Row]:
    return [(d.id, d.kept, d.nearest_id, d.score) for d in decisions]


SYNONYMS = {
    "compute": "calculate",
    "computes": "calculates",
    "returns": "gives",
    "return": "give",
    "vector": "array",
    "object": "value",
    "function": "routine",
    "number": "count",
    "data": "dataset",
    "logical": "boolean",
    "character": "string",
    "should": "must",
    "the": "a",
    "default": "standard",
    "specify": "give",
    "values": "elements",
    "used": "applied",
}
PREFIXES = [
    "In R, ",
    "How do I do this in R: ",
    "Explain with an example: ",
    "Write R code for the following. ",
    "Using base R only, ",
    "Question: ",
]
SUFFIXES = [" Show an example.", " Explain the output.", " Use base R.", " Why?", ""]


def variant(rng: random.Random, texts: list[str]) -> str:
    """A plausible rewrite of a real text: light edits make near-duplicates, heavy ones new items."""
    words = rng.choice(texts).split()
    for _ in range(rng.choice([0, 1, 1, 2, 3, 5])):
        op = rng.random()
        if op < 0.3 and len(words) > 3:
            del words[rng.randrange(len(words))]
        elif op < 0.5 and len(words) > 2:
            i = rng.randrange(len(words) - 1)
            words[i], words[i + 1] = words[i + 1], words[i]
        elif op < 0.8:
            i = rng.randrange(len(words))
            words[i] = SYNONYMS.get(words[i].lower(), words[i])
        else:
            words.insert(rng.randrange(len(words) + 1), rng.choice(rng.choice(texts).split()))
    text = " ".join(words)
    r = rng.random()
    if r < 0.3:
        text = rng.choice(PREFIXES) + text[:1].lower() + text[1:]
    elif r < 0.45:
        text = text + rng.choice(SUFFIXES)
    elif r < 0.6:
        text = text.rstrip(".") + "; then " + rng.choice(texts)[:1].lower() + rng.choice(texts)[1:]
    return text


def large_set(texts: list[str], n: int, seed: int = 7) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    pool = list(texts) + [variant(rng, texts) for _ in range(max(0, n - len(texts)))]
    rng.shuffle(pool)
    return [(f"q{i}", text) for i, text in enumerate(pool[:n])]


def check_sample(items: list[tuple[str, str]], got: list[Decision], k: int, threshold: float) -> int:
    """Re-decide `k` random items with rouge-score against exactly the items kept before them."""
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    rng = random.Random(11)
    positions = sorted(rng.sample(range(len(items)), k))
    kept_before: list[tuple[str, list[str]]] = []
    checked = 0
    start = 0
    for p in positions:
        for j in range(start, p):
            if got[j].kept:
                kept_before.append((items[j][0], scorer._tokenizer.tokenize(items[j][1])))
        start = p
        tokens = scorer._tokenizer.tokenize(items[p][1])
        scores = [rouge_scorer._score_lcs(tokens, t).fmeasure for _, t in kept_before]
        best = max(scores, default=0.0)
        nearest = kept_before[scores.index(best)][0] if best > 0 else None
        expected = (items[p][0], best <= threshold, nearest, float(best))
        actual = as_rows([got[p]])[0]
        assert actual == expected, f"{actual} != {expected}"
        checked += 1
    return checked


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=3000, help="items in the side-by-side run")
    parser.add_argument("--large", type=int, default=50_000, help="items in the large run")
    parser.add_argument("--threshold", type=float, default=0.7)
    parser.add_argument(
        "--repeat", type=int, default=5, help="runs of the fast filter; the median is reported"
    )
    parser.add_argument(
        "--sample", type=int, default=20, help="large-run decisions re-checked with rouge-score"
    )
    parser.add_argument("--skip-ratio", action="store_true")
    parser.add_argument("--skip-large", action="store_true")
    args = parser.parse_args()

    texts = corpus()
    print(
        f"corpus: {len(texts)} texts from R help pages; cores: {os.cpu_count()}; threshold {args.threshold}"
    )

    if not args.skip_ratio:
        items = [(f"r{i}", text) for i, text in enumerate(texts[: args.n])]
        times = []
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            ours = deduplicate(items, threshold=args.threshold, tokenizer="rouge")
            times.append(time.perf_counter() - t0)
        fast = statistics.median(times)
        print(
            f"qasynth deduplicate, {len(items)} items: median {fast:.3f} s of {args.repeat} runs", flush=True
        )
        t0 = time.perf_counter()
        reference = rouge_loop(items, args.threshold)
        slow = time.perf_counter() - t0
        assert as_rows(ours) == reference, "decisions differ from the rouge-score loop"
        kept = sum(row[1] for row in reference)
        print(f"rouge-score loop,    {len(items)} items: {slow:.1f} s")
        print(f"identical output ({kept} kept, {len(items) - kept} dropped); speed-up {slow / fast:,.0f}x")

    if not args.skip_large:
        items = large_set(texts, args.large)
        # Item by item through `offer`, as the pipeline calls it, timing each call.
        dedup = Deduplicator(threshold=args.threshold, tokenizer="rouge")
        got, latencies = [], []
        t0 = time.perf_counter()
        for id, text in items:
            t1 = time.perf_counter()
            got.append(dedup.offer(id, text))
            latencies.append(time.perf_counter() - t1)
        elapsed = time.perf_counter() - t0
        kept = sum(d.kept for d in got)
        print(
            f"large run: {len(items)} items in {elapsed:.1f} s ({len(items) / elapsed:,.0f} items/s), "
            f"{kept} kept, {len(items) - kept} dropped",
            flush=True,
        )
        last = sorted(latencies[-5000:])
        print(
            f"offer() over the last 5,000 items (index of {len(dedup):,} kept): "
            f"median {statistics.median(last) * 1e3:.2f} ms, p99 {last[int(len(last) * 0.99)] * 1e3:.2f} ms, "
            f"max {last[-1] * 1e3:.2f} ms"
        )
        if args.sample:
            n = check_sample(items, got, args.sample, args.threshold)
            print(f"large run: {n} sampled decisions identical to rouge-score over the same kept set")


if __name__ == "__main__":
    main()
