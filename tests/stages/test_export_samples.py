"""Pairs shaped like the pipeline's output, shared by the export tests (no tests here)."""

from __future__ import annotations

from service.wire.base import Usage
from service.wire.evaluate import Evaluation
from service.wire.generate import Pair, Provenance, StepProvenance

XSS_ANSWER = (
    "Fit the model with `fit <- lm(y ~ x)`.\n\n"
    "<script>document.title='pwned-script'</script>\n"
    "<img src=x onerror=\"document.title='pwned-img'\">\n"
    "[click](javascript:document.title='pwned-link')\n\n"
    "```r\nx <- c(1, 2, 3)\nif (x[1] < 2) print('<b>ok</b>')\n```\n"
)


def step(model: str = "gpt-4o-mini", template: str = "answer/v1") -> StepProvenance:
    return StepProvenance(
        provider="openai",
        model=model,
        template_id=template,
        template_sha256="ab" * 32,
        usage=Usage(input_tokens=10, output_tokens=20),
        latency_ms=12.0,
    )


def pair(
    pid: str,
    *,
    verdict: str = "passed",
    flagged: bool = False,
    answer: str = "Use `mean(x)`.\n\n```r\nx <- c(1, 2)\nmean(x)\n```",
    question: str = "How do I compute a mean in R?",
    task: str = "generate",
    locale: str = "en",
    evaluated: bool = True,
) -> Pair:
    evaluation = (
        Evaluation(
            verdict=verdict,  # type: ignore[arg-type]
            flagged=flagged,
            message=None if verdict == "passed" else "object 'y' not found",
            failing_call=None if verdict == "passed" else "print(y)",
            stdout="[1] 1.5\n",
        )
        if evaluated
        else None
    )
    return Pair(
        id=pid,
        task=task,
        theme="descriptive",
        question=question,
        answer=answer,
        locale=locale,  # type: ignore[arg-type]
        evaluation=evaluation,
        provenance=Provenance(
            spec_sha256="cd" * 32, question=step(template="question/v1"), answer=step(template="answer/v1")
        ),
    )


def mixed() -> list[Pair]:
    return [
        pair("p-ok-1"),
        pair("p-bad-1", verdict="runtime_error", flagged=True),
        pair("p-ok-2", task="explain"),
        pair("p-xss", answer=XSS_ANSWER, question="<img src=x onerror=alert(1)> What does lm do?"),
        pair("p-none", evaluated=False),
        pair("p-ja", locale="ja", question="Rで平均を求めるには？"),
    ]
