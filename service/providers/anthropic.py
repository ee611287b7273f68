"""Anthropic messages API.

The system prompt (identical across a job's calls) is marked `cache_control:
ephemeral`, so repeated calls read it from Anthropic's prompt cache once it reaches the
model's minimum (1,024 tokens for most models); cache reads are recorded as `cached_tokens`,
cache writes as `cache_write_tokens`. Anthropic has no seed parameter. The SDK's own
retries are off: the model's lane retries 429, 529 and the rest (`limiter.Lane`).
Message Batches take the same requests, with the same cache breakpoint, at half the price.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import anthropic
from anthropic.types import Message
from anthropic.types.messages import MessageBatch, MessageBatchIndividualResponse

from service.errors import BatchRequestFailed, ProviderError, ProviderNotConfigured
from service.providers._sdk import SDKProvider, lane_policies
from service.providers.base import Completion, CompletionRequest
from service.providers.limiter import Adaptive, BreakerPolicy, RetryPolicy
from service.settings import Settings
from service.wire.base import Usage
from service.wire.batches import BatchCounts, ProviderBatch

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

    async def count_tokens(self, request: CompletionRequest) -> int | None:
        """The prompt tokens of `request` by Anthropic's count_tokens endpoint (free; None when it
        cannot be reached or refuses), for estimates."""
        try:
            counted = await self._client.messages.count_tokens(
                model=request.model or self.default_model,
                system=request.system,
                messages=[{"role": m.role, "content": m.content} for m in request.messages],
                timeout=10.0,
            )
        except anthropic.AnthropicError:
            return None
        return counted.input_tokens

    def _params(self, request: CompletionRequest) -> dict[str, Any]:
        """The messages request, the same for a direct call and a batch request's `params`."""
        params: dict[str, Any] = {
            "model": request.model or self.default_model,
            "system": [{"type": "text", "text": request.system, "cache_control": {"type": "ephemeral"}}],
            "messages": [{"role": m.role, "content": m.content} for m in request.messages],
            "max_tokens": request.max_tokens,
            "temperature": min(request.temperature, 1.0),
        }
        if request.stop:
            params["stop_sequences"] = list(request.stop)
        return params

    def _completion(self, response: Message, *, model: str, latency_ms: float) -> Completion:
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
                cache_write_tokens=cache_write,
            ),
            latency_ms=latency_ms,
            finish_reason=response.stop_reason,
            truncated=response.stop_reason == "max_tokens",
        )

    async def complete(self, request: CompletionRequest) -> Completion:
        params = self._params(request)
        model = params["model"]
        temperature = params.pop("temperature")

        async def attempt() -> Completion:
            started = time.perf_counter()
            response = await self._client.messages.create(
                **params,
                # Sent in the body: recent SDKs dropped the keyword, the API still reads it.
                extra_body={"temperature": temperature},
            )
            latency_ms = (time.perf_counter() - started) * 1000
            return self._completion(response, model=model, latency_ms=latency_ms)

        return await self._call(model, attempt)

    # -- Message Batches: requests with a custom_id each, a batch, a JSONL of results

    async def submit_batch(self, requests: Sequence[tuple[str, CompletionRequest]]) -> ProviderBatch:
        body: list[Any] = [{"custom_id": cid, "params": self._params(request)} for cid, request in requests]
        return _batch_of(await self._managed(lambda: self._client.messages.batches.create(requests=body)))

    async def batch_status(self, batch_id: str) -> ProviderBatch:
        return _batch_of(await self._managed(lambda: self._client.messages.batches.retrieve(batch_id)))

    async def batch_results(self, batch_id: str) -> dict[str, Completion | ProviderError]:
        async def read() -> list[MessageBatchIndividualResponse]:
            return [line async for line in await self._client.messages.batches.results(batch_id)]

        out: dict[str, Completion | ProviderError] = {}
        for line in await self._managed(read):
            result = line.result
            prefix = f"batch {batch_id}"
            if result.type == "succeeded":
                message = result.message
                out[line.custom_id] = self._completion(message, model=message.model, latency_ms=0.0)
            elif result.type == "errored":
                error = result.error.error
                out[line.custom_id] = BatchRequestFailed(
                    f"{prefix}: {error.type}: {error.message}", provider=self.name, reason="batch_errored"
                )
            elif result.type == "expired":
                out[line.custom_id] = BatchRequestFailed(
                    f"{prefix}: the batch expired before this request ran",
                    provider=self.name,
                    reason="batch_expired",
                )
            else:
                out[line.custom_id] = BatchRequestFailed(
                    f"{prefix}: the batch was canceled before this request ran",
                    provider=self.name,
                    reason="batch_canceled",
                )
        return out


def _batch_of(batch: MessageBatch) -> ProviderBatch:
    c = batch.request_counts
    return ProviderBatch(
        id=batch.id,
        status=batch.processing_status,
        ended=batch.processing_status == "ended",
        counts=BatchCounts(
            total=c.processing + c.succeeded + c.errored + c.canceled + c.expired,
            processing=c.processing,
            succeeded=c.succeeded,
            errored=c.errored,
            expired=c.expired,
            canceled=c.canceled,
        ),
    )
