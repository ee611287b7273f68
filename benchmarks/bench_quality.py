"""How many cells come back full of pairs that pass every blocking check, on the embedded model.

The built-in grid (3 tasks × 5 themes × 1 pair) in English and in Japanese, with `on_failure: drop`,
run twice in the same process: with repair (`repair_attempts: 2`) and without (`0`). Goal: every cell
full, within the cell's call budget (3× the calls its count needs). Prints, per run: cells full,
each check's pass rate, answers repaired, calls (and top-up calls) against the budget, tokens, wall
time, and the machine's load before and after (the model and R share its cores with whatever else
runs). `--out DIR` keeps every response as JSON to read the pairs.

    PYTHONPATH=$PWD .venv/bin/python benchmarks/bench_quality.py          # the whole grid, twice, twice
    PYTHONPATH=$PWD .venv/bin/python benchmarks/bench_quality.py --tasks fix --themes regression \
        --locales en --repair on --out /tmp/pairs                           # one cell, to read its pairs
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgspec

import evaluator
from service.providers.local import LocalProvider
from service.settings import Settings
from service.stages.evaluate import answer_evaluator
from service.stages.pipeline import collect, run_job
from service.stages.spec import resolve_spec
from service.wire.generate import Checked, Dropped, Event, Failed, GenerateResponse, PairReady, Spec

TASKS = ["explain", "fix", "generate"]
THEMES = ["mean-variance", "hypothesis-tests", "regression", "distributions", "summaries"]


def load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load {one:.2f} / {five:.2f} / {fifteen:.2f} on {os.cpu_count()} cores"


def spec_for(args: argparse.Namespace, locale: str, repair: bool) -> Spec:
    return msgspec.convert(
        {
            "locale": locale,
            "tasks": [{"id": t} for t in args.tasks],
            "themes": [{"id": t} for t in args.themes],
            "per_cell": args.per_cell,
            "model": {
                "provider": "local",
                "temperature": args.temperature,
                "max_tokens": args.max_tokens,
                "questions_per_call": 1,
            },
            "evaluation": {"on_failure": "drop", "repair_attempts": 2 if repair else 0},
        },
        Spec,
    )


async def progress(events: AsyncIterator[Event], started: float) -> AsyncIterator[Event]:
    """Pass the events on, printing one line for each that says how an item is doing."""
    async for event in events:
        at = f"[{time.perf_counter() - started:7.1f} s]"
        if isinstance(event, PairReady):
            p = event.pair
            flagged = p.quality is not None and p.quality.flagged
            print(f"{at} pair {p.task}/{p.theme}{' FLAGGED' if flagged else ''}", flush=True)
        elif isinstance(event, Checked) and event.failed:
            print(f"{at} {event.subject} {event.attempt} failed {', '.join(event.failed)}", flush=True)
        elif isinstance(event, Dropped | Failed):
            item = event.item
            print(
                f"{at} {type(event).__name__.lower()} {item.task}/{item.theme} {item.stage} {item.reason}",
                flush=True,
            )
        yield event


def summary(response: GenerateResponse, wall_s: float) -> dict[str, Any]:
    counts = response.counts
    cells = counts.cells
    full = [c for c in cells if c.returned == c.requested]
    unflagged = [p for p in response.pairs if p.quality is not None and not p.quality.flagged]
    diversity = [c.diversity for c in cells if c.diversity is not None]
    return {
        "cells": len(cells),
        "cells_full": len(full),
        "pairs": len(response.pairs),
        "pairs_passing_blocking_checks": len(unflagged),
        "requested": counts.requested,
        "repaired": counts.repaired,
        "repair_calls": counts.repair_calls,
        "calls": counts.calls,
        "budget": sum(c.budget for c in cells),
        "top_up_calls": counts.top_up_calls,
        "over_budget_cells": sum(c.calls > c.budget for c in cells),
        "dropped": {
            r: sum(d.reason == r for d in response.dropped)
            for r in sorted({d.reason for d in response.dropped})
        },
        "failed": {
            r: sum(f.reason == r for f in response.failed)
            for r in sorted({f.reason for f in response.failed})
        },
        "checks": {k: (v.passed, v.failed, v.pass_rate) for k, v in counts.checks.items()},
        "tokens_in": response.usage.input_tokens,
        "tokens_out": response.usage.output_tokens,
        "wall_s": round(wall_s, 1),
        "diversity": round(statistics.mean(diversity), 3) if diversity else None,
    }


def show(name: str, s: dict[str, Any]) -> None:
    print(f"\n== {name}: {s['cells_full']} of {s['cells']} cells full, {s['pairs']} of {s['requested']} pairs "
          f"({s['pairs_passing_blocking_checks']} pass every blocking check), {s['wall_s']:.0f} s")  # fmt: skip
    print(f"   calls {s['calls']} of a budget of {s['budget']} (top-up {s['top_up_calls']}, repairs "
          f"{s['repair_calls']}; cells over budget: {s['over_budget_cells']})")  # fmt: skip
    print(f"   repaired answers {s['repaired']}")
    print(f"   tokens in/out {s['tokens_in']}/{s['tokens_out']}; diversity {s['diversity']}")
    print(f"   dropped {s['dropped']}; failed {s['failed']}")
    for check, (passed, failed, rate) in s["checks"].items():
        print(f"   {check:22s} {passed:3d} passed {failed:3d} failed  {rate:.0%}")


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", nargs="+", default=TASKS)
    parser.add_argument("--themes", nargs="+", default=THEMES)
    parser.add_argument("--locales", nargs="+", default=["en", "ja"])
    parser.add_argument("--repair", choices=["both", "on", "off"], default="both")
    parser.add_argument("--per-cell", type=int, default=1)
    parser.add_argument("--temperature", type=float, default=0.2)
    parser.add_argument("--max-tokens", type=int, default=1024)
    parser.add_argument("--out", type=Path, default=None, help="write each response here as JSON")
    args = parser.parse_args()

    settings = Settings.from_env()
    print(f"start: {load()}; local model threads {settings.local_threads}", flush=True)
    provider = LocalProvider.from_settings(settings)
    runner = await evaluator.start_runner(sandbox=settings.sandbox, workers=settings.eval_workers or None)
    sandbox = answer_evaluator(runner)
    results: dict[str, dict[str, Any]] = {}
    try:
        modes = {"both": [True, False], "on": [True], "off": [False]}[args.repair]
        for locale in args.locales:
            for repair in modes:
                name = f"{locale}, repair {'on' if repair else 'off'}"
                job = resolve_spec(spec_for(args, locale, repair))
                started = time.perf_counter()
                print(f"\n{name}: {len(job.cells)} cells, {load()}", flush=True)
                events = run_job(job, provider, evaluate=sandbox, retries=settings.content_retries)
                response = await collect(progress(events, started))
                results[name] = summary(response, time.perf_counter() - started)
                show(name, results[name])
                if args.out is not None:
                    args.out.mkdir(parents=True, exist_ok=True)
                    path = args.out / f"{locale}-repair-{'on' if repair else 'off'}.json"
                    path.write_bytes(msgspec.json.encode(response))
    finally:
        await provider.aclose()
        await runner.aclose()
    print(f"\nend: {load()}")
    print(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
