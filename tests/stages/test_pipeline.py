"""The pipeline moves items independently: no batch or stage barrier holds a finished item back."""

from __future__ import annotations

import asyncio
import time

import httpx
import msgspec
import openai

from service.app import create_app
from service.providers.openai import OpenAIProvider
from service.stages.pipeline import collect, run_job
from service.stages.quality import warm_up
from service.stages.spec import resolve_spec
from service.wire.generate import Spec
from tests.conftest import serve, settings_for
from tests.fakes.llm_server import FakeLLMServer, default_reply


def spec(**fields: object) -> Spec:
    base: dict[str, object] = {
        "tasks": [{"id": "generate"}],
        "themes": [
            {"id": "fast", "description": "quick topic"},
            {"id": "slow", "description": "sluggish topic"},
        ],
        "per_cell": 1,
        "model": {"questions_per_call": 1},
        "evaluation": {"enabled": False},
    }
    base.update(fields)
    return msgspec.convert(base, Spec)


def provider_for(server: FakeLLMServer) -> OpenAIProvider:
    client = openai.AsyncOpenAI(api_key="x", base_url=server.openai_base_url, max_retries=0)
    return OpenAIProvider(client, default_model="fake", concurrency=8)


async def test_a_fast_cell_finishes_while_a_slow_cell_is_still_asking() -> None:
    def reply(system: str, user: str) -> str:
        if "### Q1" in system and "sluggish topic" in user:
            time.sleep(1.5)
        return default_reply(system, user)

    # The language models load once per process; loaded here, so the test times the pipeline alone.
    warm_up()
    with FakeLLMServer(reply=reply) as server:
        provider = provider_for(server)
        events = [e async for e in run_job(resolve_spec(spec()), provider, evaluate=None)]
        await provider.aclose()
    order = [
        (type(e).__name__, getattr(e, "theme", None) or getattr(getattr(e, "pair", None), "theme", None))
        for e in events
    ]
    fast_pair = order.index(("PairReady", "fast"))
    slow_question = order.index(("QuestionGenerated", "slow"))
    assert fast_pair < slow_question, order


async def test_answers_start_before_the_cells_questions_are_all_in() -> None:
    """With one question per call, the first answer call reaches the provider before the last question call."""
    with FakeLLMServer(latency_s=0.05) as server:
        provider = provider_for(server)
        job = resolve_spec(spec(themes=[{"id": "t", "description": "a topic"}], per_cell=12))
        response = await collect(run_job(job, provider, evaluate=None))
        await provider.aclose()
    assert len(response.pairs) == 12
    kinds = ["question" if "### Q1" in c.system else "answer" for c in server.calls]
    assert kinds.index("answer") < len(kinds) - 1 - kinds[::-1].index("question"), kinds


async def test_health_answers_while_a_long_job_runs() -> None:
    with FakeLLMServer(latency_s=0.5) as server, serve(create_app(settings_for(server))) as url:
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            body = {**msgspec.to_builtins(spec()), "model": {"provider": "openai"}}
            job = asyncio.create_task(client.post("/v1/generate", json=body))
            await asyncio.sleep(0.3)
            health = await client.get("/health")
            # Answered while the job was still waiting on the provider, not after it.
            assert not job.done()
            response = await job
    assert health.status_code == 200 and health.json() == {"status": "ok"}
    assert response.status_code == 200 and len(response.json()["pairs"]) == 2
