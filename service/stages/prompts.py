"""Prompt templates: load, check and render them into provider requests.

A template file has two parts split by a line `=== user ===`. The part above is the
system prompt (the part below may hold further turns, split by `=== assistant ===` and
`=== user ===` lines): it may use only job-wide placeholders and `few_shot` (the examples of the
call's own task), so it is byte-identical for every call of one task in a job and providers
serve it from their prompt cache. The part below varies per call. Placeholders are
`{{name}}`; an unknown one is a 400, not a silent gap.

The steps and their templates (`prompts/<kind>.<locale>.md`):

    question       questions straight from the requirements, a few per call (generate)
    snippet        a short runnable script for the theme (explain, fix: the code comes first)
    bug            one bug put into that script (fix)
    code_question  the question written around the checked code (explain, fix)
    answer         the answer to one question
    repair         a flagged answer rewritten from its evidence
"""

from __future__ import annotations

import hashlib
import itertools
import re
from typing import Literal

import msgspec

from evaluator import extract_code
from service.errors import InvalidInput
from service.providers.base import CompletionRequest, Message
from service.stages.spec import Job, ResolvedTask, ResolvedTheme, locale_defaults, prompts_dir
from service.wire.evaluate import Evaluation
from service.wire.generate import FewShot

__all__ = [
    "KINDS",
    "SPLIT",
    "Kind",
    "Template",
    "answer_request",
    "bug_request",
    "code_question_request",
    "describe_run",
    "load_template",
    "load_templates",
    "question_output",
    "question_request",
    "repair_request",
    "snippet_request",
]

SPLIT = "=== user ==="
Kind = Literal["question", "answer", "snippet", "bug", "code_question", "repair"]
KINDS: tuple[Kind, ...] = ("question", "answer", "snippet", "bug", "code_question", "repair")

SYSTEM_VARS = frozenset({"tasks", "conventions", "answer_rules", "few_shot", "language"})
_CELL = frozenset({"task_id", "task_description", "task_instructions", "theme_id", "theme_description"})
CALL_VARS: dict[Kind, frozenset[str]] = {
    "question": _CELL | {"count", "avoid"},
    "answer": _CELL | {"question", "question_output"},
    "snippet": _CELL | {"avoid"},
    "bug": _CELL | {"code", "output"},
    "code_question": _CELL | {"code", "run_result"},
    "repair": _CELL | {"question", "question_output", "answer", "evidence"},
}
PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")
# Bound the avoid-list so a large cell cannot blow up the prompt.
AVOID_MAX_ITEMS = 40
AVOID_MAX_CHARS = 300
OUTPUT_MAX_CHARS = 1500


TURN = re.compile(r"^=== (user|assistant) ===[ \t]*$", re.M)


class Template(msgspec.Struct, frozen=True, kw_only=True):
    """`turns`: the conversation after the system prompt, a user turn first. A template writes further
    turns with lines `=== assistant ===` and `=== user ===` (the repair step shows the model its own
    previous answer as its own turn)."""

    kind: Kind
    id: str
    sha256: str
    system: str
    turns: tuple[tuple[Literal["user", "assistant"], str], ...]

    @property
    def user(self) -> str:
        return self.turns[0][1]


def _parse(kind: Kind, text: str, template_id: str, field: str) -> Template:
    if SPLIT not in text:
        raise InvalidInput(f"template has no line {SPLIT!r} separating system and user parts", field=field)
    system, user = text.split(SPLIT, 1)
    pieces = TURN.split(user)
    turns: list[tuple[Literal["user", "assistant"], str]] = [("user", pieces[0].strip())]
    turns += [(role, body.strip()) for role, body in zip(pieces[1::2], pieces[2::2], strict=True)]  # type: ignore[misc]
    for (role, _), (next_role, _) in itertools.pairwise(turns):
        if role == next_role:
            raise InvalidInput(f"two {role} turns in a row; turns alternate user and assistant", field=field)
    if turns[-1][0] != "user":
        raise InvalidInput("the last turn must be the user's", field=field)
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
        turns=tuple(turns),
    )


def load_template(job: Job, kind: Kind) -> Template:
    """The request's override if it has one, else `prompts/<kind>.<locale>.md`."""
    override = getattr(job.spec.prompts, kind)
    if override is not None:
        return _parse(kind, override, f"request:{kind}", f"prompts.{kind}")
    name = f"{kind}.{job.spec.locale}.md"
    return _parse(kind, (prompts_dir() / name).read_text(encoding="utf-8"), name, f"prompts.{kind}")


def load_templates(job: Job) -> dict[Kind, Template]:
    """Every step's template, checked now, so a bad override is a 400 before any call."""
    return {kind: load_template(job, kind) for kind in KINDS}


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


def _fenced(code: str) -> str:
    return f"```r\n{code.strip()}\n```"


def _example(kind: Kind, i: int, example: FewShot) -> str | None:
    head = f"## Example {i} ({example.task})"
    question, answer = example.question.strip(), example.answer.strip()
    if kind == "question":
        return f"{head}\n### Q1\n{question}"
    if kind == "code_question":
        return f"{head}\n{question}"
    if kind == "snippet":
        # The working code: a fix example's answer holds it, other examples show it in the question.
        code = extract_code(answer if example.task == "fix" else question).code
        return f"{head}\n{_fenced(code)}" if code.strip() else None
    if kind == "bug":
        working, broken = extract_code(answer).code, extract_code(question).code
        if not working.strip() or not broken.strip():
            return None
        return f"{head}\nWorking:\n{_fenced(working)}\nWith the bug:\n{_fenced(broken)}"
    return f"{head}\nQuestion:\n{question}\n\nAnswer:\n{answer}"


def _few_shot_text(job: Job, kind: Kind, task: ResolvedTask) -> str:
    """The examples of the call's own task only: other tasks' examples teach the wrong shape."""
    mine = [e for e in job.few_shot if e.task == task.id]
    blocks = [b for i, e in enumerate(mine, 1) if (b := _example(kind, i, e)) is not None]
    return "\n\n".join(blocks) if blocks else locale_defaults(job.spec.locale).none


def _shared_values(job: Job, kind: Kind, task: ResolvedTask) -> dict[str, str]:
    """The placeholders whose values are the same for every call of one task in a job."""
    return {
        "tasks": _tasks_text(job),
        "conventions": job.conventions,
        "answer_rules": job.answer_rules,
        "few_shot": _few_shot_text(job, kind, task),
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
    shared = _shared_values(job, template.kind, task)
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
        messages=tuple(Message(role, _render(text, values).strip()) for role, text in template.turns),
        model=model.name,
        temperature=temperature,
        max_tokens=model.max_tokens,
        seed=model.seed,
    )


def _answer_temperature(job: Job) -> float:
    model = job.spec.model
    return model.answer_temperature if model.answer_temperature is not None else model.temperature


def _avoid_text(job: Job, avoid: list[str]) -> str:
    if not avoid:
        return ""
    recent = avoid[-AVOID_MAX_ITEMS:]
    lines = [locale_defaults(job.spec.locale).avoid_header]
    for text in recent:
        flat = " ".join(text.split())
        lines.append("- " + (flat if len(flat) <= AVOID_MAX_CHARS else flat[:AVOID_MAX_CHARS] + "…"))
    return "\n".join(lines)


def _output_text(job: Job, output: str) -> str:
    output = output.rstrip()
    if len(output) > OUTPUT_MAX_CHARS:
        output = output[:OUTPUT_MAX_CHARS] + "\n…"
    return f"```\n{output}\n```" if output else locale_defaults(job.spec.locale).none


def describe_run(job: Job, run: Evaluation | None, *, intended_output: str | None = None) -> str:
    """What running a question's code showed, in the job's language: R's error, or what it printed
    (and, for a bug that changes the output, what the working script printed instead)."""
    labels = locale_defaults(job.spec.locale).labels
    if run is None:
        return labels.not_run
    if run.verdict != "passed":
        text = f"{labels.error}\n```\n{(run.message or run.verdict).strip()}\n```"
        return text
    text = f"{labels.prints}\n{_output_text(job, run.stdout)}"
    if intended_output is not None:
        text += f"\n{labels.intended}\n{_output_text(job, intended_output)}"
    return text


def question_output(job: Job, run: Evaluation | None) -> str:
    """The `question_output` placeholder: the question code's real result, or "" without one."""
    if run is None:
        return ""
    return f"{locale_defaults(job.spec.locale).labels.question_output}\n{describe_run(job, run)}"


def question_request(
    job: Job, template: Template, task: ResolvedTask, theme: ResolvedTheme, *, count: int, avoid: list[str]
) -> CompletionRequest:
    call = {"count": str(count), "avoid": _avoid_text(job, avoid)}
    request = _request(job, template, task, theme, call, job.spec.model.temperature)
    if count > 1:
        return request
    # Small models write more questions than asked, and the answers after them: asked for one, the
    # second heading ends the reply, so those tokens are neither waited for nor paid. Not a numbered
    # heading: the model may start at `### Q2`, and a stop there would leave nothing.
    return msgspec.structs.replace(request, stop=("\n### Q",))


def snippet_request(
    job: Job, template: Template, task: ResolvedTask, theme: ResolvedTheme, *, avoid: list[str]
) -> CompletionRequest:
    return _request(
        job, template, task, theme, {"avoid": _avoid_text(job, avoid)}, job.spec.model.temperature
    )


def bug_request(
    job: Job, template: Template, task: ResolvedTask, theme: ResolvedTheme, *, code: str, output: str
) -> CompletionRequest:
    call = {"code": _fenced(code), "output": _output_text(job, output)}
    return _request(job, template, task, theme, call, job.spec.model.temperature)


def code_question_request(
    job: Job, template: Template, task: ResolvedTask, theme: ResolvedTheme, *, code: str, run_result: str
) -> CompletionRequest:
    call = {"code": _fenced(code), "run_result": run_result}
    return _request(job, template, task, theme, call, job.spec.model.temperature)


def answer_request(
    job: Job,
    template: Template,
    task: ResolvedTask,
    theme: ResolvedTheme,
    *,
    question: str,
    question_output: str = "",
) -> CompletionRequest:
    call = {"question": question, "question_output": question_output}
    return _request(job, template, task, theme, call, _answer_temperature(job))


def repair_request(
    job: Job,
    template: Template,
    task: ResolvedTask,
    theme: ResolvedTheme,
    *,
    question: str,
    question_output: str,
    answer: str,
    evidence: str,
) -> CompletionRequest:
    call = {"question": question, "question_output": question_output, "answer": answer, "evidence": evidence}
    return _request(job, template, task, theme, call, _answer_temperature(job))
