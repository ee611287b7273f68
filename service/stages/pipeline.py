"""Chains the stages per item, with no batch or stage barriers.

Each cell asks for questions a few at a time; each question goes through dedup the
moment it arrives, and a kept question starts its answer at once, while the cell
goes on asking. An answer is deduplicated, evaluated and emitted on its own. The
only shared limits are the provider's concurrency and the R worker pool.

Every requested item ends as exactly one of: a pair, a dropped item (with the
duplicate it resembles, or the failing verdict under `on_failure: drop`), or a
failed item with the reason. `run_job` yields events as they happen; `collect`
folds them into the non-streaming response.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from service.errors import ProviderError, ProviderRejected, SandboxUnavailable
from service.providers.base import Provider
from service.stages.answers import generate_answer
from service.stages.calls import Call, MalformedReply
from service.stages.dedup import Deduplicator
from service.stages.evaluate import Evaluate
from service.stages.prompts import Template, load_template
from service.stages.questions import generate_questions
from service.stages.spec import Job, ResolvedTask, ResolvedTheme
from service.wire.base import Usage
from service.wire.generate import (
    AnswerGenerated,
    Cell,
    CellCount,
    CellStarted,
    Counts,
    Done,
    Dropped,
    Evaluated,
    Event,
    Failed,
    GenerateResponse,
    ItemDropped,
    ItemFailed,
    Pair,
    PairReady,
    Provenance,
    QuestionGenerated,
    StepProvenance,
)

__all__ = ["collect", "pair_id", "question_id", "run_job"]


def _digest(*parts: str) -> str:
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:20]


def question_id(task: str, theme: str, question: str) -> str:
    return "q-" + _digest(task, theme, question)


def pair_id(task: str, theme: str, question: str, answer: str) -> str:
    return "p-" + _digest(task, theme, question, answer)


class _Filter:
    """A Deduplicator behind its own single thread: CPU work leaves the event loop, and the
    one thread keeps offers in arrival order, which is the greedy filter's order."""

    def __init__(self, job: Job, *, enabled: bool) -> None:
        self.enabled = enabled
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dedup")
        self._dedup = Deduplicator(threshold=job.spec.dedup.threshold, tokenizer=job.spec.dedup.tokenizer)
        self._seeded = False
        self._existing = [(item.id, item.text) for item in job.spec.dedup.existing]

    async def offer(self, item_id: str, text: str) -> tuple[bool, str | None, float | None]:
        if not self.enabled:
            return True, None, None
        loop = asyncio.get_running_loop()
        if not self._seeded:
            self._seeded = True
            await loop.run_in_executor(self._executor, self._dedup.add_existing, self._existing)
        decision = await loop.run_in_executor(self._executor, self._dedup.offer, item_id, text)
        return decision.kept, decision.nearest_id, decision.score

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


# Question calls in flight at once for one cell: later calls see fewer earlier questions in their
# avoid-list, so a few lanes trade a little variety for not serialising a large cell.
MAX_LANES_PER_CELL = 4


@dataclass
class _CellState:
    max_calls: int
    kept: int = 0
    reserved: int = 0
    calls: int = 0
    last_problem: str = ""
    asked: list[str] = field(default_factory=list)


class _Run:
    def __init__(
        self,
        job: Job,
        provider: Provider,
        evaluate: Evaluate | None,
        *,
        retries: int,
        emit: Callable[[Event], None],
    ) -> None:
        self.job = job
        self.provider = provider
        self.evaluate = evaluate
        self.retries = retries
        self.emit = emit
        self.q_template: Template = load_template(job, "question")
        self.a_template: Template = load_template(job, "answer")
        self.counts = Counts(requested=job.requested)
        self.cells = {
            (c.task, c.theme): CellCount(task=c.task, theme=c.theme, requested=c.count) for c in job.cells
        }
        self.usage = Usage()
        self.rejected: ProviderRejected | None = None
        self.q_filter = _Filter(job, enabled=job.spec.dedup.questions)
        self.a_filter = _Filter(job, enabled=job.spec.dedup.answers)

    def close(self) -> None:
        self.q_filter.close()
        self.a_filter.close()

    # -- accounting: every slot ends in exactly one of these three

    def _fail(
        self, cell: Cell, stage: Any, reason: str, detail: str, *, question: str | None, attempts: int
    ) -> None:
        self.counts.failed += 1
        self.cells[(cell.task, cell.theme)].failed += 1
        self.emit(
            Failed(
                item=ItemFailed(
                    stage=stage,
                    task=cell.task,
                    theme=cell.theme,
                    reason=reason,
                    detail=detail,
                    question=question,
                    attempts=attempts,
                )
            )
        )

    def _drop(
        self,
        cell: Cell,
        stage: Any,
        item_id: str,
        text: str,
        reason: str,
        *,
        nearest: str | None = None,
        score: float | None = None,
        question: str | None = None,
    ) -> None:
        # A dropped question frees its slot for another question; a dropped answer uses the slot up.
        if stage != "question":
            self.cells[(cell.task, cell.theme)].dropped += 1
        item = ItemDropped(
            stage=stage,
            task=cell.task,
            theme=cell.theme,
            id=item_id,
            text=text,
            reason=reason,
            nearest_id=nearest,
            score=score,
            question=question,
        )
        self.emit(Dropped(item=item))

    def _provider_failure(self, exc: ProviderError) -> tuple[str, str]:
        if isinstance(exc, ProviderRejected):
            # A rejected key or model will not get better: later calls fail fast with the same reason.
            self.rejected = self.rejected or exc
            return "provider_rejected", f"{exc.provider}: {exc.detail}"
        return "provider_unavailable", f"{exc.provider}: {exc.detail}"

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
        )

    # -- stages

    async def cell(self, cell: Cell, tg: asyncio.TaskGroup) -> None:
        """Run a few question lanes for the cell at once; each kept question starts its answer at once."""
        self.emit(CellStarted(task=cell.task, theme=cell.theme, count=cell.count))
        per_call = self.job.spec.model.questions_per_call
        calls_needed = math.ceil(cell.count / per_call)
        # Room for duplicates and bad replies: twice the calls the count needs, plus one.
        state = _CellState(max_calls=2 * calls_needed + 1 if cell.count else 0)
        lanes = min(calls_needed, MAX_LANES_PER_CELL)
        await asyncio.gather(*(self._lane(cell, state, tg) for _ in range(lanes)))
        problem = state.last_problem
        reason = problem.split(":", 1)[0] if problem.startswith("provider_") else "questions_exhausted"
        for _ in range(cell.count - state.kept):
            self._fail(
                cell,
                "question",
                reason,
                f"{state.kept} of {cell.count} distinct questions after {state.calls} calls; last problem: "
                + (problem or "near-duplicates only"),
                question=None,
                attempts=state.calls,
            )

    async def _lane(self, cell: Cell, state: _CellState, tg: asyncio.TaskGroup) -> None:
        task, theme = self.job.tasks[cell.task], self.job.themes[cell.theme]
        per_call = self.job.spec.model.questions_per_call
        # kept + reserved never exceeds the count, so lanes never overshoot it.
        while state.kept + state.reserved < cell.count and state.calls < state.max_calls:
            if self.rejected is not None:
                state.last_problem = f"provider_rejected: {self.rejected.provider}: {self.rejected.detail}"
                return
            want = min(per_call, cell.count - state.kept - state.reserved)
            state.reserved += want
            state.calls += 1
            try:
                call = await generate_questions(
                    self.provider,
                    self.job,
                    self.q_template,
                    task,
                    theme,
                    count=want,
                    avoid=list(state.asked),
                    retries=self.retries,
                )
            except MalformedReply as exc:
                state.reserved -= want
                self.usage = self.usage + exc.usage
                state.last_problem = f"{exc.failure_reason}: {exc.reason}"
                continue
            except ProviderError as exc:
                state.reserved -= want
                reason, detail = self._provider_failure(exc)
                state.last_problem = f"{reason}: {detail}"
                continue
            self.usage = self.usage + call.usage
            state.reserved -= want - len(call.value)
            provenance = self._step(self.q_template, call, batch_size=len(call.value))
            for question in call.value:
                state.asked.append(question)
                self.counts.questions_generated += 1
                qid = question_id(cell.task, cell.theme, question)
                self.emit(QuestionGenerated(task=cell.task, theme=cell.theme, id=qid, question=question))
                is_kept, nearest, score = await self.q_filter.offer(qid, question)
                state.reserved -= 1
                if not is_kept:
                    self.counts.questions_dropped += 1
                    self._drop(
                        cell,
                        "question",
                        qid,
                        question,
                        "near-duplicate question",
                        nearest=nearest,
                        score=score,
                    )
                    continue
                state.kept += 1
                tg.create_task(self.answer(cell, task, theme, qid, question, provenance))

    async def answer(
        self,
        cell: Cell,
        task: ResolvedTask,
        theme: ResolvedTheme,
        qid: str,
        question: str,
        q_step: StepProvenance,
    ) -> None:
        if self.rejected is not None:
            reason, detail = "provider_rejected", f"{self.rejected.provider}: {self.rejected.detail}"
            self._fail(cell, "answer", reason, detail, question=question, attempts=0)
            return
        try:
            call = await generate_answer(
                self.provider, self.job, self.a_template, task, theme, question=question, retries=self.retries
            )
        except MalformedReply as exc:
            self.usage = self.usage + exc.usage
            self._fail(
                cell, "answer", exc.failure_reason, exc.reason, question=question, attempts=exc.attempts
            )
            return
        except ProviderError as exc:
            reason, detail = self._provider_failure(exc)
            self._fail(cell, "answer", reason, detail, question=question, attempts=1)
            return
        self.usage = self.usage + call.usage
        answer = call.value
        pid = pair_id(cell.task, cell.theme, question, answer)
        self.counts.answers_generated += 1
        self.emit(AnswerGenerated(task=cell.task, theme=cell.theme, id=pid))
        is_kept, nearest, score = await self.a_filter.offer(pid, answer)
        if not is_kept:
            self.counts.answers_dropped += 1
            self._drop(
                cell,
                "answer",
                pid,
                answer,
                "near-duplicate answer",
                nearest=nearest,
                score=score,
                question=question,
            )
            return
        evaluation = None
        if self.evaluate is not None:
            try:
                evaluation = await self.evaluate(cell.task, answer)
            except SandboxUnavailable as exc:
                self._fail(
                    cell, "evaluation", "sandbox_unavailable", exc.detail, question=question, attempts=1
                )
                return
            self.emit(Evaluated(id=pid, verdict=evaluation.verdict, flagged=evaluation.flagged))
            if evaluation.flagged:
                self.counts.flagged += 1
                if self.job.spec.evaluation.on_failure == "drop":
                    self.counts.evaluation_dropped += 1
                    reason = f"evaluation verdict {evaluation.verdict}"
                    if evaluation.message:
                        reason += f": {evaluation.message}"
                    self._drop(cell, "evaluation", pid, answer, reason, question=question)
                    return
        pair = Pair(
            id=pid,
            task=cell.task,
            theme=cell.theme,
            question=question,
            answer=answer,
            locale=self.job.spec.locale,
            evaluation=evaluation,
            provenance=Provenance(
                spec_sha256=self.job.spec_sha256, question=q_step, answer=self._step(self.a_template, call)
            ),
        )
        self.counts.returned += 1
        self.cells[(cell.task, cell.theme)].returned += 1
        self.emit(PairReady(pair=pair))


_END = object()


def run_job(
    job: Job, provider: Provider, *, evaluate: Evaluate | None, retries: int = 2
) -> AsyncIterator[Event]:
    """Events as items progress; the last is `Done`. Closing the iterator cancels the job.

    Not itself a generator: templates are loaded and checked here, at the call, so a bad
    override is a 400 before a streamed response has started.
    """
    queue: asyncio.Queue[Any] = asyncio.Queue()
    run = _Run(job, provider, evaluate, retries=retries, emit=queue.put_nowait)
    return _events(job, run, queue)


async def _events(job: Job, run: _Run, queue: asyncio.Queue[Any]) -> AsyncIterator[Event]:
    started = time.perf_counter()

    async def drive() -> None:
        try:
            async with asyncio.TaskGroup() as tg:
                for cell in job.cells:
                    tg.create_task(run.cell(cell, tg))
        finally:
            queue.put_nowait(_END)

    driver = asyncio.create_task(drive())
    try:
        while (event := await queue.get()) is not _END:
            yield event
        await driver  # re-raises a bug in a stage rather than hiding it
        run.counts.cells = list(run.cells.values())
        yield Done(
            counts=run.counts,
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
