"""Anthropic messages API.

The system prompt (identical across a job's calls) is marked `cache_control:
ephemeral`, so repeated calls read it from Anthropic's prompt cache; cache reads
are recorded as `cached_tokens`. Anthropic has no seed parameter. The SDK's own
retries are off: the model's lane retries 429, 529 and the rest (`limiter.Lane`).
"""

from __future__ import annotations

import time
from typing import Any

import anthropic

from service.errors import ProviderNotConfigured
from service.providers._sdk import SDKProvider, lane_policies
from service.providers.base import Completion, CompletionRequest
from service.providers.limiter import Adaptive, BreakerPolicy, RetryPolicy
from service.settings import Settings
from service.wire.base import Usage

__all__ = ["AnthropicProvider"]


class AnthropicProvider(SDKProvider):
    _client: anthropic.AsyncAnthropic
    _sdk = anthropic

    def __init__(
        self,
        client: anthropic.AsyncAnthropic,
        *,
        default_model: str,
        concurrency: int | Adaptive = 16,
        retry: RetryPolicy | None = None,
        breaker: BreakerPolicy | None = None,
    ) -> None:
        super().__init__(
            client,
            name="anthropic",
            default_model=default_model,
            concurrency=concurrency,
            retry=retry,
            breaker=breaker,
        )

    @classmethod
    def from_settings(cls, settings: Settings) -> AnthropicProvider:
        if not settings.anthropic_configured:
            raise ProviderNotConfigured(
                "the anthropic provider needs ANTHROPIC_API_KEY", provider="anthropic", field="model.provider"
            )
        client = anthropic.AsyncAnthropic(
            api_key=settings.anthropic_api_key or "unused",
            base_url=settings.anthropic_base_url,
            max_retries=0,
            timeout=settings.request_timeout_s,
        )
        adaptive, retry, breaker = lane_policies(settings)
        return cls(
            client, default_model=settings.anthropic_model, concurrency=adaptive, retry=retry, breaker=breaker
        )

    async def complete(self, request: CompletionRequest) -> Completion:
        system: list[Any] = [{"type": "text", "text": request.system, "cache_control": {"type": "ephemeral"}}]
        messages: list[Any] = [{"role": m.role, "content": m.content} for m in request.messages]
        model = request.model or self.default_model

        async def attempt() -> Completion:
            started = time.perf_counter()
            response = await self._client.messages.create(
                model=model,
                system=system,
                messages=messages,
                max_tokens=request.max_tokens,
                # Sent in the body: recent SDKs dropped the keyword, the API still reads it.
                extra_body={"temperature": min(request.temperature, 1.0)},
            )
            latency_ms = (time.perf_counter() - started) * 1000
            text = "".join(block.text for block in response.content if getattr(block, "type", None) == "text")
            u = response.usage
            cache_read = getattr(u, "cache_read_input_tokens", None) or 0
            cache_write = getattr(u, "cache_creation_input_tokens", None) or 0
            return Completion(
                text=text,
                model=response.model or model,
                # Anthropic counts cached prompt tokens apart from input_tokens; report the whole prompt.
                usage=Usage(
                    input_tokens=(u.input_tokens or 0) + cache_read + cache_write,
                    output_tokens=u.output_tokens or 0,
                    cached_tokens=cache_read,
                ),
                latency_ms=latency_ms,
                finish_reason=response.stop_reason,
                truncated=response.stop_reason == "max_tokens",
            )

        return await self._call(model, attempt)
