"""The real embedded model through the provider and the app (slow: loads a 1 GB GGUF on the CPU)."""

from __future__ import annotations

import asyncio
import secrets
import statistics
import threading
import time

import httpx
import pytest
from litestar.testing import AsyncTestClient

from service.__main__ import serve_in_background
from service.app import create_app
from service.errors import ProviderUnavailable
from service.providers import _gguf
from service.providers._cpu import available_cores
from service.providers.base import CompletionRequest, Message
from service.providers.local import LocalProvider, local_available
from service.settings import Settings

pytestmark = pytest.mark.slow

# The defaults: 4 slots, one thread per available core.
SETTINGS = Settings()
SYSTEM = (
    "You are an expert R programmer. Answers are self-contained: create example data inline, "
    "read no files, use base R only and no library() calls."
)


@pytest.fixture(autouse=True)
def _needs_local_model() -> None:
    if not local_available(SETTINGS):
        pytest.skip("the local model is not installed: pip install -e '.[local]'")


def _ask(text: str, *, max_tokens: int = 48, system: str = SYSTEM) -> CompletionRequest:
    return CompletionRequest(
        system=system, messages=(Message("user", text),), temperature=0.2, max_tokens=max_tokens, seed=1
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
    # The first call found nothing cached; the second reuses the shared system prompt.
    assert first.usage.cached_tokens == 0
    assert second.usage.cached_tokens >= 20
    assert described["status"] == "ready"
    assert described["sha256"] == _gguf.DEFAULT_MODEL.sha256
    assert described["sha256_verified"].startswith("true")
    assert (described["slots"], described["concurrency"]) == ("4", "4")
    assert described["threads"] == str(available_cores())
    # What llama.cpp says the loaded runtime was compiled for; the PyPI wheel and a build for AVX-512
    # (scripts/build_runtime.py) both have AVX2.
    features = described["cpu_features"].split()
    assert "AVX2" in features and "OPENMP" in features
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


async def test_concurrent_calls_evaluate_a_new_system_prompt_once() -> None:
    """Four calls of a job arrive together: one evaluates the system prompt, the others copy its slot."""
    system = f"[job {secrets.token_hex(6)}] " + SYSTEM * 3
    questions = ["mean", "median", "variance", "range"]
    provider = LocalProvider.from_settings(SETTINGS)
    try:
        completions = await asyncio.gather(
            *(
                provider.complete(_ask(f"Compute the {q} of c(2, 4, 9) in R.", system=system))
                for q in questions
            )
        )
        # A fifth call on a slot whose prompt was copied, not evaluated, still reuses it.
        again = await provider.complete(_ask("Compute the sum of c(2, 4, 9) in R.", system=system))
    finally:
        await provider.aclose()
    cached = sorted(c.usage.cached_tokens for c in completions)
    prompt = min(c.usage.input_tokens for c in completions)
    assert prompt > 100, completions
    # Exactly one call found nothing: it evaluated the system prompt, in its slot only.
    assert cached[0] == 0, cached
    # The other three had the system prompt already: only their own question was new.
    for completion in completions:
        if completion.usage.cached_tokens:
            assert completion.usage.input_tokens - completion.usage.cached_tokens < 40, completion.usage
        assert completion.text.strip()
    assert again.usage.input_tokens - again.usage.cached_tokens < 40, again.usage


async def test_a_prompt_longer_than_a_slot_says_which_setting_to_raise() -> None:
    provider = LocalProvider(packaged=_gguf.DEFAULT_MODEL, slots=2, threads=1, context=512)
    try:
        with pytest.raises(ProviderUnavailable, match="QASYNTH_LOCAL_CONTEXT") as info:
            await provider.complete(_ask("Explain it.", system=SYSTEM * 20))
        # The provider stays usable for calls that fit.
        completion = await provider.complete(_ask("Explain mean() in R.", max_tokens=8))
    finally:
        await provider.aclose()
    assert "512 tokens" in info.value.detail
    assert completion.text.strip()


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


async def test_a_cancelled_call_evaluating_a_new_prompt_hands_over_to_a_waiting_one() -> None:
    system = f"[job {secrets.token_hex(6)}] " + SYSTEM * 3
    provider = LocalProvider.from_settings(SETTINGS)
    try:
        await provider.complete(_ask("Say OK.", max_tokens=1))  # loaded
        first = asyncio.create_task(provider.complete(_ask("Explain var() in R.", system=system)))
        await asyncio.sleep(0.2)
        waiting = asyncio.create_task(provider.complete(_ask("Explain sd() in R.", system=system)))
        await asyncio.sleep(0.2)
        first.cancel()
        completion = await asyncio.wait_for(waiting, 300)
    finally:
        await provider.aclose()
    assert first.cancelled()
    assert completion.text.strip()


def test_health_answers_while_several_generations_decode_on_all_threads() -> None:
    """/health keeps answering over real HTTP while four cells decode at once on every core."""
    spec = {
        "locale": "en",
        "tasks": [{"id": "explain"}, {"id": "generate"}],
        "themes": [{"id": "mean-variance"}, {"id": "hypothesis-tests"}],
        "per_cell": 1,
        "model": {
            "provider": "local",
            "temperature": 0.2,
            "max_tokens": 256,
            "questions_per_call": 1,
            "seed": 1,
        },
        "dedup": {"questions": False, "answers": False},
        "evaluation": {"enabled": False},
    }
    # A one-cell job first: it loads the model, which xllamacpp does holding the GIL (see local.py).
    warm_up = {**spec, "tasks": [{"id": "explain"}], "themes": [{"id": "summaries"}]}
    warm_up["model"] = {**spec["model"], "max_tokens": 16}
    latencies: list[float] = []
    failures: list[str] = []
    in_flight: list[int] = []
    stop = threading.Event()
    with serve_in_background(create_app(SETTINGS)) as url:
        assert httpx.post(f"{url}/v1/generate", json=warm_up, timeout=600).status_code == 200

        def poll() -> None:
            with httpx.Client(base_url=url, timeout=30) as client:
                while not stop.is_set():
                    started = time.perf_counter()
                    response = client.get("/health")
                    latencies.append(time.perf_counter() - started)
                    if response.status_code != 200:
                        failures.append(response.text)
                    if len(latencies) % 10 == 0:
                        lanes = client.get("/ready").json()["lanes"]
                        in_flight.extend(lane["in_flight"] for lane in lanes if lane["provider"] == "local")
                    time.sleep(0.1)

        poller = threading.Thread(target=poll)
        poller.start()
        started = time.perf_counter()
        try:
            response = httpx.post(f"{url}/v1/generate", json=spec, timeout=900)
            ready = httpx.get(f"{url}/ready", timeout=30).json()
        finally:
            stop.set()
            poller.join()
        elapsed = time.perf_counter() - started
    print(
        f"/health while generating ({elapsed:.0f} s, {len(latencies)} checks): median "
        f"{statistics.median(latencies) * 1000:.1f} ms, max {max(latencies) * 1000:.1f} ms"
    )
    assert response.status_code == 200, response.text
    body = response.json()
    # Short answers may be cut off and retried: what matters is that eight or more calls decoded.
    counts = body["counts"]
    assert counts["returned"] + counts["failed"] == 4 and counts["returned"] >= 1, counts
    assert body["usage"]["output_tokens"] > 300, body["usage"]
    described = ready["providers"]["local"]
    assert (described["status"], described["slots"]) == ("ready", "4")
    assert described["threads"] == str(available_cores())
    # The lane sends as many calls as there are slots: the four cells' first calls all decode at once.
    [lane] = [lane for lane in ready["lanes"] if lane["provider"] == "local"]
    # (An attempt may time out on a machine loaded by other work; the lane retries it.)
    assert (lane["adaptive"], lane["limit"], lane["in_flight"], lane["queued"]) == (False, 4, 0, 0)
    assert lane["calls"] >= 9  # the warm-up's two, then at least a question and an answer per cell
    assert max(in_flight) == 4, in_flight
    assert not failures
    # Polled every 0.1 s through the whole decode (minutes): never held up for more than moments,
    # even on a machine other work keeps busy.
    assert len(latencies) >= elapsed / 0.5
    assert max(latencies) < 2.0, sorted(latencies)[-5:]


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
