"""Pipeline throughput against the ideal, side by side with a plain asyncio loop, in one run.

A fake OpenAI server on loopback answers every call after a fixed latency. Each pair
costs two calls (one question, one answer), so with C calls in flight the ideal is
C / (2 × latency) pairs/s. Three runs, one after the other on the same server:

  plain     asyncio.gather over N (question call → answer call) chains, openai SDK, semaphore C:
            the best a hand-written loop does;
  qasynth   POST /v1/generate to the real service (`python -m service serve`) in its own process;
  barrier   the same chains with a stage barrier (all questions, then all answers), for scale.

Usage: python benchmarks/bench_pipeline.py [--pairs 200] [--concurrency 16] [--latency 0.2]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import openai

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


class _External:
    def __init__(self, port: int) -> None:
        self.openai_base_url = f"http://127.0.0.1:{port}/v1"


@contextlib.contextmanager
def external_server(latency_s: float) -> Iterator[Any]:
    """The fake server in a process of its own, so its threads do not compete for this one's GIL."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.fakes.llm_server", "--latency", str(latency_s)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        yield _External(int(proc.stdout.readline()))
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def _caller(server: Any, concurrency: int) -> tuple[openai.AsyncOpenAI, Callable[[str], Awaitable[str]]]:
    client = openai.AsyncOpenAI(api_key="x", base_url=server.openai_base_url, max_retries=0)
    slots = asyncio.Semaphore(concurrency)

    async def call(prompt: str) -> str:
        async with slots:
            r = await client.chat.completions.create(
                model="m", messages=[{"role": "user", "content": prompt}], max_tokens=50
            )
            return r.choices[0].message.content or ""

    return client, call


async def plain(server: Any, pairs: int, concurrency: int) -> float:
    client, call = _caller(server, concurrency)

    async def chain(i: int) -> None:
        question = await call(f"question {i}")
        await call(f"answer {question[:50]} {i}")

    started = time.perf_counter()
    await asyncio.gather(*(chain(i) for i in range(pairs)))
    elapsed = time.perf_counter() - started
    await client.close()
    return elapsed


async def barrier(server: Any, pairs: int, concurrency: int) -> float:
    client, call = _caller(server, concurrency)
    started = time.perf_counter()
    questions = await asyncio.gather(*(call(f"question {i}") for i in range(pairs)))
    await asyncio.gather(*(call(f"answer {q[:50]} {i}") for i, q in enumerate(questions)))
    elapsed = time.perf_counter() - started
    await client.close()
    return elapsed


async def qasynth(server: Any, pairs: int, concurrency: int) -> tuple[float, int]:
    """The real service in a process of its own (`python -m service serve`), as it is deployed."""
    themes = [{"id": f"theme-{i}", "description": f"statistics topic number {i}"} for i in range(pairs // 10)]
    spec = {
        "tasks": [{"id": "generate"}],
        "themes": themes,
        "per_cell": 10,
        "model": {"provider": "openai", "questions_per_call": 1},
        "evaluation": {"enabled": False},
    }
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {
        **os.environ,
        "OPENAI_API_KEY": "x",
        "OPENAI_BASE_URL": server.openai_base_url,
        "QASYNTH_CONCURRENCY": str(concurrency),
        # The fake never rate-limits, so an adaptive lane would grow past C: hold it at C, as the others.
        "QASYNTH_CONCURRENCY_MAX": str(concurrency),
        "QASYNTH_MAX_RETRIES": "0",
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "service",
        "serve",
        "--port",
        str(port),
        "--log-level",
        "warning",
        cwd=ROOT,
        env=env,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient(base_url=url, timeout=600) as client:
            for _ in range(300):
                with contextlib.suppress(httpx.TransportError):
                    if (await client.get("/health")).status_code == 200:
                        break
                await asyncio.sleep(0.1)
            started = time.perf_counter()
            response = await client.post("/v1/generate", json=spec)
            elapsed = time.perf_counter() - started
    finally:
        proc.terminate()
        await proc.wait()
    response.raise_for_status()
    return elapsed, len(response.json()["pairs"])


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pairs", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--latency", type=float, default=0.2)
    args = parser.parse_args()
    ideal = args.concurrency / (2 * args.latency)
    print(f"N={args.pairs} pairs, C={args.concurrency}, latency {args.latency * 1000:.0f} ms")
    print(f"ideal: {ideal:.1f} pairs/s")
    with external_server(args.latency) as server:
        t_plain = await plain(server, args.pairs, args.concurrency)
        t_ours, produced = await qasynth(server, args.pairs, args.concurrency)
        t_barrier = await barrier(server, args.pairs, args.concurrency)
    for name, elapsed, n in (
        ("plain asyncio + openai SDK", t_plain, args.pairs),
        ("qasynth /v1/generate", t_ours, produced),
        ("stage barrier", t_barrier, args.pairs),
    ):
        rate = n / elapsed
        print(
            f"{name:28s} {n:4d} pairs in {elapsed:6.2f} s = {rate:5.1f} pairs/s = {rate / ideal:6.1%} of ideal"
        )
    if produced != args.pairs:
        raise SystemExit(f"qasynth returned {produced} of {args.pairs} pairs")


if __name__ == "__main__":
    asyncio.run(main())
