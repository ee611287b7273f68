"""On a Ray cluster: dedup blocks as Ray tasks, and one warm R pool per node as an actor.

Dedup runs `BlockDedup` with Ray as its executor: the block functions are stateless tasks that
read their texts from the object store, so a task lost with its worker is simply run again
(`max_retries`) and gives the same answer. Evaluation sends batches of snippets to one actor per
node, each owning a sandboxed worker pool (`evaluator.start_runner`, through the service's
Runtime and its settings); batches are awaited in the order they were sent, so results stream
back in input order. An actor that dies is restarted by Ray (`max_restarts`) and its unfinished
batches are run again (`max_task_retries`); a batch's result arrives exactly once.

Every node needs qasynth with its `ray` extra, R and bubblewrap (`scripts/setup.sh`).
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Sequence
from typing import Any

from service.runners.base import EvalItem, RunnerUnavailable
from service.runners.local import evaluate_item, pool_runtime
from service.settings import Settings
from service.stages.dedup import DEFAULT_BLOCK, BlockDedup, BlockStats, Decision
from service.wire.evaluate import Evaluation

__all__ = ["RayExecutor", "RayRunner", "ray_module"]

TASK_RETRIES = 3
ACTOR_RESTARTS = 4
BATCH = 16  # snippets per actor call
BATCHES_PER_WORKER = 2  # batches in flight per R worker of a node


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


class RayRunner:
    name = "ray"

    def __init__(self, settings: Settings, *, ray: Any, started: bool, block_size: int | None = None) -> None:
        self.settings = settings
        self._ray = ray
        self._started = started
        self.block_size = block_size or DEFAULT_BLOCK
        self.actors: list[Any] = []
        self.workers_per_actor: list[int] = []
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

    def _start_actors(self) -> None:
        """One pool actor per alive node, placed there (softly, so a restart may land elsewhere)."""
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        actor_class = self._ray.remote(_EvalActor)
        for node in self._ray.nodes():
            if not node.get("Alive"):
                continue
            cpus = int(node.get("Resources", {}).get("CPU", 1))
            actor = actor_class.options(
                num_cpus=0,
                max_restarts=ACTOR_RESTARTS,
                max_task_retries=TASK_RETRIES,
                max_concurrency=1000,
                scheduling_strategy=NodeAffinitySchedulingStrategy(node["NodeID"], soft=True),
            ).remote(self.settings)
            self.actors.append(actor)
            self.workers_per_actor.append(self.settings.eval_workers or cpus)

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

    def describe(self) -> dict[str, str]:
        return dict(self._describe) or {"runner": self.name}

    async def aclose(self) -> None:
        if self.actors:
            await asyncio.gather(*(a.close.remote() for a in self.actors), return_exceptions=True)
        for actor in self.actors:
            self._ray.kill(actor)
        self.actors = []
        if self._started:
            self._ray.shutdown()
