"""Prices of model tokens: a price table's entries, and a request's own price for its model."""

from __future__ import annotations

from typing import Annotated

import msgspec

from service.wire.base import Base

__all__ = ["ModelPrice", "PerMillion"]

PerMillion = Annotated[float, msgspec.Meta(ge=0.0, le=10_000.0)]


class ModelPrice(Base):
    """US dollars per million tokens: fresh `input`, `cached_input` (a prompt-cache read),
    `cache_write` (a prompt-cache write; the input price where caching is free), `output`.
    `cache_min_tokens`: the shortest prompt prefix the provider caches for this model."""

    input: PerMillion
    output: PerMillion
    cached_input: PerMillion | None = None
    cache_write: PerMillion | None = None
    cache_min_tokens: Annotated[int, msgspec.Meta(ge=0, le=1_000_000)] = 1024
