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
    # Only the pair without an evaluation ran: its code, then the checks' own snippet over that code.
    assert fake.calls[0] == "x <- 1\nprint(mean(y))" and len(fake.calls) == 2
    assert "QASYNTH-" in fake.calls[1] and "lintr::lint" in fake.calls[1]
    assert body["title"] == "Batch 7" and body["total"] == 3
    assert body["verdicts"] == {"passed": 1, "no_code": 1, "runtime_error": 1}
    # p-bad's code fails; p-prose is an explain pair whose question shows no code to explain.
    assert body["flagged"] == 2 and body["unevaluated"] == 0
    assert [i["id"] for i in body["items"][:2]] == ["p-prose", "p-bad"]
    first = body["items"][1]
    assert first["flagged"]
    assert first["evaluation"]["answer_line"] == 5
    groups = {(g["task"], g["theme"]): g for g in body["groups"]}
    assert groups[("fix", "regression")]["flagged"] == 1
    # The pair that ran got its task's checks too: the fix question shows no code to fix.
    quality = first["quality"]
    failed = {c["name"] for c in quality["checks"] if not c["passed"]}
    assert quality["flagged"] and {"answer_code_runs", "question_has_code", "question_code_broken"} <= failed
    assert groups[("fix", "regression")]["checks"]["answer_code_runs"] == {
        "passed": 0,
        "failed": 1,
        "pass_rate": 0.0,
    }


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


def checked_pair(pid: str, theme: str, question: str, checks: list[tuple[str, bool, bool]], **prov: object):
    return {
        "id": pid, "task": "generate", "theme": theme, "question": question,
        "answer": "```r\nprint(1)\n```",
        "evaluation": {"verdict": "passed", "flagged": False, "code": "print(1)"},
        "quality": {
            "flagged": any(blocking and not passed for _, passed, blocking in checks),
            "checks": [{"name": n, "passed": p, "blocking": b, "evidence": f"evidence of {n}"} for n, p, b in checks],
        },
        "provenance": {
            "spec_sha256": "s",
            "question": {"provider": "openai", "model": "m", "template_id": "t", "template_sha256": "x",
                         "usage": {}, "latency_ms": 1.0},
            "answer": {"provider": "openai", "model": "m", "template_id": "t", "template_sha256": "x",
                       "usage": {}, "latency_ms": 1.0},
            **prov,
        },
    }  # fmt: skip


def repair_step() -> dict[str, object]:
    step = {"provider": "openai", "model": "m", "template_id": "repair.en.md", "template_sha256": "x",
            "usage": {}, "latency_ms": 1.0}  # fmt: skip
    return {"step": step, "verdict": "passed", "flagged": False}


async def test_report_shows_quality_per_cell_in_json_and_html() -> None:
    ok = [("answer_code_runs", True, True), ("answer_locale", True, True), ("lint_style", True, False)]
    warned = [("answer_code_runs", True, True), ("answer_locale", True, True), ("lint_style", False, False)]
    drifted = [("answer_code_runs", True, True), ("answer_locale", False, True), ("lint_style", True, False)]
    data = [
        checked_pair("p-1", "regression", "How do I fit a line through five points with lm?", ok),
        checked_pair(
            "p-2", "regression", "How do I fit a line through five points with lm?", warned,
            repairs=[repair_step()], top_up=True,
        ),
        checked_pair("p-3", "summaries", "How do I count the levels of a factor?", drifted),
    ]  # fmt: skip
    async with AsyncTestClient(create_app(Settings(), runner=FakeRunner())) as client:
        response = await client.post("/v1/reports", json={"pairs": data, "evaluate": "none"})
        page = (await client.post("/v1/reports?format=html", json={"pairs": data, "evaluate": "none"})).text
    assert response.status_code == 200, response.text
    body = response.json()
    # A warning does not flag a pair; a failed blocking check does, even when its code ran.
    assert body["flagged"] == 1 and body["items"][0]["id"] == "p-3"
    groups = {g["theme"]: g for g in body["groups"]}
    reg = groups["regression"]
    assert reg["checks"]["lint_style"] == {"passed": 1, "failed": 1, "pass_rate": 0.5}
    assert reg["repaired"] == 1 and reg["top_up"] == 1
    assert reg["diversity"] == 1.0  # the two questions are the same
    assert groups["summaries"]["diversity"] is None  # one question has nothing to be compared with
    assert body["checks"]["answer_locale"] == {"passed": 2, "failed": 1, "pass_rate": 0.6667}
    assert body["repaired"] == 1
    assert "Checks by task and theme" in page
    assert "<b>answer_locale</b>: evidence of answer_locale" in page
    assert "<b>lint_style</b> (warning): evidence of lint_style" in page
    assert "title='1 passed, 1 failed'>50%</td>" in page
