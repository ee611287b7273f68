"""The one interface every provider implements.

A provider turns a `CompletionRequest` into a `Completion` or raises a
`service.errors.ProviderError`. Retrying transport failures (429 with Retry-After,
5xx, timeouts, dropped connections) is the provider's job, done in its lanes
(`limiter.py`) with the SDKs' own retries off, so that the limiter sees every
429; retrying unusable *content* is the calling stage's job, because only the
stage knows what usable means. A reply cut off at `max_tokens` says so in
`Completion.truncated`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from types import ModuleType
from typing import Any, Literal, Protocol, runtime_checkable

import msgspec

from service.errors import ProviderError, ProviderRejected, ProviderUnavailable
from service.providers.limiter import Failure, LaneState, parse_retry_after
from service.wire.base import Usage
from service.wire.batches import ProviderBatch

__all__ = [
    "Batching",
    "Completion",
    "CompletionRequest",
    "Laned",
    "Message",
    "Provider",
    "UnreadableResponse",
    "classify_sdk_error",
]


class Message(msgspec.Struct, frozen=True):
    role: Literal["user", "assistant"]
    content: str


class CompletionRequest(msgspec.Struct, frozen=True, kw_only=True):
    """One chat call. `system` is the part that is identical across a job's calls, so it is cached."""

    system: str
    messages: tuple[Message, ...]
    model: str | None = None
    temperature: float = 0.8
    max_tokens: int = 1024
    seed: int | None = None
    # Text that ends the reply where it appears (not included): every vendor supports up to four.
    stop: tuple[str, ...] = ()


class Completion(msgspec.Struct, frozen=True, kw_only=True):
    text: str
    model: str
    usage: Usage
    latency_ms: float
    # The vendor's own word: "stop", "length", "end_turn", "max_tokens", …
    finish_reason: str | None = None
    # Cut off at max_tokens ("length" / "max_tokens"): the text is incomplete even if it looks whole.
    truncated: bool = False


@runtime_checkable
class Provider(Protocol):
    """A configured model backend. `name` is what provenance records ("openai", "anthropic", "local")."""

    name: str
    default_model: str

    async def complete(self, request: CompletionRequest) -> Completion: ...

    async def aclose(self) -> None: ...

    def describe(self) -> dict[str, str]:
        """What /ready reports: never secrets."""
        ...


@runtime_checkable
class Laned(Protocol):
    """A provider that paces its calls in lanes (one per model) and can say how each lane is doing."""

    def lanes(self) -> list[LaneState]: ...


@runtime_checkable
class Batching(Protocol):
    """A provider with a batch API: many calls handed over at once, answered within the vendor's
    window (24 hours) at half the price. Each request carries a `custom_id` its result comes back
    under; `batch_results` holds one entry for every request of an ended batch, a `Completion` or
    the `ProviderError` (usually `BatchRequestFailed`) that request ended in."""

    async def submit_batch(self, requests: Sequence[tuple[str, CompletionRequest]]) -> ProviderBatch: ...

    async def batch_status(self, batch_id: str) -> ProviderBatch: ...

    async def batch_results(self, batch_id: str) -> dict[str, Completion | ProviderError]: ...


class UnreadableResponse(ProviderUnavailable):
    """A 200 whose body does not hold a reply (no choices, no content): retried like a 5xx."""


# Vendor error codes that no wait will cure: the account is out of money or quota.
EXHAUSTED = frozenset({"insufficient_quota", "billing_hard_limit_reached", "enforced_spend_limit_reached"})


def _body_error(exc: Any) -> dict[str, Any]:
    """The `error` object of an error body: OpenAI's SDK keeps it as the body, Anthropic's the whole body."""
    body = getattr(exc, "body", None)
    if not isinstance(body, dict):
        return {}
    inner = body.get("error")
    return inner if isinstance(inner, dict) else body


def _status_detail(exc: Any, provider: str) -> str:
    error = _body_error(exc)
    message = error.get("message")
    if not isinstance(message, str) or not message:
        # Not the vendor's JSON (a gateway's HTML page, say): a short, escaped excerpt at most.
        text = exc.response.text if exc.response is not None else ""
        message = json.dumps(" ".join(text.split())[:120]) if text.strip() else "no error message"
    detail = f"{exc.status_code} from the {provider} API: {message}"
    request_id = getattr(exc, "request_id", None)
    return f"{detail} (request {request_id})" if request_id else detail


def classify_sdk_error(exc: Exception, *, sdk: ModuleType, provider: str) -> Failure | None:
    """What one failed attempt through an official SDK means; None for an exception that is not the API's.

    The openai and anthropic SDKs share their exception names, so one mapping serves both.
    """
    if isinstance(exc, sdk.APIStatusError):
        status = exc.status_code
        headers = exc.response.headers
        retry_after = parse_retry_after(headers)
        detail = _status_detail(exc, provider)
        error = _body_error(exc)
        details = error.get("details")
        codes = {
            error.get("code"),
            error.get("type"),
            details.get("error_code") if isinstance(details, dict) else None,
        }
        should_retry = headers.get("x-should-retry")
        if status in (401, 403) or codes & EXHAUSTED:
            return Failure(kind="rejected", error=ProviderRejected(detail, provider=provider))
        if should_retry == "false":
            return Failure(kind="invalid", error=ProviderUnavailable(detail, provider=provider))
        if status == 429:
            return Failure(
                kind="throttled",
                error=ProviderUnavailable(detail, provider=provider),
                retry_after_s=retry_after,
            )
        if status >= 500 or status in (408, 409) or should_retry == "true":
            return Failure(
                kind="failed",
                error=ProviderUnavailable(detail, provider=provider),
                retry_after_s=retry_after,
                overload=status >= 500 or status == 408,
            )
        return Failure(kind="invalid", error=ProviderRejected(detail, provider=provider))
    if isinstance(exc, sdk.APITimeoutError):
        error = ProviderUnavailable(f"the {provider} API did not answer in time", provider=provider)
        return Failure(kind="failed", error=error, overload=True)
    if isinstance(exc, sdk.APIConnectionError):
        cause = exc.__cause__
        why = f"{type(cause).__name__}: {cause}" if cause is not None else str(exc)
        error = ProviderUnavailable(f"the connection to the {provider} API failed ({why})", provider=provider)
        return Failure(kind="failed", error=error)
    if isinstance(exc, UnreadableResponse):
        return Failure(kind="failed", error=exc)
    if isinstance(exc, sdk.APIResponseValidationError | json.JSONDecodeError):
        # The SDKs let a 200 whose body is not JSON through as a bare JSONDecodeError.
        error = ProviderUnavailable(f"the {provider} API sent an unreadable body ({exc})", provider=provider)
        return Failure(kind="failed", error=error)
    return None
