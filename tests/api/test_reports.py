"""POST /v1/reports: JSON by default, one self-contained HTML page on request."""

from __future__ import annotations

import re

from litestar.testing import AsyncTestClient

from evaluator import FakeRunner, RunResult
from service.app import create_app
from service.settings import Settings


def pairs() -> list[dict[str, object]]:
    return [
        {
            "id": "p-ok", "task": "generate", "theme": "regression", "question": "Fit y on x?",
            "answer": "```r\nfit <- lm(y ~ x, data.frame(x = 1:5, y = c(2, 4, 5, 4, 5)))\nprint(coef(fit))\n```",
            "evaluation": {"verdict": "passed", "flagged": False, "code": "fit <- lm(...)"},
        },
        {
            "id": "p-bad", "task": "fix", "theme": "regression", "question": "Why <b>does</b> this fail?",
            "answer": "Try:\n\n```r\nx <- 1\nprint(mean(y))\n```",
        },
        {"id": "p-prose", "task": "explain", "theme": "mean-variance", "question": "What is var?",
         "answer": "A variance."},
    ]  # fmt: skip


def runner() -> FakeRunner:
    return FakeRunner(
        lambda code: RunResult(
            verdict="runtime_error", message="object 'y' not found", failing_call="mean(y)", line=2
        )
    )


async def test_json_report() -> None:
    fake = runner()
    async with AsyncTestClient(create_app(Settings(), runner=fake)) as client:
        response = await client.post("/v1/reports", json={"pairs": pairs(), "title": "Batch 7"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert fake.calls == ["x <- 1\nprint(mean(y))"]  # only the pair without an evaluation ran
    assert body["title"] == "Batch 7" and body["total"] == 3
    assert body["verdicts"] == {"passed": 1, "no_code": 1, "runtime_error": 1}
    assert body["flagged"] == 1 and body["unevaluated"] == 0
    first = body["items"][0]
    assert first["id"] == "p-bad" and first["flagged"]
    assert first["evaluation"]["answer_line"] == 5
    groups = {(g["task"], g["theme"]): g for g in body["groups"]}
    assert groups[("fix", "regression")]["flagged"] == 1


async def test_html_report_is_self_contained_and_escaped() -> None:
    async with AsyncTestClient(create_app(Settings(), runner=runner())) as client:
        by_accept = await client.post("/v1/reports", json={"pairs": pairs()}, headers={"accept": "text/html"})
        by_query = await client.post("/v1/reports?format=html", json={"pairs": pairs()})
    for response in (by_accept, by_query):
        assert response.status_code == 200, response.text
        assert response.headers["content-type"].startswith("text/html")
    page = by_accept.text
    assert page.startswith("<!DOCTYPE html>")
    assert "default-src 'none'" in page
    assert not re.search(r"<script|<link|<img|@import|url\(|src=", page)
    assert "Why &lt;b&gt;does&lt;/b&gt; this fail?" in page
    assert 'class="ln hit" data-n="2"' in page


async def test_no_evaluation_needs_no_sandbox() -> None:
    body = {"pairs": pairs(), "evaluate": "none"}
    async with AsyncTestClient(create_app(Settings(sandbox="bwrap"))) as client:
        response = await client.post("/v1/reports", json=body)
    assert response.status_code == 200
    assert response.json()["unevaluated"] == 2


async def test_bad_request() -> None:
    async with AsyncTestClient(create_app(Settings(), runner=FakeRunner())) as client:
        empty = await client.post("/v1/reports", json={"pairs": []})
        bad_mode = await client.post("/v1/reports", json={"pairs": pairs(), "evaluate": "sometimes"})
        bad_format = await client.post("/v1/reports?format=pdf", json={"pairs": pairs()})
    assert empty.status_code == 400 and empty.json()["field"] == "pairs"
    assert bad_mode.status_code == 400 and bad_mode.json()["field"] == "evaluate"
    assert bad_format.status_code == 400
