"""A warm worker gives every snippet what a fresh Rscript in the same sandbox gives it.

The set is varied on purpose: printing of every common kind of value, S4 and S3 dispatch,
seeded random numbers, options, packages, files, warnings, Japanese text, quit(), and each
kind of failure. For each snippet: the same outcome (exit 0 is `passed`), the same printed
output, R's error message in the fresh run's stderr, and each warning there too.
"""

from __future__ import annotations

import asyncio
import os
import re

import pytest

from evaluator import RunResult, WorkerPool
from evaluator._reference import FreshRun, fresh_rscript
from evaluator._sandbox import claim_uid
from tests.evaluator.conftest import needs_sandbox

pytestmark = [needs_sandbox, pytest.mark.sandbox, pytest.mark.asyncio(loop_scope="module")]

SNIPPETS = [
    "x <- c(2, 4, 4, 5); print(mean(x))",
    "print(sd(c(1, 2, 3)))",
    "print(qnorm(0.975))",
    'cat(sum(1:10), "\\n")',
    "x <- c(1.2, 3.4, 2.2)\nvar(x)",
    "print(pt(2.1, df = 12, lower.tail = FALSE) * 2)",
    "print(choose(10, 3)); print(factorial(5)); print(1e-20); print(123456789012)",
    "x <- c(a = 1, b = 2.5); x\n(function() 3)()\ninvisible(5)",
    "m <- matrix(1:6, nrow = 2, dimnames = list(c('r1', 'r2'), c('A', 'B', 'C'))); m; t(m) %*% m",
    "df <- data.frame(g = c('x', 'y', 'x'), v = c(1.5, 2, 3)); print(df); str(df); summary(df)",
    "f <- factor(c('lo', 'hi', 'lo'), levels = c('lo', 'hi')); print(table(f)); print(levels(f)); f",
    "l <- list(a = 1, b = list(c = 'x', d = 1:3)); l; str(l)",
    "set.seed(42); print(round(rnorm(3), 4)); print(sample(10, 3)); print(runif(2))",
    "options(digits = 3); print(pi); print(exp(1) * 1000)",
    "print(format(1234567.891, big.mark = ',')); print(sprintf('%5.2f', c(1, 22.333)))",
    "writeLines(c('line1', 'line2')); cat('tab\\tand', 'space', sep = ' '); cat('\\n')",
    "print(as.Date('2024-02-28') + 1:2); print(format(as.POSIXct('2024-01-01 12:00', tz = 'UTC'), '%H:%M'))",
    "cat('平均:', mean(c(1, 2)), '\\n'); x <- c('ばらつき' = 0.5); print(x)",
    "setClass('P', representation(x = 'numeric')); p <- new('P', x = 1); p; isVirtualClass('P')",
    "print.money <- function(x, ...) cat('$', format(unclass(x), nsmall = 2), '\\n'); structure(3.5, class = 'money')",
    "library(splines); print(dim(bs(1:10, df = 4)))",
    "fit <- lm(mpg ~ wt, data = mtcars); print(round(coef(fit), 3)); anova(fit)",
    "print(t.test(c(5.1, 4.9, 5.6, 5.8, 6.0), mu = 5)$p.value)",
    "tab <- table(mtcars$cyl, mtcars$gear); print(tab); print(chisq.test(tab)$parameter)",
    "writeLines('x', 'out.txt'); print(readLines('out.txt')); print(file.exists(file.path(tempdir(), 'none')))",
    "hist(c(1, 2, 2, 3)); cat('plotted\\n')",
    "x <- sqrt(-1)\nprint(log(c(1, 10)))\nas.integer('a')",
    "warning('careful'); cat('after\\n')",
    "cat('a\\n'); q(status = 0); cat('b\\n')",
    "quit(status = 2)",
    "x <- c(1, 2\nprint(x)",
    "print(mean(undefined_object))",
    'stop("the data have no column y")',
    "f <- function(x) stop('bad input: ', x)\ncat('before\\n')\nf(3)",
    "library(no.such.package)",
    "x <- 1:3; x[[5]]",
    "options(warn = 2); as.numeric('x')",
]


def _norm(text: str) -> str:
    return " ".join(text.split())


def _out(text: str) -> str:
    return "\n".join(line.rstrip() for line in text.strip().splitlines())


def _disagreement(warm: RunResult, fresh: FreshRun) -> str | None:
    if fresh.exit_code is None:
        return "the fresh run timed out" if warm.verdict != "timeout" else None
    if fresh.exit_code == 0:
        if warm.verdict != "passed":
            return f"fresh passed, warm {warm.verdict}: {warm.message}"
        if _out(warm.stdout) != _out(fresh.stdout):
            return f"output differs:\nwarm  {warm.stdout!r}\nfresh {fresh.stdout!r}"
        for w in warm.warnings:
            if _norm(w.split(": ", 1)[-1]) not in _norm(fresh.stderr):
                return f"warning {w!r} not in the fresh stderr {fresh.stderr!r}"
        return None
    if warm.verdict not in ("parse_error", "runtime_error"):
        return f"fresh failed ({fresh.exit_code}), warm {warm.verdict}"
    if _out(warm.stdout) != _out(fresh.stdout):
        return f"output before the failure differs:\nwarm  {warm.stdout!r}\nfresh {fresh.stdout!r}"
    message = warm.message or ""
    if warm.verdict == "parse_error":
        return (
            None
            if "unexpected" in message and "unexpected" in fresh.stderr
            else f"{message!r} / {fresh.stderr!r}"
        )
    if message.startswith("the script called quit"):
        return None if f"status = {fresh.exit_code})" in message else f"{message!r}, exit {fresh.exit_code}"
    return None if _norm(message) in _norm(fresh.stderr) else f"{message!r} not in {fresh.stderr!r}"


async def test_warm_workers_agree_with_a_fresh_rscript(pool: WorkerPool) -> None:
    claims = [claim_uid() for _ in range(2)] if os.geteuid() == 0 else []
    free: list[int | None] = [uid for uid, _ in claims] or [None, None]
    slots = asyncio.Semaphore(len(free))

    async def fresh(code: str) -> FreshRun:
        async with slots:
            uid = free.pop()
            try:
                return await fresh_rscript(code, limits=pool.limits, uid=uid)
            finally:
                free.append(uid)

    try:
        fresh_runs = await asyncio.gather(*(fresh(code) for code in SNIPPETS))
    finally:
        for _, fd in claims:
            os.close(fd)
    warm_runs = await asyncio.gather(*(pool.run(code) for code in SNIPPETS))
    problems = [
        f"{code!r}: {why}"
        for code, warm, fresh_run in zip(SNIPPETS, warm_runs, fresh_runs, strict=True)
        if (why := _disagreement(warm, fresh_run)) is not None
    ]
    assert not problems, "\n\n".join(problems)
    verdicts = {w.verdict for w in warm_runs}
    assert verdicts == {"passed", "parse_error", "runtime_error"}
    assert any(re.search(r"\d", w.stdout) for w in warm_runs)
