"""How close `/v1/estimate` comes to what a job really sends: estimate, then run the same spec.

Runs each spec's estimate (the stage behind `/v1/estimate`) and then the job itself, and prints the
expected calls, input, cached and output tokens beside the real ones and their ratio (goal: tokens
within ±25 %), and whether the real figures fall inside the low–high range. The jobs:

- the fake OpenAI and Anthropic servers (`tests/fakes/llm_server.py`, real SDKs over loopback), the
  built-in grid (3 tasks × 2 themes × 3 pairs) with the built-in prompts and with conventions long
  enough to be cached, with R evaluation on; the share of prompt tokens served from cache is printed;
- the embedded local model (Qwen2.5-Coder-1.5B, llama.cpp), 3 tasks × 2 themes × 2 pairs, evaluation on,
  estimated before the model is loaded (o200k_base) and again once it is (llama.cpp's own tokenizer).

Each job is also estimated with `observed`: the counts of an earlier job of the same model, run
first (fakes: 1 pair of each task on one of the themes; local: 1 pair of each cell of the same grid),
as a user would calibrate before a large run; those rows are marked "calibrated".

    PYTHONPATH=$PWD .venv/bin/python benchmarks/bench_estimate.py            # both (half an hour)
    PYTHONPATH=$PWD .venv/bin/python benchmarks/bench_estimate.py --no-local # fakes only (a minute)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from typing import Any

import msgspec

import evaluator
from service.pricing import PriceTable
from service.providers.base import Provider
from service.providers.registry import ProviderRegistry
from service.settings import Settings
from service.stages.estimate import estimate_job
from service.stages.evaluate import answer_evaluator
from service.stages.pipeline import collect, run_job
from service.stages.spec import resolve_spec
from service.wire.estimate import Estimate
from service.wire.generate import Counts, GenerateResponse, Spec
from tests.fakes.llm_server import FakeLLMServer

LONG_CONVENTIONS = "Base R only; create the example data inline.\n" + "\n".join(
    f"- Rule {i}: name every intermediate vector after the quantity it holds, and print one object per"
    " print() call so that each printed line can be read on its own."
    for i in range(40)
)


def load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load {one:.2f} / {five:.2f} / {fifteen:.2f} on {os.cpu_count()} cores"


def spec(
    provider: str, model: str, *, tasks: list[str], themes: list[str], per_cell: int, long: bool
) -> Spec:
    body: dict[str, Any] = {
        "locale": "en",
        "tasks": [{"id": t} for t in tasks],
        "themes": [{"id": t} for t in themes],
        "per_cell": per_cell,
        "model": {"provider": provider, "name": model, "temperature": 0.2, "questions_per_call": 3},
        "evaluation": {"enabled": True, "repair_attempts": 1},
    }
    if long:
        body["conventions"] = LONG_CONVENTIONS
    return msgspec.convert(body, Spec)


def compare(name: str, estimate: Estimate, response: GenerateResponse, wall_s: float) -> dict[str, Any]:
    u = response.usage
    real = {
        "calls": response.counts.calls,
        "input_tokens": u.input_tokens,
        "cached_tokens": u.cached_tokens,
        "cache_write_tokens": u.cache_write_tokens,
        "output_tokens": u.output_tokens,
    }
    rows = {}
    print(
        f"\n== {name}: {len(response.pairs)} of {response.counts.requested} pairs, {wall_s:.0f} s, {load()}"
    )
    print(f"   tokenizer: {estimate.tokenizer}")
    for task, note in estimate.calibration.items():
        print(f"   calibrated {task}: {note}")
    print(f"   {'':20s} {'low':>9s} {'expected':>9s} {'high':>9s} {'actual':>9s}  expected/actual  in range")
    for key, actual in real.items():
        span = getattr(estimate, key)
        ratio = span.expected / actual if actual else None
        inside = span.low <= actual <= span.high
        rows[key] = {"low": span.low, "expected": span.expected, "high": span.high, "actual": actual,
                     "ratio": None if ratio is None else round(ratio, 3), "in_range": inside}  # fmt: skip
        shown = "–" if ratio is None else f"{ratio:.2f}"
        print(
            f"   {key:20s} {span.low:9d} {span.expected:9d} {span.high:9d} {actual:9d}  {shown:>15s}  {inside}"
        )
    # Per step, what the returned pairs' own calls sent and received (dropped items' calls are not in it).
    steps: dict[str, list[int]] = {}
    for pair in response.pairs:
        prov = pair.provenance
        if prov is None:
            continue
        found = [("answer", prov.answer), *(("repair", r.step) for r in prov.repairs)]
        found.append(("question" if prov.snippet is None else "code_question", prov.question))
        if prov.snippet is not None:
            found.append(("snippet", prov.snippet))
        if prov.bug is not None and prov.bug.step is not None:
            found.append(("bug", prov.bug.step))
        for step_name, step in found:
            row = steps.setdefault(step_name, [0, 0, 0])
            row[0] += step.attempts
            row[1] += step.usage.input_tokens // step.batch_size
            row[2] += step.usage.output_tokens // step.batch_size
    for est in estimate.steps:
        calls, inp, out = steps.get(est.step, [0, 0, 0])
        n = max(1, est.calls.expected)
        print(f"   step {est.step:14s} calls {est.calls.expected:4d} vs {calls:4d}; input/call "
              f"{est.input_tokens.expected / n:6.0f} vs {inp / max(1, calls):6.0f}; "
              f"output/call {est.output_tokens.expected / n:5.0f} vs {out / max(1, calls):5.0f}")  # fmt: skip
    total = real["input_tokens"] + real["output_tokens"]
    expected_total = estimate.input_tokens.expected + estimate.output_tokens.expected
    rows["all_tokens"] = {
        "expected": expected_total,
        "actual": total,
        "ratio": round(expected_total / total, 3),
    }
    print(
        f"   {'all tokens':20s} {'':9s} {expected_total:9d} {'':9s} {total:9d}  {expected_total / total:15.2f}"
    )
    share = real["cached_tokens"] / real["input_tokens"] if real["input_tokens"] else 0.0
    guess = estimate.cached_tokens.expected / max(1, estimate.input_tokens.expected)
    print(f"   prompt tokens served from cache: {share:.1%} (estimated {guess:.1%})")
    if response.counts.cost_usd is not None and estimate.cost_usd is not None:
        print(f"   cost: estimated ${estimate.cost_usd.low:.4f}–${estimate.cost_usd.high:.4f} "
              f"(expected ${estimate.cost_usd.expected:.4f}), actual ${response.counts.cost_usd:.4f}")  # fmt: skip
    rows["cached_share"] = round(share, 4)
    return rows


async def estimate(
    provider: Provider, provider_name: str, model: str, job_spec: Spec, prices: PriceTable,
    observed: Counts | None = None,
) -> Estimate:  # fmt: skip
    return await estimate_job(
        resolve_spec(job_spec), provider_name=provider_name, model=model,
        price=prices.lookup(provider_name, model), prices=prices, price_taken=prices.taken,
        provider=provider, observed=observed,
    )  # fmt: skip


async def run(
    provider: Provider, provider_name: str, model: str, job_spec: Spec, sandbox: Any, prices: PriceTable,
    *, estimate_after: bool = False, observed: Counts | None = None,
) -> tuple[Estimate, Estimate | None, GenerateResponse, float]:  # fmt: skip
    """The estimate (made before the job, or after it: the local model counts once loaded), the
    estimate calibrated by `observed` when given, and the job."""
    job = resolve_spec(job_spec)
    price = prices.lookup(provider_name, model)

    async def both() -> tuple[Estimate, Estimate | None]:
        plain = await estimate(provider, provider_name, model, job_spec, prices)
        if observed is None:
            return plain, None
        return plain, await estimate(provider, provider_name, model, job_spec, prices, observed)

    before = None if estimate_after else await both()
    started = time.perf_counter()
    response = await collect(run_job(job, provider, evaluate=sandbox, retries=2, price=price))
    wall = time.perf_counter() - started
    plain, calibrated = before or await both()
    return plain, calibrated, response, wall


async def calibration_job(
    provider: Provider, model: str, job_spec: Spec, sandbox: Any, prices: PriceTable
) -> Counts:
    """The smaller job run first, whose counts calibrate the estimate of the larger one."""
    job = resolve_spec(job_spec)
    price = prices.lookup(provider.name, model)
    started = time.perf_counter()
    response = await collect(run_job(job, provider, evaluate=sandbox, retries=2, price=price))
    print(f"\ncalibration job: {len(response.pairs)} of {response.counts.requested} pairs, "
          f"{response.counts.calls} calls, {time.perf_counter() - started:.0f} s, {load()}", flush=True)  # fmt: skip
    return response.counts


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--no-local", action="store_true", help="leave the embedded model out")
    parser.add_argument("--no-fakes", action="store_true", help="only the embedded model")
    parser.add_argument("--local-tasks", nargs="+", default=["explain", "fix", "generate"])
    parser.add_argument("--local-themes", nargs="+", default=["regression", "hypothesis-tests"])
    parser.add_argument("--local-per-cell", type=int, default=2)
    parser.add_argument(
        "--local-calibration-themes", nargs="+",
        help="the themes of the job run first, whose counts calibrate the estimate (default: the same)",
    )  # fmt: skip
    parser.add_argument("--local-calibration-per-cell", type=int, default=1)
    args = parser.parse_args()
    print(f"start: {load()}", flush=True)
    prices = PriceTable.load()
    runner = await evaluator.start_runner(sandbox="bwrap")
    sandbox = answer_evaluator(runner)
    results: dict[str, Any] = {}
    grid = {"tasks": ["explain", "fix", "generate"], "themes": ["mean-variance", "regression"], "per_cell": 3}
    try:
        with FakeLLMServer() as server:
            if args.no_fakes:
                vendors: tuple[tuple[str, str], ...] = ()
            else:
                vendors = (("openai", "gpt-4o-mini"), ("anthropic", "claude-sonnet-4-5"))
            env = {"OPENAI_BASE_URL": server.openai_base_url, "OPENAI_API_KEY": "sk-fake",
                   "ANTHROPIC_BASE_URL": server.anthropic_base_url, "ANTHROPIC_API_KEY": "sk-ant-fake"}  # fmt: skip
            registry = ProviderRegistry(Settings.from_env(env))
            for vendor, model in vendors:
                for long in (False, True):
                    name = f"fake {vendor} {model}, {'long' if long else 'built-in'} conventions"
                    server.cache.clear()
                    provider = registry.get(vendor)
                    small = spec(vendor, model, tasks=grid["tasks"], themes=["mean-variance"], per_cell=1,
                                 long=long)  # type: ignore[arg-type]  # fmt: skip
                    observed = await calibration_job(provider, model, small, sandbox, prices)
                    server.cache.clear()
                    job_spec = spec(vendor, model, **grid, long=long)  # type: ignore[arg-type]
                    est, calibrated, response, wall = await run(
                        provider, vendor, model, job_spec, sandbox, prices, observed=observed
                    )
                    results[name] = compare(name, est, response, wall)
                    assert calibrated is not None
                    results[f"{name}, calibrated"] = compare(
                        f"{name}, calibrated", calibrated, response, wall
                    )
            await registry.aclose()
        if not args.no_local:
            from service.providers.local import LocalProvider

            settings = Settings.from_env()
            local = LocalProvider.from_settings(settings)
            model = local.default_model
            job_spec = spec("local", model, tasks=args.local_tasks, themes=args.local_themes,
                            per_cell=args.local_per_cell, long=False)  # fmt: skip
            before = await estimate(local, "local", model, job_spec, prices)
            small = spec("local", model, tasks=args.local_tasks,
                         themes=args.local_calibration_themes or args.local_themes,
                         per_cell=args.local_calibration_per_cell, long=False)  # fmt: skip
            observed = await calibration_job(local, model, small, sandbox, prices)
            print(f"\nlocal model job: {args.local_tasks} × {args.local_themes} × {args.local_per_cell}, "
                  f"{load()}", flush=True)  # fmt: skip
            est, calibrated, response, wall = await run(
                local, "local", model, job_spec, sandbox, prices, estimate_after=True, observed=observed
            )
            results["local, estimated before the model loaded"] = compare(
                "local model, estimated before it loaded", before, response, wall
            )
            results["local, estimated by its tokenizer"] = compare(
                "local model, estimated by llama.cpp's tokenizer", est, response, wall
            )
            assert calibrated is not None
            # The counts both ways, so the estimates can be made again without running the model.
            results["local, counts of the calibration job"] = msgspec.to_builtins(observed)
            results["local, counts and usage of the job"] = msgspec.to_builtins(
                {"counts": response.counts, "usage": response.usage}
            )
            results["local, calibrated"] = compare(
                "local model, llama.cpp's tokenizer, calibrated by the earlier job",
                calibrated,
                response,
                wall,
            )
            await local.aclose()
    finally:
        await runner.aclose()
    print(f"\nend: {load()}")
    print(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
