"""Code first: the question steps of explain and fix, where a question is only as good as its code.

A small model asked in one step for "a question with broken code" rarely shows any code, and its
"broken" code often runs. So the steps are split, each with its own template:

    snippet        the model writes a short script for the theme; it must run in the sandbox and print
    bug (fix)      the model puts one bug into it; it must make R stop or print something else.
                   When it does not, mutations of the working code are tried instead (an object
                   misspelt after it was defined, a similar function, a flipped logical argument, a
                   formula turned round), found by R's own parser and each run to see it bites
    code_question  the model writes the question around that code, told what running it showed;
                   the exact checked code is put into the question, whatever the reply did to it

Every step's provenance is kept. What cannot be made is a `Skipped` with its reason; the cell then
asks for another item.
"""

from __future__ import annotations

import hashlib
import random
import re
from collections.abc import Awaitable, Callable
from typing import Any, Literal, TypeVar

import msgspec

from service.providers.base import Provider
from service.stages.calls import Call, MalformedReply, call_until_parsed
from service.stages.evaluate import Sandbox
from service.stages.prompts import (
    Kind,
    Template,
    bug_request,
    code_question_request,
    describe_run,
    snippet_request,
)
from service.stages.quality import fences, parse_snippet, parse_tokens
from service.stages.quality._rcode import CodeFacts, Comment, Mutation
from service.stages.spec import Job, ResolvedTask, ResolvedTheme
from service.wire.evaluate import Evaluation
from service.wire.generate import BugProvenance, DropReason, DropStage, StepProvenance

__all__ = [
    "CodeDraft",
    "Skipped",
    "compose_question",
    "make_code_question",
    "parse_code",
    "strip_hints",
]

T = TypeVar("T")
MIN_CODE_LINES = 2
MIN_PROSE_CHARS = 15
MUTATIONS_TRIED = 4
# A comment that gives the bug away.
HINT = re.compile(
    r"bug|error|typo|mistake|wrong|fix|incorrect|should be|misspel|instead|バグ|誤|間違|修正|エラー|正しく|本来",
    re.I,
)
_LABEL = re.compile(
    r"^\s*(?:#{1,4}\s*)?(?:\*\*)?(?:Question|Q1|質問|問題)(?:\*\*)?\s*[:：]?\s*(?:\*\*)?\s*\n", re.I
)
_R_LIKE = re.compile(r"<-|\w\(")


class CodeDraft(msgspec.Struct, frozen=True, kw_only=True):
    """A question written around code that was run: `run` is how that exact code ran."""

    question: str
    code: str
    run: Evaluation | None
    snippet: StepProvenance
    bug: BugProvenance | None
    question_step: StepProvenance
    mended: list[str] = []


class Skipped(msgspec.Struct, frozen=True, kw_only=True):
    stage: DropStage
    reason: DropReason
    detail: str
    text: str = ""


# What the caller hands in to make one call: it counts the call against the cell and the item.
Caller = Callable[[Awaitable[Call[Any]]], Awaitable[Call[Any]]]
StepOf = Callable[[Template, Call[Any]], StepProvenance]


def parse_code(reply: str) -> str:
    """The R script of a reply: its first R (or untagged, R-looking) fenced block."""
    for fence in fences(reply):
        if fence.language in ("r", "{r}", "rscript", "") and _R_LIKE.search(fence.content):
            code = fence.content.rstrip("\n")
            if len([ln for ln in code.splitlines() if ln.strip()]) < MIN_CODE_LINES:
                raise MalformedReply("the R block has fewer than two lines of code")
            return code
    if reply.count("```") % 2 == 1:
        raise MalformedReply("the reply ends inside an unclosed code fence (cut off by max_tokens?)")
    raise MalformedReply("no ```r code block in the reply")


def _is_r(language: str, content: str) -> bool:
    return language in ("r", "{r}", "rscript") or (language == "" and bool(_R_LIKE.search(content)))


def compose_question(reply: str, code: str) -> str:
    """The question as the model wrote it, with the checked code in its first R block (or after its
    first paragraph when it left the code out) and no other copy of the code."""
    text = _LABEL.sub("", reply.strip(), count=1).strip()
    lines = text.split("\n")
    blocks = [f for f in fences(text) if _is_r(f.language, f.content)]
    block = ["```r", *code.split("\n"), "```"]
    if blocks:
        out: list[str] = []
        i = 0
        for n, fence in enumerate(blocks):
            out += lines[i : fence.line]
            if n == 0:
                out += block
            i = fence.end
        out += lines[i:]
        composed = "\n".join(out)
    else:
        head, *tail = re.split(r"\n\s*\n", text, maxsplit=1)
        composed = "\n\n".join([head, "\n".join(block), *tail])
    prose = re.sub(r"```.*?```", "", composed, flags=re.S)
    if len(prose.strip()) < MIN_PROSE_CHARS:
        raise MalformedReply("the question has no text around the code")
    return composed.strip()


def strip_hints(code: str, comments: list[Comment]) -> str:
    """Remove the comments that give a bug away (`# bug: should be scores`); a line left empty goes."""
    lines = code.split("\n")
    drop: set[int] = set()
    for comment in comments:
        line = comment.line
        if not HINT.search(comment.text) or not 0 < line <= len(lines):
            continue
        source = lines[line - 1]
        kept = (source[: comment.col1 - 1] + source[comment.col2 :]).rstrip()
        if kept.strip():
            lines[line - 1] = kept
        else:
            drop.add(line - 1)
    return "\n".join(ln for i, ln in enumerate(lines) if i not in drop)


def _same_output(a: Evaluation, b: Evaluation) -> bool:
    return " ".join(a.stdout.split()) == " ".join(b.stdout.split())


def _normalised(code: str) -> str:
    return "\n".join(" ".join(line.split()) for line in code.splitlines() if line.strip())


def _bites(run: Evaluation, working: Evaluation) -> Literal["error", "output"] | None:
    """The symptom of a bug: `error` when R stops, `output` when it prints something else."""
    if run.verdict in ("parse_error", "runtime_error"):
        return "error"
    if run.verdict == "passed" and not _same_output(run, working):
        return "output"
    return None


class _Steps(msgspec.Struct, frozen=True, kw_only=True):
    provider: Provider
    job: Job
    templates: dict[Kind, Template]
    task: ResolvedTask
    theme: ResolvedTheme
    sandbox: Sandbox | None
    call: Caller
    step: StepOf
    retries: int

    async def ask(self, request: Any, parse: Callable[[str], T]) -> Call[T]:
        return await self.call(call_until_parsed(self.provider, request, parse, retries=self.retries))


async def _code_facts(sandbox: Sandbox, code: str) -> CodeFacts:
    """The comments, candidate bugs and mends of `code`, from R's parser in the sandbox."""
    snippet, marker = parse_snippet(code)
    result = await sandbox.run(snippet)
    return parse_tokens(result.stdout, marker)


def _edited(code: str, edit: Mutation) -> str:
    lines = code.split("\n")
    if 0 < edit.line <= len(lines):
        lines[edit.line - 1] = edit.new_line
    return "\n".join(lines)


async def _mended(sandbox: Sandbox, code: str) -> tuple[str, list[str], CodeFacts | None]:
    """The script with the slips small models make most (`print("mean:", m)`) rewritten, what was,
    and the parser's facts when they still hold (nothing was rewritten).

    The script is the service's own material for a question, not an answer: making it say what it
    meant loses nothing, where asking again would cost a call."""
    facts = await _code_facts(sandbox, code)
    done: list[str] = []
    # One rewrite a line: each is the whole line rewritten from the script as written.
    for edit in sorted({m.line: m for m in reversed(facts.mends)}.values(), key=lambda m: m.line):
        done.append(f"line {edit.line}: {edit.description}: {edit.new_line.strip()}")
        code = _edited(code, edit)
    return code, done, None if done else facts


async def _unchecked_bug(s: _Steps, code: str) -> tuple[str, BugProvenance] | Skipped:
    """Without the sandbox: the model's bug, taken on trust (nothing can show it bites)."""
    try:
        call = await s.ask(
            bug_request(s.job, s.templates["bug"], s.task, s.theme, code=code, output=""), parse_code
        )
    except MalformedReply as exc:
        return Skipped(stage="bug", reason=exc.failure_reason, detail=exc.reason, text=code)
    if _normalised(call.value) == _normalised(code):
        return Skipped(
            stage="bug", reason="bug_not_effective", detail="the script came back unchanged", text=code
        )
    return call.value, BugProvenance(source="model", step=s.step(s.templates["bug"], call))


async def _plant_bug(
    s: _Steps, code: str, working: Evaluation, facts: CodeFacts | None
) -> tuple[str, Evaluation, BugProvenance] | Skipped:
    """The model's bug if it bites, else the first mutation of the working code that does; `facts`
    are the working code's, when already known."""
    assert s.sandbox is not None
    tried = []
    step = None
    try:
        call = await s.ask(
            bug_request(s.job, s.templates["bug"], s.task, s.theme, code=code, output=working.stdout),
            parse_code,
        )
    except MalformedReply as exc:
        call = None
        tried.append(f"the model's bug: {exc.reason}")
    if call is not None:
        step = s.step(s.templates["bug"], call)
        bug_facts = await _code_facts(s.sandbox, call.value)
        broken = strip_hints(call.value, bug_facts.comments)
        if _normalised(broken) == _normalised(code):
            tried.append("the model's bug: it returned the script unchanged")
        else:
            run = await s.sandbox.code(s.task.id, broken)
            symptom = _bites(run, working)
            if symptom is not None:
                return broken, run, BugProvenance(source="model", symptom=symptom, step=step)
            tried.append("the model's bug: the script still runs and prints the same")
    if facts is None:
        facts = await _code_facts(s.sandbox, code)
    mutations = list(facts.mutations)
    if not facts.parsed:
        tried.append("mutations: R could not parse the working script")
    elif not mutations:
        tried.append("no mutation of the working script was found")
    rng = random.Random(hashlib.sha256(code.encode()).digest())
    rng.shuffle(mutations)
    lines = code.split("\n")
    for mutation in mutations[:MUTATIONS_TRIED]:
        if not 0 < mutation.line <= len(lines):
            continue
        broken = _edited(code, mutation)
        run = await s.sandbox.code(s.task.id, broken)
        symptom = _bites(run, working)
        if symptom is not None:
            return (
                broken,
                run,
                BugProvenance(
                    source="mutation",
                    symptom=symptom,
                    mutation=f"{mutation.kind}: {mutation.description}",
                    step=step,
                    tried=tried,
                ),
            )
        tried.append(f"{mutation.kind} ({mutation.description}): the script still prints the same")
    return Skipped(stage="bug", reason="bug_not_effective", detail="; ".join(tried), text=code)


async def make_code_question(
    *,
    provider: Provider,
    job: Job,
    templates: dict[Kind, Template],
    task: ResolvedTask,
    theme: ResolvedTheme,
    sandbox: Sandbox | None,
    call: Caller,
    step: StepOf,
    avoid: list[str],
    retries: int,
) -> CodeDraft | Skipped:
    """Snippet → run → (bug → run) → question. Provider errors propagate; anything else that goes
    wrong is a `Skipped`. Without a sandbox (evaluation off) the steps are the same and nothing runs."""
    s = _Steps(
        provider=provider,
        job=job,
        templates=templates,
        task=task,
        theme=theme,
        sandbox=sandbox,
        call=call,
        step=step,
        retries=retries,
    )
    try:
        snippet_call = await s.ask(
            snippet_request(job, templates["snippet"], task, theme, avoid=avoid), parse_code
        )
    except MalformedReply as exc:
        return Skipped(stage="snippet", reason=exc.failure_reason, detail=exc.reason)
    code = snippet_call.value
    snippet_step = step(templates["snippet"], snippet_call)
    shown: str = code
    run: Evaluation | None = None
    bug: BugProvenance | None = None
    if sandbox is None:
        if task.kind == "fix":
            unchecked = await _unchecked_bug(s, code)
            if isinstance(unchecked, Skipped):
                return unchecked
            shown, bug = unchecked
        return await _question_around(s, shown, None, bug, snippet_step, None)
    code, mended, facts = await _mended(sandbox, code)
    shown = code
    working = await sandbox.code(task.id, code)
    if working.verdict != "passed":
        detail = f"{working.verdict}: {working.message or ''}".strip(": ")
        if working.line is not None:
            detail += f" (line {working.line}: {working.failing_call or ''})"
        return Skipped(stage="snippet", reason="snippet_failed", detail=detail, text=code)
    if not working.stdout.strip():
        return Skipped(
            stage="snippet", reason="snippet_failed", detail="the script prints nothing", text=code
        )
    run = working
    if task.kind == "fix":
        planted = await _plant_bug(s, code, working, facts)
        if isinstance(planted, Skipped):
            return planted
        shown, run, bug = planted
    intended = working.stdout if bug is not None and bug.symptom == "output" else None
    draft = await _question_around(s, shown, run, bug, snippet_step, intended)
    return msgspec.structs.replace(draft, mended=mended) if isinstance(draft, CodeDraft) else draft


async def _question_around(
    s: _Steps,
    shown: str,
    run: Evaluation | None,
    bug: BugProvenance | None,
    snippet_step: StepProvenance,
    intended: str | None,
) -> CodeDraft | Skipped:
    template = s.templates["code_question"]
    try:
        q_call = await s.ask(
            code_question_request(
                s.job,
                template,
                s.task,
                s.theme,
                code=shown,
                run_result=describe_run(s.job, run, intended_output=intended),
            ),
            lambda reply: compose_question(reply, shown),
        )
    except MalformedReply as exc:
        return Skipped(stage="question", reason=exc.failure_reason, detail=exc.reason, text=shown)
    return CodeDraft(
        question=q_call.value,
        code=shown,
        run=run,
        snippet=snippet_step,
        bug=bug,
        question_step=s.step(template, q_call),
    )
