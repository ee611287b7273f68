"""R evaluation: qasynth's warm forked workers against a fresh `Rscript` per snippet, side by side.

    .venv/bin/python benchmarks/bench_evaluator.py              # 200 snippets each way per set, 2 at a time
    .venv/bin/python benchmarks/bench_evaluator.py -n 400 --concurrency 2 --json out.json

Both sides run the same snippets in the same sandbox: the same bubblewrap namespaces, mounts and
seccomp filter, the same dedicated uid and rlimits, 2 at a time (one per core). Fresh runs start `Rscript
--vanilla -e CODE` in a new sandbox per snippet (what a simple evaluator does); warm runs go
through `WorkerPool.run` (a fork of an R that started once). The machine is shared with other
work, so the two sides alternate in rounds of 20 snippets and the ratio is taken over the same
wall-clock stretch.

Two snippet sets, each measured both ways in the same run:

- `answers`: statistics scripts of the kind the answers hold (t-tests, lm, glm, ANOVA, tables,
  quantiles, a few failing on purpose), where R's own work is a good part of the time;
- `short`: one- or two-line snippets (a mean, a quantile, a sum, a parse error, a runtime error),
  where the start-up cost of R is nearly all there is.

For every snippet the script checks that both sides give the same verdict and, for the
deterministic ones, the same output. Run as root (dedicated uids), it also prints the CPU time and
minor page faults the warm workers and their snippets spent per snippet: figures the load moves
far less than wall-clock rates. It prints the machine's load average before and after.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from evaluator import Limits, WorkerPool  # noqa: E402
from evaluator._reference import fresh_rscript  # noqa: E402
from evaluator._sandbox import claim_uid, worker_source  # noqa: E402

ANSWERS = [
    "before <- c(312, 298, 305, 330, 287, 301, 322, 315)\nafter <- c(295, 290, 301, 310, 280, 296, 305, 309)\n"
    "result <- t.test(after, before, paired = TRUE)\nprint(result)\ncat('Mean change:', mean(after - before), 'ms\\n')",
    "df <- data.frame(x = 1:20, y = c(2.1, 3.9, 6.2, 8.1, 9.8, 12.2, 13.8, 16.1, 18.3, 19.7,\n"
    "  22.1, 24.2, 25.8, 28.1, 30.2, 31.9, 34.1, 36.2, 37.8, 40.1))\nfit <- lm(y ~ x, data = df)\n"
    "print(summary(fit))\nprint(confint(fit))",
    "counts <- matrix(c(12, 5, 7, 9), nrow = 2, dimnames = list(c('a', 'b'), c('yes', 'no')))\n"
    "print(chisq.test(counts))\nprint(fisher.test(counts)$p.value)",
    "x <- c(5.1, 4.9, 4.7, 4.6, 5.0, 5.4, 4.6, 5.0, 4.4, 4.9)\ncat('mean', mean(x), 'sd', sd(x), '\\n')\n"
    "cat('se', sd(x) / sqrt(length(x)), '\\n')\nprint(quantile(x, c(0.1, 0.5, 0.9)))",
    "print(qnorm(c(0.025, 0.975)))\nprint(qt(0.975, df = c(5, 10, 30)))\nprint(pbinom(3, size = 10, prob = 0.2))",
    "g <- factor(rep(c('a', 'b', 'c'), each = 6))\ny <- c(4.2, 4.8, 5.1, 4.6, 5.0, 4.4, 5.9, 6.3, 6.1, 5.7, 6.6, 6.0,\n"
    "  7.1, 6.8, 7.4, 7.0, 6.9, 7.3)\nfit <- aov(y ~ g)\nprint(summary(fit))\nprint(TukeyHSD(fit))",
    "dose <- c(1, 2, 3, 4, 5, 6)\ndead <- c(1, 3, 6, 9, 12, 14)\nn <- rep(15, 6)\n"
    "fit <- glm(cbind(dead, n - dead) ~ dose, family = binomial)\nprint(coef(summary(fit)))",
    "tab <- table(mtcars$cyl, mtcars$gear)\nprint(tab)\nprint(prop.table(tab, 1))\n"
    "print(aggregate(mpg ~ cyl, data = mtcars, FUN = mean))",
    "x <- c(1.83, 0.50, 1.62, 2.48, 1.68, 1.88, 1.55, 3.06, 1.30)\n"
    "y <- c(0.878, 0.647, 0.598, 2.05, 1.06, 1.29, 1.06, 3.14, 1.29)\nprint(wilcox.test(x, y, paired = TRUE))",
    "print(power.t.test(delta = 1, sd = 2, sig.level = 0.05, power = 0.8))",
    "m <- matrix(c(2, 1, 1, 3), 2)\nprint(solve(m))\nprint(eigen(m)$values)",
    "print(cor.test(mtcars$mpg, mtcars$wt))",
    "fit <- lm(mpg ~ wt + hp, data = mtcars)\nnew <- data.frame(wt = c(2.5, 3), hp = c(100, 150))\n"
    "print(predict(fit, new, interval = 'confidence'))",
    "x <- c(1, 2, NA, 4)\nm <- mean(x, na.rm = TRUE\nprint(m)",  # parse error
    "df <- data.frame(a = 1:3)\nprint(mean(df$b))\nprint(sd(df$missing_column) + undefined_object)",  # runtime error
    "s <- split(mtcars$mpg, mtcars$cyl)\nprint(sapply(s, function(v) c(n = length(v), mean = mean(v))))",
    "print(shapiro.test(c(2.3, 3.1, 2.8, 3.5, 2.9, 3.3, 2.7, 3.0, 3.2, 2.6)))",
    "print(ks.test(c(0.61, 0.29, 0.06, 0.59, -1.73, -0.74, 0.51, -0.56, 0.39, 1.64), 'pnorm'))",
    "print(binom.test(7, 20, p = 0.5))\nprint(prop.test(c(15, 25), c(50, 50)))",
    "warning_here <- sqrt(-1)\nprint(log(c(1, 10, 100)))",
]

SHORT = [
    "x <- c(2, 4, 4, 5); print(mean(x))",
    "print(sd(c(1, 2, 3)))",
    "print(qnorm(0.975))",
    'cat(sum(1:10), "\\n")',
    "print(median(c(3, 1, 4, 1, 5, 9, 2, 6)))",
    "print(pt(2.1, df = 12, lower.tail = FALSE) * 2)",
    "x <- c(1.2, 3.4, 2.2)\nvar(x)",
    "print(round(cor(1:10, (1:10)^2), 4))",
    "print(choose(10, 3))",
    "x <- c(1, 2\nprint(x)",  # parse error
    "print(mean(undefined_object))",  # runtime error
    'stop("the data have no column y")',  # runtime error
]

SETS = {"answers": ANSWERS, "short": SHORT}


def worker_counters(uids: set[int]) -> tuple[float, int]:
    """CPU seconds and minor page faults of every process of the workers' uids, their reaped
    children (the snippets) included: where a warm snippet's cost goes. Needs the dedicated uids."""
    cpu = 0.0
    faults = 0
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            if os.stat(entry.path).st_uid not in uids:
                continue
            with open(f"{entry.path}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        cpu += sum(int(v) for v in fields[11:15]) / os.sysconf("SC_CLK_TCK")
        faults += int(fields[7]) + int(fields[8])
    return cpu, faults


async def measure(
    pool: WorkerPool,
    snippets: list[str],
    n: int,
    concurrency: int,
    round_size: int,
    uids: list[tuple[int, int]],
    limits: Limits,
) -> tuple[dict[str, object], list[str]]:
    """Run `n` snippets of the set both ways in alternating rounds; figures and mismatches."""
    jobs = [snippets[i % len(snippets)] for i in range(n)]
    warm_ms: list[float] = []
    fresh_ms: list[float] = []
    warm_wall = fresh_wall = 0.0
    warm_cpu = 0.0
    warm_faults = 0
    mismatches: list[str] = []
    # Warm up both sides once (page cache, first fork), outside the timing.
    await pool.run(snippets[0])
    await fresh_rscript(snippets[0], limits=limits, uid=uids[0][0] if uids else None)
    for start in range(0, n, round_size):
        batch = jobs[start : start + round_size]

        t0 = time.perf_counter()
        sem = asyncio.Semaphore(concurrency)
        free = [u for u, _ in uids] or [None] * concurrency

        async def fresh_one(code: str, sem: asyncio.Semaphore = sem, free: list = free) -> tuple[str, str]:
            async with sem:
                uid = free.pop()
                try:
                    run = await fresh_rscript(code, limits=limits, uid=uid)
                finally:
                    free.append(uid)
                fresh_ms.append(run.duration_ms)
                verdict = "timeout" if run.exit_code is None else "passed" if run.exit_code == 0 else "failed"
                return verdict, run.stdout

        fresh = await asyncio.gather(*(fresh_one(c) for c in batch))
        fresh_wall += time.perf_counter() - t0

        t0 = time.perf_counter()
        cpu0, faults0 = worker_counters(pool.uids)

        async def warm_one(code: str, sem: asyncio.Semaphore = sem) -> tuple[str, str]:
            async with sem:  # latency without queueing, as on the fresh side
                t = time.perf_counter()
                r = await pool.run(code)
                warm_ms.append((time.perf_counter() - t) * 1000)
                return r.verdict, r.stdout

        warm = await asyncio.gather(*(warm_one(c) for c in batch))
        warm_wall += time.perf_counter() - t0
        cpu1, faults1 = worker_counters(pool.uids)
        warm_cpu += cpu1 - cpu0
        warm_faults += faults1 - faults0

        for code, (fv, fout), (wv, wout) in zip(batch, fresh, warm, strict=True):
            same_verdict = (fv == "passed") == (wv == "passed")
            deterministic = "rnorm" not in code and "runif" not in code and "sample" not in code
            same_output = fv != "passed" or not deterministic or _norm(fout) == _norm(wout)
            if not (same_verdict and same_output):
                mismatches.append(f"{code[:60]!r}: fresh {fv} / warm {wv}")
    figures: dict[str, object] = {
        "snippets_each": n,
        "fresh_per_s": round(n / fresh_wall, 1),
        "warm_per_s": round(n / warm_wall, 1),
        "ratio": round(fresh_wall / warm_wall, 1),
        "fresh_median_ms": round(statistics.median(fresh_ms), 1),
        "warm_median_ms": round(statistics.median(warm_ms), 1),
        "fresh_p95_ms": round(_p95(fresh_ms), 1),
        "warm_p95_ms": round(_p95(warm_ms), 1),
        "warm_cpu_ms_per_snippet": round(warm_cpu * 1000 / n, 2) if pool.uids else None,
        "warm_faults_per_snippet": round(warm_faults / n) if pool.uids else None,
        "mismatches": len(mismatches),
    }
    return figures, mismatches


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("-n", type=int, default=200, help="snippets per side and set (default 200)")
    parser.add_argument("--concurrency", type=int, default=2, help="snippets at once, each side (default 2)")
    parser.add_argument("--round", type=int, default=20, help="snippets per alternating round (default 20)")
    parser.add_argument("--sets", default="answers,short", help="which sets, comma-separated (default both)")
    parser.add_argument("--json", help="write the figures here as JSON")
    args = parser.parse_args()
    sets = [name.strip() for name in args.sets.split(",") if name.strip()]
    unknown = [name for name in sets if name not in SETS]
    if unknown or not sets:
        parser.error(f"unknown set(s) {unknown}; choose from {', '.join(SETS)}")
    limits = Limits(wall_s=20.0, cpu_s=20.0)
    worker_source()  # fail early if the package is incomplete
    uids: list[tuple[int, int]] = []
    if os.geteuid() == 0:
        uids = [claim_uid() for _ in range(args.concurrency)]
    results: dict[str, dict[str, object]] = {}
    mismatches: dict[str, list[str]] = {}
    load_before = os.getloadavg()[0]
    async with WorkerPool(workers=args.concurrency, limits=limits) as pool:
        for name in sets:
            results[name], mismatches[name] = await measure(
                pool, SETS[name], args.n, args.concurrency, args.round, uids, limits
            )
        info = pool.describe()
    for _, fd in uids:
        os.close(fd)

    figures = {
        "concurrency": args.concurrency,
        "sets": results,
        "sandbox": info["mode"],
        "r_version": info["r_version"],
        "load_average_before": load_before,
        "load_average_after": os.getloadavg()[0],
    }
    print(
        f"{args.n} snippets each way per set, {args.concurrency} at a time, same sandbox, alternating rounds "
        f"(load average {load_before:.2f} before, {figures['load_average_after']:.2f} after)"
    )
    header = f"  {'':28}" + "".join(
        f"{name + ' (' + str(len(SETS[name])) + ' snippets)':>26}" for name in sets
    )
    print(header)

    def row(label: str, cell: Callable[[dict[str, object]], str]) -> None:
        print(f"  {label:28}" + "".join(f"{cell(results[name]):>26}" for name in sets))

    row("fresh Rscript, snippets/s", lambda f: f"{f['fresh_per_s']:.1f}")
    row("warm forked workers, /s", lambda f: f"{f['warm_per_s']:.1f}")
    row("ratio (throughput)", lambda f: f"{f['ratio']}x")
    row("fresh median / p95, ms", lambda f: f"{f['fresh_median_ms']:.1f} / {f['fresh_p95_ms']:.1f}")
    row("warm median / p95, ms", lambda f: f"{f['warm_median_ms']:.1f} / {f['warm_p95_ms']:.1f}")
    if all(results[name]["warm_cpu_ms_per_snippet"] is not None for name in sets):
        row(
            "warm CPU ms / faults a snippet",
            lambda f: f"{f['warm_cpu_ms_per_snippet']:.2f} / {f['warm_faults_per_snippet']}",
        )
    row("same verdicts and outputs", lambda f: "yes" if not f["mismatches"] else f"{f['mismatches']} differ")
    for name in sets:
        for line in mismatches[name][:10]:
            print(f"    {name}: {line}")
    if args.json:
        _write(args.json, json.dumps(figures, indent=2) + "\n")


def _write(path: str, text: str) -> None:
    Path(path).write_text(text)


def _norm(text: str) -> str:
    return "\n".join(line.rstrip() for line in text.strip().splitlines())


def _p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))]


if __name__ == "__main__":
    asyncio.run(main())
