"""Cost in every result: per step, per pair, per cell, per job, and per returned pair in reports."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from litestar.testing import AsyncTestClient

from service.app import create_app
from service.pricing import PricingError
from service.settings import Settings
from tests.api.test_generate import assert_accounted, grid_spec
from tests.conftest import settings_for
from tests.fakes.llm_server import FakeLLMServer


def dollars(usage: dict[str, int], inp: float, cached: float, write: float, out: float) -> float:
    fresh = usage["input_tokens"] - usage["cached_tokens"] - usage["cache_write_tokens"]
    return (
        fresh * inp
        + usage["cached_tokens"] * cached
        + usage["cache_write_tokens"] * write
        + usage["output_tokens"] * out
    ) / 1e6


def steps_of(pair: dict[str, Any]) -> list[dict[str, Any]]:
    prov = pair["provenance"]
    steps = [prov["answer"], *(r["step"] for r in prov["repairs"])]
    if prov["snippet"]:
        steps.append(prov["snippet"])
    if prov["bug"] and prov["bug"]["step"]:
        steps.append(prov["bug"]["step"])
    return steps


async def test_every_result_carries_its_cost_at_the_table_price(llm_server: FakeLLMServer) -> None:
    spec = grid_spec(model={"provider": "openai", "name": "gpt-4o-mini-2024-07-18", "questions_per_call": 2})
    async with AsyncTestClient(create_app(settings_for(llm_server))) as client:
        response = await client.post("/v1/generate", json=spec)
        assert response.status_code == 200, response.text
        body = response.json()
        report = await client.post("/v1/reports", json={"pairs": body["pairs"], "evaluate": "none"})
        html = await client.post("/v1/reports?format=html", json={"pairs": body["pairs"], "evaluate": "none"})
    assert_accounted(body)
    counts = body["counts"]
    # gpt-4o-mini: $0.15 / $0.075 / $0.60 per million tokens (the shipped table, 2025-11-25).
    assert counts["price_taken"] == "2025-11-25"
    expected = dollars(body["usage"], 0.15, 0.075, 0.15, 0.60)
    assert counts["cost_usd"] == round(expected, 6) > 0
    assert counts["cost_per_returned_pair_usd"] == round(counts["cost_usd"] / counts["returned"], 6)
    assert abs(sum(c["cost_usd"] for c in counts["cells"]) - counts["cost_usd"]) < 1e-5
    for cell in counts["cells"]:
        assert cell["cost_usd"] == round(dollars(cell["usage"], 0.15, 0.075, 0.15, 0.60), 6)
        assert cell["cost_per_returned_pair_usd"] == round(cell["cost_usd"] / cell["returned"], 6)
    for pair in body["pairs"]:
        question = pair["provenance"]["question"]
        for step in [question, *steps_of(pair)]:
            assert step["cost_usd"] == round(dollars(step["usage"], 0.15, 0.075, 0.15, 0.60), 6)
        own = question["cost_usd"] / question["batch_size"] + sum(s["cost_usd"] for s in steps_of(pair))
        assert abs(pair["provenance"]["cost_usd"] - own) < 2e-6
    # The report sums the pairs' own calls.
    assert report.status_code == 200, report.text
    summary = report.json()
    total = sum(p["provenance"]["cost_usd"] for p in body["pairs"])
    assert abs(summary["cost_usd"] - total) < 1e-5
    # Both figures are rounded to the micro-dollar from the same unrounded sum.
    assert abs(summary["cost_per_pair_usd"] - summary["cost_usd"] / len(body["pairs"])) <= 1e-6
    assert f"${summary['cost_per_pair_usd']:.4f}" in html.text


async def test_a_requests_pricing_wins_and_an_unknown_model_costs_null(llm_server: FakeLLMServer) -> None:
    priced = grid_spec(
        per_cell=1,
        model={"provider": "anthropic", "name": "my-claude"},
        pricing={"input": 10.0, "output": 20.0, "cached_input": 1.0, "cache_write": 12.5},
    )
    unknown = grid_spec(per_cell=1, model={"provider": "openai", "name": "some-local-vllm-model"})
    async with AsyncTestClient(create_app(settings_for(llm_server))) as client:
        a = (await client.post("/v1/generate", json=priced)).json()
        b = (await client.post("/v1/generate", json=unknown)).json()
    assert a["counts"]["price_taken"] == "request"
    assert a["counts"]["cost_usd"] == round(dollars(a["usage"], 10.0, 1.0, 12.5, 20.0), 6)
    assert b["counts"]["cost_usd"] is None and b["counts"]["price_taken"] is None
    assert all(p["provenance"]["cost_usd"] is None for p in b["pairs"])
    assert b["counts"]["cost_per_returned_pair_usd"] is None


async def test_an_operators_price_file_adds_to_the_table(llm_server: FakeLLMServer, tmp_path: Path) -> None:
    prices = tmp_path / "prices.toml"
    prices.write_text(
        'taken = "2026-01-02"\n[models.fake-gpt]\nprovider = "openai"\ninput = 1.0\noutput = 4.0\n'
        "cached_input = 0.5\n",
        encoding="utf-8",
    )
    settings = Settings.from_env({"QASYNTH_PRICES_FILE": str(prices)})
    assert settings.prices_file == str(prices)
    app = create_app(settings_for(llm_server, prices_file=str(prices)))
    async with AsyncTestClient(app) as client:
        body = (await client.post("/v1/generate", json=grid_spec(per_cell=1))).json()
        mini = (await client.post("/v1/estimate", json=grid_spec(model={"name": "gpt-4o-mini"}))).json()
    assert body["counts"]["price_taken"] == "2026-01-02"
    # cache_write left out: it is billed like input.
    assert body["counts"]["cost_usd"] == round(dollars(body["usage"], 1.0, 0.5, 1.0, 4.0), 6)
    assert mini["price"]["input"] == 0.15  # the shipped entries stay


def test_a_broken_price_file_stops_the_app_with_its_name(llm_server: FakeLLMServer, tmp_path: Path) -> None:
    broken = tmp_path / "broken.toml"
    broken.write_text('[models.x]\nprovider = "openai"\ninput = "cheap"\noutput = 1\n', encoding="utf-8")
    with pytest.raises(PricingError, match=r"broken\.toml"):
        create_app(settings_for(llm_server, prices_file=str(broken)))
