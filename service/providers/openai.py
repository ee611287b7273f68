"""OpenAI chat completions, and any server that speaks them (vLLM, llama.cpp server, Ollama).

The SDK's own retries are off: each attempt goes through the model's lane (`limiter.Lane`), which
retries 429s, 5xx, timeouts and dropped connections itself so its limiter learns from every one.
"""

from __future__ import annotations

import time
from typing import Any

import openai

from service.errors import ProviderNotConfigured
from service.providers._sdk import SDKProvider, lane_policies
from service.providers.base import Completion, CompletionRequest, UnreadableResponse
from service.providers.limiter import Adaptive, BreakerPolicy, RetryPolicy
from service.settings import Settings
from service.wire.base import Usage

__all__ = ["OpenAIProvider"]


class OpenAIProvider(SDKProvider):
    _client: openai.AsyncOpenAI
    _sdk = openai

    def __init__(
        self,
        client: openai.AsyncOpenAI,
        *,
        name: str = "openai",
        default_model: str,
        concurrency: int | Adaptive = 16,
        retry: RetryPolicy | None = None,
        breaker: BreakerPolicy | None = None,
    ) -> None:
        super().__init__(
            client,
            name=name,
            default_model=default_model,
            concurrency=concurrency,
            retry=retry,
            breaker=breaker,
        )

    @classmethod
    def from_settings(cls, settings: Settings) -> OpenAIProvider:
        if not settings.openai_configured:
            raise ProviderNotConfigured(
                "the openai provider needs OPENAI_API_KEY (or OPENAI_BASE_URL for a compatible server)",
                provider="openai",
                field="model.provider",
            )
        client = openai.AsyncOpenAI(
            # Local OpenAI-compatible servers usually accept any key.
            api_key=settings.openai_api_key or "unused",
            base_url=settings.openai_base_url,
            max_retries=0,
            timeout=settings.request_timeout_s,
        )
        adaptive, retry, breaker = lane_policies(settings)
        return cls(
            client, default_model=settings.openai_model, concurrency=adaptive, retry=retry, breaker=breaker
        )

    async def complete(self, request: CompletionRequest) -> Completion:
        messages: list[Any] = [{"role": "system", "content": request.system}]
        messages += [{"role": m.role, "content": m.content} for m in request.messages]
        extra: dict[str, Any] = {}
        if request.seed is not None:
            extra["seed"] = request.seed
        model = request.model or self.default_model

        async def attempt() -> Completion:
            started = time.perf_counter()
            response = await self._client.chat.completions.create(
                model=model,
                messages=messages,
                temperature=request.temperature,
                max_tokens=request.max_tokens,
                **extra,
            )
            latency_ms = (time.perf_counter() - started) * 1000
            if not response.choices:
                raise UnreadableResponse(f"the {self.name} API returned no choices", provider=self.name)
            choice = response.choices[0]
            usage = Usage()
            if response.usage is not None:
                details = getattr(response.usage, "prompt_tokens_details", None)
                usage = Usage(
                    input_tokens=response.usage.prompt_tokens or 0,
                    output_tokens=response.usage.completion_tokens or 0,
                    cached_tokens=(getattr(details, "cached_tokens", 0) or 0) if details else 0,
                )
            return Completion(
                text=choice.message.content or "",
                model=response.model or model,
                usage=usage,
                latency_ms=latency_ms,
                finish_reason=choice.finish_reason,
                truncated=choice.finish_reason == "length",
            )

        return await self._call(model, attempt)
