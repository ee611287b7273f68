"""Shared settings for every wire Struct, and the small types all stages use."""

from __future__ import annotations

from typing import Annotated

import msgspec

__all__ = ["Base", "Id", "Usage"]


class Base(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Unknown fields are an error, so a typo in a request never passes silently."""


Id = Annotated[str, msgspec.Meta(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9_.:\-]+$")]


class Usage(Base):
    """Token usage of one or more model calls. `input_tokens` is the whole prompt; of it,
    `cached_tokens` were read from the provider's prompt cache and `cache_write_tokens` were written
    to it (Anthropic bills writes above the input price; OpenAI caches for free and reports none)."""

    input_tokens: int = 0
    output_tokens: int = 0
    cached_tokens: int = 0
    cache_write_tokens: int = 0

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            input_tokens=self.input_tokens + other.input_tokens,
            output_tokens=self.output_tokens + other.output_tokens,
            cached_tokens=self.cached_tokens + other.cached_tokens,
            cache_write_tokens=self.cache_write_tokens + other.cache_write_tokens,
        )
