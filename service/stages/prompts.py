"""Prompt templates: load, check and render them into provider requests.

A template file has two parts split by a line `=== user ===`. The part above is the
system prompt: it may use only job-wide placeholders, so it is byte-identical for
every call of a job and providers serve it from their prompt cache. The part below
varies per call. Placeholders are `{{name}}`; an unknown one is a 400, not a silent gap.
"""

from __future__ import annotations

import hashlib
import re
from typing import Literal

import msgspec

from service.errors import InvalidInput
from service.providers.base import CompletionRequest, Message
from service.stages.spec import Job, ResolvedTask, ResolvedTheme, locale_defaults, prompts_dir

__all__ = ["SPLIT", "Template", "answer_request", "load_template", "question_request"]

SPLIT = "=== user ==="
Kind = Literal["question", "answer"]

SYSTEM_VARS = frozenset({"tasks", "conventions", "answer_rules", "few_shot", "language"})
CALL_VARS: dict[Kind, frozenset[str]] = {
    "question": frozenset(
        {
            "task_id",
            "task_description",
            "task_instructions",
            "theme_id",
            "theme_description",
            "count",
            "avoid",
        }
    ),
    "answer": frozenset(
        {"task_id", "task_description", "task_instructions", "theme_id", "theme_description", "question"}
    ),
}
PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")
# Bound the avoid-list so a large cell cannot blow up the prompt.
AVOID_MAX_ITEMS = 40
AVOID_MAX_CHARS = 300


class Template(msgspec.Struct, frozen=True, kw_only=True):
    kind: Kind
    id: str
    sha256: str
    system: str
    user: str


def _parse(kind: Kind, text: str, template_id: str, field: str) -> Template:
    if SPLIT not in text:
        raise InvalidInput(f"template has no line {SPLIT!r} separating system and user parts", field=field)
    system, user = text.split(SPLIT, 1)
    for part, allowed in ((system, SYSTEM_VARS), (user, SYSTEM_VARS | CALL_VARS[kind])):
        for name in PLACEHOLDER.findall(part):
            if name not in allowed:
                raise InvalidInput(
                    f"unknown placeholder {{{{{name}}}}} here; allowed: {', '.join(sorted(allowed))}",
                    field=field,
                )
    return Template(
        kind=kind,
        id=template_id,
        sha256=hashlib.sha256(text.encode()).hexdigest(),
        system=system.strip(),
        user=user.strip(),
    )


def load_template(job: Job, kind: Kind) -> Template:
    """The request's override if it has one, else `prompts/<kind>.<locale>.md`."""
    override = job.spec.prompts.question if kind == "question" else job.spec.prompts.answer
    if override is not None:
        return _parse(kind, override, f"request:{kind}", f"prompts.{kind}")
    name = f"{kind}.{job.spec.locale}.md"
    return _parse(kind, (prompts_dir() / name).read_text(encoding="utf-8"), name, f"prompts.{kind}")


def _render(text: str, values: dict[str, str]) -> str:
    return PLACEHOLDER.sub(lambda m: values[m.group(1)], text)


def _tasks_text(job: Job) -> str:
    lines = []
    for task in job.tasks.values():
        line = f"- {task.id}: {task.description}"
        if task.instructions:
            line += f" — {task.instructions}"
        lines.append(line)
    return "\n".join(lines)


def _few_shot_text(job: Job, kind: Kind) -> str:
    if not job.few_shot:
        return locale_defaults(job.spec.locale).none
    blocks = []
    for i, example in enumerate(job.few_shot, 1):
        block = f"## Example {i} ({example.task})\n### Q1\n{example.question.strip()}"
        if kind == "answer":
            block = f"## Example {i} ({example.task})\nQuestion:\n{example.question.strip()}\n\nAnswer:\n"
            block += example.answer.strip()
        blocks.append(block)
    return "\n\n".join(blocks)


def _job_values(job: Job, kind: Kind) -> dict[str, str]:
    """The placeholders whose values are the same for every call of a job."""
    return {
        "tasks": _tasks_text(job),
        "conventions": job.conventions,
        "answer_rules": job.answer_rules,
        "few_shot": _few_shot_text(job, kind),
        "language": job.spec.language,
    }


def _request(
    job: Job,
    template: Template,
    task: ResolvedTask,
    theme: ResolvedTheme,
    call: dict[str, str],
    temperature: float,
) -> CompletionRequest:
    shared = _job_values(job, template.kind)
    values = (
        shared
        | call
        | {
            "task_id": task.id,
            "task_description": task.description,
            "task_instructions": task.instructions,
            "theme_id": theme.id,
            "theme_description": theme.description,
        }
    )
    model = job.spec.model
    return CompletionRequest(
        system=_render(template.system, shared),
        messages=(Message("user", _render(template.user, values).strip()),),
        model=model.name,
        temperature=temperature,
        max_tokens=model.max_tokens,
        seed=model.seed,
    )


def _avoid_text(job: Job, avoid: list[str]) -> str:
    if not avoid:
        return ""
    recent = avoid[-AVOID_MAX_ITEMS:]
    lines = [locale_defaults(job.spec.locale).avoid_header]
    for text in recent:
        flat = " ".join(text.split())
        lines.append("- " + (flat if len(flat) <= AVOID_MAX_CHARS else flat[:AVOID_MAX_CHARS] + "…"))
    return "\n".join(lines)


def question_request(
    job: Job, template: Template, task: ResolvedTask, theme: ResolvedTheme, *, count: int, avoid: list[str]
) -> CompletionRequest:
    call = {"count": str(count), "avoid": _avoid_text(job, avoid)}
    return _request(job, template, task, theme, call, job.spec.model.temperature)


def answer_request(
    job: Job, template: Template, task: ResolvedTask, theme: ResolvedTheme, *, question: str
) -> CompletionRequest:
    model = job.spec.model
    temperature = model.answer_temperature if model.answer_temperature is not None else model.temperature
    return _request(job, template, task, theme, {"question": question}, temperature)
