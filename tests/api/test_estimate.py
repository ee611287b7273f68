"""POST /v1/estimate: the spec of /v1/generate, priced before anything is spent."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from litestar.testing import AsyncTestClient

from service.app import create_app
from tests.api.test_generate import LONG_CONVENTIONS, grid_spec
from tests.conftest import settings_for
from tests.fakes.llm_server import FakeLLMServer, default_reply, step_of

ROOT = Path(__file__).resolve().parent.parent.parent


def one_call_spec(**overrides: Any) -> dict[str, Any]:
    """One generate cell of one item: the first question call carries no avoid-list, so its prompt
    is exactly what the estimate renders."""
    spec = grid_spec(
        tasks=[{"id": "generate"}],
        themes=[{"id": "regression"}],
        per_cell=1,
        model={"provider": "openai", "name": "gpt-4o-mini", "questions_per_call": 1},
    )
    spec.update(overrides)
    return spec


def step(body: dict[str, Any], name: str) -> dict[str, Any]:
    [found] = [s for s in body["steps"] if s["step"] == name]
    return found


async def test_the_estimate_renders_the_real_prompts_and_calls_no_model(llm_server: FakeLLMServer) -> None:
    spec = one_call_spec()
    async with AsyncTestClient(create_app(settings_for(llm_server))) as client:
        estimate = await client.post("/v1/estimate", json=spec)
        assert estimate.status_code == 200, estimate.text
        assert llm_server.calls == []  # nothing spent
        generated = await client.post("/v1/generate", json=spec)
    body = estimate.json()
    assert body["provider"] == "openai" and body["model"] == "gpt-4o-mini"
    assert body["tokenizer"] == "o200k_base" and body["requested"] == 1
    assert body["price_taken"] == "2025-11-25" and body["price"]["input"] == 0.15
    # The first question call: the same prompt, counted by the same tokenizer as the provider's.
    [first] = [c for c in llm_server.calls if "### Q1" in c.system][:1]
    question = step(body, "question")
    assert question["calls"]["low"] == 1
    assert question["input_tokens"]["low"] == first.usage["prompt_tokens"]
    assert generated.json()["counts"]["calls"] == body["calls"]["low"] == 2
    # A range that holds the low scenario, the expected one and the high one, priced.
    assert body["calls"]["low"] <= body["calls"]["expected"] <= body["calls"]["high"]
    cost = body["cost_usd"]
    assert 0 < cost["low"] <= cost["expected"] <= cost["high"]
    assert abs(sum(s["cost_usd"]["expected"] for s in body["steps"]) - cost["expected"]) < 1e-5
    assert body["cost_per_pair_usd"]["expected"] == round(cost["expected"] / 1, 6)


async def test_the_same_validation_and_problem_details_as_generate(llm_server: FakeLLMServer) -> None:
    bad = [
        (grid_spec(per_cell=-1), "per_cell"),
        (
            grid_spec(cells=[{"task": "nope", "theme": "regression", "count": 1}], per_cell=None),
            "cells[0].task",
        ),
        (grid_spec(prompts={"answer": "no split line"}), "prompts.answer"),
        (grid_spec(budget={"usd": -1}), "budget.usd"),
        (grid_spec(pricing={"input": 1.0}), "pricing"),
    ]
    async with AsyncTestClient(create_app(settings_for(llm_server))) as client:
        for spec, field in bad:
            for route in ("/v1/estimate", "/v1/generate"):
                response = await client.post(route, json=spec)
                assert response.status_code == 400, (route, field, response.text)
                problem = response.json()
                assert problem["field"].startswith(field), (route, problem)
    assert llm_server.calls == []


async def test_a_short_prefix_is_said_not_to_be_cached_and_a_long_one_is(llm_server: FakeLLMServer) -> None:
    async with AsyncTestClient(create_app(settings_for(llm_server))) as client:
        short = (await client.post("/v1/estimate", json=grid_spec())).json()
        long = (await client.post("/v1/estimate", json=grid_spec(conventions=LONG_CONVENTIONS))).json()
        defaults = (
            await client.post("/v1/estimate", json={"per_cell": 1, "model": {"provider": "openai"}})
        ).json()
        ready = (await client.get("/ready")).json()
    notes = {(n["task"], n["step"]): n for n in short["cache"]}
    answer = notes[("explain", "answer")]
    assert not answer["cacheable"] and answer["minimum_tokens"] == 1024
    assert answer["prefix_tokens"] < 1024
    assert f"{1024 - answer['prefix_tokens']} more tokens" in answer["detail"]
    assert short["cached_tokens"]["expected"] == 0
    notes = {(n["task"], n["step"]): n for n in long["cache"]}
    assert notes[("explain", "answer")]["cacheable"] and notes[("generate", "answer")]["cacheable"]
    assert long["cached_tokens"]["expected"] > 0
    # /ready says the same of the built-in prompts, per locale, for the default provider.
    en = {(n["task"], n["step"]): n for n in ready["prompt_cache"]["en"]}
    builtin = {(n["task"], n["step"]): n for n in defaults["cache"]}
    assert en == builtin and not en[("explain", "answer")]["cacheable"]
    ja = {(n["task"], n["step"]): n for n in ready["prompt_cache"]["ja"]}
    assert ja[("explain", "answer")]["prefix_tokens"] > en[("explain", "answer")]["prefix_tokens"]
    assert set(ready["prompt_cache"]) == {"en", "ja"}


async def test_anthropic_is_calibrated_by_count_tokens_and_prices_cache_writes(
    llm_server: FakeLLMServer,
) -> None:
    spec = grid_spec(
        conventions=LONG_CONVENTIONS, model={"provider": "anthropic", "name": "claude-sonnet-4-5"}
    )
    async with AsyncTestClient(create_app(settings_for(llm_server))) as client:
        body = (await client.post("/v1/estimate", json=spec)).json()
    assert body["tokenizer"].startswith("o200k_base, calibrated by the anthropic tokenizer")
    assert body["cache_write_tokens"]["expected"] > 0 and body["cached_tokens"]["expected"] > 0
    # Sonnet 4.5: $3 in, $0.30 cache read, $3.75 cache write, $15 out per million tokens.
    tokens = {
        k: body[k]["expected"]
        for k in ("input_tokens", "cached_tokens", "cache_write_tokens", "output_tokens")
    }
    fresh = tokens["input_tokens"] - tokens["cached_tokens"] - tokens["cache_write_tokens"]
    dollars = (
        fresh * 3
        + tokens["cached_tokens"] * 0.3
        + tokens["cache_write_tokens"] * 3.75
        + tokens["output_tokens"] * 15
    ) / 1e6
    assert abs(body["cost_usd"]["expected"] - dollars) < 1e-4


async def test_unknown_models_have_no_price_and_a_requests_pricing_is_used(llm_server: FakeLLMServer) -> None:
    async with AsyncTestClient(create_app(settings_for(llm_server))) as client:
        unknown = (
            await client.post("/v1/estimate", json=one_call_spec(model={"name": "my-vllm-model"}))
        ).json()
        priced = (
            await client.post(
                "/v1/estimate",
                json=one_call_spec(model={"name": "my-vllm-model"}, pricing={"input": 1.0, "output": 2.0}),
            )
        ).json()
        local = (await client.post("/v1/estimate", json=one_call_spec(model={"provider": "local"}))).json()
    assert unknown["cost_usd"] is None and unknown["price"] is None and unknown["input_tokens"]["low"] > 0
    assert priced["price_taken"] == "request"
    expected = (priced["input_tokens"]["expected"] + 2 * priced["output_tokens"]["expected"]) / 1e6
    assert abs(priced["cost_usd"]["expected"] - expected) < 1e-5
    # The embedded model costs nothing; unloaded, it is counted by o200k_base and says so.
    assert local["cost_usd"] == {"low": 0.0, "expected": 0.0, "high": 0.0}
    assert "approximation" in local["tokenizer"]


def answer_twice_as_long(system: str, user: str) -> str:
    """The model's replies: usable, and answers about twice the length of the built-in example's."""
    reply = default_reply(system, user)
    return reply if step_of(system, user) != "answer" else f"{reply}\n\n{reply}"


async def test_an_earlier_jobs_counts_calibrate_calls_and_reply_lengths() -> None:
    """A job estimated with its own counts comes out as it ran; a smaller one of the same model
    calibrates a larger one."""
    small = grid_spec(
        tasks=[{"id": "explain"}, {"id": "generate"}],
        themes=[{"id": "regression"}],
        per_cell=2,
        model={"provider": "openai", "name": "gpt-4o-mini", "questions_per_call": 2},
    )
    large = {**small, "themes": [{"id": "regression"}, {"id": "mean-variance"}], "per_cell": 4}
    keys = ("calls", "input_tokens", "output_tokens")
    with FakeLLMServer(reply=answer_twice_as_long) as server:
        async with AsyncTestClient(create_app(settings_for(server))) as client:
            ran = (await client.post("/v1/generate", json=small)).json()
            plain = (await client.post("/v1/estimate", json=small)).json()
            again = await client.post("/v1/estimate", json={**small, "observed": ran["counts"]})
            assert again.status_code == 200, again.text
            itself = again.json()
            ahead = (await client.post("/v1/estimate", json={**large, "observed": ran["counts"]})).json()
            big = (await client.post("/v1/generate", json=large)).json()
    actual = {"calls": ran["counts"]["calls"], **{k: ran["usage"][k] for k in keys[1:]}}
    for key in keys:
        assert abs(itself[key]["expected"] - actual[key]) <= 2, (key, itself[key], actual[key])
        assert itself[key]["low"] <= itself[key]["expected"] <= itself[key]["high"]
    # Without it, the answers' length is the example's: half of what this model writes.
    assert plain["output_tokens"]["expected"] < 0.8 * actual["output_tokens"]
    assert set(itself["calibration"]) == {"explain", "generate"}
    assert "replies" in itself["calibration"]["generate"]
    # Twice the cells, twice the items each: the calibrated figures within a tenth of the real ones.
    real = {"calls": big["counts"]["calls"], **{k: big["usage"][k] for k in keys[1:]}}
    for key in keys:
        assert abs(ahead[key]["expected"] / real[key] - 1) < 0.1, (key, ahead[key], real[key])


async def test_observed_counts_are_checked_like_the_rest_of_the_body(llm_server: FakeLLMServer) -> None:
    async with AsyncTestClient(create_app(settings_for(llm_server))) as client:
        response = await client.post("/v1/estimate", json={**one_call_spec(), "observed": {"cells": "x"}})
        generate = await client.post("/v1/generate", json={**one_call_spec(), "observed": {}})
    assert response.status_code == 400 and response.json()["field"] == "observed.cells"
    assert generate.status_code == 400 and "observed" in generate.json()["detail"]


async def test_the_command_line_reads_an_earlier_result_as_the_route_does(tmp_path: Path) -> None:
    spec = grid_spec(
        tasks=[{"id": "generate"}],
        themes=[{"id": "regression"}],
        per_cell=2,
        model={"provider": "openai", "name": "gpt-4o-mini", "questions_per_call": 2},
    )
    with FakeLLMServer(reply=answer_twice_as_long) as server:
        async with AsyncTestClient(create_app(settings_for(server))) as client:
            ran = (await client.post("/v1/generate", json=spec)).json()
            route = (await client.post("/v1/estimate", json={**spec, "observed": ran["counts"]})).json()
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    (tmp_path / "result.json").write_text(json.dumps(ran))
    (tmp_path / "broken.json").write_text(json.dumps({"counts": {"cells": [{"task": "generate"}]}}))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OPENAI_API_KEY": "", "ANTHROPIC_API_KEY": ""}

    def estimate(*args: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "service", "estimate", str(tmp_path / "spec.json"), *args]
        return subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)

    done = estimate("--json", "--observed", str(tmp_path / "result.json"))
    assert done.returncode == 0, done.stderr
    printed = json.loads(done.stdout)
    assert printed["calibration"] == route["calibration"] and "generate" in printed["calibration"]
    assert printed["output_tokens"] == route["output_tokens"]
    assert printed["output_tokens"]["expected"] == ran["usage"]["output_tokens"]
    table = estimate("--observed", str(tmp_path / "result.json"))
    assert table.returncode == 0 and "observed generate: 2 items in 1 earlier cells" in table.stdout
    broken = estimate("--observed", str(tmp_path / "broken.json"))
    assert broken.returncode == 1 and "broken.json" in broken.stderr
    assert "missing required field `theme` - at `$.cells[0]`" in broken.stderr


async def test_outlandish_observed_counts_give_an_answer_not_a_hang(llm_server: FakeLLMServer) -> None:
    huge = {
        "task": "generate",
        "theme": "no-such-theme",
        "requested": 10**15,
        "calls": 10**16,
        "repair_calls": -5,
        "usage": {"input_tokens": -1, "output_tokens": 10**18},
    }
    unknown = {"task": "no-such-task", "theme": "regression", "requested": 3, "calls": 9}
    async with AsyncTestClient(create_app(settings_for(llm_server)), timeout=30) as client:
        response = await client.post(
            "/v1/estimate", json={**one_call_spec(), "observed": {"cells": [huge, unknown]}}
        )
    assert response.status_code == 200, response.text
    body = response.json()
    assert list(body["calibration"]) == ["generate"]  # the unknown task is left out
    assert "0 repairs" in body["calibration"]["generate"]
    # Negative tokens calibrate nothing; the rest is large and finite.
    assert body["input_tokens"]["low"] <= body["input_tokens"]["expected"] <= body["input_tokens"]["high"]
    assert body["output_tokens"]["expected"] > 0 and body["calls"]["expected"] >= 1
