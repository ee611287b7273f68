"""The greedy filter over blocks, for many workers: the same decisions as `deduplicate`.

Items (history first, then input) are cut into blocks in order. What the greedy filter needs
for item i is its best F against the items kept before it, and those lie either in earlier
blocks or earlier in i's own block. So the work splits four ways:

    pairs_within(Q)          every pair inside block Q above the threshold (the length bound and
                             token-overlap index of `_filter`); needs nothing decided, so it runs
                             for the blocks read ahead while earlier ones are being decided
    best_against(slice of Q, kept of all earlier blocks)
                             the exact best F of each item against everything kept before Q and
                             the earliest text at it (`nearest`, with the single-machine filter's
                             pruning); Q is cut into slices that run on different workers
    decide_block(Q)          the sequential pass: in order, an item is dropped when its best from
                             earlier blocks, or a pair with an item of Q already kept, is above
                             the threshold; it only reads candidates
    scores_within(kept of Q) the kept items' best F inside Q (all at or below the threshold), for
                             their reported score and nearest id; nothing waits for it but output

Every F comes from the same `Deduplicator.nearest` / `above` code as the single-machine filter,
and ties go to the earliest position as there, so decisions, nearest ids and scores are
identical. Block Q can be decided only after Q-1 is (its kept items are Q's references): the
chain "slices of Q, then decide Q" is the part a bigger cluster does not shorten, beyond cutting
Q into more slices.

`BlockDedup` drives this over an `Executor` (in-process, or Ray tasks), reading a bounded number
of blocks ahead: memory holds the kept items and a few blocks, never the whole input.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from service.stages.dedup._filter import Decision, Deduplicator

__all__ = [
    "DEFAULT_BLOCK",
    "BlockDedup",
    "BlockStats",
    "Executor",
    "InlineExecutor",
    "best_against",
    "decide_block",
    "pairs_within",
    "scores_within",
]

DEFAULT_BLOCK = 20_000

Pairs = tuple[np.ndarray, np.ndarray, np.ndarray]


def best_against(texts: Sequence[str], tokenizer: str, *kept: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """For each text, its best F against the kept texts of the given blocks, and the position
    (counted over those blocks in order) of the earliest kept text at it; -1 when nothing overlaps."""
    dedup = Deduplicator(tokenizer=tokenizer)
    k = 0
    for block in kept:
        for text in block:
            dedup.add(str(k), text)
            k += 1
    scores = np.zeros(len(texts), dtype=np.float64)
    positions = np.full(len(texts), -1, dtype=np.int64)
    for i, text in enumerate(texts):
        scores[i], positions[i] = dedup.nearest(text)
    return scores, positions


def pairs_within(texts: Sequence[str], threshold: float, tokenizer: str) -> Pairs:
    """Every pair (i, j < i, F) inside `texts` with F above the threshold, sorted by i, then by
    F descending, then by j: an item's first kept j is its best kept one, the earliest at ties."""
    dedup = Deduplicator(tokenizer=tokenizer)
    rows: list[tuple[int, float, int]] = []
    for i, text in enumerate(texts):
        rows.extend((i, -f, j) for j, f in dedup.above(text, threshold))
        dedup.add(str(i), text)
    rows.sort()
    if not rows:
        return np.empty(0, dtype=np.int32), np.empty(0, dtype=np.int32), np.empty(0, dtype=np.float64)
    i_col, f_col, j_col = zip(*rows, strict=True)
    return (
        np.array(i_col, dtype=np.int32),
        np.array(j_col, dtype=np.int32),
        -np.array(f_col, dtype=np.float64),
    )


def scores_within(kept: Sequence[str], tokenizer: str) -> tuple[np.ndarray, np.ndarray]:
    """Each kept text's best F against the kept texts before it, and the earliest one at it."""
    dedup = Deduplicator(tokenizer=tokenizer)
    scores = np.zeros(len(kept), dtype=np.float64)
    positions = np.full(len(kept), -1, dtype=np.int64)
    for k, text in enumerate(kept):
        scores[k], positions[k] = dedup.nearest(text)
        dedup.add(str(k), text)
    return scores, positions


def decide_block(
    ext_score: Sequence[float], pairs: Pairs, threshold: float
) -> tuple[list[bool], list[int], list[float]]:
    """The sequential pass over one block: keep or drop, in order.

    `ext_score` is each item's best F against the kept items of earlier blocks, `pairs` the
    block's pairs above the threshold. Returns the kept flags and, for an item dropped by an item
    of its own block, that item's position and the F (-1 otherwise: an earlier block's
    candidate, which wins a tie by coming first)."""
    size = len(ext_score)
    pi, pj, pf = (a.tolist() for a in pairs)
    n_pairs = len(pi)
    kept = [False] * size
    by = [-1] * size
    by_score = [0.0] * size
    p = 0
    for k in range(size):
        best_f, best_j = 0.0, -1
        while p < n_pairs and pi[p] == k:
            if best_j < 0 and kept[pj[p]]:
                best_f, best_j = pf[p], pj[p]
            p += 1
        if best_j >= 0 and best_f > ext_score[k]:
            by[k], by_score[k] = best_j, best_f
        elif ext_score[k] <= threshold:
            kept[k] = True
    return kept, by, by_score


class Executor(Protocol):
    """Where the block functions run. `submit` accepts handles from `put` or `submit` as
    arguments; `parallelism` is how many tasks can run at once."""

    parallelism: int

    def put(self, value: Any) -> Any: ...

    def submit(self, fn: Callable[..., Any], *args: Any) -> Any: ...

    def wait(self, handles: Sequence[Any]) -> list[Any]:
        """Those of `handles` that are done: at least one."""
        ...

    def get(self, handle: Any) -> Any: ...


class _Done:
    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value


class InlineExecutor:
    """Runs each function when it is submitted, in this process."""

    parallelism = 1

    def put(self, value: Any) -> _Done:
        return _Done(value)

    def submit(self, fn: Callable[..., Any], *args: Any) -> _Done:
        return _Done(fn(*(a.value if isinstance(a, _Done) else a for a in args)))

    def wait(self, handles: Sequence[Any]) -> list[Any]:
        return list(handles)

    def get(self, handle: _Done) -> Any:
        return handle.value


@dataclass
class BlockStats:
    """What ran; `sequential_s` is the driver's own pass (deciding and assembling blocks)."""

    blocks: int = 0
    tasks: int = 0
    pairs: int = 0
    sequential_s: float = 0.0
    elapsed_s: float = 0.0


class _Block:
    def __init__(self, index: int, ids: list[str], texts: list[str], slices: int) -> None:
        self.index = index
        self.ids = ids
        self.size = len(ids)
        self.texts = texts  # until decided
        step = -(-self.size // slices)
        self.bounds = [(s, min(s + step, self.size)) for s in range(0, self.size, step)]
        self.slice_handles: list[Any] = []
        self.ext_score = np.zeros(self.size)
        self.ext_block = np.full(self.size, -1, dtype=np.int64)
        self.ext_pos = np.full(self.size, -1, dtype=np.int64)
        self.queried = False
        self.outstanding = 0
        self.pairs: Pairs | None = None
        self.kept: list[bool] = []
        self.by: list[int] = []
        self.by_score: list[float] = []
        self.kept_ids: list[str] = []
        self.kept_texts: Any = None
        self.final: list[Decision] | None = None


def _chunks(items: Iterable[tuple[str, str]], size: int) -> Iterator[list[tuple[str, str]]]:
    chunk: list[tuple[str, str]] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


class BlockDedup:
    """The greedy filter over blocks on an executor; yields decisions in input order, a block at a time."""

    def __init__(
        self,
        executor: Executor,
        *,
        threshold: float = 0.7,
        tokenizer: str = "auto",
        block_size: int = DEFAULT_BLOCK,
        slices: int | None = None,
        read_ahead: int | None = None,
    ) -> None:
        Deduplicator(threshold=threshold, tokenizer=tokenizer)  # the same checks of both arguments
        if block_size < 1:
            raise ValueError(f"block_size must be positive, got {block_size}")
        self.executor = executor
        self.threshold = threshold
        self.tokenizer = tokenizer
        self.block_size = block_size
        self.slices = slices or executor.parallelism
        self.read_ahead = read_ahead or max(2, executor.parallelism)
        self.stats = BlockStats()

    def run(
        self, items: Iterable[tuple[str, str]], *, existing: Iterable[tuple[str, str]] = ()
    ) -> Iterator[Decision]:
        """Decisions for `items` in order; `existing` is history, kept unconditionally and not reported."""
        started = time.perf_counter()
        ex = self.executor
        decided: list[_Block] = []
        for chunk in _chunks(existing, self.block_size):
            block = _Block(len(decided), [i for i, _ in chunk], [], 1)
            block.kept_ids = block.ids
            block.kept_texts = ex.put([t for _, t in chunk])
            decided.append(block)
        source = _chunks(items, self.block_size)
        exhausted = False
        undecided: deque[_Block] = deque()
        to_output: deque[_Block] = deque()
        pending: dict[Any, tuple[str, _Block, int]] = {}

        def submit(kind: str, block: _Block, part: int, fn: Callable[..., Any], *args: Any) -> None:
            pending[ex.submit(fn, *args)] = (kind, block, part)
            self.stats.tasks += 1

        while True:
            while not exhausted and len(undecided) < self.read_ahead:
                chunk = next(source, None)
                if chunk is None:
                    exhausted = True
                    break
                q = _Block(
                    len(decided) + len(undecided), [i for i, _ in chunk], [t for _, t in chunk], self.slices
                )
                q.slice_handles = [ex.put(q.texts[a:b]) for a, b in q.bounds]
                q.outstanding = 1
                submit("pairs", q, 0, pairs_within, ex.put(q.texts), self.threshold, self.tokenizer)
                undecided.append(q)
                self.stats.blocks += 1

            if undecided and not undecided[0].queried:
                # Everything before the head is decided: query it against all of it, slice by slice.
                q = undecided[0]
                q.queried = True
                kept = [r.kept_texts for r in decided if r.kept_ids]
                if kept:
                    for part, handle in enumerate(q.slice_handles):
                        q.outstanding += 1
                        submit("best", q, part, best_against, handle, self.tokenizer, *kept)
                q.slice_handles = []

            if undecided and undecided[0].outstanding == 0:
                q = undecided.popleft()
                t0 = time.perf_counter()
                self._decide(q, decided)
                self.stats.sequential_s += time.perf_counter() - t0
                kept_texts = [t for t, k in zip(q.texts, q.kept, strict=True) if k]
                q.texts = []
                q.kept_texts = ex.put(kept_texts)
                submit("scores", q, 0, scores_within, q.kept_texts, self.tokenizer)
                decided.append(q)
                to_output.append(q)
                continue

            while to_output and to_output[0].final is not None:
                block = to_output.popleft()
                yield from block.final  # type: ignore[misc]
                block.final, block.ids, block.kept, block.by, block.by_score = None, [], [], [], []
                block.ext_score = block.ext_block = block.ext_pos = np.zeros(0)

            if not pending:
                if exhausted and not undecided and not to_output:
                    break
                continue
            for handle in ex.wait(list(pending)):
                kind, block, part = pending.pop(handle)
                result = ex.get(handle)
                t0 = time.perf_counter()
                if kind == "best":
                    self._place(block, part, decided, *result)
                    block.outstanding -= 1
                elif kind == "pairs":
                    block.pairs = result
                    self.stats.pairs += len(result[0])
                    block.outstanding -= 1
                else:
                    self._finish(block, decided, *result)
                self.stats.sequential_s += time.perf_counter() - t0
        self.stats.elapsed_s = time.perf_counter() - started

    @staticmethod
    def _place(
        q: _Block, part: int, decided: list[_Block], scores: np.ndarray, positions: np.ndarray
    ) -> None:
        """A slice's results, its positions over all kept items turned into (block, position in it)."""
        a, b = q.bounds[part]
        with_kept = [r for r in decided[: q.index] if r.kept_ids]
        starts = np.cumsum([0] + [len(r.kept_ids) for r in with_kept])
        which = np.maximum(np.searchsorted(starts, positions, side="right") - 1, 0)
        found = positions >= 0
        q.ext_score[a:b] = scores
        q.ext_block[a:b] = np.where(found, np.array([r.index for r in with_kept])[which], -1)
        q.ext_pos[a:b] = np.where(found, positions - starts[which], -1)

    def _decide(self, q: _Block, decided: list[_Block]) -> None:
        assert q.pairs is not None
        q.kept, q.by, q.by_score = decide_block(q.ext_score.tolist(), q.pairs, self.threshold)
        q.pairs = None
        q.kept_ids = [i for i, k in zip(q.ids, q.kept, strict=True) if k]

    def _finish(self, q: _Block, decided: list[_Block], scores: np.ndarray, positions: np.ndarray) -> None:
        """Every decision of a decided block, now that its kept items' inner scores are known."""
        inner = iter(zip(scores.tolist(), positions.tolist(), strict=True))
        ext_score, ext_block, ext_pos = q.ext_score.tolist(), q.ext_block.tolist(), q.ext_pos.tolist()
        out = []
        for k, item_id in enumerate(q.ids):
            e = ext_score[k]
            external = decided[ext_block[k]].kept_ids[ext_pos[k]] if ext_block[k] >= 0 else None
            if q.kept[k]:
                s, p = next(inner)
                if s > e:
                    out.append(Decision(id=item_id, kept=True, nearest_id=q.kept_ids[p], score=s))
                else:
                    out.append(Decision(id=item_id, kept=True, nearest_id=external, score=e))
            elif q.by[k] >= 0:
                out.append(Decision(id=item_id, kept=False, nearest_id=q.ids[q.by[k]], score=q.by_score[k]))
            else:
                out.append(Decision(id=item_id, kept=False, nearest_id=external, score=e))
        q.final = out
