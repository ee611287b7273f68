"""Near-duplicate filtering: POST /v1/dedup and the `dedup` part of a generation spec."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

from service.wire.base import Base, Id

__all__ = ["DedupItem", "Threshold", "TokenizerName"]

Threshold = Annotated[float, msgspec.Meta(ge=0.0, le=1.0, description="ROUGE-L F1 above which an item is a duplicate")]
TokenizerName = Literal["auto", "rouge", "japanese", "char"]


class DedupItem(Base):
    id: Id
    text: Annotated[str, msgspec.Meta(min_length=1, max_length=20_000)]
