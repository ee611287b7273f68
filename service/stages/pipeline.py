"""Chains the stages per item, with no batch or stage barriers.

A cell runs a few question lanes. A lane takes free slots from the cell's ledger and makes
questions for them: a few per call straight from the requirements (generate), or one at a time
code first (explain, fix: `snippets.py`). Each question is checked, compared with the few-shot
examples and deduplicated the moment it arrives; a kept question starts its answer at once, while
the lane goes on. The item path is one function, `_item`:

    answer → dedup → evaluate → checks → repair → a Pair, an ItemDropped or an ItemFailed

A dropped item (a near-duplicate, a question or answer that fails its blocking checks, an unusable
reply) frees its slot, and a waiting lane asks for another: top-up is the lanes' loop condition,
bounded by the cell's call budget. A failed item (the provider or the sandbox could not serve it)
loses its slot. When a cell ends, what it still misses is failed with `cell_budget_exhausted`, so
per cell `requested = returned + failed`, and every drop is listed besides.

`run_job` yields events as they happen; `collect` folds them into the non-streaming response.
A job may continue an earlier one (`History`: what it already returned, kept out of the new
questions and answers, and counted towards its cells) and may take its keep-or-drop decisions
from elsewhere (`decide`, a dedup owner shared by the workers of a cluster); `add_counts` sums
the counts of jobs that together make one.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, TypeVar, cast

import msgspec

from evaluator import extract_code
from service.errors import (
    BatchRequestFailed,
    BudgetExhausted,
    InvalidInput,
    ProviderError,
    ProviderRejected,
    SandboxUnavailable,
)
from service.pricing import cost_of, round_usd
from service.providers.base import Provider
from service.stages.answers import generate_answer
from service.stages.budget import BudgetedProvider, JobBudget
from service.stages.calls import Call, MalformedReply
from service.stages.dedup import Deduplicator
from service.stages.evaluate import Sandbox
from service.stages.ledger import BUDGET_FACTOR, CellLedger, Slot, calls_needed
from service.stages.prompts import Kind, Template, load_templates, question_output
from service.stages.quality import (
    AnswerChecks,
    Policy,
    QuestionFacts,
    check_answer,
    check_question,
    combine,
    diversity,
    policy_for,
    prose,
    warm_up,
)
from service.stages.questions import generate_questions
from service.stages.repair import evidence_text, repair_answer
from service.stages.snippets import CodeDraft, Skipped, make_code_question
from service.stages.spec import Job, ResolvedTask, ResolvedTheme
from service.wire.base import Usage
from service.wire.evaluate import Evaluation, Quality
from service.wire.generate import (
    AnswerGenerated,
    BudgetReached,
    Cell,
    CellCount,
    CellStarted,
    CheckCount,
    Checked,
    Counts,
    Done,
    Dropped,
    DropReason,
    DropStage,
    Evaluated,
    Event,
    Failed,
    FailReason,
    GenerateResponse,
    ItemDropped,
    ItemFailed,
    Pair,
    PairReady,
    Provenance,
    QuestionGenerated,
    RepairAttempt,
    StepProvenance,
)
from service.wire.pricing import ModelPrice

__all__ = ["Decide", "History", "KeepOrDrop", "add_counts", "collect", "pair_id", "question_id", "run_job"]

T = TypeVar("T")
Via = Literal["api", "batch"]

# Question lanes in flight at once for one cell: later calls see fewer earlier questions in their
# avoid-list, so a few lanes trade a little variety for not serialising a large cell.
MAX_LANES_PER_CELL = 4
CODE_FIRST = frozenset({"explain", "fix"})


def _digest(*parts: str) -> str:
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:20]


def _code_of(answer: str) -> str:
    """An answer's R code with spacing evened out, to tell whether a repair changed it."""
    code = extract_code(answer).code
    return "\n".join(" ".join(line.split()) for line in code.splitlines() if line.strip())


def question_id(task: str, theme: str, question: str) -> str:
    return "q-" + _digest(task, theme, question)


def pair_id(task: str, theme: str, question: str, answer: str) -> str:
    return "p-" + _digest(task, theme, question, answer)


@dataclass
class History:
    """What earlier runs of the same job returned: kept questions and answers (id, text), which the
    filters keep after `dedup.existing` and before anything new, and each cell's questions, which
    its prompts avoid and its diversity counts."""

    questions: list[tuple[str, str]] = field(default_factory=list)
    answers: list[tuple[str, str]] = field(default_factory=list)
    by_cell: dict[tuple[str, str], list[str]] = field(default_factory=dict)

    def keep(self, record: Pair | ItemDropped) -> None:
        """Add what a record's filters kept: a question that reached its answer (returned, or
        dropped at the answer or the evaluation), an answer that reached the evaluation."""
        if isinstance(record, Pair):
            self.questions.append((question_id(record.task, record.theme, record.question), record.question))
            self.answers.append((record.id, record.answer))
            self.by_cell.setdefault((record.task, record.theme), []).append(record.question)
            return
        if record.stage in ("answer", "evaluation") and record.question:
            self.questions.append((question_id(record.task, record.theme, record.question), record.question))
        if record.stage == "evaluation":
            self.answers.append((record.id, record.text))


class KeepOrDrop(Protocol):
    """One greedy filter's decisions: kept, and if not, the nearest kept id and its score."""

    async def offer(self, item_id: str, text: str) -> tuple[bool, str | None, float | None]: ...


Decide = Callable[[Literal["question", "answer"]], KeepOrDrop]
"""The filter for questions or answers, when another owner holds the kept set (a cluster's)."""


class _Filter:
    """A Deduplicator behind its own single thread: CPU work leaves the event loop, and the
    one thread keeps offers in arrival order, which is the greedy filter's order. It also
    scores a text against the few-shot questions, which are never kept in the filter.
    With `owner`, the keep-or-drop decisions are that owner's; it holds the history itself."""

    def __init__(
        self,
        job: Job,
        *,
        enabled: bool,
        examples: list[tuple[str, str]] | None = None,
        history: list[tuple[str, str]] | None = None,
        owner: KeepOrDrop | None = None,
    ) -> None:
        self.enabled = enabled
        self.threshold = job.spec.dedup.threshold
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dedup")
        self._dedup = Deduplicator(threshold=job.spec.dedup.threshold, tokenizer=job.spec.dedup.tokenizer)
        self._seeded = False
        self._existing = [(item.id, item.text) for item in job.spec.dedup.existing] + list(history or [])
        self._examples = list(examples or [])
        self._owner = owner

    async def offer(self, item_id: str, text: str) -> tuple[bool, str | None, float | None]:
        if not self.enabled:
            return True, None, None
        if self._owner is not None:
            return await self._owner.offer(item_id, text)
        loop = asyncio.get_running_loop()
        if not self._seeded:
            self._seeded = True
            await loop.run_in_executor(self._executor, self._dedup.add_existing, self._existing)
        decision = await loop.run_in_executor(self._executor, self._dedup.offer, item_id, text)
        return decision.kept, decision.nearest_id, decision.score

    async def nearest_example(self, text: str) -> tuple[str | None, float]:
        """The few-shot question most like `text`, and the ROUGE-L F the filter would compute."""
        if not self._examples:
            return None, 0.0

        def best() -> tuple[str | None, float]:
            scored = [
                (self._dedup.score(text, example), example_id) for example_id, example in self._examples
            ]
            score, example_id = max(scored)
            return example_id, score

        return await asyncio.get_running_loop().run_in_executor(self._executor, best)

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


@dataclass
class _Cell:
    """What the lanes and items of one cell share."""

    cell: Cell
    task: ResolvedTask
    theme: ResolvedTheme
    policy: Policy
    ledger: CellLedger
    asked: list[str] = field(default_factory=list)  # every question generated, for the avoid-list
    kept_questions: list[str] = field(default_factory=list)  # those that passed checks and dedup
    returned_questions: list[str] = field(default_factory=list)
    drops: Counter[str] = field(default_factory=Counter)

    @property
    def code_first(self) -> bool:
        return self.task.kind in CODE_FIRST


@dataclass
class _Question:
    """A question that passed its checks, with what the answer steps need of it."""

    id: str
    text: str
    step: StepProvenance
    checks: AnswerChecks
    facts: QuestionFacts
    draft: CodeDraft | None = None


Outcome = Pair | ItemDropped | ItemFailed


class _Run:
    def __init__(
        self,
        job: Job,
        provider: Provider,
        sandbox: Sandbox | None,
        *,
        retries: int,
        emit: Callable[[Event], None],
        history: History | None = None,
        decide: Decide | None = None,
        via: Via = "api",
        price: ModelPrice | None = None,
        price_taken: str | None = None,
    ) -> None:
        self.job = job
        self.history = history or History()
        self.via: Via = via
        self.price = price
        self.price_taken = price_taken
        self.provider = provider
        self.sandbox = sandbox
        self.retries = retries
        self.emit = emit
        self.templates: dict[Kind, Template] = load_templates(job)
        self.counts = Counts(requested=job.requested)
        self.cells: dict[tuple[str, str], CellCount] = {
            (c.task, c.theme): CellCount(task=c.task, theme=c.theme, requested=c.count) for c in job.cells
        }
        self.ledgers: list[CellLedger] = []
        self.usage = Usage()
        self.rejected: ProviderRejected | None = None
        self.exhausted: BudgetExhausted | None = None
        self.budget: JobBudget | None = None
        examples = [(f"few-shot:{i}", e.question) for i, e in enumerate(job.few_shot)]
        self.q_filter = _Filter(
            job,
            enabled=job.spec.dedup.questions,
            examples=examples,
            history=self.history.questions,
            owner=decide("question") if decide else None,
        )
        self.a_filter = _Filter(
            job,
            enabled=job.spec.dedup.answers,
            history=self.history.answers,
            owner=decide("answer") if decide else None,
        )
        self.tg: asyncio.TaskGroup | None = None

    @property
    def stopped(self) -> ProviderError | None:
        """Why no further call is made: the provider rejected the job, or its budget ran out."""
        return self.rejected or self.exhausted

    def close(self) -> None:
        self.q_filter.close()
        self.a_filter.close()

    # -- the cell

    def _budget(self, cell: Cell, task: ResolvedTask) -> int:
        if cell.count == 0:
            return 0
        given = self.job.spec.budget.calls_per_cell
        if given is not None:
            return given
        return BUDGET_FACTOR * calls_needed(task.kind, cell.count, self.job.spec.model.questions_per_call)

    async def cell(self, cell: Cell) -> None:
        task, theme = self.job.tasks[cell.task], self.job.themes[cell.theme]
        ledger = CellLedger(
            task=cell.task,
            theme=cell.theme,
            requested=cell.count,
            budget=self._budget(cell, task),
            kind=task.kind,
        )
        self.ledgers.append(ledger)
        policy = policy_for(task.id, task.kind, self.job.spec.evaluation.policy)
        c = _Cell(cell=cell, task=task, theme=theme, policy=policy, ledger=ledger)
        earlier = self.history.by_cell.get((cell.task, cell.theme), [])
        c.asked += earlier
        c.kept_questions += earlier
        c.returned_questions += earlier
        if self.stopped is not None:
            ledger.stop()
        self.emit(CellStarted(task=cell.task, theme=cell.theme, count=cell.count))
        per_lane = 1 if c.code_first else self.job.spec.model.questions_per_call
        lanes = min(math.ceil(cell.count / per_lane), MAX_LANES_PER_CELL)
        await asyncio.gather(*(self._lane(c) for _ in range(lanes)))
        await ledger.settled()
        self._fail_shortfall(c)
        variety = await asyncio.to_thread(
            diversity, c.returned_questions, tokenizer=self.job.spec.dedup.tokenizer
        )
        count = ledger.finish(variety)
        cost = cost_of(ledger.usage, self.price, batch=self.via == "batch")
        self.cells[(cell.task, cell.theme)] = msgspec.structs.replace(
            count,
            usage=ledger.usage,
            cost_usd=cost,
            cost_per_returned_pair_usd=_per_pair(cost, count.returned),
        )

    def _fail_shortfall(self, c: _Cell) -> None:
        missing = c.ledger.shortfall()
        if not missing:
            return
        count = c.ledger.count
        reason: FailReason
        if self.rejected is not None:
            reason = "provider_rejected"
            detail = f"{self.rejected.provider}: {self.rejected.detail}"
        elif self.exhausted is not None:
            reason = "budget_exhausted"
            detail = (
                f"{count.returned} of {count.requested} made when the budget ran out: {self.exhausted.detail}"
            )
        else:
            reason = "cell_budget_exhausted"
            lost = ", ".join(f"{n} {r}" for r, n in c.drops.most_common()) or "none"
            detail = (
                f"{count.returned} of {count.requested} after {count.calls} of {count.budget} calls; "
                f"items dropped: {lost}"
            )
        for _ in range(missing):
            self.counts.failed += 1
            self.emit(Failed(item=self._failed(c, "cell", reason, detail, attempts=count.calls)))
        c.ledger.fail_shortfall(missing)

    async def _lane(self, c: _Cell) -> None:
        per_call = 1 if c.code_first else self.job.spec.model.questions_per_call
        while slots := await c.ledger.take(per_call):
            if self.stopped is not None:
                c.ledger.release(slots)
                c.ledger.stop()
                return
            try:
                if c.code_first:
                    await self._code_first(c, slots[0])
                else:
                    await self._batch(c, slots)
            except ProviderError as exc:
                for slot in slots:
                    if not (slot.done or slot.handed):
                        self._provider_failed(c, slot, exc, stage="question", question=None)
            except SandboxUnavailable as exc:
                for slot in slots:
                    if not (slot.done or slot.handed):
                        self._settle(c, slot, self._failed(c, "question", "sandbox_unavailable", exc.detail))

    # -- model calls, counted against the cell

    async def _call(self, c: _Cell, slots: Slot | list[Slot], call: Awaitable[Call[T]]) -> Call[T]:
        """One step's call (content retries included), charged to its item, or shared by several."""
        try:
            result = await call
        except MalformedReply as exc:
            self._spend(c, slots, exc.attempts, exc.usage)
            raise
        except BudgetExhausted as exc:
            self._spend(c, slots, exc.attempts, exc.usage if isinstance(exc.usage, Usage) else Usage())
            if self.exhausted is None:
                self.exhausted = exc
                for ledger in self.ledgers:
                    ledger.stop()
                budget = self.budget
                self.emit(
                    BudgetReached(
                        limit=exc.limit,  # type: ignore[arg-type]
                        detail=exc.detail,
                        spent_usd=round_usd(budget.spent_usd) if budget and budget.price else None,
                        spent_tokens=budget.spent.input_tokens + budget.spent.output_tokens if budget else 0,
                    )
                )
            raise
        except ProviderError as exc:
            self._spend(c, slots, 1, Usage())
            if isinstance(exc, ProviderRejected) and self.rejected is None:
                # A rejected key or model will not get better: every cell stops asking.
                self.rejected = exc
                for ledger in self.ledgers:
                    ledger.stop()
            raise
        self._spend(c, slots, result.attempts, result.usage)
        return result

    def _spend(self, c: _Cell, slots: Slot | list[Slot], calls: int, usage: Usage) -> None:
        if isinstance(slots, Slot):
            c.ledger.spend(slots, calls, usage)
        else:
            c.ledger.spend_shared(slots, calls, usage)
        self.usage = self.usage + usage

    def _step(self, template: Template, call: Call[Any], *, batch_size: int = 1) -> StepProvenance:
        return StepProvenance(
            provider=self.provider.name,
            model=call.model,
            template_id=template.id,
            template_sha256=template.sha256,
            usage=call.usage,
            latency_ms=round(call.latency_ms, 1),
            attempts=call.attempts,
            batch_size=batch_size,
            via=self.via,
            # Both vendors bill their batch APIs at half the price of a direct call.
            cost_usd=cost_of(call.usage, self.price, batch=self.via == "batch"),
        )

    # -- questions

    async def _batch(self, c: _Cell, slots: list[Slot]) -> None:
        """One call for several questions; each then goes its own way."""
        template = self.templates["question"]
        try:
            call = await self._call(
                c,
                slots,
                generate_questions(
                    self.provider,
                    self.job,
                    template,
                    c.task,
                    c.theme,
                    count=len(slots),
                    avoid=list(c.asked),
                    retries=self.retries,
                ),
            )
        except MalformedReply as exc:
            # One unusable call is one dropped item, not one for each question it was to hold.
            c.ledger.release(slots[1:])
            self._settle(c, slots[0], self._dropped(c, "question", exc.failure_reason, exc.reason))
            return
        c.ledger.release(slots[len(call.value) :])
        step = self._step(template, call, batch_size=len(call.value))
        for slot, text in zip(slots, call.value, strict=False):
            await self._admit(c, slot, text, step, None)

    async def _code_first(self, c: _Cell, slot: Slot) -> None:
        made = await make_code_question(
            provider=self.provider,
            job=self.job,
            templates=self.templates,
            task=c.task,
            theme=c.theme,
            sandbox=self.sandbox,
            call=lambda call: self._call(c, slot, call),
            step=self._step,
            # What the kept questions are about, without their code: small models copy shown code,
            # and dropped attempts into the comments of the next script.
            avoid=[text for q in c.kept_questions if (text := prose(q))],
            retries=self.retries,
        )
        if isinstance(made, Skipped):
            self._settle(c, slot, self._dropped(c, made.stage, made.reason, made.detail, text=made.text))
            return
        await self._admit(c, slot, made.question, made.question_step, made)

    async def _admit(
        self, c: _Cell, slot: Slot, text: str, step: StepProvenance, draft: CodeDraft | None
    ) -> None:
        """Question checks, the few-shot comparison and dedup; a kept question starts its answer."""
        qid = question_id(c.cell.task, c.cell.theme, text)
        c.asked.append(text)
        self.counts.questions_generated += 1
        self.emit(QuestionGenerated(task=c.cell.task, theme=c.cell.theme, id=qid, question=text))
        checks, facts = await check_question(
            self.sandbox,
            task=c.task.id,
            kind=c.task.kind,
            locale=self.job.spec.locale,
            question=text,
            policy=c.policy,
            known_run=draft.run if draft is not None else None,
        )
        c.ledger.record(checks.checks)
        failed = [ch for ch in checks.checks if not ch.passed]
        blocking = [ch for ch in failed if ch.blocking]
        self.emit(
            Checked(id=qid, subject="question", flagged=bool(blocking), failed=[ch.name for ch in failed])
        )
        if blocking:
            detail = "; ".join(f"{ch.name}: {ch.evidence}" for ch in blocking)
            self._settle(
                c,
                slot,
                self._dropped(
                    c,
                    "question",
                    "question_checks_failed",
                    detail,
                    text=text,
                    item_id=qid,
                    failed_checks=[ch.name for ch in blocking],
                ),
            )
            return
        example, score = await self.q_filter.nearest_example(text)
        if example is not None and score >= self.q_filter.threshold:
            self._settle(
                c,
                slot,
                self._dropped(
                    c,
                    "question",
                    "copies_example",
                    f"ROUGE-L {score:.3f} against the few-shot example",
                    text=text,
                    item_id=qid,
                    nearest=example,
                    score=score,
                ),
            )
            return
        kept, nearest, score_ = await self.q_filter.offer(qid, text)
        if not kept:
            self._settle(
                c,
                slot,
                self._dropped(
                    c,
                    "question",
                    "near_duplicate",
                    f"ROUGE-L {score_:.3f} against {nearest}",
                    text=text,
                    item_id=qid,
                    nearest=nearest,
                    score=score_,
                ),
            )
            return
        c.kept_questions.append(text)
        question = _Question(id=qid, text=text, step=step, checks=checks, facts=facts, draft=draft)
        assert self.tg is not None
        slot.handed = True
        self.tg.create_task(self._finish(c, slot, question))

    # -- the item path: answer → dedup → evaluate → checks → repair

    async def _finish(self, c: _Cell, slot: Slot, q: _Question) -> None:
        try:
            outcome = await self._item(c, slot, q)
        except ProviderError as exc:
            self._provider_failed(c, slot, exc, stage="answer", question=q.text)
            return
        except SandboxUnavailable as exc:
            outcome = self._failed(c, "evaluation", "sandbox_unavailable", exc.detail, question=q.text)
        self._settle(c, slot, outcome)

    async def _item(self, c: _Cell, slot: Slot, q: _Question) -> Outcome:
        if self.stopped is not None:
            raise self.stopped
        shown_output = question_output(self.job, q.facts.run)
        template = self.templates["answer"]
        try:
            call = await self._call(
                c,
                slot,
                generate_answer(
                    self.provider,
                    self.job,
                    template,
                    c.task,
                    c.theme,
                    question=q.text,
                    question_output=shown_output,
                    retries=self.retries,
                ),
            )
        except MalformedReply as exc:
            return self._dropped(c, "answer", exc.failure_reason, exc.reason, question=q.text)
        answer = call.value
        answer_step = self._step(template, call)
        pid = pair_id(c.cell.task, c.cell.theme, q.text, answer)
        self.counts.answers_generated += 1
        self.emit(AnswerGenerated(task=c.cell.task, theme=c.cell.theme, id=pid))
        kept, nearest, score = await self.a_filter.offer(pid, answer)
        if not kept:
            self.counts.answers_dropped += 1
            return self._dropped(
                c,
                "answer",
                "near_duplicate",
                f"ROUGE-L {score:.3f} against {nearest}",
                text=answer,
                item_id=pid,
                nearest=nearest,
                score=score,
                question=q.text,
            )
        evaluation, quality = await self._judge(c, q, pid, answer, attempt=0)
        repairs: list[RepairAttempt] = []
        attempts = self.job.spec.evaluation.repair_attempts
        while quality.flagged and len(repairs) < attempts and c.ledger.budget_left() > 0:
            if self.stopped is not None:
                break  # the answer in hand is still a pair
            repaired = await self._repair(c, slot, q, answer, evaluation, quality)
            if repaired is None:
                break
            attempt, new_answer = repaired
            pid = pair_id(c.cell.task, c.cell.theme, q.text, new_answer)
            before = (_code_of(answer), quality.failed())
            evaluation, quality = await self._judge(c, q, pid, new_answer, attempt=len(repairs) + 1)
            # The same code with the same checks failing: another attempt would be shown the same
            # evidence for the same code, and small models then write the same reply again.
            unchanged = quality.flagged and before == (_code_of(new_answer), quality.failed())
            repairs.append(
                msgspec.structs.replace(
                    attempt,
                    verdict=evaluation.verdict if evaluation is not None else None,
                    flagged=quality.flagged,
                    failed_checks=quality.failed(),
                    unchanged=unchanged,
                )
            )
            answer = new_answer
            if unchanged:
                break
        c.ledger.record([ch for ch in quality.checks if ch.name not in {x.name for x in q.checks.checks}])
        if quality.flagged:
            self.counts.flagged += 1
            if self.job.spec.evaluation.on_failure == "drop":
                self.counts.evaluation_dropped += 1
                detail = "; ".join(
                    f"{ch.name}: {ch.evidence}" for ch in quality.checks if ch.blocking and not ch.passed
                )
                return self._dropped(
                    c,
                    "evaluation",
                    "flagged",
                    detail,
                    text=answer,
                    item_id=pid,
                    question=q.text,
                    failed_checks=[ch.name for ch in quality.checks if ch.blocking and not ch.passed],
                )
        draft = q.draft
        steps = [answer_step, *(r.step for r in repairs)]
        if draft is not None:
            steps.append(draft.snippet)
            if draft.bug is not None and draft.bug.step is not None:
                steps.append(draft.bug.step)
        return Pair(
            id=pid,
            task=c.cell.task,
            theme=c.cell.theme,
            question=q.text,
            answer=answer,
            locale=self.job.spec.locale,
            evaluation=evaluation,
            quality=quality,
            provenance=Provenance(
                spec_sha256=self.job.spec_sha256,
                question=q.step,
                answer=answer_step,
                snippet=draft.snippet if draft is not None else None,
                mended=draft.mended if draft is not None else [],
                bug=draft.bug if draft is not None else None,
                repairs=repairs,
                calls=slot.calls,
                top_up=slot.top_up,
                cost_usd=_pair_cost(q.step, steps),
            ),
        )

    async def _judge(
        self, c: _Cell, q: _Question, pid: str, answer: str, *, attempt: int
    ) -> tuple[Evaluation | None, Quality]:
        """Run the answer's code and check the answer; the pair's quality holds the question's checks too."""
        evaluation = None
        if self.sandbox is not None:
            evaluation = await self.sandbox(c.task.id, answer)
            self.emit(Evaluated(id=pid, verdict=evaluation.verdict, flagged=evaluation.flagged))
        checks = await check_answer(
            self.sandbox,
            task=c.task.id,
            kind=c.task.kind,
            locale=self.job.spec.locale,
            conventions=self.job.conventions,
            question=q.facts,
            answer=answer,
            evaluation=evaluation,
            policy=c.policy,
        )
        quality = combine(q.checks, checks)
        self.emit(
            Checked(
                id=pid, subject="answer", attempt=attempt, flagged=quality.flagged, failed=quality.failed()
            )
        )
        return evaluation, quality

    async def _repair(
        self, c: _Cell, slot: Slot, q: _Question, answer: str, evaluation: Evaluation | None, quality: Quality
    ) -> tuple[RepairAttempt, str] | None:
        template = self.templates["repair"]
        try:
            call = await self._call(
                c,
                slot,
                repair_answer(
                    self.provider,
                    self.job,
                    template,
                    c.task,
                    c.theme,
                    question=q.text,
                    question_output=question_output(self.job, q.facts.run),
                    answer=answer,
                    evidence=evidence_text(self.job, evaluation, quality),
                    retries=self.retries,
                ),
            )
        except MalformedReply as exc:
            c.ledger.repair_calls(exc.attempts)
            return None
        except BudgetExhausted as exc:
            # No money for a repair: the answer in hand stands, flagged, with its evidence.
            c.ledger.repair_calls(exc.attempts)
            return None
        c.ledger.repair_calls(call.attempts)
        return RepairAttempt(step=self._step(template, call)), call.value

    # -- outcomes: every started slot ends in exactly one of these

    def _dropped(
        self,
        c: _Cell,
        stage: DropStage,
        reason: DropReason,
        detail: str,
        *,
        text: str = "",
        item_id: str = "",
        nearest: str | None = None,
        score: float | None = None,
        question: str | None = None,
        failed_checks: list[Any] | None = None,
    ) -> ItemDropped:
        return ItemDropped(
            stage=stage,
            task=c.cell.task,
            theme=c.cell.theme,
            id=item_id or ("x-" + _digest(c.cell.task, c.cell.theme, stage, reason, detail, text)),
            text=text,
            reason=reason,
            detail=detail,
            nearest_id=nearest,
            score=score,
            question=question,
            failed_checks=failed_checks or [],
        )

    def _failed(
        self,
        c: _Cell,
        stage: Any,
        reason: FailReason,
        detail: str,
        *,
        question: str | None = None,
        attempts: int = 1,
    ) -> ItemFailed:
        return ItemFailed(
            stage=stage,
            task=c.cell.task,
            theme=c.cell.theme,
            reason=reason,
            detail=detail,
            question=question,
            attempts=attempts,
        )

    def _provider_failed(
        self, c: _Cell, slot: Slot, exc: ProviderError, *, stage: str, question: str | None
    ) -> None:
        reason: FailReason
        if isinstance(exc, BudgetExhausted):
            reason = "budget_exhausted"
        elif isinstance(exc, BatchRequestFailed):
            reason = cast(FailReason, exc.reason)
        elif isinstance(exc, ProviderRejected):
            reason = "provider_rejected"
        else:
            reason = "provider_unavailable"
        self._settle(
            c, slot, self._failed(c, stage, reason, f"{exc.provider}: {exc.detail}", question=question)
        )

    def _settle(self, c: _Cell, slot: Slot, outcome: Outcome) -> None:
        assert not slot.done, "a slot ends once"
        slot.done = True
        if isinstance(outcome, Pair):
            self.counts.returned += 1
            c.returned_questions.append(outcome.question)
            self.emit(PairReady(pair=outcome))
            quality = outcome.quality
            repaired = bool(outcome.provenance and outcome.provenance.repairs) and not (
                quality and quality.flagged
            )
            c.ledger.returned(slot, flagged=bool(quality and quality.flagged), repaired=repaired)
        elif isinstance(outcome, ItemDropped):
            if outcome.stage == "question":
                self.counts.questions_dropped += 1
            c.drops[outcome.reason] += 1
            self.emit(Dropped(item=outcome))
            c.ledger.dropped(slot)
        else:
            self.counts.failed += 1
            if slot.calls:
                outcome = msgspec.structs.replace(outcome, attempts=slot.calls)
            self.emit(Failed(item=outcome))
            c.ledger.failed(slot)

    def totals(self) -> Counts:
        counts = _with_cells(self.counts, list(self.cells.values()))
        cost = cost_of(self.usage, self.price, batch=self.via == "batch")
        return msgspec.structs.replace(
            counts,
            cost_usd=cost,
            cost_per_returned_pair_usd=_per_pair(cost, counts.returned),
            price_taken=self.price_taken if self.price is not None else None,
            budget_exhausted=self.exhausted is not None,
        )


def _check_counts(parts: list[dict[Any, CheckCount]]) -> dict[Any, CheckCount]:
    checks: Counter[tuple[str, bool]] = Counter()
    for part in parts:
        for name, count in part.items():
            checks[(name, True)] += count.passed
            checks[(name, False)] += count.failed
    return {
        n: CheckCount(
            passed=checks[(n, True)],
            failed=checks[(n, False)],
            pass_rate=round(checks[(n, True)] / (checks[(n, True)] + checks[(n, False)]), 4),
        )
        for n in sorted({n for n, _ in checks})
    }


def _with_cells(counts: Counts, cells: list[CellCount]) -> Counts:
    """The job's totals: its stage counts, and what its cells' ledgers sum to."""
    return msgspec.structs.replace(
        counts,
        calls=sum(x.calls for x in cells),
        top_up_calls=sum(x.top_up_calls for x in cells),
        repaired=sum(x.repaired for x in cells),
        repair_calls=sum(x.repair_calls for x in cells),
        checks=_check_counts([x.checks for x in cells]),
        cells=cells,
    )


_CELL_SUMS = (
    "requested", "returned", "dropped", "failed", "flagged", "calls", "budget", "top_up_calls",
    "repaired", "repair_calls",
)  # fmt: skip
_STAGE_SUMS = (
    "requested", "questions_generated", "questions_dropped", "answers_generated", "answers_dropped",
    "evaluation_dropped", "flagged", "failed", "returned",
)  # fmt: skip


def add_counts(parts: list[Counts]) -> Counts:
    """The counts of one job run in parts (cells spread over workers, or a job continued after an
    interruption): a cell that appears in several parts is summed, and keeps the diversity of its
    last part, which saw all of its questions."""
    cells: dict[tuple[str, str], CellCount] = {}
    for part in parts:
        for cell in part.cells:
            key = (cell.task, cell.theme)
            if key not in cells:
                cells[key] = cell
                continue
            old = cells[key]
            cells[key] = msgspec.structs.replace(
                old,
                **{f: getattr(old, f) + getattr(cell, f) for f in _CELL_SUMS},  # type: ignore[arg-type]
                checks=_check_counts([old.checks, cell.checks]),
                diversity=cell.diversity if cell.diversity is not None else old.diversity,
                usage=old.usage + cell.usage,
                cost_usd=_sum_cost(old.cost_usd, cell.cost_usd),
            )
    stages = Counts(**{f: sum(getattr(p, f) for p in parts) for f in _STAGE_SUMS})  # type: ignore[arg-type]
    merged = [
        msgspec.structs.replace(c, cost_per_returned_pair_usd=_per_pair(c.cost_usd, c.returned))
        for c in cells.values()
    ]
    counts = _with_cells(stages, merged)
    cost: float | None = None
    for part in parts:
        cost = part.cost_usd if cost is None else _sum_cost(cost, part.cost_usd)
    return msgspec.structs.replace(
        counts,
        cost_usd=cost,
        cost_per_returned_pair_usd=_per_pair(cost, counts.returned),
        price_taken=next((p.price_taken for p in parts if p.price_taken), None),
        budget_exhausted=any(p.budget_exhausted for p in parts),
    )


def _sum_cost(a: float | None, b: float | None) -> float | None:
    return round_usd(a + b) if a is not None and b is not None else None


def _per_pair(cost: float | None, returned: int) -> float | None:
    return round_usd(cost / returned) if cost is not None and returned else None


def _pair_cost(question: StepProvenance, steps: list[StepProvenance]) -> float | None:
    """The pair's steps; a question call shared by several questions counts its share."""
    costs = [s.cost_usd for s in steps]
    if question.cost_usd is None or None in costs:
        return None
    return round_usd(question.cost_usd / question.batch_size + sum(c for c in costs if c is not None))


_END = object()


def run_job(
    job: Job,
    provider: Provider,
    *,
    evaluate: Sandbox | None,
    retries: int = 2,
    history: History | None = None,
    decide: Decide | None = None,
    via: Via = "api",
    price: ModelPrice | None = None,
    price_taken: str | None = None,
) -> AsyncIterator[Event]:
    """Events as items progress; the last is `Done`. Closing the iterator cancels the job.

    `price` prices every step (`service.pricing`); None leaves costs unknown (null).
    `evaluate` is the sandbox (`stages.evaluate.answer_evaluator(runner)`), or None when
    evaluation is off: then only the checks that need no R run. Not itself a generator:
    templates are loaded and checked here, at the call, so a bad override is a 400 before a
    streamed response has started. `history` continues an earlier run of the job (its cells are
    then what is still missing); `decide` takes the dedup decisions from a shared owner. `via` is
    recorded in every step's provenance: `batch` when the provider's replies come from its batch API
    (`stages/batches.py`).
    """
    budget = None
    limits = job.spec.budget
    if limits.usd is not None or limits.tokens is not None:
        model = job.spec.model.name or provider.default_model
        if limits.usd is not None and price is None:
            raise InvalidInput(
                f"a budget in dollars needs a price for {provider.name} model {model!r}: give `pricing`",
                field="budget.usd",
            )
        budget = JobBudget(
            usd=limits.usd, tokens=limits.tokens, price=price, provider=provider.name, model=model
        )
        provider = BudgetedProvider(provider, budget)
    queue: asyncio.Queue[Any] = asyncio.Queue()
    run = _Run(
        job,
        provider,
        evaluate,
        retries=retries,
        emit=queue.put_nowait,
        history=history,
        decide=decide,
        via=via,
        price=price,
        price_taken=price_taken,
    )
    run.budget = budget
    return _events(job, run, queue)


async def _events(job: Job, run: _Run, queue: asyncio.Queue[Any]) -> AsyncIterator[Event]:
    started = time.perf_counter()

    async def drive() -> None:
        # The language models load while the first model calls are out.
        warming = asyncio.create_task(asyncio.to_thread(warm_up))
        try:
            async with asyncio.TaskGroup() as tg:
                run.tg = tg
                for cell in job.cells:
                    tg.create_task(run.cell(cell))
        finally:
            await asyncio.gather(warming, return_exceptions=True)
            queue.put_nowait(_END)

    driver = asyncio.create_task(drive())
    try:
        while (event := await queue.get()) is not _END:
            yield event
        await driver  # re-raises a bug in a stage rather than hiding it
        yield Done(
            counts=run.totals(),
            usage=run.usage,
            elapsed_s=round(time.perf_counter() - started, 3),
            spec_sha256=job.spec_sha256,
        )
    finally:
        if not driver.done():
            driver.cancel()
            await asyncio.gather(driver, return_exceptions=True)
        run.close()


async def collect(events: AsyncIterator[Event]) -> GenerateResponse:
    """Fold the event stream into the one-shot response."""
    pairs: list[Pair] = []
    dropped: list[ItemDropped] = []
    failed: list[ItemFailed] = []
    async for event in events:
        if isinstance(event, PairReady):
            pairs.append(event.pair)
        elif isinstance(event, Dropped):
            dropped.append(event.item)
        elif isinstance(event, Failed):
            failed.append(event.item)
        elif isinstance(event, Done):
            return GenerateResponse(
                pairs=pairs,
                dropped=dropped,
                failed=failed,
                counts=event.counts,
                usage=event.usage,
                elapsed_s=event.elapsed_s,
                spec_sha256=event.spec_sha256,
            )
    raise RuntimeError("the event stream ended without a Done event")
