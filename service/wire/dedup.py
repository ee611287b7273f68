"""Near-duplicate filtering: POST /v1/dedup and the `dedup` part of a generation spec."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

from service.wire.base import Base, Id

__all__ = [
    "MAX_DEDUP_EXISTING",
    "MAX_DEDUP_ITEMS",
    "MAX_DEDUP_TEXT",
    "MAX_DEDUP_TOTAL_CHARS",
    "DedupItem",
    "DedupRequest",
    "DedupResponse",
    "DedupResult",
    "Threshold",
    "TokenizerName",
]

MAX_DEDUP_ITEMS = 50_000
MAX_DEDUP_EXISTING = 100_000
MAX_DEDUP_TEXT = 20_000
# Characters over items and existing together: the full 150,000 items at CodeAlpaca's size (instruction
# and input: 143 characters on average, 340 at the 99th percentile) hold about 21 million.
MAX_DEDUP_TOTAL_CHARS = 25_000_000

Threshold = Annotated[
    float, msgspec.Meta(ge=0.0, le=1.0, description="ROUGE-L F1 above which an item is a duplicate")
]
TokenizerName = Annotated[
    Literal["auto", "rouge", "japanese", "char"],
    msgspec.Meta(
        description=(
            "auto: per item by script (rouge for text without CJK, japanese for kana/kanji, char for other CJK); "
            "rouge: rouge-score's tokenizer; japanese: MeCab words plus R identifiers; char: one token per character"
        )
    ),
]


class DedupItem(Base):
    id: Id
    # Not blank: at least one character that is not white space.
    text: Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_DEDUP_TEXT, pattern=r"\S")]


class DedupRequest(Base):
    """Items are decided in order against `existing` and every item kept before them."""

    items: Annotated[list[DedupItem], msgspec.Meta(min_length=1, max_length=MAX_DEDUP_ITEMS)]
    existing: Annotated[list[DedupItem], msgspec.Meta(max_length=MAX_DEDUP_EXISTING)] = []
    threshold: Threshold = 0.7
    tokenizer: TokenizerName = "auto"


class DedupResult(Base):
    """`score` is the best ROUGE-L F1 against what was kept before; `nearest_id` is the earliest item at it."""

    id: str
    kept: bool
    nearest_id: str | None
    score: float


class DedupResponse(Base):
    results: list[DedupResult]
