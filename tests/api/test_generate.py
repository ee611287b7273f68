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
    """Every requested item is a pair or a failure with its reason, and every drop (which the cell
    replaced) is listed: nothing silently lost."""
    for cell in body["counts"]["cells"]:
        assert cell["requested"] == cell["returned"] + cell["failed"], cell
        key = (cell["task"], cell["theme"])
        assert cell["returned"] == sum((p["task"], p["theme"]) == key for p in body["pairs"]), cell
        assert cell["failed"] == sum((f["task"], f["theme"]) == key for f in body["failed"]), cell
        assert cell["dropped"] == sum((d["task"], d["theme"]) == key for d in body["dropped"]), cell
    counts = body["counts"]
    assert counts["requested"] == len(body["pairs"]) + len(body["failed"])
    assert counts["calls"] == sum(c["calls"] for c in counts["cells"])


async def test_grid_end_to_end_over_openai(llm_server: FakeLLMServer) -> None:
    async with AsyncTestClient(create_app(settings_for(llm_server))) as client:
        response = await client.post("/v1/generate", json=grid_spec())
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["counts"]["requested"] == 12
    assert len(body["pairs"]) == 12 and body["counts"]["returned"] == 12
    assert not body["failed"] and not body["dropped"]
    assert_accounted(body)
    cells = {(p["task"], p["theme"]) for p in body["pairs"]}
    assert len(cells) == 6
    ids = [p["id"] for p in body["pairs"]]
    assert len(set(ids)) == 12
    by_task = {p["task"]: p for p in body["pairs"]}
    prov = by_task["generate"]["provenance"]
    assert prov["question"]["provider"] == "openai" and prov["answer"]["provider"] == "openai"
    assert prov["question"]["model"] == "fake-gpt"
    assert prov["question"]["template_id"] == "question.en.md"
    assert prov["answer"]["template_id"] == "answer.en.md"
    assert prov["snippet"] is None and prov["calls"] == 1  # the shared question call is not counted here
    assert len(prov["answer"]["template_sha256"]) == 64
    assert prov["answer"]["usage"]["input_tokens"] > 0 and prov["answer"]["latency_ms"] >= 0
    assert prov["spec_sha256"] == body["spec_sha256"]
    # explain questions come code first: a script, then the question written around it.
    explain = by_task["explain"]
    assert explain["provenance"]["snippet"]["template_id"] == "snippet.en.md"
    assert explain["provenance"]["question"]["template_id"] == "code_question.en.md"
    assert explain["provenance"]["calls"] == 3
    assert "```r\n" in explain["question"]
    # Evaluation is off: the checks that need no R ran, the others say why they did not.
    assert {c["name"] for c in explain["quality"]["checks"]} >= {"question_has_code", "answer_locale"}
    assert any("evaluation is off" in s for s in explain["quality"]["skipped"])
    # Requirements reach the provider in the system prompt; a task sees only its own examples.
    for call in llm_server.calls:
        if "Write the question now." not in call.user:
            assert CONVENTIONS in call.system
        generate_call = "Kind of exercise: generate" in call.user
        assert (FEW_SHOT_Q in call.system) == generate_call, call.user[:80]
    assert any("Power analysis with power.t.test" in c.user for c in llm_server.calls)
    # The built-in English prompts' shared prefixes are under OpenAI's 1,024 tokens: nothing is cached,
    # and the usage recorded is exactly what the provider reported.
    assert body["usage"]["cached_tokens"] == 0
    assert body["usage"]["input_tokens"] == sum(c.usage["prompt_tokens"] for c in llm_server.calls)
    assert body["usage"]["output_tokens"] == sum(c.usage["completion_tokens"] for c in llm_server.calls)
    assert body["counts"]["calls"] == len(llm_server.calls) == 6 * 2 + 3 * 2 + 3 * 1 + 6 * 1


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
    # Under the 1,024-token minimum, the breakpoint caches nothing.
    assert body["usage"]["cached_tokens"] == body["usage"]["cache_write_tokens"] == 0


LONG_CONVENTIONS = (
    CONVENTIONS
    + "\n"
    + "\n".join(
        f"- Rule {i}: name every intermediate vector after the quantity it holds, and print one object per"
        " print() call so that each printed line can be read on its own."
        for i in range(40)
    )
)


@pytest.mark.parametrize("vendor", ["openai", "anthropic"])
async def test_a_prefix_past_the_minimum_is_cached_as_the_provider_reports(
    llm_server: FakeLLMServer, vendor: str
) -> None:
    spec = grid_spec(per_cell=2, conventions=LONG_CONVENTIONS, model={"provider": vendor})
    async with AsyncTestClient(create_app(settings_for(llm_server))) as client:
        response = await client.post("/v1/generate", json=spec)
    assert response.status_code == 200, response.text
    body = response.json()
    assert_accounted(body)
    usage = body["usage"]
    if vendor == "openai":
        reported = sum(c.usage["prompt_tokens_details"]["cached_tokens"] for c in llm_server.calls)
        assert usage["cached_tokens"] == reported > 0
        assert usage["cache_write_tokens"] == 0
        # Cached parts come in 128-token steps from 1,024 on.
        for pair in body["pairs"]:
            cached = pair["provenance"]["answer"]["usage"]["cached_tokens"]
            assert cached == 0 or (cached >= 1024 and cached % 128 == 0)
    else:
        reads = sum(c.usage["cache_read_input_tokens"] for c in llm_server.calls)
        writes = sum(c.usage["cache_creation_input_tokens"] for c in llm_server.calls)
        plain = sum(c.usage["input_tokens"] for c in llm_server.calls)
        assert (usage["cached_tokens"], usage["cache_write_tokens"]) == (reads, writes)
        assert reads > 0 and writes > 0
        assert usage["input_tokens"] == plain + reads + writes
    answered = [p["provenance"]["answer"]["usage"]["cached_tokens"] > 0 for p in body["pairs"]]
    # Each task's first answer writes the answer prefix; the later ones read it.
    assert sum(answered) >= len(body["pairs"]) - 2


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
    assert kinds.count("pair") == 6
    # Every question generated is answered or dropped (a near-duplicate of another cell's question
    # is replaced, which depends on which arrives first).
    question_drops = [
        e for e in events if e["event"] == "dropped" and e["item"]["stage"] in ("question", "answer")
    ]
    assert kinds.count("question_generated") == 6 + len(question_drops)
    assert kinds.count("answer_generated") == 6 + sum(e["item"]["stage"] == "answer" for e in question_drops)
    # Each question and each answer is checked, and says so.
    checked = [e for e in events if e["event"] == "checked"]
    subjects = [e["subject"] for e in checked]
    assert subjects.count("question") == kinds.count("question_generated")
    assert 6 <= subjects.count("answer") <= kinds.count("answer_generated")
    assert not any(e["flagged"] for e in checked)
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


async def test_malformed_replies_are_retried_dropped_and_replaced_until_the_budget_ends() -> None:
    question_calls = []

    def reply(system: str, user: str) -> str:
        if "### Q1" in system:
            question_calls.append(user)
            # The first question reply has no headings; the retry is fine.
            return "Here are some ideas for you." if len(question_calls) == 1 else default_reply(system, user)
        return "   "  # every answer comes back blank

    spec = grid_spec(
        per_cell=1, tasks=[{"id": "generate"}], themes=[{"id": "regression"}], budget={"calls_per_cell": 9}
    )
    with FakeLLMServer(reply=reply) as server:
        async with AsyncTestClient(create_app(settings_for(server))) as client:
            response = await client.post("/v1/generate", json=spec)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["pairs"] == []
    # The first item spends 2 question calls and 3 answer attempts; a second one still fits the
    # budget of 9 (1 question call + 3 answer attempts), then nothing does.
    [cell] = body["counts"]["cells"]
    assert cell["budget"] == 9 and cell["calls"] == len(server.calls) == 9
    assert len(question_calls) == 3
    dropped = body["dropped"]
    assert [d["stage"] for d in dropped] == ["answer", "answer"]
    assert all(d["reason"] == "malformed_reply" and "empty answer" in d["detail"] for d in dropped)
    assert all(d["question"] for d in dropped)
    [failed] = body["failed"]
    assert failed["reason"] == "cell_budget_exhausted" and failed["stage"] == "cell"
    assert failed["attempts"] == 9 and "2 malformed_reply" in failed["detail"]
    assert cell["top_up_calls"] == 4  # the second item replaced the first
    assert_accounted(body)


async def test_duplicates_are_dropped_replaced_and_the_shortfall_is_reported(
    llm_server: FakeLLMServer,
) -> None:
    same = "How do I compute the variance of a numeric vector in R and interpret it?"

    def reply(system: str, user: str) -> str:
        if "### Q1" in system:
            return f"### Q1\n{same}"
        return "Use var() on the vector.\n\n```r\nx <- c(1, 2, 3)\nprint(var(x))\n```\n" + user[-200:]

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
    assert dropped and all(d["score"] == 1.0 and d["reason"] == "near_duplicate" for d in dropped)
    kept_question_id = dropped[0]["nearest_id"]
    assert kept_question_id.startswith("q-") and all(d["nearest_id"] == kept_question_id for d in dropped)
    [failed] = body["failed"]
    assert failed["reason"] == "cell_budget_exhausted"
    [cell] = body["counts"]["cells"]
    assert cell["calls"] == len(server.calls) <= cell["budget"] == 12
    assert f"{len(dropped)} near_duplicate" in failed["detail"]
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
    # Fifteen question lanes (three for each explain cell, two for each generate cell), each tried
    # at most once before the first 401 stops every cell: a rejected key is not hammered.
    assert len(llm_server.calls) <= 15


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
        ({"evaluation": {"policy": {"nope": {"answer_locale": "warn"}}}}, "evaluation.policy.nope"),
        ({"evaluation": {"policy": {"*": {"bogus_check": "warn"}}}}, "evaluation.policy[...]"),
        ({"evaluation": {"policy": {"*": {"answer_locale": "sometimes"}}}}, "evaluation.policy[...][...]"),
        ({"evaluation": {"repair_attempts": 9}}, "evaluation.repair_attempts"),
        ({"budget": {"calls_per_cell": 0}}, "budget.calls_per_cell"),
        ({"tasks": [{"id": "tidy", "description": "x", "kind": "refactor"}]}, "tasks[0].kind"),
        ({"prompts": {"bug": "no split line"}}, "prompts.bug"),
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
    templates = {p["task"]: p["provenance"]["question"]["template_id"] for p in body["pairs"]}
    assert templates == {"generate": "question.ja.md", "explain": "code_question.ja.md"}
    # The built-in Japanese conventions and example reach the model when the spec gives none.
    writers = [c for c in llm_server.calls if "質問を書いてください。" not in c.user]
    assert writers and all("library() や require() は使わない" in c.system for c in writers)
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
async def test_failing_r_is_repaired_then_flagged_or_dropped_by_policy(policy: str) -> None:
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
    assert done["event"] == "done"
    pairs = [e["pair"] for e in events if e["event"] == "pair"]
    dropped = [e["item"] for e in events if e["event"] == "dropped"]
    failed = [e["item"] for e in events if e["event"] == "failed"]
    evaluated = [e for e in events if e["event"] == "evaluated"]
    assert {e["verdict"] for e in evaluated} == {"runtime_error"}
    # Every answer got its two repairs (the fake's repairs fail the same way), so each of the three
    # cells shows the model three answers for its first item.
    assert sum("Write the whole answer again" in c.user for c in server.calls) >= 6
    if policy == "flag":
        assert len(pairs) == 3 and not dropped and not failed
        assert done["counts"]["flagged"] == 3 and done["counts"]["repaired"] == 0
        pair = pairs[0]
        evaluation = pair["evaluation"]
        assert evaluation["flagged"] and "variance is undefined here" in evaluation["message"]
        assert "stop(" in (evaluation["failing_call"] or "")
        assert pair["quality"]["flagged"]
        assert "answer_code_runs" in [c["name"] for c in pair["quality"]["checks"] if not c["passed"]]
        repairs = pair["provenance"]["repairs"]
        assert [r["verdict"] for r in repairs] == ["runtime_error", "runtime_error"]
        assert all(r["flagged"] and "answer_code_runs" in r["failed_checks"] for r in repairs)
        assert repairs[0]["step"]["template_id"] == "repair.en.md"
    else:
        # Dropped, replaced while the budget allowed, then reported short.
        assert not pairs and dropped and len(failed) == 3
        assert all(d["stage"] == "evaluation" and d["reason"] == "flagged" for d in dropped)
        assert all(
            "answer_code_runs" in d["failed_checks"] and "runtime_error" in d["detail"] for d in dropped
        )
        assert all(f["reason"] == "cell_budget_exhausted" for f in failed)
        assert done["counts"]["evaluation_dropped"] == len(dropped)
        for cell in done["counts"]["cells"]:
            assert cell["calls"] <= cell["budget"] + 2 and cell["top_up_calls"] > 0
    for cell in done["counts"]["cells"]:
        assert cell["requested"] == cell["returned"] + cell["failed"]
