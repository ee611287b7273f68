"""The embedded model with the old settings (1 slot, 1 thread) and the new defaults, side by side.

    .venv/bin/python benchmarks/bench_local.py                   # the demo job and the 3 x 5 x 1 grid, both ways
    .venv/bin/python benchmarks/bench_local.py --quick           # the README's main job only (--jobs demo)
    .venv/bin/python benchmarks/bench_local.py --jobs grid       # the grid only (about 25 minutes)
    .venv/bin/python benchmarks/bench_local.py --contention      # decoding beside a busy R evaluator
    .venv/bin/python benchmarks/bench_local.py --runtime         # the PyPI wheel against this CPU's build

Old settings are how the provider ran before it had slots: one slot of 8,192 tokens, one thread, so
no prompt snapshots are copied between slots. New are the defaults (`Settings`): 4 slots of 4,096
tokens, one thread per usable core.

Jobs: each run starts a fresh service (so the wall time includes the model load), sends the job to
POST /v1/generate over loopback HTTP and waits for the whole response, R evaluation on. `demo` is
the spec `python -m service demo` sends (2 tasks x 2 themes x 1, English, temperature 0.2,
max_tokens 512, one question per call); `grid` is the same with every built-in task and theme
(3 x 5 x 1). Reported: wall time, output tokens per second of wall time, prompt tokens evaluated
and served from cache, the longest prompt a step sent (for sizing the slots' context) and the
evaluator's verdicts, so a faster setting that gave worse answers would show.

Contention: four sequences of 128 tokens decoded together, with 0, 1 or 2 CPU-bound R snippets
running in the service's own evaluator at the same time (the pipeline evaluates answers while
others decode), for 1 and 2 threads and libgomp's default barrier spinning against the provider's
shorter spin. Each setting runs in a fresh process, because libgomp reads its settings once.

Runtime: a fixed piece of work (four new prompts evaluated together, then four seeded replies
decoded together) and the demo job (or --jobs), at the new settings, once with the xllamacpp wheel
from PyPI (compiled for AVX2) and once with the runtime installed here (scripts/build_runtime.py
builds it for AVX-512 where the CPU has it), each in a fresh process, for --rounds rounds in
alternating order.
The wheel is installed into a temporary directory put first on the child's PYTHONPATH.

The machine is shared: the script prints the load average before every run; compare the two sides
of one run, and re-run when the load was high.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
import msgspec  # noqa: E402

from service.__main__ import serve_in_background  # noqa: E402
from service.app import create_app  # noqa: E402
from service.providers._cpu import available_cores  # noqa: E402
from service.settings import Settings  # noqa: E402

# The spec of `python -m service demo` (service/__main__.py, `_demo`) with its default arguments.
DEMO: dict[str, Any] = {
    "language": "r",
    "locale": "en",
    "tasks": [{"id": "explain"}, {"id": "generate"}],
    "themes": [{"id": "mean-variance"}, {"id": "hypothesis-tests"}],
    "per_cell": 1,
    "model": {"questions_per_call": 1, "temperature": 0.2, "max_tokens": 512},
    "evaluation": {"enabled": True, "on_failure": "flag"},
}
# Every built-in task and theme: tasks and themes left out of the spec.
GRID: dict[str, Any] = {k: v for k, v in DEMO.items() if k not in ("tasks", "themes")}
JOBS = {"demo": DEMO, "grid": GRID}


def load() -> str:
    one, five, _ = os.getloadavg()
    return f"load {one:.2f}/{five:.2f}"


def run_job(name: str, spec: dict[str, Any], *, slots: int, threads: int, context: int) -> dict[str, Any]:
    settings = msgspec.structs.replace(
        Settings.from_env(),
        default_provider="local",
        local_slots=slots,
        local_threads=threads,
        local_context=context,
    )
    before = load()
    started = time.perf_counter()
    with serve_in_background(create_app(settings)) as url:
        response = httpx.post(f"{url}/v1/generate", json=spec, timeout=httpx.Timeout(10, read=7200))
        wall_s = time.perf_counter() - started
        ready = httpx.get(f"{url}/ready", timeout=60).json()
    if response.status_code != 200:
        raise SystemExit(f"{name}: POST /v1/generate answered {response.status_code}: {response.text}")
    body = response.json()
    steps = [step for pair in body["pairs"] for step in pair["provenance"].values() if isinstance(step, dict)]
    prompts = [s["usage"]["input_tokens"] / max(1, s.get("attempts", 1)) for s in steps if "usage" in s]
    verdicts = Counter(
        (pair.get("evaluation") or {}).get("verdict", "not evaluated") for pair in body["pairs"]
    )
    usage = body["usage"]
    local = ready["providers"]["local"]
    return {
        "job": name,
        "slots": slots,
        "threads": int(local["threads"]),
        "spin": local.get("openmp_spin", ""),
        "wall_s": wall_s,
        "load_s": float(local.get("load_s", "0")),
        "requested": body["counts"]["requested"],
        "returned": body["counts"]["returned"],
        "failed": body["counts"]["failed"],
        "dropped": len(body["dropped"]),
        "output_tokens": usage["output_tokens"],
        "input_tokens": usage["input_tokens"],
        "cached_tokens": usage["cached_tokens"],
        "tok_s": usage["output_tokens"] / wall_s,
        "longest_prompt": int(max(prompts, default=0)),
        "verdicts": dict(verdicts),
        "cpu_features": local.get("cpu_features", ""),
        "load_before": before,
        "load_after": load(),
    }


def verdicts(r: dict[str, Any]) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(r["verdicts"].items()))


def describe(r: dict[str, Any]) -> str:
    return (
        f"{r['job']:5} slots={r['slots']} threads={r['threads']}: {r['wall_s']:6.1f} s wall "
        f"(model load {r['load_s']:.1f} s), {r['returned']}/{r['requested']} pairs ({r['failed']} failed, "
        f"{r['dropped']} dropped), {r['output_tokens']} output tokens = {r['tok_s']:.1f} tok/s; prompt "
        f"{r['input_tokens']} tokens, {r['cached_tokens']} from cache; longest prompt {r['longest_prompt']}; "
        f"verdicts: {verdicts(r)}  [{r['load_before']} -> {r['load_after']}]"
    )


def jobs(names: list[str], new_slots: int, new_threads: int, order: str) -> None:
    sides = [("old", 1, 1, 8192), ("new", new_slots, new_threads, Settings().local_context)]
    if order == "new-first":
        sides.reverse()
    print(f"cores available: {available_cores()} (os.cpu_count() {os.cpu_count()}); {load()}", flush=True)
    results: dict[tuple[str, str], dict[str, Any]] = {}
    for name in names:
        for side, slots, threads, context in sides:
            result = run_job(name, JOBS[name], slots=slots, threads=threads, context=context)
            results[(name, side)] = result
            print(f"{side}: {describe(result)}", flush=True)
    print()
    print("| job | old: 1 slot, 1 thread | new | speed-up | verdicts old → new | load average (1 min) |")
    print("|---|---|---|---|---|---|")
    for name in names:
        old, new = results[(name, "old")], results[(name, "new")]
        print(
            f"| {name} | {old['wall_s']:.0f} s, {old['tok_s']:.1f} tok/s | {new['wall_s']:.0f} s, "
            f"{new['tok_s']:.1f} tok/s ({new['slots']} slots, {new['threads']} threads) | "
            f"**{old['wall_s'] / new['wall_s']:.2f}×** | {verdicts(old)} → {verdicts(new)} | "
            f"{old['load_before']} → {new['load_after']} |"
        )


# -- runtime: the PyPI wheel against the build for this CPU


def _pypi_wheel(directory: str) -> str:
    """The PyPI wheel of the installed xllamacpp version, unpacked into `directory`."""
    import importlib.metadata

    version = importlib.metadata.version("xllamacpp")
    command = [sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check", "--no-deps"]
    command += ["--only-binary", ":all:", "--target", directory, f"xllamacpp=={version}"]
    subprocess.run(command, check=True)
    return version


async def _fixed_work(slots: int, threads: int) -> dict[str, Any]:
    """The same work on either runtime: four new prompts of about 600 tokens evaluated together, then
    four replies of up to 128 tokens decoded together (temperature 0, seeded)."""
    from service.providers import _gguf
    from service.providers.base import CompletionRequest, Message
    from service.providers.local import LocalProvider

    provider = LocalProvider(packaged=_gguf.DEFAULT_MODEL, slots=slots, threads=threads)
    system = (ROOT / "prompts/answer.en.md").read_text().split("=== user ===")[0]
    # With the built-in conventions and answer rules: about 600 tokens.
    system += (ROOT / "prompts/defaults.en.toml").read_text().split("[labels]")[0]

    def ask(i: int, prefix: str, n: int) -> CompletionRequest:
        text = f"Question {i}: write R code for a two-sample t-test on simulated data."
        return CompletionRequest(
            system=prefix + system, messages=(Message("user", text),), temperature=0.0, max_tokens=n, seed=1
        )

    try:
        await provider.complete(ask(0, "Warm-up. ", 1))  # the load, outside the timings
        started = time.perf_counter()
        # Each prompt starts differently, so none shares a cached prefix with another.
        evaluated = await asyncio.gather(*(provider.complete(ask(i, f"Call {i}. ", 1)) for i in range(4)))
        prompt_s = time.perf_counter() - started
        started = time.perf_counter()
        decoded = await asyncio.gather(*(provider.complete(ask(i, "Call 0. ", 128)) for i in range(4)))
        decode_s = time.perf_counter() - started
    finally:
        await provider.aclose()
    prompt_tokens = sum(c.usage.input_tokens - c.usage.cached_tokens for c in evaluated)
    output_tokens = sum(c.usage.output_tokens for c in decoded)
    return {
        "prompt_tokens": prompt_tokens,
        "prompt_tok_s": prompt_tokens / prompt_s,
        "output_tokens": output_tokens,
        "decode_tok_s": output_tokens / decode_s,
    }


def _job_in_child(name: str, slots: int, threads: int, pythonpath: str | None) -> dict[str, Any]:
    env = dict(os.environ)
    if pythonpath:
        env["PYTHONPATH"] = os.pathsep.join(p for p in (pythonpath, env.get("PYTHONPATH")) if p)
    if name == "fixed":
        child = ["--fixed-in-child", json.dumps([slots, threads])]
    else:
        child = ["--job-in-child", json.dumps([name, slots, threads, Settings().local_context])]
    command = [sys.executable, __file__, *child]
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(done.stderr[-3000:])
    return json.loads(done.stdout.strip().splitlines()[-1])


def runtimes(names: list[str], slots: int, threads: int, rounds: int) -> None:
    import tempfile

    with tempfile.TemporaryDirectory(prefix="bench-local-wheel-") as wheel_dir:
        version = _pypi_wheel(wheel_dir)
        print(f"xllamacpp {version}; cores available: {available_cores()}; {load()}", flush=True)
        sides = [("pypi", wheel_dir), ("installed", None)]
        results: dict[tuple[str, str], list[dict[str, Any]]] = {}
        for round_ in range(rounds):
            for side, path in sides if round_ % 2 == 0 else sides[::-1]:
                fixed = _job_in_child("fixed", slots, threads, path)
                results.setdefault(("fixed", side), []).append(fixed)
                print(
                    f"{side:9} fixed work: {fixed['prompt_tokens']} prompt tokens at {fixed['prompt_tok_s']:.1f} "
                    f"tok/s, {fixed['output_tokens']} output tokens at {fixed['decode_tok_s']:.1f} tok/s "
                    f"(4 at once) [{load()}]",
                    flush=True,
                )
            for name in names:
                for side, path in sides if round_ % 2 == 0 else sides[::-1]:
                    result = _job_in_child(name, slots, threads, path)
                    results.setdefault((name, side), []).append(result)
                    print(f"{side:9} [{result['cpu_features']}]: {describe(result)}", flush=True)
    print()
    print("| fixed work, 4 at once | PyPI wheel (AVX2) | installed runtime | speed-up |")
    print("|---|---|---|---|")
    for key, label in (("prompt_tok_s", "prompt evaluation"), ("decode_tok_s", "decoding")):
        rates = [[r[key] for r in results[("fixed", side)]] for side in ("pypi", "installed")]
        print(
            f"| {label}, tokens/s | {' / '.join(f'{x:.1f}' for x in rates[0])} | "
            f"{' / '.join(f'{x:.1f}' for x in rates[1])} | **{sum(rates[1]) / sum(rates[0]):.2f}×** |"
        )
    print()
    print("| job | PyPI wheel (AVX2) | installed runtime | speed-up | verdicts PyPI → installed |")
    print("|---|---|---|---|---|")
    for name in names:
        old, new = results[(name, "pypi")], results[(name, "installed")]
        old_s, new_s = sum(r["wall_s"] for r in old), sum(r["wall_s"] for r in new)
        merged: list[Counter[str]] = [Counter(), Counter()]
        for counter, side in zip(merged, (old, new), strict=True):
            for r in side:
                counter.update(r["verdicts"])
        walls = [" / ".join(f"{r['wall_s']:.0f} s" for r in side) for side in (old, new)]
        print(
            f"| {name} | {walls[0]} | {walls[1]} | **{old_s / new_s:.2f}×** (sum of {len(old)}) | "
            f"{verdicts({'verdicts': merged[0]})} → {verdicts({'verdicts': merged[1]})} |"
        )
    print(f"installed runtime compiled for: {results[(names[0], 'installed')][0]['cpu_features']}")


# -- contention: decoding beside the R evaluator

BUSY_R = "s <- 0\nfor (i in 1:3000000) s <- s + sqrt(i)\nprint(s)"


async def _decode(slots: int, threads: int, busy: int, tokens: int) -> dict[str, Any]:
    """One setting, in this process: four sequences decoded together while `busy` R snippets run."""
    import evaluator
    from service.providers import _gguf
    from service.providers.base import CompletionRequest, Message
    from service.providers.local import LocalProvider
    from service.stages.evaluate import evaluate_code

    provider = LocalProvider(packaged=_gguf.DEFAULT_MODEL, slots=slots, threads=threads)
    runner = await evaluator.start_runner(sandbox="bwrap", workers=max(1, busy))
    system = (ROOT / "prompts/answer.en.md").read_text().split("=== user ===")[0]

    def ask(i: int, n: int) -> CompletionRequest:
        text = f"Question {i}: write R code for a t-test on simulated data."
        return CompletionRequest(
            system=system, messages=(Message("user", text),), temperature=0.2, max_tokens=n
        )

    stop = asyncio.Event()
    snippets = 0

    async def keep_r_busy() -> None:
        nonlocal snippets
        while not stop.is_set():
            await evaluate_code(runner, task="generate", code=BUSY_R)
            snippets += 1

    try:
        await asyncio.gather(*(provider.complete(ask(i, 1)) for i in range(4)))  # loaded, prompt cached
        busy_tasks = [asyncio.create_task(keep_r_busy()) for _ in range(busy)]
        await asyncio.sleep(0.5 if busy else 0)
        before = load()
        started = time.perf_counter()
        done = await asyncio.gather(*(provider.complete(ask(i + 10, tokens)) for i in range(4)))
        wall_s = time.perf_counter() - started
        stop.set()
        await asyncio.gather(*busy_tasks)
        spin = provider.describe().get("openmp_spin", "")
    finally:
        await provider.aclose()
        await runner.aclose()
    out = sum(c.usage.output_tokens for c in done)
    return {
        "slots": slots,
        "threads": threads,
        "busy_r": busy,
        "spin": spin,
        "tok_s": out / wall_s,
        "tokens": out,
        "r_snippets": snippets,
        "load": before,
    }


def contention(tokens: int, repeats: int) -> None:
    settings = [(t, spin, busy) for busy in (0, 1, 2) for t, spin in ((1, "low"), (2, "default"), (2, "low"))]
    print(
        f"cores available: {available_cores()}; 4 sequences x {tokens} tokens, 4 slots; {load()}", flush=True
    )
    rows: dict[tuple[int, str, int], list[dict[str, Any]]] = {}
    for _ in range(repeats):
        for threads, spin, busy in settings:
            env = dict(os.environ)
            if spin == "default":
                env["GOMP_SPINCOUNT"] = "300000"  # libgomp's own default, named explicitly
            command = [sys.executable, __file__, "--one", json.dumps([4, threads, busy, tokens])]
            done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
            if done.returncode != 0:
                raise SystemExit(done.stderr)
            row = json.loads(done.stdout.strip().splitlines()[-1])
            rows.setdefault((threads, spin, busy), []).append(row)
            print(
                f"threads={threads} spin={spin:7} busy R={busy}: {row['tok_s']:5.1f} tok/s "
                f"({row['r_snippets']} R snippets meanwhile) [{row['load']}]",
                flush=True,
            )
    print()
    print("| threads | barrier spin | R busy: 0 | 1 | 2 |")
    print("|---|---|---|---|---|")
    for threads, spin in ((1, "low"), (2, "default"), (2, "low")):
        cells = []
        for busy in (0, 1, 2):
            speeds = sorted(r["tok_s"] for r in rows[(threads, spin, busy)])
            cells.append(" / ".join(f"{s:.1f}" for s in speeds))
        print(f"| {threads} | {spin} | " + " | ".join(cells) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", nargs="*", choices=sorted(JOBS), default=["demo", "grid"])
    parser.add_argument("--quick", action="store_true", help="the demo job only (--jobs demo)")
    parser.add_argument("--slots", type=int, default=Settings().local_slots, help="the new side's slots")
    parser.add_argument("--threads", type=int, default=0, help="the new side's threads (0: available cores)")
    parser.add_argument("--order", choices=("old-first", "new-first"), default="old-first")
    parser.add_argument("--contention", action="store_true", help="decoding beside a busy R evaluator")
    parser.add_argument("--tokens", type=int, default=128, help="tokens per sequence in --contention")
    parser.add_argument("--repeats", type=int, default=2, help="rounds of --contention")
    parser.add_argument("--runtime", action="store_true", help="the PyPI wheel against the installed runtime")
    parser.add_argument("--rounds", type=int, default=2, help="rounds of --runtime")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    parser.add_argument("--job-in-child", help=argparse.SUPPRESS)
    parser.add_argument("--fixed-in-child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.fixed_in_child:
        slots, threads = json.loads(args.fixed_in_child)
        print(json.dumps(asyncio.run(_fixed_work(slots, threads))))
    elif args.job_in_child:
        name, slots, threads, context = json.loads(args.job_in_child)
        print(json.dumps(run_job(name, JOBS[name], slots=slots, threads=threads, context=context)))
    elif args.runtime:
        names = ["demo"] if args.quick or args.jobs == ["demo", "grid"] else args.jobs
        runtimes(names, args.slots, args.threads or available_cores(), args.rounds)
    elif args.one:
        slots, threads, busy, tokens = json.loads(args.one)
        print(json.dumps(asyncio.run(_decode(slots, threads, busy, tokens))))
    elif args.contention:
        contention(args.tokens, args.repeats)
    else:
        jobs(["demo"] if args.quick else args.jobs, args.slots, args.threads or available_cores(), args.order)


if __name__ == "__main__":
    main()
