"""A job-wide budget in dollars or tokens: the job stops before the call that would pass it."""

from __future__ import annotations

import json
from typing import Any

from litestar.testing import AsyncTestClient

from service.app import create_app
from tests.api.test_generate import assert_accounted, grid_spec
from tests.conftest import settings_for
from tests.fakes.llm_server import FakeLLMServer

MODEL = {"provider": "openai", "name": "gpt-4o-mini", "questions_per_call": 2, "max_tokens": 600}


def billed_tokens(server: FakeLLMServer) -> int:
    return sum(c.usage["prompt_tokens"] + c.usage["completion_tokens"] for c in server.calls if c.usage)


async def test_a_token_budget_stops_the_job_cleanly_and_accounts_for_everything(
    llm_server: FakeLLMServer,
) -> None:
    spec = grid_spec(per_cell=2, model=MODEL, budget={"tokens": 12_000})
    async with AsyncTestClient(create_app(settings_for(llm_server))) as client:
        response = await client.post("/v1/generate", json=spec)
    assert response.status_code == 200, response.text
    body = response.json()
    assert_accounted(body)
    counts = body["counts"]
    assert counts["budget_exhausted"] is True
    # Finished pairs come back; the rest fail with the reason, and nothing passed the budget.
    assert 0 < len(body["pairs"]) < 12
    reasons = {f["reason"] for f in body["failed"]}
    assert reasons == {"budget_exhausted"}
    assert len(body["pairs"]) + len(body["failed"]) == 12
    used = body["usage"]["input_tokens"] + body["usage"]["output_tokens"]
    assert used == billed_tokens(llm_server) <= 12_000
    # Every call the provider saw is counted in the job's calls.
    assert counts["calls"] == len(llm_server.calls)


async def test_a_dollar_budget_is_held_at_the_table_price(llm_server: FakeLLMServer) -> None:
    spec = grid_spec(per_cell=2, model=MODEL, budget={"usd": 0.0015})
    async with AsyncTestClient(create_app(settings_for(llm_server))) as client:
        body = (await client.post("/v1/generate", json=spec)).json()
    assert_accounted(body)
    assert body["counts"]["budget_exhausted"] is True
    assert 0 < body["counts"]["cost_usd"] <= 0.0015
    assert {f["reason"] for f in body["failed"]} == {"budget_exhausted"}
    assert all("budget" in f["detail"] for f in body["failed"])


async def test_the_stream_says_the_budget_ran_out(llm_server: FakeLLMServer) -> None:
    spec = grid_spec(per_cell=2, model=MODEL, budget={"tokens": 12_000})
    async with AsyncTestClient(create_app(settings_for(llm_server))) as client:
        response = await client.post("/v1/generate", json=spec, headers={"accept": "application/x-ndjson"})
    events: list[dict[str, Any]] = [json.loads(line) for line in response.text.splitlines() if line]
    kinds = [e["event"] for e in events]
    assert kinds.count("budget_exhausted") == 1 and kinds[-1] == "done"
    stop = events[kinds.index("budget_exhausted")]
    assert stop["limit"] == "tokens" and stop["spent_tokens"] <= 12_000
    assert "12000" in stop["detail"]
    failed = [e["item"] for e in events if e["event"] == "failed"]
    pairs = [e for e in events if e["event"] == "pair"]
    assert failed and all(f["reason"] == "budget_exhausted" for f in failed)
    assert len(pairs) + len(failed) == 12
    assert events[-1]["counts"]["budget_exhausted"] is True


async def test_a_budget_large_enough_changes_nothing(llm_server: FakeLLMServer) -> None:
    spec = grid_spec(per_cell=1, model=MODEL, budget={"usd": 5.0, "tokens": 10_000_000})
    async with AsyncTestClient(create_app(settings_for(llm_server))) as client:
        body = (await client.post("/v1/generate", json=spec)).json()
    assert len(body["pairs"]) == 6 and body["failed"] == []
    assert body["counts"]["budget_exhausted"] is False


async def test_a_dollar_budget_needs_a_price(llm_server: FakeLLMServer) -> None:
    spec = grid_spec(per_cell=1, model={"provider": "openai", "name": "my-vllm-model"}, budget={"usd": 1.0})
    async with AsyncTestClient(create_app(settings_for(llm_server))) as client:
        response = await client.post("/v1/generate", json=spec)
        priced = await client.post("/v1/generate", json={**spec, "pricing": {"input": 0.1, "output": 0.2}})
    assert response.status_code == 400 and response.json()["field"] == "budget.usd"
    assert "pricing" in response.json()["detail"]
    assert priced.status_code == 200 and priced.json()["counts"]["cost_usd"] > 0
