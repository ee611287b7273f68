"""Question step: ask the model for a few distinct questions for one cell, and parse them.

The reply format is headings (`### Q1`, `### Q2`, …) rather than JSON: questions of
the fix and explain kinds carry multi-line R code, which small models escape badly
inside JSON strings. A JSON list of strings is accepted too.
"""

from __future__ import annotations

import re

import msgspec

from service.providers.base import Provider
from service.stages.calls import Call, MalformedReply, call_until_parsed
from service.stages.prompts import Template, question_request
from service.stages.spec import Job, ResolvedTask, ResolvedTheme

__all__ = ["generate_questions", "parse_questions"]

HEADING = re.compile(
    r"^[ \t]*(?:#{1,4}[ \t]*)?\**(?:Q|Question|問題|質問)[ \t]*(\d+)\**[ \t]*[:.:)]?[ \t]*\**", re.M
)
MIN_QUESTION_CHARS = 12


def _strip_fences_around(text: str) -> str:
    m = re.fullmatch(r"\s*```[a-zA-Z]*\n(.*?)\n```\s*", text, re.S)
    return m.group(1) if m else text


def parse_questions(text: str) -> list[str]:
    """Split a reply into questions; raise `MalformedReply` when none is found."""
    text = text.strip()
    if not text:
        raise MalformedReply("empty reply")
    inner = _strip_fences_around(text)
    if inner.lstrip().startswith(("[", "{")):
        try:
            data = msgspec.json.decode(inner)
        except msgspec.DecodeError as exc:
            raise MalformedReply(f"broken JSON: {exc}") from None
        if isinstance(data, dict):
            data = data.get("questions")
        if not isinstance(data, list) or not all(isinstance(q, str) for q in data):
            raise MalformedReply("JSON reply is not a list of question strings")
        found = [q.strip() for q in data]
    else:
        starts = list(HEADING.finditer(text))
        if not starts:
            raise MalformedReply("no question headings (### Q1, ### Q2, …) found")
        found = []
        for m, nxt in zip(starts, [*starts[1:], None], strict=True):
            body = text[m.end() : nxt.start() if nxt else len(text)]
            found.append(body.strip())
    questions = [q for q in found if len(q) >= MIN_QUESTION_CHARS]
    if not questions:
        raise MalformedReply("the reply's questions are empty or too short")
    return questions


async def generate_questions(
    provider: Provider,
    job: Job,
    template: Template,
    task: ResolvedTask,
    theme: ResolvedTheme,
    *,
    count: int,
    avoid: list[str],
    retries: int,
) -> Call[list[str]]:
    """One question call, retried on unusable content; raises `MalformedReply` after the last try."""
    request = question_request(job, template, task, theme, count=count, avoid=avoid)
    call = await call_until_parsed(provider, request, parse_questions, retries=retries)
    return msgspec.structs.replace(call, value=call.value[:count])
