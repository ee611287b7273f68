"""Wire ↔ evaluator: the only stage that runs R, through a `Runner` it is handed.

`evaluate_answer` is what the generation pipeline calls per answer; `evaluate_request`
serves POST /v1/evaluate; `build_report` serves POST /v1/reports. The verdict policy
(`flagged`) and the report itself live in the evaluator, so the CLI and the service
say the same thing about the same answer.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Hashable, Iterable, Sequence
from typing import Literal, TypeVar

import msgspec

import evaluator
from service.errors import InvalidInput, SandboxBusy, SandboxUnavailable
from service.stages import quality
from service.stages.spec import BUILT_IN_KINDS, locale_defaults
from service.wire.evaluate import EvaluateRequest, EvaluateResponse, Evaluation, Quality, SnippetResult
from service.wire.generate import CheckCount, Pair
from service.wire.reports import Report, ReportGroup, ReportItem

T = TypeVar("T")

__all__ = [
    "Evaluate",
    "Sandbox",
    "answer_evaluator",
    "build_report",
    "check_pair",
    "check_request",
    "evaluate_answer",
    "evaluate_code",
    "evaluate_request",
    "needs_runner",
    "to_check",
    "to_evaluation",
]


def to_evaluation(check: evaluator.Check, *, task: str) -> Evaluation:
    """The same fields on the wire, plus the policy's reading of the verdict for this task."""
    fields = msgspec.structs.asdict(check)
    return msgspec.convert({**fields, "flagged": evaluator.is_flagged(check.verdict, task)}, Evaluation)


def to_check(evaluation: Evaluation) -> evaluator.Check:
    return msgspec.convert(evaluation, evaluator.Check, from_attributes=True)


def _translate(exc: evaluator.SandboxUnavailable) -> SandboxUnavailable:
    if isinstance(exc, evaluator.QueueFull):
        return SandboxBusy(str(exc), retry_after_s=exc.retry_after_s)
    return SandboxUnavailable(str(exc))


async def evaluate_answer(
    runner: evaluator.Runner, *, task: str, answer: str, owner: Hashable | None = None
) -> Evaluation:
    """Run the R code blocks of a markdown answer. A sandbox that breaks raises `SandboxUnavailable`
    (`SandboxBusy` when too many snippets wait). `owner` is whose work it is: owners take turns."""
    try:
        check = await evaluator.check_answer(runner, answer, owner=owner)
    except evaluator.SandboxUnavailable as exc:
        raise _translate(exc) from exc
    return to_evaluation(check, task=task)


# (task, answer) -> Evaluation: what the pipeline and the review import call, runner already bound.
Evaluate = Callable[[str, str], Awaitable[Evaluation]]


class Sandbox:
    """A runner bound for one job: callable as an `Evaluate` (an answer's code), and it runs plain code
    (a question's code) and the quality checks' own snippets, all through `runner.run(code)`, as one
    owner's work in the pool's turns."""

    def __init__(self, runner: evaluator.Runner) -> None:
        self.runner = runner
        self.owner = object()

    async def __call__(self, task: str, answer: str) -> Evaluation:
        return await evaluate_answer(self.runner, task=task, answer=answer, owner=self.owner)

    async def code(self, task: str, code: str) -> Evaluation:
        return await evaluate_code(self.runner, task=task, code=code, owner=self.owner)

    async def run(self, code: str) -> evaluator.RunResult:
        try:
            return await self.runner.run(code, owner=self.owner)
        except evaluator.SandboxUnavailable as exc:
            raise _translate(exc) from exc


def answer_evaluator(runner: evaluator.Runner) -> Sandbox:
    """One sandbox per job: its snippets are one owner's work in the pool's turns."""
    return Sandbox(runner)


async def evaluate_code(
    runner: evaluator.Runner, *, task: str, code: str, owner: Hashable | None = None
) -> Evaluation:
    """Run plain R code."""
    try:
        check = await evaluator.check_code(runner, code, owner=owner)
    except evaluator.SandboxUnavailable as exc:
        raise _translate(exc) from exc
    return to_evaluation(check, task=task)


async def _all(coros: Iterable[Awaitable[T]]) -> list[T]:
    """Every result in order; on the first failure the rest are cancelled (their snippets leave
    the queue) and that failure is raised as it is."""
    tasks = [asyncio.ensure_future(c) for c in coros]
    try:
        return list(await asyncio.gather(*tasks))
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise


def check_request(request: EvaluateRequest) -> None:
    """A request must hold something to run."""
    if not request.pairs and not request.snippets:
        raise InvalidInput("give at least one pair or snippet to evaluate", field="pairs")


async def evaluate_request(runner: evaluator.Runner, request: EvaluateRequest) -> EvaluateResponse:
    """Run every pair's answer and every snippet; the runner's pool decides how many run at once.
    Results keep request order; a pair's old `evaluation` is replaced."""
    check_request(request)
    started = time.perf_counter()
    owner = object()  # this request's snippets take their turns together
    evaluations = await _all(
        [
            *(evaluate_answer(runner, task=p.task, answer=p.answer, owner=owner) for p in request.pairs),
            *(evaluate_code(runner, task="generate", code=s.code, owner=owner) for s in request.snippets),
        ]
    )
    pair_evals, snippet_evals = evaluations[: len(request.pairs)], evaluations[len(request.pairs) :]
    counts = Counter(e.verdict for e in evaluations)
    return EvaluateResponse(
        pairs=[
            msgspec.structs.replace(p, evaluation=e) for p, e in zip(request.pairs, pair_evals, strict=True)
        ],
        snippets=[
            SnippetResult(id=s.id, evaluation=e) for s, e in zip(request.snippets, snippet_evals, strict=True)
        ],
        counts=dict(sorted(counts.items())),
        flagged=sum(e.flagged for e in evaluations),
        elapsed_s=round(time.perf_counter() - started, 3),
    )


def needs_runner(pairs: Sequence[Pair], mode: Literal["missing", "all", "none"]) -> bool:
    return mode == "all" or (mode == "missing" and any(p.evaluation is None for p in pairs))


async def check_pair(sandbox: Sandbox, pair: Pair, evaluation: Evaluation | None) -> Quality:
    """The task-aware checks of a pair made elsewhere: the built-in policy of its task (a task that is
    not built in gets the checks every task gets) and the built-in conventions of its locale."""
    kind = pair.task if pair.task in BUILT_IN_KINDS else None
    policy = quality.policy_for(pair.task, kind, {})
    question_checks, facts = await quality.check_question(
        sandbox, task=pair.task, kind=kind, locale=pair.locale, question=pair.question, policy=policy
    )
    answer_checks = await quality.check_answer(
        sandbox,
        task=pair.task,
        kind=kind,
        locale=pair.locale,
        conventions=locale_defaults(pair.locale).conventions,
        question=facts,
        answer=pair.answer,
        evaluation=evaluation,
        policy=policy,
    )
    return quality.combine(question_checks, answer_checks)


def _check_counts(tallies: dict[str, evaluator.CheckTally]) -> dict[str, CheckCount]:
    return {
        name: CheckCount(passed=t.passed, failed=t.failed, pass_rate=round(t.pass_rate, 4))
        for name, t in tallies.items()
    }


def _diversity(pairs: Sequence[Pair]) -> dict[tuple[str, str], float | None]:
    groups: dict[tuple[str, str], list[str]] = {}
    for p in pairs:
        groups.setdefault((p.task, p.theme), []).append(p.question)
    return {key: quality.diversity(questions) for key, questions in groups.items()}


async def build_report(
    pairs: Sequence[Pair],
    *,
    runner: evaluator.Runner | None,
    evaluate: Literal["missing", "all", "none"] = "missing",
    title: str = "R answer validation report",
) -> tuple[Report, str]:
    """The report as wire data and as HTML. Pairs are run as `evaluate` says, and a pair that runs
    gets its task-aware checks when it has none (all of them again under `all`); `runner` may be
    None only when nothing needs running."""
    evaluations: list[Evaluation | None] = [p.evaluation for p in pairs]
    qualities: list[Quality | None] = [p.quality for p in pairs]
    todo = [
        i
        for i, p in enumerate(pairs)
        if evaluate == "all" or (evaluate == "missing" and p.evaluation is None)
    ]
    sandbox: dict[str, str] = {}
    if todo:
        if runner is None:
            raise SandboxUnavailable(
                "the report needs the R sandbox to evaluate pairs, and it is not running"
            )
        sandbox = runner.describe()
        bound = Sandbox(runner)

        async def one(i: int) -> tuple[Evaluation, Quality | None]:
            pair = pairs[i]
            evaluation = await bound(pair.task, pair.answer)
            checked = qualities[i]
            if checked is None or evaluate == "all":
                checked = await check_pair(bound, pair, evaluation)
            return evaluation, checked

        done = await _all(one(i) for i in todo)
        for i, (evaluation, checked) in zip(todo, done, strict=True):
            evaluations[i] = evaluation
            qualities[i] = checked
    entries = [
        evaluator.ReportEntry(
            id=p.id,
            task=p.task,
            theme=p.theme,
            question=p.question,
            answer=p.answer,
            check=to_check(ev) if ev is not None else None,
            checks=tuple(
                evaluator.QualityMark(name=c.name, passed=c.passed, blocking=c.blocking, evidence=c.evidence)
                for c in (q.checks if q is not None else [])
            ),
            repaired=bool(p.provenance and p.provenance.repairs) and not (q is not None and q.flagged),
            top_up=bool(p.provenance and p.provenance.top_up),
            cost_usd=p.provenance.cost_usd if p.provenance is not None else None,
        )
        for p, ev, q in zip(pairs, evaluations, qualities, strict=True)
    ]
    variety = await asyncio.to_thread(_diversity, pairs)
    data = evaluator.build_report(entries, title=title, environment=sandbox, diversity=variety)
    by_id = {p.id: (ev, q) for p, ev, q in zip(pairs, evaluations, qualities, strict=True)}
    totals: dict[str, evaluator.CheckTally] = {}
    for g in data.groups:
        for name, t in g.checks.items():
            old = totals.get(name, evaluator.CheckTally())
            totals[name] = evaluator.CheckTally(passed=old.passed + t.passed, failed=old.failed + t.failed)
    report = Report(
        title=data.title,
        generated_at=data.generated_at,
        total=data.total,
        passed=data.passed,
        flagged=data.flagged,
        unevaluated=data.unevaluated,
        pass_rate=round(data.pass_rate, 4),
        verdicts=data.verdicts,
        groups=[
            ReportGroup(
                task=g.task,
                theme=g.theme,
                total=g.total,
                passed=g.passed,
                flagged=g.flagged,
                verdicts=g.verdicts,
                checks=_check_counts(g.checks),  # type: ignore[arg-type]
                repaired=g.repaired,
                top_up=g.top_up,
                diversity=g.diversity,
                cost_usd=g.cost_usd,
                cost_per_pair_usd=g.cost_per_pair_usd,
            )
            for g in data.groups
        ],
        items=[
            ReportItem(
                id=e.id,
                task=e.task,
                theme=e.theme,
                verdict=e.verdict,
                flagged=e.flagged,
                question=e.question,
                evaluation=by_id[e.id][0] if e.id in by_id else None,
                quality=by_id[e.id][1] if e.id in by_id else None,
            )
            for e in data.entries
        ],
        sandbox=sandbox,
        checks=_check_counts(dict(sorted(totals.items()))),  # type: ignore[arg-type]
        repaired=sum(g.repaired for g in data.groups),
        cost_usd=data.cost_usd,
        cost_per_pair_usd=data.cost_per_pair_usd,
    )
    return report, evaluator.render_html(data)
