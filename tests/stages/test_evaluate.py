"""The evaluate stage: wire ↔ evaluator, the flag policy, and the report, with a scripted runner."""

from __future__ import annotations

import pytest

from evaluator import FakeRunner, RunResult
from service.errors import InvalidInput, SandboxUnavailable
from service.stages.evaluate import build_report, evaluate_answer, evaluate_request, to_check, to_evaluation
from service.wire.evaluate import EvaluateRequest, Evaluation, Snippet
from service.wire.generate import Pair

FAIL = RunResult(verdict="runtime_error", message="object 'y' not found", failing_call="mean(y)", line=2)


def by_code(code: str) -> RunResult:
    return FAIL if "y" in code else RunResult(verdict="passed", stdout="[1] 1\n", stdout_bytes=6)


async def test_answer_code_is_extracted_and_lines_mapped() -> None:
    runner = FakeRunner(by_code)
    ev = await evaluate_answer(runner, task="generate", answer="Text\n\n```r\nx <- 1\nmean(y)\n```")
    assert runner.calls == ["x <- 1\nmean(y)"]
    assert ev.verdict == "runtime_error" and ev.flagged
    assert ev.line == 2 and ev.answer_line == 5
    assert ev.failing_call == "mean(y)" and ev.code == "x <- 1\nmean(y)" and ev.blocks == 1


@pytest.mark.parametrize(
    ("task", "flagged"), [("explain", False), ("generate", True), ("fix", True), ("my-custom-task", True)]
)
async def test_no_code_is_flagged_unless_the_task_is_explain(task: str, flagged: bool) -> None:
    runner = FakeRunner()
    ev = await evaluate_answer(runner, task=task, answer="Use `mean(x)`; it averages.")
    assert ev.verdict == "no_code" and ev.flagged is flagged
    assert runner.calls == []


async def test_passed_is_never_flagged_and_failures_always_are() -> None:
    for verdict in ("parse_error", "runtime_error", "timeout", "memory_limit", "output_limit", "killed"):
        runner = FakeRunner([RunResult(verdict=verdict)])  # type: ignore[arg-type]
        ev = await evaluate_answer(runner, task="explain", answer="```r\n1\n```")
        assert ev.flagged, verdict
    ev = await evaluate_answer(FakeRunner(), task="fix", answer="```r\n1\n```")
    assert ev.verdict == "passed" and not ev.flagged


async def test_pairs_and_snippets_keep_request_order_and_are_counted() -> None:
    old = Evaluation(verdict="passed", flagged=False)
    request = EvaluateRequest(
        pairs=[
            pair("b", "fix", "```r\nmean(y)\n```", old),
            pair("c", "explain", "prose only"),
        ],
        snippets=[Snippet(id="a", code="print(1)"), Snippet(id="z", code="   ")],
    )
    response = await evaluate_request(FakeRunner(by_code), request)
    assert [p.id for p in response.pairs] == ["b", "c"]
    assert (
        response.pairs[0].evaluation is not None and response.pairs[0].evaluation.verdict == "runtime_error"
    )
    assert response.pairs[0].question == "Q b?"  # the rest of the pair comes back as it was
    assert [s.id for s in response.snippets] == ["a", "z"]
    assert response.counts == {"no_code": 2, "passed": 1, "runtime_error": 1}
    assert response.flagged == 2  # the failing fix, and the empty snippet; the explain prose is fine


async def test_a_request_needs_something_to_run() -> None:
    with pytest.raises(InvalidInput) as info:
        await evaluate_request(FakeRunner(), EvaluateRequest())
    assert info.value.field == "pairs"


async def test_a_broken_sandbox_is_an_error_not_a_verdict() -> None:
    import evaluator

    class Broken(FakeRunner):
        async def run(self, code: str) -> RunResult:
            raise evaluator.SandboxUnavailable("bwrap: no permission")

    with pytest.raises(SandboxUnavailable, match="no permission"):
        await evaluate_answer(Broken(), task="generate", answer="```r\n1\n```")


def test_evaluation_and_check_convert_both_ways() -> None:
    ev = Evaluation(
        verdict="timeout", flagged=True, message="m", failing_call="f()", line=3, answer_line=7,
        warnings=["w"], stdout="o", stdout_truncated=True, duration_ms=5.0, code="c", blocks=2,
    )  # fmt: skip
    assert to_evaluation(to_check(ev), task="generate") == ev


def pair(pid: str, task: str, answer: str, evaluation: Evaluation | None = None) -> Pair:
    return Pair(id=pid, task=task, theme="t", question=f"Q {pid}?", answer=answer, evaluation=evaluation)


async def test_report_runs_only_what_is_missing_and_puts_flagged_first() -> None:
    done = Evaluation(verdict="passed", flagged=False, code="1")
    pairs = [
        pair("p1", "generate", "```r\nprint(1)\n```", done),
        pair("p2", "generate", "```r\nmean(y)\n```"),
        pair("p3", "explain", "prose"),
    ]
    runner = FakeRunner(by_code)
    report, html = await build_report(pairs, runner=runner, evaluate="missing", title="Nightly")
    # p2's code, then the checks' snippet over it; p3 has no code, p1 was run before.
    assert runner.calls[0] == "mean(y)" and len(runner.calls) == 2 and "lintr::lint" in runner.calls[1]
    assert report.title == "Nightly" and report.total == 3
    assert report.verdicts == {"passed": 1, "no_code": 1, "runtime_error": 1}
    # p3 needs no code in its answer, but an explain question must show code to explain.
    assert report.flagged == 2 and report.passed == 1 and report.pass_rate == pytest.approx(1 / 3, abs=1e-4)
    assert [i.id for i in report.items[:2]] == ["p3", "p2"]
    p3 = report.items[0].quality
    assert p3 is not None and [c.name for c in p3.checks if not c.passed] == ["question_has_code"]
    p2 = report.items[1]
    assert p2.evaluation is not None and p2.evaluation.failing_call == "mean(y)"
    assert report.sandbox == {"mode": "fake", "workers": "1"}
    assert (
        html.startswith("<!DOCTYPE html>") and "Nightly" in html and "object &#x27;y&#x27; not found" in html
    )


async def test_report_without_running_needs_no_runner() -> None:
    report, _ = await build_report([pair("p1", "generate", "```r\n1\n```")], runner=None, evaluate="none")
    assert report.unevaluated == 1 and report.verdicts == {"unevaluated": 1} and report.flagged == 0
    with pytest.raises(SandboxUnavailable):
        await build_report([pair("p1", "generate", "```r\n1\n```")], runner=None, evaluate="all")
