"""The yardstick for the warm workers: one snippet in a fresh `Rscript`, in the same sandbox.

A warm worker must give a snippet the verdict and the output a fresh R would. This runs that
fresh R the plain way: the worker's bubblewrap command line (namespaces, mounts, environment),
its dedicated uid and rlimits, its seccomp filter, `Rscript --vanilla -e CODE` in an empty
work dir. The tests that
check the workers against it and the benchmark that races them both use it.
"""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import dataclass

from evaluator._sandbox import Launch, build_launch, bwrap_sandbox, check_tools
from evaluator._seccomp import seccomp_program
from evaluator._types import Limits

__all__ = ["FreshRun", "fresh_rscript"]


@dataclass(frozen=True)
class FreshRun:
    exit_code: int | None
    """None when it ran past the wall limit and was killed."""
    stdout: str
    stderr: str
    duration_ms: float


def _command(code: str, uid: int | None, limits: Limits) -> tuple[list[str], Launch, int]:
    launch = build_launch("bwrap", uid=uid, limits=limits, packages=(), scratch=None)
    launch.close_owned()  # the worker's data: this run needs only the filter
    seccomp_fd = os.memfd_create("qasynth-seccomp", 0)
    os.write(seccomp_fd, seccomp_program())
    os.lseek(seccomp_fd, 0, os.SEEK_SET)
    # bwrap itself makes and enters the work dir, so nothing but R starts in the sandbox.
    argv = bwrap_sandbox(check_tools("bwrap"), limits, seccomp_fd)
    argv += ["--dir", "/tmp/work", "--chdir", "/tmp/work", "--", "Rscript", "--vanilla", "-e", code]
    return argv, launch, seccomp_fd


async def fresh_rscript(code: str, *, limits: Limits, uid: int | None) -> FreshRun:
    """Run `code` in a new sandbox as `uid` (a uid claimed with `claim_uid`, or None when not
    root): stdout and stderr apart, the exit code, the time it took."""
    argv, launch, seccomp_fd = _command(code, uid, limits)
    started = time.perf_counter()
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            pass_fds=(seccomp_fd,),
            **launch.process_options(),
        )
    finally:
        os.close(seccomp_fd)
    try:
        out, err = await asyncio.wait_for(proc.communicate(), limits.wall_s + 5)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        return FreshRun(None, "", "", (time.perf_counter() - started) * 1000)
    return FreshRun(
        proc.returncode,
        out.decode(errors="replace"),
        err.decode(errors="replace"),
        (time.perf_counter() - started) * 1000,
    )
