"""On a Ray cluster: dedup blocks as Ray tasks, one warm R pool per node as an actor, and
generation over one worker actor per node with one dedup owner.

Dedup runs `BlockDedup` with Ray as its executor: the block functions are stateless tasks that
read their texts from the object store, so a task lost with its worker is simply run again
(`max_retries`) and gives the same answer. Evaluation sends batches of snippets to one actor per
node, each owning a sandboxed worker pool (`evaluator.start_runner`, through the service's
Runtime and its settings); batches are awaited in the order they were sent, so results stream
back in input order. An actor that dies is restarted by Ray (`max_restarts`) and its unfinished
batches are run again (`max_task_retries`); a batch's result arrives exactly once.

Generation sends each cell of the job to a generation worker (one actor per node, a few cells
in flight on each): the worker runs the pipeline for the cell with its own provider lanes (their
own concurrency, limits and breakers) and its own warm R pool, so answers are evaluated on the
node that produced them. Every question and answer is offered to ONE dedup owner actor, which
holds the job's kept sets, so the greedy decisions are consistent across workers: workers ask
"keep or drop?" and the owner, deciding one offer at a time, answers. A cell's records come back
when the cell is done. A worker that dies is restarted and its unfinished cells are run again:
the owner remembers each decision by (cell, item id, occurrence), so an item offered again by the
retry gets the answer it got before instead of being dropped as a duplicate of itself, and the
records of the lost attempt were never delivered: nothing is lost or written twice. If the owner
itself dies, its kept sets are rebuilt from the history and every record delivered so far, and
the cells that were running are run again on the new owner (their records had not been delivered).

Every node needs qasynth with its `ray` extra, R and bubblewrap (`scripts/setup.sh`).
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections import Counter, deque
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Sequence
from typing import Any

import msgspec

from service.runners.base import EvalItem, RunnerUnavailable
from service.runners.local import evaluate_item, job_events, pool_runtime
from service.settings import Settings
from service.stages.dedup import DEFAULT_BLOCK, BlockDedup, BlockStats, Decision, Deduplicator
from service.stages.pipeline import History, add_counts
from service.stages.spec import Job, resolve_spec
from service.wire.base import Usage
from service.wire.evaluate import Evaluation
from service.wire.generate import Cell, Done, Dropped, Event, Failed, PairReady, Spec

__all__ = ["RayExecutor", "RayRunner", "ray_module"]

TASK_RETRIES = 3
ACTOR_RESTARTS = 4
BATCH = 16  # snippets per actor call
BATCHES_PER_WORKER = 2  # batches in flight per R worker of a node
CELLS_IN_FLIGHT = 8  # cells a generation worker runs at once
OWNER_RESTARTS = 3  # dedup owners a generation job may rebuild


def ray_module() -> Any:
    try:
        import ray
    except ImportError:
        raise RunnerUnavailable("Ray is not installed: pip install 'qasynth[ray]'", field="ray") from None
    return ray


def _check_reachable(address: str) -> None:
    """Ray waits minutes for a cluster that is not there; a plain connect says so in seconds."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise RunnerUnavailable(f"--ray takes auto, local or HOST:PORT, got {address!r}", field="ray")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=5).close()
    except OSError as exc:
        raise RunnerUnavailable(f"no Ray cluster at {address}: {exc}", field="ray") from None


class RayExecutor:
    """`BlockDedup`'s executor over Ray tasks, one CPU each, retried when their worker dies."""

    def __init__(self, ray: Any, parallelism: int) -> None:
        self._ray = ray
        self.parallelism = parallelism
        self._remotes: dict[Callable[..., Any], Any] = {}

    def put(self, value: Any) -> Any:
        return self._ray.put(value)

    def submit(self, fn: Callable[..., Any], *args: Any) -> Any:
        remote = self._remotes.get(fn)
        if remote is None:
            remote = self._remotes[fn] = self._ray.remote(fn).options(num_cpus=1, max_retries=TASK_RETRIES)
        return remote.remote(*args)

    def wait(self, handles: Sequence[Any]) -> list[Any]:
        ready, _ = self._ray.wait(list(handles), num_returns=1)
        more, _ = self._ray.wait(
            [h for h in handles if h not in ready], num_returns=len(handles) - 1, timeout=0
        )
        return [*ready, *more]

    def get(self, handle: Any) -> Any:
        return self._ray.get(handle)


class _EvalActor:
    """One node's sandboxed R pool. Async, so the batches it holds share the pool's workers."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.runtime: Any = None
        self.lock = asyncio.Lock()

    async def _runner(self) -> Any:
        async with self.lock:
            if self.runtime is None:
                self.runtime = pool_runtime(self.settings)
        return await self.runtime.runner()

    async def run(self, items: list[EvalItem]) -> list[Evaluation]:
        runner = await self._runner()
        return list(await asyncio.gather(*(evaluate_item(runner, item) for item in items)))

    async def describe(self) -> dict[str, str]:
        runner = await self._runner()
        return {"node": os.uname().nodename, **runner.describe()}

    def pid(self) -> int:
        return os.getpid()

    async def close(self) -> None:
        if self.runtime is not None:
            await self.runtime.aclose()
            self.runtime = None


class _DedupOwner:
    """The job's one pair of greedy filters (questions, answers), deciding one offer at a time
    in the order offers arrive. A decision is remembered by (filter, cell and occurrence, id),
    so the same offer made again (a cell retried after its worker died) gets the same answer."""

    def __init__(
        self,
        threshold: float,
        tokenizer: str,
        questions: list[tuple[str, str]],
        answers: list[tuple[str, str]],
    ) -> None:
        self.filters = {
            "question": Deduplicator(threshold=threshold, tokenizer=tokenizer),
            "answer": Deduplicator(threshold=threshold, tokenizer=tokenizer),
        }
        self.filters["question"].add_existing(questions)
        self.filters["answer"].add_existing(answers)
        self.decided: dict[tuple[str, str, str], tuple[bool, str | None, float | None]] = {}
        self.repeated = 0

    def offer(self, kind: str, key: str, item_id: str, text: str) -> tuple[bool, str | None, float | None]:
        known = self.decided.get((kind, key, item_id))
        if known is not None:
            self.repeated += 1
            return known
        d = self.filters[kind].offer(item_id, text)
        self.decided[(kind, key, item_id)] = decision = (d.kept, d.nearest_id, d.score)
        return decision

    def stats(self) -> dict[str, int]:
        return {"decided": len(self.decided), "repeated": self.repeated}

    def pid(self) -> int:
        return os.getpid()


class _Owned:
    """One filter of a cell's pipeline run, asking the owner. `key` numbers the offers of one id
    within the run, so a genuine repeat is decided afresh and a retry's offers match the first run's."""

    def __init__(self, owner: Any, kind: str, cell: Cell) -> None:
        self.owner = owner
        self.kind = kind
        self.scope = f"{cell.task}\x1f{cell.theme}"
        self.seen: Counter[str] = Counter()

    async def offer(self, item_id: str, text: str) -> tuple[bool, str | None, float | None]:
        n = self.seen[item_id]
        self.seen[item_id] += 1
        kept, nearest, score = await self.owner.offer.remote(self.kind, f"{self.scope}\x1f{n}", item_id, text)
        return kept, nearest, score


class _GenerateWorker:
    """One node's generation: provider lanes and a warm R pool of its own, many cells at once."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.runtime: Any = None
        self.jobs: dict[str, Job] = {}

    async def run_cell(self, spec: list[Any], cell: Cell, earlier: list[str], owner: Any) -> list[Event]:
        """The cell's pair, dropped and failed records and its `Done`, once the cell is finished."""
        if self.runtime is None:
            self.runtime = pool_runtime(self.settings)
        ref = spec[0]
        job = self.jobs.get(ref.hex())
        if job is None:
            job = self.jobs[ref.hex()] = resolve_spec(msgspec.convert(await ref, Spec), max_total=None)
        job = msgspec.structs.replace(job, cells=(cell,))
        history = History(by_cell={(cell.task, cell.theme): earlier})
        return [
            event
            async for event in job_events(
                self.runtime, job, history=history, decide=lambda kind: _Owned(owner, kind, cell)
            )
            if isinstance(event, PairReady | Dropped | Failed | Done)
        ]

    def pid(self) -> int:
        return os.getpid()

    async def close(self) -> None:
        if self.runtime is not None:
            await self.runtime.aclose()
            self.runtime = None


async def _result(ref: Any) -> Any:
    return await ref


class RayRunner:
    name = "ray"

    def __init__(self, settings: Settings, *, ray: Any, started: bool, block_size: int | None = None) -> None:
        self.settings = settings
        self._ray = ray
        self._started = started
        self.block_size = block_size or DEFAULT_BLOCK
        self.actors: list[Any] = []
        self.workers_per_actor: list[int] = []
        self.generators: list[Any] = []
        self.owner: Any = None
        self.owner_restarts = 0
        self.stats = BlockStats()
        self._describe: dict[str, str] = {}

    @classmethod
    def connect(
        cls, settings: Settings, *, address: str = "auto", block_size: int | None = None
    ) -> RayRunner:
        """Join a running cluster: `auto`, the one this machine belongs to, else a new local one;
        `local`, always a new one on this machine for this job; otherwise its address."""
        ray = ray_module()
        started = False
        if not ray.is_initialized():
            options: dict[str, Any] = {"logging_level": "WARNING", "log_to_driver": False}
            if address == "local":
                ray.init(address="local", include_dashboard=False, **options)
                started = True
            else:
                if address != "auto":
                    _check_reachable(address)
                try:
                    ray.init(address=address, **options)
                except (ConnectionError, RuntimeError, ValueError) as exc:
                    if address != "auto":
                        raise RunnerUnavailable(f"no Ray cluster at {address}: {exc}", field="ray") from None
                    ray.init(address="local", include_dashboard=False, **options)
                    started = True
        return cls(settings, ray=ray, started=started, block_size=block_size)

    def _cpus(self) -> int:
        return max(1, int(self._ray.cluster_resources().get("CPU", 1)))

    def dedup(
        self,
        items: Iterable[tuple[str, str]],
        *,
        existing: Iterable[tuple[str, str]] = (),
        threshold: float = 0.7,
        tokenizer: str = "auto",
    ) -> Iterator[Decision]:
        blocks = BlockDedup(
            RayExecutor(self._ray, self._cpus()),
            threshold=threshold,
            tokenizer=tokenizer,
            block_size=self.block_size,
        )
        self.stats = blocks.stats
        yield from blocks.run(items, existing=existing)

    def _per_node(self, cls: type) -> list[tuple[Any, int]]:
        """One actor of `cls` per alive node, placed there (softly, so a restart may land elsewhere),
        with the node's CPUs."""
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        actor_class = self._ray.remote(cls)
        actors = []
        for node in self._ray.nodes():
            if not node.get("Alive"):
                continue
            actor = actor_class.options(
                num_cpus=0,
                max_restarts=ACTOR_RESTARTS,
                max_task_retries=TASK_RETRIES,
                max_concurrency=1000,
                scheduling_strategy=NodeAffinitySchedulingStrategy(node["NodeID"], soft=True),
            ).remote(self.settings)
            actors.append((actor, int(node.get("Resources", {}).get("CPU", 1))))
        return actors

    def _start_actors(self) -> None:
        for actor, cpus in self._per_node(_EvalActor):
            self.actors.append(actor)
            self.workers_per_actor.append(self.settings.eval_workers or cpus)

    def _start_owner(self, spec: Spec, kept: History) -> Any:
        existing = [(item.id, item.text) for item in spec.dedup.existing]
        return (
            self._ray.remote(_DedupOwner)
            .options(num_cpus=0, max_restarts=0)
            .remote(
                spec.dedup.threshold, spec.dedup.tokenizer, existing + kept.questions, existing + kept.answers
            )
        )

    async def _owner_alive(self) -> bool:
        try:
            await self.owner.stats.remote()
        except self._ray.exceptions.RayError:
            return False
        return True

    async def evaluate(self, items: Iterable[EvalItem]) -> AsyncIterator[Evaluation]:
        if not self.actors:
            self._start_actors()
        described = await asyncio.gather(*(a.describe.remote() for a in self.actors))
        self._describe = {"runner": self.name, "actors": str(len(self.actors)), **described[0]}
        limits = [BATCHES_PER_WORKER * w for w in self.workers_per_actor]
        load = [0] * len(self.actors)
        in_flight: deque[tuple[int, Any]] = deque()

        def send(batch: list[EvalItem]) -> None:
            a = min(range(len(self.actors)), key=lambda i: load[i] / limits[i])
            load[a] += 1
            in_flight.append((a, self.actors[a].run.remote(batch)))

        async def receive() -> list[Evaluation]:
            a, ref = in_flight.popleft()
            try:
                return await ref
            finally:
                load[a] -= 1

        batch: list[EvalItem] = []
        for item in items:
            batch.append(item)
            if len(batch) == BATCH:
                send(batch)
                batch = []
                if len(in_flight) >= sum(limits):
                    for evaluation in await receive():
                        yield evaluation
        if batch:
            send(batch)
        while in_flight:
            for evaluation in await receive():
                yield evaluation

    async def generate(self, job: Job, *, history: History | None = None) -> AsyncIterator[Event]:
        """Cells over the generation workers, a few at a time each; each cell's records as it ends."""
        history = history or History()
        started = time.perf_counter()
        spec = job.spec
        # What the owner must hold: the history, then every record delivered (a new owner starts from it).
        kept = History(questions=list(history.questions), answers=list(history.answers))
        self.owner = self._start_owner(spec, kept)
        if not self.generators:
            self.generators = [actor for actor, _ in self._per_node(_GenerateWorker)]
        self._describe = {"runner": self.name, "workers": str(len(self.generators))}
        spec_ref = [self._ray.put(spec)]
        waiting = deque(job.cells)
        load = [0] * len(self.generators)
        running: dict[asyncio.Future[Any], tuple[int, Cell]] = {}
        parts, usage = [], Usage()
        dead = False  # the owner died: no cell starts until every cell it served has ended

        def send() -> None:
            while waiting and not dead:
                w = min(range(len(load)), key=load.__getitem__)
                if load[w] >= CELLS_IN_FLIGHT:
                    return
                cell = waiting.popleft()
                earlier = history.by_cell.get((cell.task, cell.theme), [])
                ref = self.generators[w].run_cell.remote(spec_ref, cell, earlier, self.owner)
                running[asyncio.ensure_future(_result(ref))] = (w, cell)
                load[w] += 1

        send()
        try:
            while running:
                finished, _ = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
                for future in finished:
                    w, cell = running.pop(future)
                    load[w] -= 1
                    try:
                        events = future.result()
                    except self._ray.exceptions.RayError as exc:
                        if not dead and not await self._owner_alive():
                            if self.owner_restarts == OWNER_RESTARTS:
                                raise RunnerUnavailable(
                                    f"the dedup owner died {OWNER_RESTARTS + 1} times: {exc}", field="ray"
                                ) from None
                            dead = True
                        if dead:  # the cell lost its owner: it runs again on the next one
                            waiting.appendleft(cell)
                            continue
                        raise RunnerUnavailable(
                            f"a generation worker failed beyond its retries: {exc}", field="ray"
                        ) from None
                    for event in events:
                        if isinstance(event, Done):
                            parts.append(event.counts)
                            usage = usage + event.usage
                            continue
                        if isinstance(event, PairReady):
                            kept.keep(event.pair)
                        elif isinstance(event, Dropped):
                            kept.keep(event.item)
                        yield event
                if dead and not running:
                    # Every cell the dead owner served has ended, and what they delivered is in
                    # `kept`: the new owner starts from exactly the records written so far.
                    self.owner_restarts += 1
                    self.owner = self._start_owner(spec, kept)
                    dead = False
                send()
        finally:
            for future in running:
                future.cancel()
        yield Done(
            counts=add_counts(parts),
            usage=usage,
            elapsed_s=round(time.perf_counter() - started, 3),
            spec_sha256=job.spec_sha256,
        )

    def describe(self) -> dict[str, str]:
        return dict(self._describe) or {"runner": self.name}

    async def aclose(self) -> None:
        actors = self.actors + self.generators
        if actors:
            await asyncio.gather(*(a.close.remote() for a in actors), return_exceptions=True)
        for actor in actors:
            self._ray.kill(actor)
        if self.owner is not None:
            self._ray.kill(self.owner)
        self.actors, self.generators, self.owner = [], [], None
        if self._started:
            self._ray.shutdown()
