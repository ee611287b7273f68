"""OpenAI chat completions, and any server that speaks them (vLLM, llama.cpp server, Ollama).

The SDK retries 408/409/429/5xx and connection errors with exponential backoff and
honours Retry-After; what is left after its retries is translated here.
"""

from __future__ import annotations

import time
from typing import Any

import openai

from service.errors import ProviderNotConfigured, ProviderUnavailable
from service.providers._sdk import SDKProvider
from service.providers.base import Completion, CompletionRequest, translate_sdk_error
from service.settings import Settings
from service.wire.base import Usage

__all__ = ["OpenAIProvider"]


class OpenAIProvider(SDKProvider):
    _client: openai.AsyncOpenAI

    def __init__(
        self,
        client: openai.AsyncOpenAI,
        *,
        name: str = "openai",
        default_model: str,
        concurrency: int = 16,
    ) -> None:
        super().__init__(client, name=name, default_model=default_model, concurrency=concurrency)

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
            max_retries=settings.max_retries,
            timeout=settings.request_timeout_s,
        )
        return cls(client, default_model=settings.openai_model, concurrency=settings.concurrency)

    async def complete(self, request: CompletionRequest) -> Completion:
        messages: list[Any] = [{"role": "system", "content": request.system}]
        messages += [{"role": m.role, "content": m.content} for m in request.messages]
        extra: dict[str, Any] = {}
        if request.seed is not None:
            extra["seed"] = request.seed
        model = request.model or self.default_model
        async with self._slots:
            started = time.perf_counter()
            try:
                response = await self._client.chat.completions.create(
                    model=model,
                    messages=messages,
                    temperature=request.temperature,
                    max_tokens=request.max_tokens,
                    **extra,
                )
            except openai.OpenAIError as exc:
                raise translate_sdk_error(exc, sdk=openai, provider=self.name) from exc
            latency_ms = (time.perf_counter() - started) * 1000
        if not response.choices:
            raise ProviderUnavailable(f"the {self.name} API returned no choices", provider=self.name)
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
        )
