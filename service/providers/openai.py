"""OpenAI chat completions, and any server that speaks them (vLLM, llama.cpp server, Ollama),
and OpenAI's Batch API (Files + Batches) for the same requests at half the price.

The SDK's own retries are off: each attempt goes through the model's lane (`limiter.Lane`), which
retries 429s, 5xx, timeouts and dropped connections itself so its limiter learns from every one.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from typing import Any, Final

import openai
import pydantic
from openai.types import Batch
from openai.types.chat import ChatCompletion

from service.errors import BatchRequestFailed, ProviderError, ProviderNotConfigured
from service.providers._sdk import SDKProvider, lane_policies
from service.providers.base import Completion, CompletionRequest, UnreadableResponse
from service.providers.limiter import Adaptive, BreakerPolicy, RetryPolicy
from service.settings import Settings
from service.wire.base import Usage
from service.wire.batches import BatchCounts, ProviderBatch

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

    def _body(self, request: CompletionRequest) -> dict[str, Any]:
        """The chat completions request body, the same for a direct call and a batch line."""
        messages: list[Any] = [{"role": "system", "content": request.system}]
        messages += [{"role": m.role, "content": m.content} for m in request.messages]
        body: dict[str, Any] = {
            "model": request.model or self.default_model,
            "messages": messages,
            "temperature": request.temperature,
            "max_tokens": request.max_tokens,
        }
        if request.seed is not None:
            body["seed"] = request.seed
        if request.stop:
            body["stop"] = list(request.stop)
        return body

    def _completion(self, response: ChatCompletion, *, model: str, latency_ms: float) -> Completion:
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

    async def complete(self, request: CompletionRequest) -> Completion:
        body = self._body(request)
        model = body["model"]

        async def attempt() -> Completion:
            started = time.perf_counter()
            response = await self._client.chat.completions.create(**body)
            latency_ms = (time.perf_counter() - started) * 1000
            return self._completion(response, model=model, latency_ms=latency_ms)

        return await self._call(model, attempt)

    # -- the Batch API: a JSONL file of chat completion requests, one batch, output and error files

    async def submit_batch(self, requests: Sequence[tuple[str, CompletionRequest]]) -> ProviderBatch:
        lines = [
            {"custom_id": cid, "method": "POST", "url": CHAT_ENDPOINT, "body": self._body(request)}
            for cid, request in requests
        ]
        data = b"".join(json.dumps(line).encode() + b"\n" for line in lines)
        upload = await self._managed(
            lambda: self._client.files.create(
                file=("requests.jsonl", data, "application/jsonl"), purpose="batch"
            )
        )
        batch = await self._managed(
            lambda: self._client.batches.create(
                input_file_id=upload.id, endpoint=CHAT_ENDPOINT, completion_window="24h"
            )
        )
        return _batch_of(batch)

    async def batch_status(self, batch_id: str) -> ProviderBatch:
        return _batch_of(await self._managed(lambda: self._client.batches.retrieve(batch_id)))

    async def _file_lines(self, file_id: str) -> list[dict[str, Any]]:
        content = await self._managed(lambda: self._client.files.content(file_id))
        return [json.loads(line) for line in content.text.splitlines() if line.strip()]

    async def batch_results(self, batch_id: str) -> dict[str, Completion | ProviderError]:
        batch = await self._managed(lambda: self._client.batches.retrieve(batch_id))
        out: dict[str, Completion | ProviderError] = {}
        for file_id in (batch.output_file_id, batch.error_file_id):
            for line in await self._file_lines(file_id) if file_id else []:
                out[line["custom_id"]] = self._line_result(batch_id, line)
        # A request in neither file: the batch failed validation, expired or was cancelled before it.
        why = {
            "failed": ("batch_errored", "the batch failed validation"),
            "expired": ("batch_expired", "the batch expired before this request ran"),
            "cancelled": ("batch_canceled", "the batch was cancelled before this request ran"),
        }.get(batch.status, ("batch_errored", f"no result for this request (batch {batch.status})"))
        errors = (
            "; ".join(f"{e.code}: {e.message}" for e in (batch.errors.data or [])) if batch.errors else ""
        )
        for line in await self._file_lines(batch.input_file_id):
            if line.get("custom_id") not in out:
                detail = f"batch {batch_id}: {why[1]}" + (f" ({errors})" if errors else "")
                out[line["custom_id"]] = BatchRequestFailed(detail, provider=self.name, reason=why[0])
        return out

    def _line_result(self, batch_id: str, line: dict[str, Any]) -> Completion | ProviderError:
        response = line.get("response")
        if isinstance(response, dict) and response.get("status_code") == 200:
            try:
                completion = ChatCompletion.model_validate(response.get("body"))
                return self._completion(completion, model=completion.model, latency_ms=0.0)
            except (pydantic.ValidationError, UnreadableResponse) as exc:
                detail = f"batch {batch_id}: an unreadable result line ({exc})"
                return BatchRequestFailed(detail, provider=self.name, reason="batch_errored")
        error = line.get("error") or {}
        if isinstance(response, dict):
            body = response.get("body") or {}
            inner = body.get("error") if isinstance(body, dict) else None
            message = inner.get("message") if isinstance(inner, dict) else json.dumps(body)[:200]
            detail = f"{response.get('status_code')} from the {self.name} API: {message}"
        else:
            detail = f"{error.get('code')}: {error.get('message')}"
        reason = "batch_expired" if error.get("code") == "batch_expired" else "batch_errored"
        return BatchRequestFailed(f"batch {batch_id}: {detail}", provider=self.name, reason=reason)


CHAT_ENDPOINT: Final = "/v1/chat/completions"

# OpenAI's batch statuses that hold no more work.
_ENDED = frozenset({"completed", "failed", "expired", "cancelled"})


def _batch_of(batch: Batch) -> ProviderBatch:
    counts = batch.request_counts
    total, done, failed = (counts.total, counts.completed, counts.failed) if counts else (0, 0, 0)
    ended = batch.status in _ENDED
    return ProviderBatch(
        id=batch.id,
        status=batch.status,
        ended=ended,
        counts=BatchCounts(
            total=total,
            processing=0 if ended else max(0, total - done - failed),
            succeeded=done,
            errored=failed,
            expired=max(0, total - done - failed) if batch.status == "expired" else 0,
            canceled=max(0, total - done - failed) if batch.status == "cancelled" else 0,
        ),
    )
