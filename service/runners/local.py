"""In this process: the single-machine greedy filter, one warm R worker pool, and generation with
the service's own pipeline and provider lanes."""

from __future__ import annotations

import asyncio
import os
from collections import deque
from collections.abc import AsyncIterator, Iterable, Iterator
from typing import Any

from service.runners.base import EvalItem
from service.settings import Settings
from service.stages.dedup import Decision, Deduplicator
from service.stages.evaluate import Sandbox, answer_evaluator, evaluate_answer, evaluate_code
from service.stages.pipeline import History, run_job
from service.stages.spec import Job
from service.wire.evaluate import Evaluation
from service.wire.generate import Event

__all__ = ["InProcessRunner", "evaluate_item", "job_events", "pool_runtime"]


def pool_runtime(settings: Settings) -> Any:
    """The service's own Runtime, for its R pool with the limits the settings give."""
    from service.providers.registry import ProviderRegistry
    from service.runtime import Runtime

    return Runtime(settings=settings, providers=ProviderRegistry(settings))


async def evaluate_item(runner: Any, item: EvalItem) -> Evaluation:
    """What /v1/evaluate does with a pair's answer or a snippet."""
    if item.kind == "answer":
        return await evaluate_answer(runner, task=item.task, answer=item.text)
    return await evaluate_code(runner, task=item.task, code=item.text)


async def job_events(
    runtime: Any, job: Job, *, history: History | None = None, decide: Any = None
) -> AsyncIterator[Event]:
    """What /v1/generate runs for a job, on `runtime`'s providers and R pool."""
    provider = runtime.providers.get(job.spec.model.provider)
    evaluate: Sandbox | None = None
    if job.spec.evaluation.enabled:
        evaluate = answer_evaluator(await runtime.runner())
    spec = job.spec
    price, taken = runtime.prices.quote(
        provider.name, spec.model.name or provider.default_model, spec.pricing
    )
    events = run_job(
        job,
        provider,
        evaluate=evaluate,
        retries=runtime.settings.content_retries,
        price=price,
        price_taken=taken,
        history=history,
        decide=decide,
    )
    try:
        async for event in events:
            yield event
    finally:
        await events.aclose()  # type: ignore[attr-defined]


class InProcessRunner:
    name = "in-process"

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._runtime: Any = None
        self._describe: dict[str, str] = {"runner": self.name}

    def dedup(
        self,
        items: Iterable[tuple[str, str]],
        *,
        existing: Iterable[tuple[str, str]] = (),
        threshold: float = 0.7,
        tokenizer: str = "auto",
    ) -> Iterator[Decision]:
        dedup = Deduplicator(threshold=threshold, tokenizer=tokenizer)
        dedup.add_existing(existing)
        for id, text in items:
            yield dedup.offer(id, text)

    async def evaluate(self, items: Iterable[EvalItem]) -> AsyncIterator[Evaluation]:
        """At most a few snippets per worker in flight; each result is yielded once those before it are."""
        if self._runtime is None:
            self._runtime = pool_runtime(self.settings)
        runner = await self._runtime.runner()
        self._describe = {"runner": self.name, **runner.describe()}
        window = 4 * (self.settings.eval_workers or os.cpu_count() or 1)
        in_flight: deque[asyncio.Task[Evaluation]] = deque()
        try:
            for item in items:
                in_flight.append(asyncio.create_task(evaluate_item(runner, item)))
                if len(in_flight) >= window:
                    yield await in_flight.popleft()
            while in_flight:
                yield await in_flight.popleft()
        finally:
            for task in in_flight:
                task.cancel()

    async def generate(self, job: Job, *, history: History | None = None) -> AsyncIterator[Event]:
        """The pipeline's events as they happen: pairs stream the moment they are ready."""
        if self._runtime is None:
            self._runtime = pool_runtime(self.settings)
        self._describe = {"runner": self.name}
        async for event in job_events(self._runtime, job, history=history):
            yield event

    def describe(self) -> dict[str, str]:
        return dict(self._describe)

    async def aclose(self) -> None:
        if self._runtime is not None:
            await self._runtime.aclose()
            self._runtime = None
