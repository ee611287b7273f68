"""POST /v1/dedup: results, RFC 9457 errors naming the field, and an event loop that stays free."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from litestar.testing import AsyncTestClient

from service.app import create_app
from service.settings import Settings
from service.wire.dedup import MAX_DEDUP_ITEMS, MAX_DEDUP_TEXT
from tests.conftest import serve

CORPUS = Path(__file__).resolve().parent.parent / "data" / "r_help_corpus.jsonl"


@pytest.fixture
async def client() -> AsyncIterator[AsyncTestClient[Any]]:
    async with AsyncTestClient(app=create_app(Settings(sandbox="none"))) as c:
        yield c


async def test_one_result_per_item_in_order_against_history(client: AsyncTestClient[Any]) -> None:
    body = {
        "existing": [{"id": "old-1", "text": "Compute the mean of a numeric vector in R."}],
        "items": [
            {"id": "q1", "text": "compute the mean of a numeric vector in R"},
            {"id": "q2", "text": "Fit a linear model with lm and print its summary."},
            {"id": "q3", "text": "fit a linear model with lm() and print the summary"},
            {"id": "q4", "text": "Rで平均と分散を計算する方法を教えてください。"},
            {"id": "q5", "text": "Rを使って平均と分散を計算する方法を教えて。"},
        ],
    }
    r = await client.post("/v1/dedup", json=body)
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert [x["id"] for x in results] == ["q1", "q2", "q3", "q4", "q5"]
    assert [x["kept"] for x in results] == [False, True, False, True, False]
    assert [x["nearest_id"] for x in results] == ["old-1", "old-1", "q2", "old-1", "q4"]
    assert results[0]["score"] == 1.0
    assert results[1]["score"] < 0.2  # only "a" in common
    assert results[2]["score"] == 0.9
    assert results[3]["score"] < 0.2  # Japanese against English: only "r" in common
    assert results[4]["score"] > 0.7


async def test_threshold_and_tokenizer_are_honoured(client: AsyncTestClient[Any]) -> None:
    items = [{"id": "a", "text": "Rで平均を計算する"}, {"id": "b", "text": "Rでヒストグラムを描く"}]
    rouge = (await client.post("/v1/dedup", json={"items": items, "tokenizer": "rouge"})).json()["results"]
    assert rouge[1] == {"id": "b", "kept": False, "nearest_id": "a", "score": 1.0}
    loose = await client.post("/v1/dedup", json={"items": items, "tokenizer": "rouge", "threshold": 1.0})
    assert loose.json()["results"][1]["kept"] is True
    auto = (await client.post("/v1/dedup", json={"items": items})).json()["results"]
    assert auto[1]["kept"] is True and auto[1]["score"] < 0.7


@pytest.mark.parametrize(
    ("body", "field", "words"),
    [
        ({"items": []}, "items", "length"),
        ({"items": [{"id": "a", "text": ""}]}, "items[0].text", "length"),
        (
            {"items": [{"id": "a", "text": "x"}, {"id": "b", "text": " \n\t"}]},
            "items[1].text",
            "matching regex",
        ),
        (
            {"items": [{"id": "a", "text": "x"}], "existing": [{"id": "e", "text": "  "}]},
            "existing[0].text",
            "matching regex",
        ),
        ({"items": [{"id": "a", "text": "x" * (MAX_DEDUP_TEXT + 1)}]}, "items[0].text", "length"),
        ({"items": [{"id": "a", "text": "x"}], "threshold": 1.5}, "threshold", "<= 1.0"),
        ({"items": [{"id": "a", "text": "x"}], "threshold": -0.1}, "threshold", ">= 0.0"),
        ({"items": [{"id": "a", "text": "x"}], "tokenizer": "words"}, "tokenizer", "words"),
        (
            {"items": [{"id": "a", "text": "x"}, {"id": "b", "text": "y"}, {"id": "a", "text": "z"}]},
            "items[2].id",
            "0",
        ),
        (
            {"items": [{"id": "a", "text": "x"}], "existing": [{"id": "a", "text": "y"}]},
            "items[0].id",
            "existing[0]",
        ),
        (
            {"items": [{"id": "a", "text": "x"}], "existing": [{"id": "e", "text": "y"}] * 2},
            "existing[1].id",
            "[0]",
        ),
        ({"items": [{"id": "has space", "text": "x"}]}, "items[0].id", "regex"),
        ({"items": [{"id": "a", "text": "x", "extra": 1}]}, "items[0]", "extra"),
    ],
)
async def test_bad_input_is_a_400_naming_the_field(
    client: AsyncTestClient[Any], body: dict[str, Any], field: str, words: str
) -> None:
    r = await client.post("/v1/dedup", json=body)
    assert r.status_code == 400, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    problem = r.json()
    assert problem["field"].startswith(field), problem
    assert words in problem["detail"], problem


async def test_too_many_items_is_a_400(client: AsyncTestClient[Any]) -> None:
    items = [{"id": f"i{i}", "text": "x"} for i in range(MAX_DEDUP_ITEMS + 1)]
    r = await client.post("/v1/dedup", json={"items": items})
    assert r.status_code == 400
    assert r.json()["field"] == "items"


async def test_too_many_characters_in_total_is_a_400(client: AsyncTestClient[Any]) -> None:
    text = "mean " * 3_999
    items = [{"id": f"i{i}", "text": text} for i in range(650)]
    existing = [{"id": f"e{i}", "text": text} for i in range(650)]  # 26 million characters, a 26 MB body
    r = await client.post("/v1/dedup", json={"items": items, "existing": existing})
    assert r.status_code == 400
    assert r.json()["field"] == "items"
    assert "characters" in r.json()["detail"]


@pytest.fixture
def server() -> Iterator[str]:
    with serve(create_app(Settings(sandbox="none"))) as url:
        yield url


@pytest.mark.slow
async def test_health_answers_while_a_large_batch_is_deduplicated(server: str) -> None:
    with CORPUS.open(encoding="utf-8") as f:
        texts = [json.loads(line)["text"] for line in f]
    items = [{"id": f"c{i}", "text": t} for i, t in enumerate(texts)]
    async with httpx.AsyncClient(base_url=server, timeout=120) as http:
        started = time.monotonic()
        job = asyncio.create_task(http.post("/v1/dedup", json={"items": items, "tokenizer": "rouge"}))
        await asyncio.sleep(0.3)
        health_times = []
        while not job.done():
            t0 = time.monotonic()
            r = await http.get("/health")
            assert r.status_code == 200
            health_times.append(time.monotonic() - t0)
            await asyncio.sleep(0.05)
        response = await job
        elapsed = time.monotonic() - started
    assert response.status_code == 200
    assert len(response.json()["results"]) == len(items)
    assert health_times, f"the batch finished in {elapsed:.2f} s, before /health was asked"
    assert max(health_times) < elapsed / 2


async def test_50000_instructions_of_codealpaca_size_fit_in_one_request(client: AsyncTestClient[Any]) -> None:
    """CodeAlpaca's instruction + input is 143 characters on average and 340 at the 99th percentile:
    50,000 items of 340 characters (17 million, a 19 MB body) are one request. They differ only in a
    number, so all but the first are near-duplicates and the filter itself is quick."""
    base = "Write an R function that takes a numeric vector and returns its trimmed mean, median and "
    base += "interquartile range as a named list, ignoring missing values; then apply it to each column "
    base += "of the data frame below and print the results rounded to two decimals. Input: df <- data.frame("
    items = [{"id": f"ca-{i}", "text": f"{base}x = c({i}, 2, 3))".ljust(340, ".")} for i in range(50_000)]
    body = {"items": items, "tokenizer": "rouge"}
    assert len(json.dumps(body)) > 18_000_000
    r = await client.post("/v1/dedup", json=body)
    assert r.status_code == 200, r.text[:500]
    results = r.json()["results"]
    assert len(results) == 50_000 and results[0]["kept"] is True
    assert sum(x["kept"] for x in results) == 1 and results[-1]["nearest_id"] == "ca-0"
