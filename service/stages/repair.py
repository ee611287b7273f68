"""Repair: a flagged answer is shown to the model again with the evidence against it.

The evidence is what the evaluator and the checks found, in the words they found it: R's verdict,
its error message, the line and call that failed, what the code really printed, and every failed
check with its own evidence (blocking ones first). The model writes the whole answer again; the new
answer goes through the same evaluation and checks.
"""

from __future__ import annotations

import re

from service.providers.base import Provider
from service.stages.answers import parse_answer
from service.stages.calls import Call, call_until_parsed
from service.stages.prompts import OUTPUT_MAX_CHARS, Template, repair_request
from service.stages.spec import Job, ResolvedTask, ResolvedTheme, locale_defaults
from service.wire.evaluate import Evaluation, Quality

__all__ = ["evidence_text", "parse_repair", "repair_answer"]

# "Corrected answer:" and the like, on a line of its own after the echoed evidence.
_LEAD_IN = re.compile(r"[^`\n]{0,40}[:：]\s*")


def evidence_text(job: Job, evaluation: Evaluation | None, quality: Quality) -> str:
    labels = locale_defaults(job.spec.locale).labels
    parts = []
    if evaluation is not None and evaluation.verdict not in ("passed", "no_code"):
        run = [f"verdict: {evaluation.verdict}"]
        if evaluation.message:
            run.append(f"R says: {evaluation.message.strip()}")
        if evaluation.line is not None:
            where = f"line {evaluation.line} of the code"
            if evaluation.failing_call:
                where += f", in `{evaluation.failing_call.strip()}`"
            run.append(where)
        if evaluation.stdout.strip():
            printed = evaluation.stdout.strip()
            if len(printed) > OUTPUT_MAX_CHARS:
                printed = printed[:OUTPUT_MAX_CHARS] + "\n…"
            run.append(f"printed before it stopped:\n```\n{printed}\n```")
        parts.append(labels.verdict + "\n" + "\n".join(f"- {r}" for r in run))
    failed = sorted((c for c in quality.checks if not c.passed), key=lambda c: not c.blocking)
    if failed:
        lines = [f"- {c.name}: {c.evidence}" for c in failed]
        parts.append(labels.failed_checks + "\n" + "\n".join(lines))
    return "\n\n".join(parts)


def _without_echo(text: str, prompt: str) -> str:
    """The reply minus the lines of the prompt copied back at its start, which small models do."""
    said = {line.strip() for line in prompt.splitlines() if line.strip()}
    lines = text.strip().splitlines()
    i = 0
    while (
        i < len(lines)
        and lines[i].strip().lower() != "```r"
        and (not lines[i].strip() or lines[i].strip() in said)
    ):
        i += 1
    if i == 0:
        return text
    if i < len(lines) and _LEAD_IN.fullmatch(lines[i].strip()):
        i += 1
    return "\n".join(lines[i:]).strip()


def parse_repair(text: str, prompt: str) -> str:
    """An answer, as `parse_answer` reads one, from a reply to the repair turn `prompt`."""
    return parse_answer(_without_echo(text, prompt))


async def repair_answer(
    provider: Provider,
    job: Job,
    template: Template,
    task: ResolvedTask,
    theme: ResolvedTheme,
    *,
    question: str,
    question_output: str,
    answer: str,
    evidence: str,
    retries: int,
) -> Call[str]:
    request = repair_request(
        job,
        template,
        task,
        theme,
        question=question,
        question_output=question_output,
        answer=answer,
        evidence=evidence,
    )
    prompt = request.messages[-1].content
    return await call_until_parsed(
        provider, request, lambda text: parse_repair(text, prompt), retries=retries
    )
