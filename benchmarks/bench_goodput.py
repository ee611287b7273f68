"""Goodput under a concurrency rate limit: the adaptive lane against a fixed limit and the ideal, in one run.

A fake OpenAI server (its own process) answers each call after a fixed latency, but only N at a time:
a call above N is answered 429 at once, with `retry-after-ms` saying when its oldest call will be
done (and `retry-after` in whole seconds), as a server that knows its queue would. The same M calls
go through each client in turn, each against a fresh server:

  adaptive   qasynth's OpenAIProvider as `create_app` builds it from default settings: AIMD from
             16 calls in flight, the SDK's retries off, the lane retrying 429s after their Retry-After;
  nemo       the same lane with NeMo Data Designer's steps (× 0.75 on a 429, + 1 per 25 successes,
             a 2 s pause when the server names none), for comparison;
  fixed 16   a semaphore of 16 around the SDK with its own retries (max_retries=4, honouring
             Retry-After): the provider as it was before the lanes;
  told N     the lane held at exactly N, as if the client knew the server's limit: never a 429, the
             best this machine does at its load, measured in the same run;
  ideal      N calls in flight all the time: N / latency calls/s.

Goodput is calls answered 200 per second of wall time; a call the client gave up on counts as lost.

Usage: python benchmarks/bench_goodput.py [--calls 600] [--max-in-flight 8] [--latency 0.2]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from service.errors import ProviderError  # noqa: E402
from service.providers._sdk import lane_policies  # noqa: E402
from service.providers.base import CompletionRequest, Message  # noqa: E402
from service.providers.limiter import Adaptive  # noqa: E402
from service.providers.openai import OpenAIProvider  # noqa: E402
from service.settings import Settings  # noqa: E402


class Server:
    def __init__(self, port: int) -> None:
        self.base_url = f"http://127.0.0.1:{port}/v1"
        self.stats: dict[str, Any] = {}


@contextlib.contextmanager
def limited_server(latency_s: float, max_in_flight: int) -> Iterator[Server]:
    """A fresh fake server in a process of its own; its counts arrive in `stats` when it stops."""
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.fakes.llm_server",
            "--latency",
            str(latency_s),
            "--max-in-flight",
            str(max_in_flight),
        ],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    server = Server(int(proc.stdout.readline()))
    try:
        yield server
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=30)
        server.stats = json.loads(out.strip().splitlines()[-1])


def request(i: int) -> CompletionRequest:
    return CompletionRequest(
        system="You answer questions about R.",
        messages=(Message(role="user", content=f"question {i}"),),
        max_tokens=64,
    )


async def through_lane(
    server: Server, calls: int, concurrency: Adaptive | int | None
) -> tuple[float, int, str]:
    adaptive, retry, breaker = lane_policies(Settings())
    client = openai.AsyncOpenAI(api_key="x", base_url=server.base_url, timeout=60)
    provider = OpenAIProvider(
        client, default_model="m", concurrency=concurrency or adaptive, retry=retry, breaker=breaker
    )

    async def one(i: int) -> bool:
        try:
            await provider.complete(request(i))
        except ProviderError:
            return False
        return True

    started = time.perf_counter()
    ok = sum(await asyncio.gather(*(one(i) for i in range(calls))))
    elapsed = time.perf_counter() - started
    [lane] = provider.lanes()
    await provider.aclose()
    return elapsed, ok, f"final limit {lane.limit}"


async def fixed(server: Server, calls: int, concurrency: int) -> tuple[float, int, str]:
    client = openai.AsyncOpenAI(api_key="x", base_url=server.base_url, max_retries=4, timeout=60)
    slots = asyncio.Semaphore(concurrency)

    async def one(i: int) -> bool:
        async with slots:
            try:
                await client.chat.completions.create(
                    model="m", messages=[{"role": "user", "content": f"question {i}"}], max_tokens=64
                )
            except openai.APIStatusError:
                return False
        return True

    started = time.perf_counter()
    ok = sum(await asyncio.gather(*(one(i) for i in range(calls))))
    elapsed = time.perf_counter() - started
    await client.close()
    return elapsed, ok, f"semaphore {concurrency}, SDK retries"


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=600)
    parser.add_argument("--max-in-flight", type=int, default=8)
    parser.add_argument("--latency", type=float, default=0.2)
    args = parser.parse_args()
    n, latency = args.max_in_flight, args.latency
    ideal = n / latency
    load = os.getloadavg()
    print(
        f"{args.calls} calls; the server allows {n} in flight, {latency * 1000:.0f} ms each; "
        f"ideal {ideal:.1f} calls/s; load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}"
    )
    nemo = Adaptive(initial=16, max=64, decrease=0.75, increase_after=25, pause_s=2.0)
    runs = (
        ("adaptive (qasynth)", lambda s: through_lane(s, args.calls, None)),
        ("nemo steps, same lane", lambda s: through_lane(s, args.calls, nemo)),
        ("fixed 16 (before)", lambda s: fixed(s, args.calls, 16)),
        (f"told {n}", lambda s: through_lane(s, args.calls, n)),
    )
    results = []
    for name, run in runs:
        with limited_server(latency, n) as server:
            elapsed, ok, note = await run(server)
        statuses = server.stats["statuses"]
        answered = sum(statuses.values())
        refused = statuses.get("429", 0)
        goodput = ok / elapsed
        results.append((name, goodput / ideal, refused / answered))
        print(
            f"{name:22s} {ok:4d}/{args.calls} ok in {elapsed:6.2f} s = {goodput:5.1f} calls/s = "
            f"{goodput / ideal:6.1%} of ideal; {refused:4d} of {answered:4d} requests answered 429 "
            f"({refused / answered:5.1%}); peak in flight {server.stats['peak_in_flight']}; {note}"
        )
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    name, share, refused_share = results[0]
    told = results[-1][1]
    print(f"{name}: {share:.1%} of ideal, {share / told:.1%} of the lane told {n} (same run)")
    verdict = "meets" if share >= 0.9 and refused_share < 0.05 else "misses"
    print(f"{name} {verdict} the target (>= 90 % of ideal, < 5 % of calls answered 429)")


if __name__ == "__main__":
    asyncio.run(main())
