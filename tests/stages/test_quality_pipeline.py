"""The pipeline against the fake model server's scripted misbehaviours, with real R in real bubblewrap:
code-first questions, bugs that do not bite, repair from evidence, copies of the few-shot, top-up
within the cell's budget, and the invariant requested = returned + failed."""

from __future__ import annotations

from typing import Any

import msgspec
import openai
import pytest

from service.providers.openai import OpenAIProvider
from service.stages.evaluate import Sandbox
from service.stages.pipeline import collect, run_job
from service.stages.spec import locale_defaults, resolve_spec
from service.wire.generate import GenerateResponse, Spec
from tests.fakes.llm_server import (
    FakeLLMServer,
    Scripted,
    answer_in_chinese,
    answer_that_fails,
    answer_with_invented_output,
    bug_that_does_not_bite,
    copy_of,
    default_reply,
    step_of,
    without_code,
)
from tests.stages.conftest import needs_sandbox

pytestmark = [needs_sandbox, pytest.mark.asyncio(loop_scope="module"), pytest.mark.sandbox]


def spec(task: str, **fields: Any) -> Spec:
    base: dict[str, Any] = {
        "tasks": [{"id": task}],
        "themes": [{"id": "mean-variance"}],
        "per_cell": 1,
        "model": {"questions_per_call": 1},
    }
    base.update(fields)
    return msgspec.convert(base, Spec)


async def run(server: FakeLLMServer, sandbox: Sandbox, job_spec: Spec) -> GenerateResponse:
    client = openai.AsyncOpenAI(api_key="x", base_url=server.openai_base_url, max_retries=0)
    provider = OpenAIProvider(client, default_model="fake", concurrency=8)
    try:
        return await collect(run_job(resolve_spec(job_spec), provider, evaluate=sandbox, retries=1))
    finally:
        await provider.aclose()


def assert_accounted(response: GenerateResponse) -> None:
    for cell in response.counts.cells:
        assert cell.requested == cell.returned + cell.failed, cell
        assert cell.dropped == sum((d.task, d.theme) == (cell.task, cell.theme) for d in response.dropped)
        assert cell.calls <= cell.budget + 2, cell  # content retries may pass it by a little


def steps(server: FakeLLMServer) -> list[str]:
    return [step_of(c.system, c.user) for c in server.calls]


async def test_explain_questions_come_code_first_and_a_snippet_without_code_is_replaced(
    sandbox: Sandbox,
) -> None:
    script = Scripted(snippet=[without_code, without_code, default_reply])
    with FakeLLMServer(reply=script) as server:
        response = await run(server, sandbox, spec("explain"))
    assert_accounted(response)
    [pair] = response.pairs
    # The first snippet call was retried once (content retries) and then dropped; its replacement worked.
    [dropped] = response.dropped
    assert (dropped.stage, dropped.reason) == ("snippet", "malformed_reply")
    assert "no ```r code block" in dropped.detail
    assert steps(server) == ["snippet", "snippet", "snippet", "code_question", "answer"]
    assert pair.provenance is not None and pair.provenance.top_up and pair.provenance.calls == 3
    assert pair.provenance.snippet is not None and pair.provenance.snippet.template_id == "snippet.en.md"
    assert "```r\n" in pair.question
    checks = {c.name: c for c in pair.quality.checks} if pair.quality else {}
    assert checks["question_has_code"].passed and checks["question_code_runs"].passed
    # The answer step was shown what the question's code really printed.
    answer_call = server.calls[-1].user
    assert "this is the real result" in answer_call and "[1]" in answer_call
    assert response.counts.cells[0].top_up_calls == 3


async def test_a_snippet_that_does_not_run_is_dropped_with_rs_message(sandbox: Sandbox) -> None:
    script = Scripted(snippet=["```r\nx <- c(1, 2)\nprint(mean(y_undefined))\n```", default_reply])
    with FakeLLMServer(reply=script) as server:
        response = await run(server, sandbox, spec("explain"))
    assert_accounted(response)
    [dropped] = response.dropped
    assert (dropped.stage, dropped.reason) == ("snippet", "snippet_failed")
    assert "object 'y_undefined' not found" in dropped.detail
    assert len(response.pairs) == 1


async def test_a_snippet_that_prints_a_label_with_print_is_mended_not_dropped(sandbox: Sandbox) -> None:
    # print("label", x) stops R (x is taken for `digits`) or prints the label alone.
    snippet = '```r\nx <- c(2, 4, 9)\nm <- mean(x)\nprint("Mean of x:", m)\nprint(var(x))\n```'
    with FakeLLMServer(reply=Scripted(snippet=snippet)) as server:
        response = await run(server, sandbox, spec("explain"))
    assert_accounted(response)
    assert response.dropped == []
    [pair] = response.pairs
    assert 'cat("Mean of x:", m, "\\n")\nprint(var(x))' in pair.question
    assert 'print("Mean of x:"' not in pair.question
    assert pair.provenance is not None
    assert pair.provenance.mended == [
        'line 3: print() of a label and a value written as cat(): cat("Mean of x:", m, "\\n")'
    ]
    # The question writer and the answer were shown what the mended script really printed.
    assert "Mean of x: 5" in server.calls[-1].user and "[1] 13" in server.calls[-1].user
    assert steps(server) == ["snippet", "code_question", "answer"]


async def test_a_bug_that_does_not_bite_is_replaced_by_a_mutation(sandbox: Sandbox) -> None:
    script = Scripted(bug=bug_that_does_not_bite)
    with FakeLLMServer(reply=script) as server:
        response = await run(server, sandbox, spec("fix"))
    assert_accounted(response)
    [pair] = response.pairs
    assert pair.provenance is not None and pair.provenance.bug is not None
    bug = pair.provenance.bug
    assert bug.source == "mutation"
    # The model's call is kept, with why its bug was not used.
    assert bug.step is not None and bug.step.template_id == "bug.en.md"
    assert bug.tried[0] == "the model's bug: the script still runs and prints the same"
    assert bug.mutation and bug.mutation.split(":")[0] in {"missing_object", "wrong_function"}
    checks = {c.name: c for c in pair.quality.checks} if pair.quality else {}
    assert checks["question_code_broken"].passed
    assert checks["answer_changes_code"].passed and checks["answer_code_runs"].passed
    # The question writer was told what running the broken code showed.
    cq = next(c.user for c in server.calls if step_of(c.system, c.user) == "code_question")
    assert ("R stops with this error" in cq) == (bug.symptom == "error")


async def test_the_models_bug_is_kept_when_it_bites_and_its_hint_comments_go(sandbox: Sandbox) -> None:
    def hinting(system: str, user: str) -> str:
        return default_reply(system, user).replace("```r\n", "```r\n# BUG: misspelt name below\n", 1)

    with FakeLLMServer(reply=Scripted(bug=hinting)) as server:
        response = await run(server, sandbox, spec("fix"))
    [pair] = response.pairs
    assert pair.provenance is not None and pair.provenance.bug is not None
    assert pair.provenance.bug.source == "model" and pair.provenance.bug.symptom == "error"
    assert pair.provenance.bug.step is not None
    assert "_maen" in pair.question and "BUG" not in pair.question
    assert "not found" in next(c.user for c in server.calls if step_of(c.system, c.user) == "code_question")


async def test_a_failing_answer_is_repaired_from_the_evidence(sandbox: Sandbox) -> None:
    script = Scripted(answer=answer_that_fails)
    with FakeLLMServer(reply=script) as server:
        response = await run(server, sandbox, spec("generate"))
    assert_accounted(response)
    [pair] = response.pairs
    assert pair.evaluation is not None and pair.evaluation.verdict == "passed"
    assert pair.quality is not None and not pair.quality.flagged
    assert pair.provenance is not None
    [attempt] = pair.provenance.repairs
    assert attempt.verdict == "passed" and not attempt.flagged and attempt.step.template_id == "repair.en.md"
    repair = next(c for c in server.calls if step_of(c.system, c.user) == "repair")
    assert "object 'y_missing' not found" in repair.user and "answer_code_runs" in repair.user
    # The previous answer is the model's own turn, between the question and the evidence.
    roles = [m["role"] for m in repair.body["messages"]]
    assert roles == ["system", "user", "assistant", "user"]
    assert "print(mean(y_missing))" in repair.body["messages"][2]["content"]
    counts = response.counts
    assert counts.repaired == 1 and counts.repair_calls == 1 and counts.cells[0].repaired == 1


async def test_repair_stops_when_a_reply_keeps_the_code_and_its_failures(sandbox: Sandbox) -> None:
    # Every repair reply rewrites the prose around the same failing code.
    script = Scripted(answer=answer_that_fails, repair=answer_that_fails)
    job = spec("generate", evaluation={"repair_attempts": 3})
    with FakeLLMServer(reply=script) as server:
        response = await run(server, sandbox, job)
    assert_accounted(response)
    [pair] = response.pairs
    assert pair.quality is not None and pair.quality.flagged
    assert pair.provenance is not None
    [attempt] = pair.provenance.repairs  # not 3: the second would be shown the same code and evidence
    assert attempt.unchanged and attempt.verdict == "runtime_error"
    assert attempt.failed_checks == ["answer_code_runs"]
    assert steps(server) == ["questions", "answer", "repair"]
    assert response.counts.repair_calls == 1 and response.counts.repaired == 0


def repair_that_copies_the_evidence(system: str, user: str) -> str:
    """What the small model does: the evidence first, word for word, then the new answer."""
    turn = user[user.rindex("Your answer was run and checked") :]
    evidence = turn[: turn.index("Write the whole answer again")].strip()
    return f"{evidence}\n\nCorrected answer:\n{default_reply(system, user)}"


async def test_evidence_copied_back_into_a_repair_is_not_part_of_the_answer(sandbox: Sandbox) -> None:
    script = Scripted(answer=answer_that_fails, repair=repair_that_copies_the_evidence)
    with FakeLLMServer(reply=script) as server:
        response = await run(server, sandbox, spec("generate"))
    [pair] = response.pairs
    repair = next(c for c in server.calls if step_of(c.system, c.user) == "repair")
    labels = locale_defaults("en").labels
    assert labels.failed_checks in repair.user and labels.verdict in repair.user
    assert pair.provenance is not None and pair.provenance.repairs[0].verdict == "passed"
    # The answer is what came after the copy: none of the evidence's lines, nor its lead-in.
    for line in (labels.failed_checks, labels.verdict, "object 'y_missing' not found", "Corrected answer:"):
        assert line not in pair.answer
    assert pair.answer.startswith(default_reply(repair.system, repair.user).strip()[:40])


async def test_japanese_that_drifts_into_chinese_is_repaired(sandbox: Sandbox) -> None:
    script = Scripted(answer=answer_in_chinese)
    with FakeLLMServer(reply=script) as server:
        response = await run(server, sandbox, spec("generate", locale="ja"))
    [pair] = response.pairs
    assert pair.provenance is not None and pair.provenance.repairs[0].verdict == "passed"
    assert pair.quality is not None and not pair.quality.flagged
    repair_prompt = next(c.user for c in server.calls if step_of(c.system, c.user) == "repair")
    assert "answer_locale" in repair_prompt and "chinese" in repair_prompt
    assert locale_defaults("ja").labels.failed_checks in repair_prompt


async def test_invented_output_is_flagged_and_stays_flagged_without_repair(sandbox: Sandbox) -> None:
    script = Scripted(answer=answer_with_invented_output)
    with FakeLLMServer(reply=script) as server:
        response = await run(server, sandbox, spec("generate", evaluation={"repair_attempts": 0}))
    [pair] = response.pairs
    assert pair.quality is not None and pair.quality.flagged
    [check] = [c for c in pair.quality.checks if c.name == "output_shown_matches"]
    assert not check.passed and "5.25" in check.evidence and "[1] 4" in check.evidence
    assert response.counts.flagged == 1 and response.counts.cells[0].flagged == 1
    assert "repair" not in steps(server)


async def test_a_warning_policy_returns_the_pair_unflagged_with_the_failed_check(sandbox: Sandbox) -> None:
    script = Scripted(answer=answer_in_chinese)
    policy = {"generate": {"answer_locale": "warn"}}
    with FakeLLMServer(reply=script) as server:
        response = await run(server, sandbox, spec("generate", locale="ja", evaluation={"policy": policy}))
    [pair] = response.pairs
    assert pair.quality is not None and not pair.quality.flagged
    [check] = [c for c in pair.quality.checks if c.name == "answer_locale"]
    assert not check.passed and not check.blocking and "chinese" in check.evidence
    assert response.counts.checks["answer_locale"].pass_rate == 0.0


async def test_copies_of_the_few_shot_are_dropped_before_any_answer(sandbox: Sandbox) -> None:
    example = next(e.question for e in locale_defaults("en").few_shot if e.task == "generate")
    script = Scripted(questions=copy_of(example))
    with FakeLLMServer(reply=script) as server:
        response = await run(server, sandbox, spec("generate"))
    assert_accounted(response)
    assert response.pairs == []
    assert response.dropped and {d.reason for d in response.dropped} == {"copies_example"}
    assert all(d.nearest_id == "few-shot:0" and d.score == 1.0 for d in response.dropped)
    assert set(steps(server)) == {"questions"}  # no answer was paid for
    [failed] = response.failed
    assert (
        failed.reason == "cell_budget_exhausted"
        and f"{len(response.dropped)} copies_example" in failed.detail
    )
    # Budget 3 × 2 calls; each replacement costs a question call and would need an answer call.
    assert len(server.calls) == response.counts.cells[0].calls == 5


async def test_drop_policy_tops_the_cell_up_until_the_budget_runs_out(sandbox: Sandbox) -> None:
    script = Scripted(answer=[answer_that_fails, answer_that_fails, default_reply], repair=answer_that_fails)
    job_spec = spec(
        "generate",
        per_cell=2,
        model={"questions_per_call": 2},
        evaluation={"on_failure": "drop", "repair_attempts": 1},
        budget={"calls_per_cell": 12},
    )
    with FakeLLMServer(reply=script) as server:
        response = await run(server, sandbox, job_spec)
    assert_accounted(response)
    # Two answers fail (and their repairs), are dropped and replaced; the replacements pass.
    assert len(response.pairs) == 2 and not response.failed
    assert [d.reason for d in response.dropped] == ["flagged", "flagged"]
    assert all(d.stage == "evaluation" and "answer_code_runs" in d.failed_checks for d in response.dropped)
    assert all(p.provenance is not None and p.provenance.top_up for p in response.pairs)
    [cell] = response.counts.cells
    # One question call, two answers and their repairs; then the replacements, asked for as each
    # drop happens (one call for both, or one each), and their answers.
    questions = steps(server).count("questions")
    assert questions in (2, 3) and steps(server).count("answer") == 4
    assert cell.calls == len(server.calls) == questions + 4 + 2
    assert cell.top_up_calls == cell.calls - 5 and cell.repair_calls == 2 and cell.dropped == 2
    assert cell.diversity is not None and 0.0 <= cell.diversity < 0.7


async def test_the_cell_budget_bounds_the_calls(sandbox: Sandbox) -> None:
    script = Scripted(snippet=without_code)
    with FakeLLMServer(reply=script) as server:
        response = await run(server, sandbox, spec("explain", per_cell=2, budget={"calls_per_cell": 7}))
    assert_accounted(response)
    [cell] = response.counts.cells
    # Each snippet call is tried twice (one content retry); a new item starts only while 3 calls remain.
    assert cell.calls == len(server.calls) == 6 and cell.budget == 7
    assert [f.reason for f in response.failed] == ["cell_budget_exhausted"] * 2
    assert all(f.attempts == 6 for f in response.failed)
