"""Verdicts and their evidence, isolation between snippets, and the pool's housekeeping, on real R in real bwrap."""

from __future__ import annotations

import asyncio
import os
import signal

import pytest

from evaluator import WorkerPool, check_answer
from tests.evaluator.conftest import needs_sandbox, worker_processes

pytestmark = [needs_sandbox, pytest.mark.sandbox, pytest.mark.asyncio(loop_scope="module")]


async def test_passed_keeps_output_messages_and_warnings(pool: WorkerPool) -> None:
    r = await pool.run("x <- c(2, 4, 9)\nprint(mean(x))\nmessage('note')\nsqrt(-1)\ncat('done\\n')")
    assert r.verdict == "passed"
    assert r.stdout == "[1] 5\nnote\n[1] NaN\ndone\n"
    assert r.warnings == ("In sqrt(-1): NaNs produced",)
    assert r.message is None and r.line is None
    assert r.duration_ms < 2000


async def test_parse_error_names_the_line(pool: WorkerPool) -> None:
    r = await pool.run("x <- 1\ny <- mean(x, na.rm = TRUE\nprint(y)")
    assert r.verdict == "parse_error"
    assert r.line == 3
    assert r.message is not None and r.message.startswith("line 3:1: unexpected symbol")


async def test_runtime_error_names_the_call_and_the_innermost_line(pool: WorkerPool) -> None:
    code = "f <- function(d) {\n  m <- lm(y ~ x, data = d)\n  coef(m)\n}\ncat('before\\n')\nf(data.frame(x = 1:3))"
    r = await pool.run(code)
    assert r.verdict == "runtime_error"
    assert "object 'y' not found" in (r.message or "")
    assert r.line == 2  # inside f, not the top-level call on line 6
    assert r.failing_call is not None
    assert r.stdout == "before\n"


async def test_top_level_error_falls_back_to_the_expression(pool: WorkerPool) -> None:
    r = await pool.run("a <- 1\nstop('custom failure')")
    assert r.verdict == "runtime_error"
    assert r.message == "custom failure"
    assert r.line == 2
    assert r.failing_call == 'stop("custom failure")'


async def test_missing_package_is_a_runtime_error(pool: WorkerPool) -> None:
    r = await pool.run("library(surely.not.installed)")
    assert r.verdict == "runtime_error"
    assert "there is no package called" in (r.message or "")


async def test_timeout_in_r_code_and_in_sleep(pool: WorkerPool) -> None:
    loop, sleep = await asyncio.gather(
        pool.run("n <- 0\nrepeat {\n  n <- n + 1\n}"), pool.run("cat('start\\n')\nSys.sleep(60)")
    )
    assert loop.verdict == "timeout" and loop.line in (2, 3)  # the loop, or the line inside it
    assert 2900 < loop.duration_ms < 9000
    assert sleep.verdict == "timeout" and sleep.line == 2
    assert sleep.stdout == "start\n"


async def test_quit_ends_the_script(pool: WorkerPool) -> None:
    ok = await pool.run("cat('a\\n')\nq(status = 0)\ncat('b\\n')")
    bad = await pool.run("quit(save = 'no', status = 3)")
    assert ok.verdict == "passed" and ok.stdout == "a\n"
    assert bad.verdict == "runtime_error" and "status = 3" in (bad.message or "")


async def test_snippets_do_not_see_each_other(pool: WorkerPool) -> None:
    # One worker, so the second snippet really runs in the same warm R.
    async with WorkerPool(workers=1, limits=pool.limits) as one:
        first = await one.run(
            "secret <- 42\noptions(digits = 3)\nlibrary(splines)\nset.seed(1)\n"
            "writeLines('x', 'left.txt')\nwriteLines('y', file.path(tempdir(), 'tmp.txt'))\nSys.setenv(FOO = 'bar')"
        )
        second = await one.run(
            "cat(exists('secret'), getOption('digits'), 'package:splines' %in% search(),\n"
            "    file.exists('left.txt'), length(list.files(tempdir())), Sys.getenv('FOO'), '\\n')"
        )
    assert first.verdict == "passed"
    assert second.stdout == "FALSE 7 FALSE FALSE 0  \n"


async def test_the_host_is_out_of_reach(pool: WorkerPool) -> None:
    os.environ["QASYNTH_TEST_SECRET"] = "sk-should-not-leak"
    try:
        async with WorkerPool(workers=1, limits=pool.limits) as fresh:
            r = await fresh.run(
                "cat(Sys.getenv('QASYNTH_TEST_SECRET'), '|', Sys.getenv('OPENAI_API_KEY'), '\\n')\n"
                "cat(length(list.files('/root')), length(list.files('/work')), length(list.files('/home')), '\\n')\n"
                "print(try(readLines('/etc/shadow'), silent = TRUE))\n"
                "print(try(writeLines('x', '/usr/pwned'), silent = TRUE))\n"
                "print(readLines('stdin'))\n"
                "print(length(list.files('/proc', pattern = '^[0-9]+$')) < 10)"
            )
    finally:
        del os.environ["QASYNTH_TEST_SECRET"]
    assert r.verdict == "passed", r
    lines = r.stdout.splitlines()
    assert lines[0].strip() == "|"
    assert lines[1].split() == ["0", "0", "0"]
    assert "cannot open" in r.stdout and "cannot open file '/etc/shadow'" in " ".join(r.warnings)
    assert "character(0)" in r.stdout
    assert lines[-1] == "[1] TRUE"
    assert not os.path.exists("/usr/pwned")  # noqa: ASYNC240


async def test_no_network(pool: WorkerPool) -> None:
    r = await pool.run("con <- url('http://127.0.0.1:9/'); readLines(con)")
    assert r.verdict == "runtime_error"
    assert "cannot open" in (r.message or "")


async def test_unicode_round_trips(pool: WorkerPool) -> None:
    r = await pool.run("x <- c('平均' = 1.5, 'ばらつき' = 2)\nprint(x)\ncat('完了 ✓\\n')")
    assert r.verdict == "passed"
    assert "平均" in r.stdout and "完了 ✓" in r.stdout


async def test_plots_go_nowhere(pool: WorkerPool) -> None:
    r = await pool.run(
        "hist(rnorm(100))\npng('p.png'); plot(1:3); invisible(dev.off())\ncat(file.exists('p.png'))"
    )
    assert r.verdict == "passed", r
    assert r.stdout == "TRUE"


async def test_many_snippets_share_the_pool(pool: WorkerPool) -> None:
    results = await asyncio.gather(*(pool.run(f"cat({i} * 2)") for i in range(40)))
    assert [r.stdout for r in results] == [str(i * 2) for i in range(40)]


async def test_a_dead_worker_is_replaced(pool: WorkerPool) -> None:
    async with WorkerPool(workers=1, limits=pool.limits) as one:
        run = asyncio.create_task(one.run("cat('before\\n'); flush(stdout())\nSys.sleep(5)"))
        await asyncio.sleep(0.5)
        for pid in worker_processes(one):  # no snippet can kill its worker: a fault outside does
            os.kill(pid, signal.SIGKILL)
        r = await run
        assert r.verdict == "killed"
        assert r.stdout == "before\n"  # the console is the pool's: it outlives the worker
        after = await one.run("cat('alive')")
        assert after.verdict == "passed" and after.stdout == "alive"
        assert one.restarts == 1


async def test_check_answer_maps_lines_back_to_the_answer(pool: WorkerPool) -> None:
    answer = "Compute it:\n\n```r\nx <- c(1, 2)\n```\n\nthen\n\n```r\nprint(mean(y))\n```\n"
    check = await check_answer(pool, answer)
    assert check.verdict == "runtime_error"
    assert check.line == 2 and check.answer_line == 10
    assert answer.splitlines()[check.answer_line - 1] == "print(mean(y))"
    assert check.blocks == 2


async def test_cut_off_answer_says_so(pool: WorkerPool) -> None:
    check = await check_answer(pool, "```r\nx <- c(1,\n  2")
    assert check.verdict == "parse_error"
    assert "cut off" in (check.message or "")


async def test_describe(pool: WorkerPool) -> None:
    info = pool.describe()
    assert info["mode"] == "bwrap" and info["workers"] == "2"
    assert info["r_version"].startswith("4.")


async def test_mode_none_still_limits_and_sweeps(pool: WorkerPool) -> None:
    # No namespaces: only for machines without bubblewrap, and describe() says so.
    async with WorkerPool(sandbox="none", workers=1, limits=pool.limits) as plain:
        assert "not contained" in plain.describe()["warning"]
        ok = await plain.run("print(mean(c(1, 2, 3)))")
        left = await plain.run("system('sleep 300 &')\ncat('bye')")
        big = await plain.run("x <- numeric(2.5e9)")
        bomb = await plain.run("repeat parallel::mcparallel(Sys.sleep(100))")
        after = await plain.run("cat(length(system('true', intern = TRUE)), 'ok')")
    assert ok.verdict == "passed" and ok.stdout == "[1] 2\n"
    if os.geteuid() == 0:  # a uid of its own: everything of that uid but the worker was the snippet's
        assert left.verdict == "killed" and left.leftover_processes == 1
    assert big.verdict == "memory_limit"
    assert bomb.verdict in ("runtime_error", "timeout")
    assert after.verdict == "passed" and after.stdout == "0 ok"


async def test_script_semantics_at_the_edges(pool: WorkerPool) -> None:
    strict, quiet, closed = await asyncio.gather(
        pool.run("options(warn = 2)\nsqrt(-1)"),
        pool.run("options(warn = -1)\nx <- sqrt(-1)\ncat('quiet')"),
        pool.run("closeAllConnections()\nx <- 1\nstop('after')"),
    )
    assert strict.verdict == "runtime_error" and "(converted from warning)" in (strict.message or "")
    assert quiet.verdict == "passed" and quiet.warnings == () and quiet.stdout == "quiet"
    assert closed.verdict == "runtime_error" and closed.message == "after" and closed.line == 3


async def test_timeout_message_names_the_limit(pool: WorkerPool) -> None:
    r = await pool.run("repeat {}")
    assert r.verdict == "timeout"
    assert r.message is not None and r.message.startswith(f"still running after {pool.limits.wall_s:g} s")


async def test_closing_the_pool_releases_every_waiting_caller(pool: WorkerPool) -> None:
    from evaluator import SandboxUnavailable

    one = WorkerPool(workers=1, limits=pool.limits)
    await one.start()
    runs = [asyncio.create_task(one.run("Sys.sleep(2)")) for _ in range(3)]
    await asyncio.sleep(0.5)
    await one.aclose()
    results = await asyncio.wait_for(asyncio.gather(*runs, return_exceptions=True), 10)
    waiting = [r for r in results if isinstance(r, SandboxUnavailable)]
    assert len(waiting) == 2 and "closed" in str(waiting[0])
    with pytest.raises(SandboxUnavailable):
        await one.run("1")


async def test_a_worker_that_cannot_start_says_why(pool: WorkerPool, monkeypatch: pytest.MonkeyPatch) -> None:
    from evaluator import SandboxUnavailable

    with pytest.raises(SandboxUnavailable, match="no package called"):
        async with WorkerPool(workers=1, packages=("stats", "no.such.package")):
            pass

    import evaluator._pool as pool_module

    real = pool_module.build_launch

    def broken(*args: object, **kwargs: object):  # type: ignore[no-untyped-def]
        launch = real(*args, **kwargs)  # type: ignore[arg-type]
        launch.argv.insert(1, "--no-such-bwrap-option")
        return launch

    monkeypatch.setattr(pool_module, "build_launch", broken)
    with pytest.raises(SandboxUnavailable, match="no-such-bwrap-option"):
        async with WorkerPool(workers=1):
            pass


async def test_closing_a_pool_closes_only_its_own_descriptors(pool: WorkerPool) -> None:
    one = WorkerPool(workers=1, limits=pool.limits)
    await one.start()
    await one.run("1")
    # Opened after the worker started, on the lowest numbers free: those the pool let go of.
    fds = [os.open(os.devnull, os.O_RDONLY) for _ in range(8)]
    try:
        await one.aclose()
        for fd in fds:
            os.fstat(fd)  # EBADF, had the pool closed one of these numbers a second time
    finally:
        for fd in fds:
            os.close(fd)
