"""How varied a cell's questions are: the mean over its questions of each one's highest ROUGE-L
against the others (0 when they share nothing, 1 when each has a copy). The same tokenizers and F
formula as the dedup filter; each text is tokenized once."""

from __future__ import annotations

from collections.abc import Sequence

from rapidfuzz.distance import LCSseq

from service.stages.dedup import resolve, rouge_f, tokenize

__all__ = ["diversity"]


def diversity(texts: Sequence[str], *, tokenizer: str = "auto") -> float | None:
    """None for fewer than two texts. The tokenizer is chosen per pair by the first text, as dedup does."""
    if len(texts) < 2:
        return None
    codes: dict[str, str] = {}
    encoded: dict[tuple[int, str], str] = {}

    def encode(i: int, name: str) -> str:
        key = (i, name)
        if key not in encoded:
            tokens = tokenize(name, texts[i])
            encoded[key] = "".join(codes.setdefault(t, chr(len(codes) + 1)) for t in tokens)
        return encoded[key]

    names = [resolve(tokenizer, t) for t in texts]
    best = [0.0] * len(texts)
    for i in range(len(texts)):
        a = encode(i, names[i])
        for j in range(len(texts)):
            if i == j:
                continue
            b = encode(j, names[i])
            best[i] = max(best[i], rouge_f(LCSseq.similarity(a, b), len(a), len(b)))
    return round(sum(best) / len(best), 4)
