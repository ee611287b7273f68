"""The one interface every provider implements.

A provider turns a `CompletionRequest` into a `Completion` or raises a
`service.errors.ProviderError`. Retrying transport failures (429 with
Retry-After, 5xx, timeouts) is the provider's job, done by the vendor SDK;
retrying unusable *content* is the calling stage's job, because only the stage
knows what usable means.
"""

from __future__ import annotations

from types import ModuleType
from typing import Literal, Protocol, runtime_checkable

import msgspec

from service.errors import ProviderError, ProviderRejected, ProviderUnavailable
from service.wire.base import Usage

__all__ = ["Completion", "CompletionRequest", "Message", "Provider", "translate_sdk_error"]


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


class Completion(msgspec.Struct, frozen=True, kw_only=True):
    text: str
    model: str
    usage: Usage
    latency_ms: float
    finish_reason: str | None = None


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


def translate_sdk_error(exc: Exception, *, sdk: ModuleType, provider: str) -> ProviderError:
    """Map what is left after an official SDK's own retries onto our tree, keeping the vendor's message.

    The openai and anthropic SDKs share their exception names, so one mapping serves both.
    """
    if isinstance(exc, sdk.APIStatusError):
        message = f"{exc.status_code} from the {provider} API: {exc.message}"
        if exc.status_code in (400, 401, 403, 404, 422):
            return ProviderRejected(message, provider=provider)
        return ProviderUnavailable(message, provider=provider)
    if isinstance(exc, sdk.APITimeoutError):
        return ProviderUnavailable(f"the {provider} API timed out after retries", provider=provider)
    if isinstance(exc, sdk.APIConnectionError):
        return ProviderUnavailable(f"could not reach the {provider} API: {exc}", provider=provider)
    return ProviderUnavailable(f"{provider} API error: {exc}", provider=provider)
