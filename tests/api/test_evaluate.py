"""POST /v1/evaluate: through the app with a scripted runner, and once end to end on real R in bwrap."""

from __future__ import annotations

import shutil

import pytest
from litestar.testing import AsyncTestClient

from evaluator import FakeRunner, RunResult
from service.app import create_app
from service.settings import Settings
from tests.conftest import settings_for
from tests.fakes.llm_server import FakeLLMServer


def app_with(runner: FakeRunner | None = None, **settings: object):  # type: ignore[no-untyped-def]
    return create_app(Settings(**settings), runner=runner)  # type: ignore[arg-type]


async def test_pairs_and_snippets_with_verdicts_and_evidence() -> None:
    def run(code: str) -> RunResult:
        if "stop" in code:
            return RunResult(verdict="runtime_error", message="boom", failing_call='stop("boom")', line=2)
        return RunResult(verdict="passed", stdout="[1] 3\n", stdout_bytes=6, duration_ms=4.0)

    runner = FakeRunner(run)
    body = {
        "pairs": [
            {"id": "bad", "task": "fix", "theme": "t", "question": "q?",
             "answer": "Fixed:\n```r\nx <- 1\nstop('boom')\n```"},
            {"id": "prose", "task": "explain", "theme": "t", "question": "q?", "answer": "It computes a mean."},
        ],
        "snippets": [{"id": "ok", "code": "print(1 + 2)"}],
    }  # fmt: skip
    async with AsyncTestClient(app_with(runner)) as client:
        response = await client.post("/v1/evaluate", json=body)
    assert response.status_code == 200, response.text
    data = response.json()
    assert [p["id"] for p in data["pairs"]] == ["bad", "prose"]
    bad, prose = (p["evaluation"] for p in data["pairs"])
    ok = data["snippets"][0]["evaluation"]
    assert ok["verdict"] == "passed" and ok["stdout"] == "[1] 3\n" and not ok["flagged"]
    assert bad["verdict"] == "runtime_error" and bad["flagged"]
    assert bad["message"] == "boom" and bad["line"] == 2 and bad["answer_line"] == 4
    assert prose["verdict"] == "no_code" and not prose["flagged"]
    assert data["counts"] == {"no_code": 1, "passed": 1, "runtime_error": 1} and data["flagged"] == 1


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "pairs"),
        ({"pairs": [], "snippets": []}, "pairs"),
        ({"snippets": [{"id": "a"}]}, "snippets[0]"),
        ({"snippets": [{"id": "a", "code": "1", "limits": {}}]}, "snippets[0]"),
        ({"snippets": [{"id": "bad id!", "code": "1"}]}, "snippets[0].id"),
        ({"pairs": [{"id": "a", "answer": "x"}]}, "pairs[0]"),
    ],
)
async def test_bad_requests_name_the_field(body: dict[str, object], field: str) -> None:
    runner = FakeRunner()
    async with AsyncTestClient(app_with(runner)) as client:
        response = await client.post("/v1/evaluate", json=body)
    assert response.status_code == 400, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    assert response.json()["field"] == field
    assert runner.calls == []


async def test_sandbox_unavailable_is_a_503_that_says_why() -> None:
    async with AsyncTestClient(app_with(sandbox="bwrap")) as client:
        import evaluator._sandbox as sandbox_module

        original = sandbox_module.shutil.which
        sandbox_module.shutil.which = lambda name: None  # type: ignore[assignment]
        try:
            response = await client.post("/v1/evaluate", json={"snippets": [{"id": "a", "code": "1"}]})
        finally:
            sandbox_module.shutil.which = original
    assert response.status_code == 503, response.text
    problem = response.json()
    assert problem["title"] == "R sandbox unavailable"
    assert "apt-get install r-base-core bubblewrap" in problem["detail"]


@pytest.mark.sandbox
@pytest.mark.skipif(
    shutil.which("bwrap") is None or shutil.which("R") is None, reason="needs R and bubblewrap"
)
async def test_end_to_end_in_the_real_sandbox() -> None:
    answer = "```r\nx <- c(5.1, 4.9, 5.3)\nprint(t.test(x, mu = 5)$p.value > 0)\n```"
    body = {
        "pairs": [{"id": "t", "task": "generate", "theme": "tests", "question": "t-test?", "answer": answer}],
        "snippets": [
            {"id": "e", "code": "x <- 1\ny <- log(-x)\nstop('nope')"},
            {"id": "p", "code": "x <- (1 +"},
        ],
    }
    async with AsyncTestClient(app_with(sandbox="bwrap", eval_workers=2)) as client:
        response = await client.post("/v1/evaluate", json=body)
        ready = await client.get("/ready")
    assert response.status_code == 200, response.text
    data = response.json()
    t = data["pairs"][0]["evaluation"]
    e, p = (r["evaluation"] for r in data["snippets"])
    assert t["verdict"] == "passed" and t["stdout"] == "[1] TRUE\n"
    assert (
        e["verdict"] == "runtime_error" and e["line"] == 3 and e["warnings"] == ["In log(-x): NaNs produced"]
    )
    assert p["verdict"] == "parse_error"
    assert ready.json()["sandbox"]["mode"] == "bwrap" and ready.json()["sandbox"]["status"] == "ok"


def generate_spec(on_failure: str) -> dict[str, object]:
    return {
        "tasks": [{"id": "generate"}],
        "themes": [{"id": "mean-variance"}],
        "per_cell": 3,
        "model": {"provider": "openai", "questions_per_call": 3},
        "evaluation": {"enabled": True, "on_failure": on_failure},
    }


@pytest.mark.sandbox
@pytest.mark.skipif(
    shutil.which("bwrap") is None or shutil.which("R") is None, reason="needs R and bubblewrap"
)
async def test_generate_evaluates_every_answer_in_the_real_sandbox(llm_server: FakeLLMServer) -> None:
    app = create_app(settings_for(llm_server, sandbox="bwrap", eval_workers=1))
    async with AsyncTestClient(app) as client:
        response = await client.post("/v1/generate", json=generate_spec("flag"))
    assert response.status_code == 200, response.text
    pairs = response.json()["pairs"]
    assert len(pairs) == 3
    for pair in pairs:
        ev = pair["evaluation"]
        assert ev["verdict"] == "passed" and not ev["flagged"], ev
        assert ev["stdout"].startswith("[1] ") and ev["code"].startswith("x <- c(")


async def test_generate_drops_failing_answers_under_drop(llm_server: FakeLLMServer) -> None:
    failing = FakeRunner(lambda code: RunResult(verdict="runtime_error", message="boom", line=1))
    async with AsyncTestClient(create_app(settings_for(llm_server), runner=failing)) as client:
        response = await client.post("/v1/generate", json=generate_spec("drop"))
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["pairs"] == []
    # Each flagged answer was repaired twice, still failed, and was dropped; the cell asked again
    # until its call budget ran out, then reported the three items it could not make.
    dropped = body["dropped"]
    assert dropped and {d["stage"] for d in dropped} == {"evaluation"}
    assert all(d["reason"] == "flagged" and "runtime_error — boom" in d["detail"] for d in dropped)
    assert body["counts"]["evaluation_dropped"] == body["counts"]["flagged"] == len(dropped)
    assert [f["reason"] for f in body["failed"]] == ["cell_budget_exhausted"] * 3
    answers_run = [code for code in failing.calls if code.startswith("x <- c(")]
    # Every answer and every repair ran once in the sandbox.
    assert len(answers_run) == len(dropped) + body["counts"]["repair_calls"] > len(dropped)
