"""The greedy ROUGE-L filter of Self-Instruct and Alpaca, exact and fast.

Semantics (Alpaca's `generate_instruction.py`): items are decided in order; history comes first
and is kept unconditionally; an item is kept iff its best ROUGE-L F1 against everything kept so
far is <= threshold. Each comparison is rouge-score's `_score_lcs(target=new, prediction=kept)`:
P = LCS/len(kept), R = LCS/len(new), F = 2*P*R/(P+R), evaluated with the same float operations
in the same order, so decisions match rouge-score bit for bit, also at exactly the threshold.

Speed comes from never computing most LCSs. Every kept text is interned once into a string of
one code point per token (rapidfuzz's bit-parallel LCS works on those), and indexed by its
tokens with repeats numbered (`the#1`, `the#2`), so one bincount over the query's postings gives,
for every kept text, the size of the multiset intersection: an upper bound on the LCS, hence
(F grows with LCS) on F. Candidates are taken in decreasing bound order and the exact LCS is
computed only while a bound can still reach the best score found, so `score` and `nearest_id`
are the exact maximum, not an approximation.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import msgspec
import numpy as np
from rapidfuzz.distance import LCSseq

from service.stages.dedup._tokenize import resolve, tokenize

__all__ = ["Decision", "Deduplicator", "deduplicate", "rouge_f"]

_PROBES = 3  # single best-bound probes before sorting the survivors
_SMALL = 24  # below this many candidates, sort them all at once
_TWO_UP = 2 * (1 + 1e-12)
# Code points for interned tokens skip the surrogate block so every sequence is a clean str.
_SURROGATES = range(0xD800, 0xE000)
_UNKNOWN = "\U0010ffff"  # a token no kept text has: can never match
_KEY_SHIFT = 21  # code points fit in 21 bits; a posting key is code point | occurrence << 21


class Decision(msgspec.Struct, frozen=True):
    id: str
    kept: bool
    nearest_id: str | None
    score: float  # best ROUGE-L F1 against the items kept before it; 0.0 when nothing overlaps


def rouge_f(lcs: int, target_len: int, prediction_len: int) -> float:
    """rouge-score's `_score_lcs` F1, with its exact float operations (2*P*R/(P+R), not 2*LCS/(m+n))."""
    if not target_len or not prediction_len:
        return 0.0
    precision = lcs / prediction_len
    recall = lcs / target_len
    if precision + recall > 0:
        return 2 * precision * recall / (precision + recall)
    return 0.0


class _Postings:
    """A growable int32 array of kept-item positions for one (token, occurrence) key."""

    __slots__ = ("data", "size")

    def __init__(self) -> None:
        self.data = np.empty(4, dtype=np.int32)
        self.size = 0

    def append(self, position: int) -> None:
        if self.size == len(self.data):
            self.data = np.concatenate([self.data, np.empty(len(self.data), dtype=np.int32)])
        self.data[self.size] = position
        self.size += 1


class _Index:
    """Kept texts under one tokenizer: interned sequences, lengths and the inverted index."""

    def __init__(self, tokenizer: str) -> None:
        self.tokenizer = tokenizer
        self._codes: dict[str, str] = {}
        self._postings: dict[int, _Postings] = {}
        self._seqs: list[str] = []
        self._lens = np.empty(64, dtype=np.int64)

    def __len__(self) -> int:
        return len(self._seqs)

    def _intern(self, token: str) -> str:
        code = self._codes.get(token)
        if code is None:
            n = len(self._codes) + 1
            if n >= _SURROGATES.start:
                n += len(_SURROGATES)
            if n >= ord(_UNKNOWN):
                raise OverflowError("more distinct tokens than one dedup index can hold (about 1.1 million)")
            code = self._codes[token] = chr(n)
        return code

    def encode(self, text: str) -> str:
        """The text as one code point per token; tokens no kept text has become the never-matching one."""
        codes = self._codes
        return "".join([codes.get(t, _UNKNOWN) for t in tokenize(self.tokenizer, text)])  # type: ignore[arg-type]

    @staticmethod
    def _keys(seq: str) -> list[int]:
        if len(set(seq)) == len(seq):
            return [ord(c) | 1 << _KEY_SHIFT for c in seq]
        seen: dict[str, int] = {}
        keys = []
        for c in seq:
            k = seen.get(c, 0) + 1
            seen[c] = k
            keys.append(ord(c) | k << _KEY_SHIFT)
        return keys

    def add(self, text: str) -> None:
        seq = "".join([self._intern(t) for t in tokenize(self.tokenizer, text)])  # type: ignore[arg-type]
        position = len(self._seqs)
        self._seqs.append(seq)
        if position == len(self._lens):
            self._lens = np.concatenate([self._lens, np.empty(len(self._lens), dtype=np.int64)])
        self._lens[position] = len(seq)
        postings = self._postings
        for key in self._keys(seq):
            plist = postings.get(key)
            if plist is None:
                plist = postings[key] = _Postings()
            plist.append(position)

    def nearest(self, seq: str) -> tuple[float, int]:
        """Best F of `seq` (as target) against every kept text (as prediction), and the earliest such text."""
        m = len(seq)
        postings = self._postings
        parts = [p.data[: p.size] for k in self._keys(seq) if (p := postings.get(k)) is not None]
        if not parts:
            return 0.0, -1
        hits = np.concatenate(parts) if len(parts) > 1 else parts[0]
        overlap = np.bincount(hits)
        cand = np.flatnonzero(overlap)
        # 2*ov/(m+n) is the F of the overlap; inflated by 1e-12 it stays above rouge-score's float F
        # (which is within a few ulps of the same rational), so it is a safe bound in float arithmetic.
        bound = overlap[cand] * _TWO_UP / (self._lens[cand] + m)

        best, best_pos = 0.0, -1
        seqs = self._seqs
        for _ in range(_PROBES):
            # Probe the most promising candidate, then keep only what can still reach the best so far.
            if cand.size <= _SMALL:
                break
            i = int(bound.argmax())
            c = int(cand[i])
            other = seqs[c]
            f = rouge_f(LCSseq.similarity(seq, other), m, len(other))
            if f > best or (f == best and c < best_pos):
                best, best_pos = f, c
            alive = bound >= best
            alive[i] = False
            cand, bound = cand[alive], bound[alive]
        return self._scan(seq, cand, bound, best, best_pos)

    def above(self, seq: str, threshold: float) -> list[tuple[int, float]]:
        """Every kept text (position, F) whose F with `seq` exceeds `threshold`: the same bound as
        `nearest`, cut at the threshold instead of the best so far."""
        m = len(seq)
        postings = self._postings
        parts = [p.data[: p.size] for k in self._keys(seq) if (p := postings.get(k)) is not None]
        if not parts:
            return []
        hits = np.concatenate(parts) if len(parts) > 1 else parts[0]
        overlap = np.bincount(hits)
        cand = np.flatnonzero(overlap)
        cand = cand[overlap[cand] * _TWO_UP / (self._lens[cand] + m) > threshold]
        seqs = self._seqs
        similarity = LCSseq.similarity
        found = []
        for c in cand.tolist():
            other = seqs[c]
            f = rouge_f(similarity(seq, other), m, len(other))
            if f > threshold:
                found.append((c, f))
        return found

    def _scan(
        self, seq: str, cand: np.ndarray, bound: np.ndarray, best: float, best_pos: int
    ) -> tuple[float, int]:
        """Exact F in decreasing bound order (earliest position first on ties) until no bound can win."""
        order = np.lexsort((cand, -bound))
        m = len(seq)
        seqs = self._seqs
        similarity = LCSseq.similarity
        for c, u in zip(cand[order].tolist(), bound[order].tolist(), strict=True):
            if u < best or (u == best and c > best_pos):
                break
            other = seqs[c]
            f = rouge_f(similarity(seq, other), m, len(other))
            if f > best or (f == best and c < best_pos):
                best, best_pos = f, c
        return best, best_pos


class Deduplicator:
    """Incremental greedy filter; not thread-safe (caller serialises).

    With `tokenizer="auto"` the script of the item being decided picks the tokenizer, and the kept
    texts it is compared with are tokenized the same way (one index per tokenizer in use, built
    on first need), so both sides of every comparison always share a tokenizer.
    """

    def __init__(self, *, threshold: float = 0.7, tokenizer: str = "auto") -> None:
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"threshold must be within [0, 1], got {threshold!r}")
        resolve(tokenizer, "")  # rejects unknown names early
        self.threshold = threshold
        self.tokenizer = tokenizer
        self._ids: list[str] = []
        self._texts: list[str] = []
        self._known: set[str] = set()
        self._indexes: dict[str, _Index] = {}

    def __len__(self) -> int:
        return len(self._ids)

    def _index(self, name: str) -> _Index:
        index = self._indexes.get(name)
        if index is None:
            index = self._indexes[name] = _Index(name)
            for text in self._texts:
                index.add(text)
        return index

    def _keep(self, id: str, text: str) -> None:
        if id in self._known:
            raise ValueError(f"id {id!r} is already kept")
        self._known.add(id)
        self._ids.append(id)
        self._texts.append(text)
        for index in self._indexes.values():
            index.add(text)

    def add_existing(self, items: Iterable[tuple[str, str]]) -> None:
        for id, text in items:
            self._keep(id, text)

    def add(self, id: str, text: str) -> None:
        """Keep `text` unconditionally, as history is kept."""
        self._keep(id, text)

    def nearest(self, text: str) -> tuple[float, int]:
        """Best F of `text` against everything kept, and the position (in keeping order) of the
        earliest kept text at it; (0.0, -1) when nothing overlaps. Keeps nothing."""
        index = self._index(resolve(self.tokenizer, text))
        return index.nearest(index.encode(text))

    def above(self, text: str, threshold: float) -> list[tuple[int, float]]:
        """(position, F) of every kept text whose F with `text` exceeds `threshold`. Keeps nothing."""
        index = self._index(resolve(self.tokenizer, text))
        return index.above(index.encode(text), threshold)

    def offer(self, id: str, text: str) -> Decision:
        best, position = self.nearest(text)
        kept = best <= self.threshold
        nearest = self._ids[position] if position >= 0 else None
        if kept:
            self._keep(id, text)
        return Decision(id=id, kept=kept, nearest_id=nearest, score=best)

    def score(self, a: str, b: str) -> float:
        """The F the filter computes when `a` is decided against a kept `b` (tokenizer chosen by `a`)."""
        name = resolve(self.tokenizer, a)
        ta, tb = tokenize(name, a), tokenize(name, b)
        codes: dict[str, str] = {}
        sa = "".join([codes.setdefault(t, chr(len(codes) + 1)) for t in ta])
        sb = "".join([codes.setdefault(t, chr(len(codes) + 1)) for t in tb])
        return rouge_f(LCSseq.similarity(sa, sb), len(ta), len(tb))


def deduplicate(
    items: Sequence[tuple[str, str]],
    *,
    existing: Sequence[tuple[str, str]] = (),
    threshold: float = 0.7,
    tokenizer: str = "auto",
) -> list[Decision]:
    """One decision per item, in order; `existing` is history, kept unconditionally and not reported."""
    dedup = Deduplicator(threshold=threshold, tokenizer=tokenizer)
    dedup.add_existing(existing)
    return [dedup.offer(id, text) for id, text in items]
