"""Hostile code at full size: each case must end in a verdict, leave the machine as it was,
and leave the pool able to run the next snippet.

Every case is bounded by the sandbox itself, not by the test: a 20 GB allocation fails at
once on RLIMIT_AS, a 10 GB file stops at RLIMIT_FSIZE, 1 GB of output is cut at the output
limit, a fork bomb hits RLIMIT_NPROC (per user namespace, for a dedicated uid) and the wall
clock, and many processes that each stay under the address-space limit are stopped by the
worker's total-memory watch.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal

import pytest

from evaluator import Limits, WorkerPool
from tests.evaluator.conftest import needs_sandbox, worker_processes

pytestmark = [needs_sandbox, pytest.mark.sandbox, pytest.mark.asyncio(loop_scope="module")]

HOSTILE_LIMITS = Limits(wall_s=5.0, cpu_s=5.0)

CASES = {
    "fork bomb (R)": ("repeat parallel::mcparallel(Sys.sleep(100))", {"runtime_error", "timeout", "killed"}),
    "fork bomb (recursive mcfork)": (
        "f <- function() { parallel:::mcfork(); f() }\nf()",
        {"runtime_error", "timeout", "killed"},
    ),
    "fork bomb (sh)": ("system('bomb() { bomb | bomb & }; bomb')\nSys.sleep(30)", {"timeout"}),
    "fork bomb (bash)": ("system(\"bash -c ':(){ :|:& };:'\")\nSys.sleep(30)", {"timeout"}),
    "20 GB allocation": ("x <- numeric(2.5e9)\nprint(sum(x))", {"memory_limit"}),
    "20 GB in 200 MB pieces": (
        "l <- list()\nfor (i in 1:100) l[[i]] <- runif(2.5e7)",
        {"memory_limit", "timeout"},  # 3 s of CPU here: on a busy machine the wall clock may come first
    ),
    "16 processes x 600 MB": (
        "r <- parallel::mclapply(1:16, function(i) { x <- runif(7.5e7); Sys.sleep(3); sum(x) }, mc.cores = 16)\n"
        "print(r)",
        {"memory_limit", "timeout"},  # which comes first depends on how busy the machine is
    ),
    "10 GB file": (
        "con <- file('big.bin', 'wb')\nfor (i in 1:10240) writeBin(raw(2^20), con)\nclose(con)",
        {"output_limit"},
    ),
    "10 GB in /dev/shm": (
        "con <- file('/dev/shm/big.bin', 'wb')\nfor (i in 1:10240) writeBin(raw(2^20), con)\nclose(con)",
        {"timeout", "output_limit", "runtime_error", "passed"},  # writes past 16 MB fail, R goes on
    ),
    "1 GB of printed lines": ("for (i in 1:1e6) cat(strrep('x', 1000), '\\n')", {"output_limit"}),
    "1 GB in one cat": ("cat(rep(strrep('x', 1e6), 1000), sep = '\\n')", {"output_limit"}),
    "1 GB string": ("cat(strrep('x', 1e9))", {"memory_limit"}),
    "endless output from a shell": ("system('yes')", {"output_limit"}),
    "background process left behind": ("system('sleep 300 &')\ncat('bye\\n')", {"killed"}),
    "tries to kill its own worker": (
        "ppid <- as.integer(strsplit(readLines('/proc/self/stat'), ' ')[[1]][4])\n"
        "stopifnot(!tools::pskill(ppid, 9L), !tools::pskill(ppid, tools::SIGSTOP))\ncat('the worker lives')",
        {"passed"},
    ),
    "segfault": ("tools::pskill(Sys.getpid(), 11L)\nSys.sleep(1)", {"killed"}),
    "bytes that are not UTF-8, then a segfault": (
        "cat(rawToChar(as.raw(c(0xff, 0xfe, 0x41))), '\\n')\ntools::pskill(Sys.getpid(), 11L)\nSys.sleep(1)",
        {"killed"},
    ),
    "infinite recursion": ("f <- function(n) f(n + 1)\nf(1)", {"runtime_error"}),
    "endless loop calling C": ("x <- 0\nwhile (TRUE) x <- sum(runif(1e6))", {"timeout"}),
}


def _mem_available_mb() -> float:
    with open("/proc/meminfo") as fh:
        for line in fh:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no MemAvailable")


def _processes(uids: set[int]) -> list[int]:
    """Live processes of these uids (a zombie waiting for init to reap it holds nothing)."""
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/status") as fh:
                uid = next(int(line.split()[1]) for line in fh if line.startswith("Uid:"))
            if uid not in uids:
                continue
            with open(f"/proc/{entry.name}/stat") as fh:
                state = fh.read().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError, StopIteration):
            continue
        if state not in ("Z", "X"):
            found.append(int(entry.name))
    return found


@pytest.fixture(scope="module")
def baseline() -> dict[str, float]:
    return {"mem_mb": _mem_available_mb(), "disk_free": shutil.disk_usage("/").free}


@pytest.mark.parametrize("name", list(CASES))
async def test_hostile_case_is_contained(name: str, baseline: dict[str, float]) -> None:
    code, allowed = CASES[name]
    async with WorkerPool(workers=1, limits=HOSTILE_LIMITS) as pool:
        result = await pool.run(code)
        assert result.verdict in allowed, result
        assert result.duration_ms < (HOSTILE_LIMITS.wall_s + 10) * 1000, result
        # The pool goes on: the same worker, or its replacement, runs the next snippet.
        after = await pool.run("cat(sum(1:10), length(list.files(all.files = TRUE, recursive = TRUE)))")
        assert after.verdict == "passed" and after.stdout == "55 0", after
        uids = set(pool.uids)
    # Nothing is left running (only this pool's uids: other runs may share the machine), and the
    # machine kept its memory and its disk (with room for whatever else runs here).
    for _ in range(100):  # processes freeing a lot of memory take a moment to go
        if not _processes(uids):
            break
        await asyncio.sleep(0.1)
    assert _processes(uids) == []
    assert _mem_available_mb() > baseline["mem_mb"] - 4096
    assert shutil.disk_usage("/").free > baseline["disk_free"] - 2 * 2**30


async def test_evidence_of_the_big_ones() -> None:
    async with WorkerPool(workers=1, limits=HOSTILE_LIMITS) as pool:
        alloc = await pool.run("x <- numeric(2.5e9)")
        file = await pool.run("con <- file('big.bin', 'wb')\nfor (i in 1:10240) writeBin(raw(2^20), con)")
        out = await pool.run("for (i in 1:1e6) cat(strrep('x', 1000), '\\n')")
        bomb = await pool.run("repeat parallel::mcparallel(Sys.sleep(100))")
        crash = await pool.run(CASES["bytes that are not UTF-8, then a segfault"][0])
    assert "cannot allocate vector of size 18.6 Gb" in (alloc.message or "")
    assert alloc.duration_ms < 3000
    assert file.message == f"wrote a file of {64 * 2**20} bytes (big.bin), the most a file may hold"
    assert file.line == 2
    assert out.message == "printed more than 1000000 bytes"
    assert out.stdout.startswith("x" * 1000) and len(out.stdout) == HOSTILE_LIMITS.keep_bytes
    assert out.stdout_truncated
    assert "unable to fork" in (bomb.message or "") or bomb.verdict == "timeout"
    assert crash.verdict == "killed" and (crash.message or "").endswith("R reported a crash")
    assert crash.stdout.startswith("\ufffd\ufffdA") and crash.line == 2


async def test_a_frozen_worker_meets_the_pools_deadline() -> None:
    # The worker stopped from outside (no snippet can signal it): nothing inside the sandbox
    # can end the snippet any more, so the pool's own deadline must.
    async with WorkerPool(workers=1, limits=Limits(wall_s=2.0, cpu_s=2.0)) as pool:
        run = asyncio.create_task(pool.run("cat('frozen\\n'); flush(stdout())\nSys.sleep(60)"))
        await asyncio.sleep(0.5)
        for pid in worker_processes(pool):
            os.kill(pid, signal.SIGSTOP)
        r = await run
        after = await pool.run("cat('ok')")
    assert r.verdict == "timeout" and "the sandbox was killed" in (r.message or "")
    assert r.stdout == "frozen\n"
    assert after.verdict == "passed" and pool.restarts == 1


async def test_the_machine_running_low_on_memory_stops_snippets() -> None:
    # A floor above any machine's memory: the pool's watch must stop the snippet at once.
    async with WorkerPool(workers=1, limits=Limits(wall_s=5.0, cpu_s=5.0, host_min_free_mb=10**9)) as pool:
        r = await pool.run("Sys.sleep(4)")
    assert r.verdict == "memory_limit" and "ran low on memory" in (r.message or "")
    assert r.duration_ms < 2000
