"""File jobs at scale: one process against a local Ray cluster, side by side in one run.

    .venv/bin/python benchmarks/bench_scale.py                       # 1,000,000 items, 20,000 answers
    .venv/bin/python benchmarks/bench_scale.py --items 100000 --answers 2000   # a quick look

1. Dedup: the R help-page corpus (tests/data/r_help_corpus.jsonl, 9,412 texts written by people)
   extended to N items with variants of the kinds generated datasets are full of: paraphrase-like
   word swaps and synonyms, reordered clauses, numbers changed, question framings added, two
   texts joined. `qasynth dedup` runs on it in one process and with `--ray local` (a cluster of
   this machine's cores); the two outputs must be byte-identical. Printed: wall time, peak RSS
   (the process, and for Ray the sum over its whole process tree, shared object-store pages
   counted in every process that maps them), the pairs above the threshold and the driver's
   sequential pass per million items.
2. Evaluate: N answers made from the fast cases of tests/data/evaluator_cases.jsonl (passing,
   runtime and parse errors, no code) with their numbers varied; `qasynth evaluate` in one
   process and with `--ray local`; verdicts and output must agree.

The machine's load is printed before each run: on a shared machine, read the ratios, not the
absolute times.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CORPUS = ROOT / "tests" / "data" / "r_help_corpus.jsonl"
CASES = ROOT / "tests" / "data" / "evaluator_cases.jsonl"

SYNONYMS = {
    "compute": "calculate", "computes": "calculates", "returns": "gives", "return": "give",
    "vector": "array", "object": "value", "function": "routine", "number": "count", "data": "dataset",
    "logical": "boolean", "character": "string", "should": "must", "default": "standard",
    "specify": "give", "values": "elements", "used": "applied", "the": "a", "whether": "if",
    "argument": "parameter", "arguments": "parameters", "optional": "non-mandatory",
    "numeric": "number-valued", "list": "collection", "names": "labels", "result": "output",
    "specifying": "giving", "indicating": "saying", "which": "that", "can": "may", "also": "as well",
}  # fmt: skip
FRAMES = [
    "In R, ", "How do I do this in R: ", "Explain with an example: ", "Write R code for the following. ",
    "Using base R only, ", "Question: ", "Show how to ", "In base R, what does this mean: ",
]  # fmt: skip
ENDINGS = [
    " Show an example.", " Explain the output.", " Use base R.", " Why?",
    " Give a short example with n = 20.", " Assume a sample of 50 observations.",
]  # fmt: skip
NUMBER = re.compile(r"\d+(?:\.\d+)?")
CLAUSES = re.compile(r"[;,] | and |\. ")


def variant(rng: random.Random, texts: list[str]) -> str:
    """A rewrite of a real text: light ones are near-duplicates, heavy ones new items."""
    text = rng.choice(texts)
    if rng.random() < 0.25:  # reordered clauses
        parts = [p.strip() for p in CLAUSES.split(text) if p.strip()]
        if len(parts) > 1:
            rng.shuffle(parts)
            text = rng.choice([", ", "; ", " and "]).join(parts)
    words = text.split()
    for _ in range(rng.choice([0, 1, 1, 2, 3, 4, 6])):
        op = rng.random()
        if op < 0.25 and len(words) > 3:
            del words[rng.randrange(len(words))]
        elif op < 0.4 and len(words) > 2:
            i = rng.randrange(len(words) - 1)
            words[i], words[i + 1] = words[i + 1], words[i]
        elif op < 0.75:
            i = rng.randrange(len(words))
            words[i] = SYNONYMS.get(words[i].lower(), words[i])
        else:
            words.insert(rng.randrange(len(words) + 1), rng.choice(rng.choice(texts).split()))
    text = " ".join(words)
    if NUMBER.search(text) and rng.random() < 0.7:  # numbers changed
        text = NUMBER.sub(lambda m: str(rng.choice([rng.randint(0, 1000), round(rng.random(), 2)])), text)
    r = rng.random()
    if r < 0.3:
        text = rng.choice(FRAMES) + text[:1].lower() + text[1:]
    elif r < 0.5:
        text += rng.choice(ENDINGS)
    elif r < 0.6:
        other = rng.choice(texts)
        text = text.rstrip(".") + "; then " + other[:1].lower() + other[1:]
    return text


def write_items(path: Path, n: int, seed: int = 7) -> None:
    with CORPUS.open(encoding="utf-8") as f:
        texts = [json.loads(line)["text"] for line in f]
    rng = random.Random(seed)
    with path.open("w", encoding="utf-8") as out:
        for i in range(n):
            text = texts[i] if i < len(texts) and i % 2 == 0 else variant(rng, texts)
            out.write(json.dumps({"id": f"q{i}", "text": text}) + "\n")


def write_answers(path: Path, n: int, seed: int = 3) -> None:
    with CASES.open(encoding="utf-8") as f:
        cases = [json.loads(line) for line in f]
    fast = [
        c for c in cases if c["expected_verdict"] in ("passed", "runtime_error", "parse_error", "no_code")
    ]
    rng = random.Random(seed)
    with path.open("w", encoding="utf-8") as out:
        for i in range(n):
            case = fast[i % len(fast)]
            answer = NUMBER.sub(lambda m: str(int(float(m.group())) + rng.randint(0, 9)), case["answer"])
            pair = {k: case[k] for k in ("task", "theme", "question")}
            out.write(json.dumps({"id": f"a{i}", **pair, "answer": answer}) + "\n")


def _tree_rss_kb(root: int) -> int:
    """Resident KiB of `root` and every descendant."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as fh:
                fields = fh.read().rsplit(b")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(entry))
            rss[int(entry)] = int(fields[21]) * os.sysconf("SC_PAGE_SIZE") // 1024
        except (OSError, IndexError, ValueError):
            continue
    total, todo = 0, [root]
    while todo:
        pid = todo.pop()
        total += rss.get(pid, 0)
        todo.extend(children.get(pid, []))
    return total


def run(cmd: list[str]) -> tuple[float, int, int, str]:
    """Wall seconds, peak RSS of the process (KiB), peak RSS of its process tree (KiB), stderr."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    peak_tree = 0
    stop = threading.Event()

    def sample() -> None:
        nonlocal peak_tree
        while not stop.wait(0.5):
            peak_tree = max(peak_tree, _tree_rss_kb(proc.pid))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    err = proc.stderr.read() if proc.stderr else ""
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    elapsed = time.perf_counter() - started
    stop.set()
    sampler.join()
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{err[-3000:]}")
    return elapsed, usage.ru_maxrss, max(peak_tree, usage.ru_maxrss), err


def all_pairs(work: Path, n: int) -> None:
    """Why blocks compare against kept items only: the conflict graph over all items, for the same data."""
    sys.path.insert(0, str(ROOT))
    from service.stages.dedup import deduplicate
    from service.stages.dedup._blocks import pairs_within

    path = work / "pairs.jsonl"
    write_items(path, n)
    with path.open(encoding="utf-8") as f:
        items = [(r["id"], r["text"]) for r in map(json.loads, f)]
    print(f"all pairs, {n:,} items: {load()}", flush=True)
    for size in (n // 5, n):
        t0 = time.perf_counter()
        pairs = pairs_within([t for _, t in items[:size]], 0.7, "auto")
        t_pairs = time.perf_counter() - t0
        t0 = time.perf_counter()
        kept = sum(d.kept for d in deduplicate(items[:size]))
        t_greedy = time.perf_counter() - t0
        print(
            f"  {size:,} items: {len(pairs[0]):,} pairs above the threshold among all items in {t_pairs:.1f} s; "
            f"the greedy filter ({kept:,} kept) in {t_greedy:.1f} s",
            flush=True,
        )


def load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load {one:.2f} {five:.2f} {fifteen:.2f}"


def qasynth(*args: str) -> list[str]:
    return [sys.executable, "-m", "service", *args, "--no-progress"]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--answers", type=int, default=20_000)
    parser.add_argument("--block-size", type=int, default=None)
    parser.add_argument("--skip-dedup", action="store_true")
    parser.add_argument("--skip-evaluate", action="store_true")
    parser.add_argument(
        "--all-pairs",
        type=int,
        default=50_000,
        help="also time the alternative split (every pair above the threshold among all items) on this many items",
    )
    parser.add_argument("--workdir", help="keep the files here instead of a temporary directory")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.workdir or tmp)
        work.mkdir(parents=True, exist_ok=True)
        print(f"cores: {os.cpu_count()}; {load()}", flush=True)
        if not args.skip_dedup:
            items = work / "items.jsonl"
            t0 = time.perf_counter()
            write_items(items, args.items)
            size = items.stat().st_size
            print(
                f"dedup input: {args.items:,} items, {size / 2**20:,.0f} MiB, made in {time.perf_counter() - t0:.0f} s"
            )
            block = ["--block-size", str(args.block_size)] if args.block_size else []
            sides = {}
            for name, extra in (("one process", []), ("ray local", ["--ray", "local", *block])):
                print(f"  {name}: {load()}", flush=True)
                out = work / f"dedup-{name.split()[0]}.jsonl"
                summary = work / f"dedup-{name.split()[0]}.json"
                cmd = qasynth(
                    "dedup", str(items), "-o", str(out), "--summary", str(summary), "--restart", *extra
                )
                elapsed, rss, tree, _ = run(cmd)
                doc = json.loads(summary.read_text())
                sides[name] = (elapsed, out)
                c = doc["counts"]
                line = (
                    f"  {name}: {elapsed:,.1f} s ({args.items / elapsed:,.0f} items/s), {c['kept']:,} kept, "
                    f"{c['dropped']:,} dropped; peak RSS {rss / 1024:,.0f} MiB"
                )
                if "blocks" in doc:
                    b = doc["blocks"]
                    per_million = b["sequential_s"] * 1_000_000 / args.items
                    line += (
                        f" (process tree {tree / 1024:,.0f} MiB); {b['blocks']} blocks, {b['tasks']} tasks, "
                        f"{b['pairs_above_threshold']:,} pairs above the threshold; sequential pass "
                        f"{b['sequential_s']:.1f} s = {per_million:.1f} s per million items"
                    )
                print(line, flush=True)
            (t1, out1), (t2, out2) = sides.values()
            same = out1.read_bytes() == out2.read_bytes()
            print(f"dedup: outputs identical: {same}; one process / ray = {t1 / t2:.2f}x", flush=True)
            if not same:
                raise SystemExit("dedup outputs differ")
        if not args.skip_evaluate:
            answers = work / "answers.jsonl"
            write_answers(answers, args.answers)
            print(f"evaluate input: {args.answers:,} answers", flush=True)
            results = {}
            for name, extra in (("one process", []), ("ray local", ["--ray", "local"])):
                print(f"  {name}: {load()}", flush=True)
                out = work / f"evaluate-{name.split()[0]}.jsonl"
                elapsed, rss, tree, _ = run(
                    qasynth("evaluate", str(answers), "-o", str(out), "--restart", *extra)
                )
                with out.open(encoding="utf-8") as f:
                    rows = [json.loads(line) for line in f]
                results[name] = (
                    elapsed,
                    [(r["id"], r["evaluation"]["verdict"], r["evaluation"]["stdout"]) for r in rows],
                )
                verdicts: dict[str, int] = {}
                for _, v, _ in results[name][1]:
                    verdicts[v] = verdicts.get(v, 0) + 1
                print(
                    f"  {name}: {elapsed:,.1f} s ({args.answers / elapsed:,.0f} answers/s), {verdicts}; peak RSS "
                    f"{rss / 1024:,.0f} MiB, process tree {tree / 1024:,.0f} MiB",
                    flush=True,
                )
            (t1, r1), (t2, r2) = results.values()
            print(f"evaluate: same verdicts and output: {r1 == r2}; one process / ray = {t1 / t2:.2f}x")
        if args.all_pairs:
            all_pairs(work, args.all_pairs)
        print(f"done; {load()}")


if __name__ == "__main__":
    main()
