"""One model call retried until its reply parses: shared by the question and answer steps.

A reply cut off at `max_tokens` is never parsed, even when its code fences happen to close: the
call is made again with twice the room, up to `MAX_TOKENS_GROWTH` times what was asked (and the
wire's ceiling), and fails as `truncated` when even that is not enough.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar, Generic, TypeVar

import msgspec

from service.errors import BudgetExhausted
from service.providers.base import CompletionRequest, Provider
from service.wire.base import Usage

__all__ = [
    "MAX_TOKENS_CEILING",
    "MAX_TOKENS_GROWTH",
    "Call",
    "MalformedReply",
    "Truncated",
    "call_until_parsed",
]

T = TypeVar("T")

# A truncated reply is asked for again with up to this many times the requested max_tokens …
MAX_TOKENS_GROWTH = 4
# … and never more than the most a spec may ask for.
MAX_TOKENS_CEILING = 32_000


class MalformedReply(Exception):
    """The model answered, but not with anything usable; the caller retries, then reports it."""

    failure_reason: ClassVar[str] = "malformed_reply"

    def __init__(self, reason: str, *, usage: Usage | None = None, attempts: int = 0) -> None:
        super().__init__(reason)
        self.reason = reason
        self.usage = usage or Usage()
        self.attempts = attempts


class Truncated(MalformedReply):
    """Every attempt was cut off at max_tokens, the last with the most room allowed."""

    failure_reason: ClassVar[str] = "truncated"


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
    """Call, parse, and on `MalformedReply` or a truncated reply call again, up to `retries` more times."""
    usage = Usage()
    latency_ms = 0.0
    last = "no attempt made"
    truncated = False
    ceiling = min(MAX_TOKENS_CEILING, max(request.max_tokens, request.max_tokens * MAX_TOKENS_GROWTH))
    attempt = 0
    while attempt <= retries:
        attempt += 1
        try:
            completion = await provider.complete(request)
        except BudgetExhausted as exc:
            # The earlier attempts were spent: the item's accounting keeps them.
            exc.usage, exc.attempts = usage, attempt - 1
            raise
        usage = usage + completion.usage
        latency_ms += completion.latency_ms
        truncated = completion.truncated
        if truncated:
            last = f"the reply was cut off at max_tokens={request.max_tokens}"
            if request.max_tokens >= ceiling:
                break
            request = msgspec.structs.replace(request, max_tokens=min(ceiling, request.max_tokens * 2))
            continue
        try:
            value = parse(completion.text)
        except MalformedReply as exc:
            last = exc.reason
            continue
        return Call(value=value, model=completion.model, usage=usage, latency_ms=latency_ms, attempts=attempt)
    error = Truncated if truncated else MalformedReply
    raise error(f"{last} (after {attempt} attempts)", usage=usage, attempts=attempt)
