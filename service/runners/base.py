"""The runner interface, the evaluation item it takes, and the choice between runners."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Iterator
from typing import Literal, Protocol

import msgspec

from service.errors import QasynthError
from service.settings import Settings
from service.stages.dedup import Decision
from service.stages.pipeline import History
from service.stages.spec import Job
from service.wire.evaluate import Evaluation
from service.wire.generate import Event

__all__ = ["EvalItem", "JobRunner", "RunnerUnavailable", "open_runner"]


class EvalItem(msgspec.Struct, frozen=True, array_like=True):
    """One thing to run: a markdown `answer` (its R code blocks are extracted) or plain R `code`.
    `task` decides whether an answer without code is flagged, as in /v1/evaluate."""

    kind: Literal["answer", "code"]
    task: str
    text: str


class RunnerUnavailable(QasynthError):
    """The engine a command asked for cannot be used (Ray not installed, no cluster at the address)."""

    status_code = 503
    title = "Runner unavailable"


class JobRunner(Protocol):
    """Streams of work in, results out in the same order. Memory is bounded by what is in flight."""

    name: str

    def dedup(
        self,
        items: Iterable[tuple[str, str]],
        *,
        existing: Iterable[tuple[str, str]] = (),
        threshold: float = 0.7,
        tokenizer: str = "auto",
    ) -> Iterator[Decision]:
        """The greedy ROUGE-L filter: one decision per item, in order; `existing` is kept first."""
        ...

    def evaluate(self, items: Iterable[EvalItem]) -> AsyncIterator[Evaluation]:
        """Each item run in the sandbox; evaluations come back in input order as they are ready."""
        ...

    def generate(self, job: Job, *, history: History | None = None) -> AsyncIterator[Event]:
        """The job's cells through the pipeline: pair, dropped and failed events as they are ready
        (in no set order), then one `Done` with the counts of the whole job."""
        ...

    def describe(self) -> dict[str, str]:
        """Where the work runs, for summaries and reports."""
        ...

    async def aclose(self) -> None: ...


def open_runner(settings: Settings, *, ray: str | None = None, block_size: int | None = None) -> JobRunner:
    """`ray=None`: this process. `ray="auto"`: the Ray cluster this machine belongs to, or a local
    one started for the job; otherwise the address of a running cluster."""
    if ray is None:
        from service.runners.local import InProcessRunner

        return InProcessRunner(settings)
    from service.runners.cluster import RayRunner

    return RayRunner.connect(settings, address=ray, block_size=block_size)
