"""One model call retried until its reply parses: shared by the question and answer steps."""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

import msgspec

from service.providers.base import CompletionRequest, Provider
from service.wire.base import Usage

__all__ = ["Call", "MalformedReply", "call_until_parsed"]

T = TypeVar("T")


class MalformedReply(Exception):
    """The model answered, but not with anything usable; the caller retries, then reports it."""

    def __init__(self, reason: str, *, usage: Usage | None = None, attempts: int = 0) -> None:
        super().__init__(reason)
        self.reason = reason
        self.usage = usage or Usage()
        self.attempts = attempts


class Call(msgspec.Struct, Generic[T], frozen=True, kw_only=True):
    """A parsed reply with the cost of getting it, retries included."""

    value: T
    model: str
    usage: Usage
    latency_ms: float
    attempts: int


async def call_until_parsed(
    provider: Provider, request: CompletionRequest, parse: Callable[[str], T], *, retries: int
) -> Call[T]:
    """Call, parse, and on `MalformedReply` call again, up to `retries` more times."""
    usage = Usage()
    latency_ms = 0.0
    last = "no attempt made"
    for attempt in range(1, retries + 2):
        completion = await provider.complete(request)
        usage = usage + completion.usage
        latency_ms += completion.latency_ms
        try:
            value = parse(completion.text)
        except MalformedReply as exc:
            last = exc.reason
            continue
        return Call(value=value, model=completion.model, usage=usage, latency_ms=latency_ms, attempts=attempt)
    raise MalformedReply(f"{last} (after {retries + 1} attempts)", usage=usage, attempts=retries + 1)
