"""Answer step: one call per question, with its own template."""

from __future__ import annotations

import re

from service.providers.base import Provider
from service.stages.calls import Call, MalformedReply, call_until_parsed
from service.stages.prompts import Template, answer_request
from service.stages.spec import Job, ResolvedTask, ResolvedTheme

__all__ = ["generate_answer", "parse_answer"]

LEAD_LABEL = re.compile(r"^\s*(?:\*\*)?(?:Answer|回答|解答)(?:\*\*)?\s*[:：]\s*", re.I)
# Small models sometimes echo the few-shot layout ("## Example 2 (fix)", "Question:", "Answer:").
EXAMPLE_ECHO = re.compile(
    r"^\s*#+\s*Example\s+\d+\s*\([^)\n]*\)\s*\n(?:\s*Question\s*[:：].*?\n\s*Answer\s*[:：]\s*\n)?", re.S
)
MIN_ANSWER_CHARS = 20


def parse_answer(text: str) -> str:
    """The whole reply is the answer, minus a leading "Answer:" label some models add."""
    answer = EXAMPLE_ECHO.sub("", text.strip(), count=1)
    answer = LEAD_LABEL.sub("", answer.strip(), count=1).strip()
    if len(answer) < MIN_ANSWER_CHARS:
        raise MalformedReply("empty answer" if not answer else f"answer too short ({len(answer)} characters)")
    if answer.count("```") % 2 == 1:
        raise MalformedReply("answer ends inside an unclosed code fence (cut off by max_tokens?)")
    return answer


async def generate_answer(
    provider: Provider,
    job: Job,
    template: Template,
    task: ResolvedTask,
    theme: ResolvedTheme,
    *,
    question: str,
    question_output: str = "",
    retries: int,
) -> Call[str]:
    request = answer_request(job, template, task, theme, question=question, question_output=question_output)
    return await call_until_parsed(provider, request, parse_answer, retries=retries)
