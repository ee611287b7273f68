"""POST /v1/generate end to end: real SDKs against the fake model server on loopback."""

from __future__ import annotations

import json
from typing import Any

import pytest
from litestar.testing import AsyncTestClient

from service.app import create_app
from tests.conftest import settings_for
from tests.fakes.llm_server import FakeLLMServer, Fault, default_reply

CONVENTIONS = "Always name data frames with the suffix _df (CONVENTION-MARKER-7731)."
FEW_SHOT_Q = "How do I compute a trimmed mean of x = c(1, 2, 3, 100) in R? (FEWSHOT-MARKER-5521)"


def grid_spec(**overrides: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "language": "r",
        "locale": "en",
        "tasks": [{"id": "explain"}, {"id": "generate"}],
        "themes": [
            {"id": "mean-variance"},
            {"id": "hypothesis-tests"},
            {"id": "power", "description": "Power analysis with power.t.test"},
        ],
        "per_cell": 2,
        "conventions": CONVENTIONS,
        "few_shot": [
            {
                "task": "generate",
                "question": FEW_SHOT_Q,
                "answer": "```r\nmean(c(1,2,3,100), trim = 0.25)\n```",
            }
        ],
        "model": {"provider": "openai", "temperature": 0.7, "questions_per_call": 2},
        "evaluation": {"enabled": False},
    }
    spec.update(overrides)
    return spec


def assert_accounted(body: dict[str, Any]) -> None:
    """Every requested slot is a pair, an answer-stage drop or a failure: nothing silently lost."""
    for cell in body["counts"]["cells"]:
        assert cell["requested"] == cell["returned"] + cell["dropped"] + cell["failed"], cell
    counts = body["counts"]
    slot_drops = [d for d in body["dropped"] if d["stage"] != "question"]
    assert counts["requested"] == len(body["pairs"]) + len(slot_drops) + len(body["failed"])


async def test_grid_end_to_end_over_openai(llm_server: FakeLLMServer) -> None:
    async with AsyncTestClient(create_app(settings_for(llm_server))) as client:
        response = await client.post("/v1/generate", json=grid_spec())
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["counts"]["requested"] == 12
    assert len(body["pairs"]) == 12 and body["counts"]["returned"] == 12
    assert not body["failed"]
    assert_accounted(body)
    cells = {(p["task"], p["theme"]) for p in body["pairs"]}
    assert len(cells) == 6
    ids = [p["id"] for p in body["pairs"]]
    assert len(set(ids)) == 12
    pair = body["pairs"][0]
    prov = pair["provenance"]
    assert prov["question"]["provider"] == "openai" and prov["answer"]["provider"] == "openai"
    assert prov["question"]["model"] == "fake-gpt"
    assert prov["question"]["template_id"] == "question.en.md"
    assert prov["answer"]["template_id"] == "answer.en.md"
    assert len(prov["answer"]["template_sha256"]) == 64
    assert prov["answer"]["usage"]["input_tokens"] > 0 and prov["answer"]["latency_ms"] >= 0
    assert prov["spec_sha256"] == body["spec_sha256"]
    # Requirements and examples reach the provider, in the system prompt shared by every call.
    systems = [c.system for c in llm_server.calls]
    assert all(CONVENTIONS in s for s in systems)
    assert all(FEW_SHOT_Q in s for s in systems)
    assert any("Power analysis with power.t.test" in c.user for c in llm_server.calls)
    # The shared prefix is cached by the provider after the first call of each kind, and it is recorded.
    assert body["usage"]["cached_tokens"] > 0
    assert sum(p["provenance"]["answer"]["usage"]["cached_tokens"] > 0 for p in body["pairs"]) >= 11


async def test_anthropic_marks_the_system_prompt_cacheable(llm_server: FakeLLMServer) -> None:
    spec = grid_spec(per_cell=1, model={"provider": "anthropic"})
    async with AsyncTestClient(create_app(settings_for(llm_server))) as client:
        response = await client.post("/v1/generate", json=spec)
    assert response.status_code == 200, response.text
    body = response.json()
    assert len(body["pairs"]) == 6
    assert body["pairs"][0]["provenance"]["answer"]["provider"] == "anthropic"
    assert body["pairs"][0]["provenance"]["answer"]["model"] == "fake-claude"
    call = llm_server.calls[-1]
    assert call.protocol == "anthropic"
    assert call.body["system"][0]["cache_control"] == {"type": "ephemeral"}
    assert body["usage"]["cached_tokens"] > 0


async def test_ndjson_stream_reports_progress_and_ends_with_done(llm_server: FakeLLMServer) -> None:
    spec = grid_spec(per_cell=1)
    async with AsyncTestClient(create_app(settings_for(llm_server))) as client:
        response = await client.post("/v1/generate", json=spec, headers={"Accept": "application/x-ndjson"})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/x-ndjson")
    events = [json.loads(line) for line in response.text.splitlines()]
    kinds = [e["event"] for e in events]
    assert kinds[-1] == "done" and kinds.count("done") == 1
    assert kinds.count("cell_started") == 6
    assert kinds.count("question_generated") == 6
    assert kinds.count("answer_generated") == 6
    assert kinds.count("pair") == 6
    # A pair is emitted after its own question, not after all questions (no stage barrier is required,
    # but order within an item is).
    first_pair = kinds.index("pair")
    assert "question_generated" in kinds[:first_pair]
    assert events[-1]["counts"]["returned"] == 6


async def test_rate_limit_with_retry_after_is_retried(llm_server: FakeLLMServer) -> None:
    llm_server.fail_next(
        Fault(kind="status", status=429, headers={"Retry-After": "1"}),
        Fault(kind="status", status=500),
    )
    spec = grid_spec(per_cell=1, tasks=[{"id": "generate"}], themes=[{"id": "regression"}])
    async with AsyncTestClient(create_app(settings_for(llm_server))) as client:
        response = await client.post("/v1/generate", json=spec)
    assert response.status_code == 200, response.text
    body = response.json()
    assert len(body["pairs"]) == 1
    # question call: 429, 500, then success; then the answer call.
    assert len(llm_server.calls) == 4


async def test_timeouts_are_retried(llm_server: FakeLLMServer) -> None:
    llm_server.fail_next(Fault(kind="slow", delay_s=2.5))
    spec = grid_spec(per_cell=1, tasks=[{"id": "generate"}], themes=[{"id": "regression"}])
    settings = settings_for(llm_server, request_timeout_s=1.0)
    async with AsyncTestClient(create_app(settings)) as client:
        response = await client.post("/v1/generate", json=spec)
    assert response.status_code == 200, response.text
    assert len(response.json()["pairs"]) == 1


async def test_malformed_replies_are_retried_then_reported() -> None:
    question_calls = []

    def reply(system: str, user: str) -> str:
        if "### Q1" in system:
            question_calls.append(user)
            # The first question reply has no headings; the retry is fine.
            return "Here are some ideas for you." if len(question_calls) == 1 else default_reply(system, user)
        return "   "  # every answer comes back blank

    spec = grid_spec(per_cell=1, tasks=[{"id": "generate"}], themes=[{"id": "regression"}])
    with FakeLLMServer(reply=reply) as server:
        async with AsyncTestClient(create_app(settings_for(server))) as client:
            response = await client.post("/v1/generate", json=spec)
    assert response.status_code == 200, response.text
    body = response.json()
    assert len(question_calls) == 2
    assert body["pairs"] == []
    [failed] = body["failed"]
    assert failed["stage"] == "answer" and failed["reason"] == "malformed_reply"
    assert "empty answer" in failed["detail"] and failed["attempts"] == 3
    assert failed["question"]
    assert_accounted(body)


async def test_duplicates_are_dropped_and_shortfall_is_reported(llm_server: FakeLLMServer) -> None:
    same = "How do I compute the variance of a numeric vector in R and interpret it?"

    def reply(system: str, user: str) -> str:
        if "### Q1" in system:
            return f"### Q1\n{same}"
        return "Use var().\n\n```r\nx <- c(1, 2, 3)\nprint(var(x))\n```\n" + user[-200:]

    spec = grid_spec(
        per_cell=2,
        tasks=[{"id": "generate"}],
        themes=[{"id": "mean-variance"}],
        model={"provider": "openai", "questions_per_call": 1},
        dedup={
            "threshold": 0.7,
            "existing": [{"id": "hist-1", "text": "What does var() return for a vector?"}],
        },
    )
    with FakeLLMServer(reply=reply) as server:
        async with AsyncTestClient(create_app(settings_for(server))) as client:
            response = await client.post("/v1/generate", json=spec)
    assert response.status_code == 200, response.text
    body = response.json()
    assert len(body["pairs"]) == 1
    dropped = [d for d in body["dropped"] if d["stage"] == "question"]
    assert dropped and all(d["score"] == 1.0 for d in dropped)
    kept_question_id = next(e for e in dropped)["nearest_id"]
    assert kept_question_id.startswith("q-") and all(d["nearest_id"] == kept_question_id for d in dropped)
    [failed] = body["failed"]
    assert failed["reason"] == "questions_exhausted"
    assert_accounted(body)


async def test_existing_history_drops_a_known_question(llm_server: FakeLLMServer) -> None:
    same = "How do I compute the variance of a numeric vector in R and interpret it?"

    def reply(system: str, user: str) -> str:
        if "### Q1" in system:
            return f"### Q1\n{same}"
        return "Use var().\n\n```r\nprint(var(c(1, 2, 3)))\n```\n"

    spec = grid_spec(
        per_cell=1,
        tasks=[{"id": "generate"}],
        themes=[{"id": "mean-variance"}],
        dedup={"existing": [{"id": "hist-1", "text": same}]},
    )
    with FakeLLMServer(reply=reply) as server:
        async with AsyncTestClient(create_app(settings_for(server))) as client:
            body = (await client.post("/v1/generate", json=spec)).json()
    assert body["pairs"] == []
    assert {d["nearest_id"] for d in body["dropped"]} == {"hist-1"}
    # No answer was paid for: only question calls reached the provider.
    assert all("### Q1" in c.system for c in server.calls)
    assert_accounted(body)


async def test_provider_that_keeps_failing_gets_502(llm_server: FakeLLMServer) -> None:
    llm_server.fail_next(*[Fault(kind="status", status=503) for _ in range(200)])
    spec = grid_spec(per_cell=1, tasks=[{"id": "generate"}], themes=[{"id": "regression"}])
    settings = settings_for(llm_server, max_retries=1)
    async with AsyncTestClient(create_app(settings)) as client:
        response = await client.post("/v1/generate", json=spec)
    assert response.status_code == 502
    problem = response.json()
    assert response.headers["content-type"].startswith("application/problem+json")
    assert problem["status"] == 502 and problem["provider"] == "openai"
    assert "503" in problem["detail"]
    assert "Traceback" not in response.text


async def test_rejected_key_gets_502_and_stops_calling(llm_server: FakeLLMServer) -> None:
    llm_server.fail_next(*[Fault(kind="status", status=401, body="invalid api key") for _ in range(50)])
    async with AsyncTestClient(create_app(settings_for(llm_server))) as client:
        response = await client.post("/v1/generate", json=grid_spec(per_cell=3))
    assert response.status_code == 502
    assert "invalid api key" in response.json()["detail"]
    # Six cells with two question lanes each, every lane tried once: a rejected key is not hammered.
    assert len(llm_server.calls) <= 12


@pytest.mark.parametrize(
    ("patch", "field"),
    [
        ({"dedup": {"threshold": 3}}, "dedup.threshold"),
        ({"per_cell": -1}, "per_cell"),
        ({"per_cell": "two"}, "per_cell"),
        ({"locale": "fr"}, "locale"),
        ({"tasks": [{"id": "explain", "bogus": 1}]}, "tasks[0]"),
        ({"tasks": [{"id": "summarise"}]}, "tasks[0].description"),
        ({"themes": [{"id": "a", "description": "x"}, {"id": "a", "description": "y"}]}, "themes[1].id"),
        ({"per_cell": None, "cells": [{"task": "explain", "theme": "nope", "count": 1}]}, "cells[0].theme"),
        ({"cells": [{"task": "explain", "theme": "power", "count": 1}]}, "per_cell"),
        ({"few_shot": [{"task": "fix", "question": "q", "answer": "a"}]}, "few_shot[0].task"),
        ({"model": {"provider": "mystery"}}, "model.provider"),
        ({"model": {"temperature": 9}}, "model.temperature"),
        ({"prompts": {"question": "no split line here {{task_id}}"}}, "prompts.question"),
        ({"prompts": {"answer": "sys\n=== user ===\n{{nonsense}}"}}, "prompts.answer"),
        ({"per_cell": 200, "themes": [{"id": f"t{i}", "description": "x"} for i in range(30)]}, "per_cell"),
    ],
)
async def test_invalid_specs_get_400_naming_the_field(
    llm_server: FakeLLMServer, patch: dict[str, Any], field: str
) -> None:
    async with AsyncTestClient(create_app(settings_for(llm_server))) as client:
        response = await client.post("/v1/generate", json=grid_spec(**patch))
    assert response.status_code == 400, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    problem = response.json()
    assert problem["status"] == 400 and problem["field"] == field, problem
    assert problem["title"] and problem["detail"]
    assert llm_server.calls == []


async def test_invalid_template_gets_400_on_the_streaming_path_too(llm_server: FakeLLMServer) -> None:
    spec = grid_spec(prompts={"answer": "no split line here"})
    async with AsyncTestClient(create_app(settings_for(llm_server))) as client:
        response = await client.post("/v1/generate", json=spec, headers={"Accept": "application/x-ndjson"})
    assert response.status_code == 400, response.text
    assert response.json()["field"] == "prompts.answer"
    assert llm_server.calls == []


async def test_malformed_json_body_gets_400() -> None:
    async with AsyncTestClient(create_app(settings_for(FakeLLMServer()))) as client:
        response = await client.post(
            "/v1/generate", content=b"{nope", headers={"Content-Type": "application/json"}
        )
    assert response.status_code == 400
    assert response.json()["field"] == "body"


async def test_unconfigured_provider_gets_400(llm_server: FakeLLMServer) -> None:
    settings = settings_for(llm_server, anthropic_api_key=None, anthropic_base_url=None)
    async with AsyncTestClient(create_app(settings)) as client:
        response = await client.post("/v1/generate", json=grid_spec(model={"provider": "anthropic"}))
    assert response.status_code == 400
    problem = response.json()
    assert problem["field"] == "model.provider" and "ANTHROPIC_API_KEY" in problem["detail"]


async def test_japanese_locale_uses_the_japanese_templates(llm_server: FakeLLMServer) -> None:
    spec = grid_spec(locale="ja", per_cell=2, conventions="", few_shot=[], themes=[{"id": "regression"}])
    async with AsyncTestClient(create_app(settings_for(llm_server))) as client:
        response = await client.post("/v1/generate", json=spec)
    assert response.status_code == 200, response.text
    body = response.json()
    assert len(body["pairs"]) == 4 and all(p["locale"] == "ja" for p in body["pairs"])
    assert body["pairs"][0]["provenance"]["question"]["template_id"] == "question.ja.md"
    # The built-in Japanese conventions and example reach the model when the spec gives none.
    assert all("library() や require() は使わない" in c.system for c in llm_server.calls)
    assert any("日本語で解答を書いてください" in c.user for c in llm_server.calls)
    # Japanese questions are told apart by the Japanese tokenizer, not collapsed to nothing.
    assert body["counts"]["questions_dropped"] == 0


def broken_r_reply(system: str, user: str) -> str:
    """Questions as usual; every answer's R code fails at run time."""
    if "### Q1" in system:
        return default_reply(system, user)
    return default_reply(system, user).replace("print(var(x))", 'stop("variance is undefined here")')


@pytest.mark.sandbox
async def test_pairs_carry_the_verdict_of_their_r_code(llm_server: FakeLLMServer) -> None:
    spec = grid_spec(per_cell=1, evaluation={"enabled": True})
    async with AsyncTestClient(create_app(settings_for(llm_server))) as client:
        response = await client.post("/v1/generate", json=spec)
    assert response.status_code == 200, response.text
    body = response.json()
    assert len(body["pairs"]) == 6
    for pair in body["pairs"]:
        evaluation = pair["evaluation"]
        assert evaluation["verdict"] == "passed" and evaluation["flagged"] is False
        assert "[1]" in evaluation["stdout"] and "print(mean(x))" in evaluation["code"]
    assert body["counts"]["flagged"] == 0


@pytest.mark.sandbox
@pytest.mark.parametrize("policy", ["flag", "drop"])
async def test_failing_r_is_flagged_or_dropped_by_policy(policy: str) -> None:
    spec = grid_spec(
        per_cell=1, tasks=[{"id": "generate"}], evaluation={"enabled": True, "on_failure": policy}
    )
    with FakeLLMServer(reply=broken_r_reply) as server:
        async with AsyncTestClient(create_app(settings_for(server))) as client:
            response = await client.post(
                "/v1/generate", json=spec, headers={"Accept": "application/x-ndjson"}
            )
    events = [json.loads(line) for line in response.text.splitlines()]
    done = events[-1]
    assert done["event"] == "done" and done["counts"]["flagged"] == 3
    evaluated = [e for e in events if e["event"] == "evaluated"]
    assert [e["verdict"] for e in evaluated] == ["runtime_error"] * 3
    pairs = [e["pair"] for e in events if e["event"] == "pair"]
    dropped = [e["item"] for e in events if e["event"] == "dropped"]
    if policy == "flag":
        assert len(pairs) == 3 and not dropped
        evaluation = pairs[0]["evaluation"]
        assert evaluation["flagged"] and "variance is undefined here" in evaluation["message"]
        assert "stop(" in (evaluation["failing_call"] or "")
    else:
        assert not pairs and len(dropped) == 3
        assert all(d["stage"] == "evaluation" and "runtime_error" in d["reason"] for d in dropped)
        assert done["counts"]["evaluation_dropped"] == 3
    for cell in done["counts"]["cells"]:
        assert cell["requested"] == cell["returned"] + cell["dropped"] + cell["failed"]
