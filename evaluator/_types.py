"""The evaluator's data: limits in, results out. Expected outcomes are data, never exceptions."""

from __future__ import annotations

from collections.abc import Hashable
from typing import Literal, Protocol

import msgspec

__all__ = [
    "CODE_OPTIONAL_TASKS",
    "Check",
    "Limits",
    "QueueFull",
    "RunResult",
    "RunVerdict",
    "Runner",
    "SandboxUnavailable",
    "Verdict",
    "is_flagged",
]

RunVerdict = Literal[
    "passed",
    "parse_error",
    "runtime_error",
    "timeout",
    "memory_limit",
    "output_limit",
    "killed",
]
"""What happened to code that ran."""

Verdict = Literal[
    "passed",
    "parse_error",
    "runtime_error",
    "timeout",
    "memory_limit",
    "output_limit",
    "killed",
    "no_code",
]
"""What happened to an answer: a `RunVerdict`, or `no_code` when it had no R code to run."""

CODE_OPTIONAL_TASKS = frozenset({"explain"})
"""Tasks whose answers may be prose only; every other task asks for code."""


def is_flagged(verdict: Verdict, task: str) -> bool:
    """The policy: anything but `passed` is flagged, except `no_code` for a task that needs no code."""
    if verdict == "passed":
        return False
    return not (verdict == "no_code" and task in CODE_OPTIONAL_TASKS)


class SandboxUnavailable(Exception):
    """R or the sandbox cannot run at all; the message says why and how to fix it."""


class QueueFull(SandboxUnavailable):
    """Too many snippets are waiting for a worker; `retry_after_s` is when one might not be."""

    def __init__(self, message: str, *, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class Limits(msgspec.Struct, frozen=True, kw_only=True):
    """What one snippet may use. Units are in the names.

    `mem_mb`, `file_mb`, `procs` and `tmp_mb` are fixed when a worker starts (rlimits and
    mounts); the rest are checked per snippet.
    """

    wall_s: float = 10.0
    """Wall-clock time; the snippet is stopped after it."""
    cpu_s: float = 10.0
    """CPU time of the snippet's own R process."""
    mem_mb: int = 1024
    """Address space of each process (RLIMIT_AS): a larger allocation fails at once."""
    total_mem_mb: int = 1536
    """Resident memory of all the snippet's processes together, watched every 20 ms."""
    output_bytes: int = 1_000_000
    """Printed output (stdout and messages) before the snippet is stopped."""
    keep_bytes: int = 20_000
    """Printed output kept as evidence."""
    file_mb: int = 64
    """Largest file a process may write (RLIMIT_FSIZE)."""
    tmp_mb: int = 256
    """Size of the sandbox's /tmp (the working directory lives there)."""
    procs: int = 32
    """Processes and threads of the whole sandbox (RLIMIT_NPROC, per user namespace)."""
    host_min_free_mb: int = 1024
    """If the machine's available memory falls below this while snippets run, they are killed."""

    def __post_init__(self) -> None:
        for name in self.__struct_fields__:
            if getattr(self, name) <= 0:
                raise ValueError(f"Limits.{name} must be positive, got {getattr(self, name)!r}")
        if self.keep_bytes > self.output_bytes:
            raise ValueError("Limits.keep_bytes must not exceed Limits.output_bytes")
        if self.output_bytes >= self.file_mb * 2**20:
            raise ValueError("Limits.output_bytes must be below Limits.file_mb, or the file limit hides it")
        if self.procs < 8:
            raise ValueError("Limits.procs below 8 leaves no room for R and the sandbox itself")


class RunResult(msgspec.Struct, frozen=True, kw_only=True):
    """What happened when one snippet ran, with the evidence for the verdict.

    `line` is the 1-based line of the code where the failing expression starts (the
    innermost one inside a function the snippet defined, when R knows it), or the
    top-level expression that was running when the snippet was stopped.
    """

    verdict: RunVerdict
    message: str | None = None
    failing_call: str | None = None
    line: int | None = None
    warnings: tuple[str, ...] = ()
    stdout: str = ""
    stdout_bytes: int = 0
    duration_ms: float = 0.0
    cpu_ms: float = 0.0
    peak_mem_mb: float = 0.0
    leftover_processes: int = 0

    @property
    def stdout_truncated(self) -> bool:
        return self.stdout_bytes > len(self.stdout.encode())


class Check(msgspec.Struct, frozen=True, kw_only=True):
    """An answer checked: its extracted code, the verdict and the evidence.

    `answer_line` is `line` mapped back into the answer's markdown (1-based).
    """

    verdict: Verdict
    code: str = ""
    blocks: int = 0
    message: str | None = None
    failing_call: str | None = None
    line: int | None = None
    answer_line: int | None = None
    warnings: tuple[str, ...] = ()
    stdout: str = ""
    stdout_truncated: bool = False
    duration_ms: float = 0.0


class Runner(Protocol):
    """Runs R code somewhere safe. Bad R is a `RunResult`; a broken sandbox raises `SandboxUnavailable`.

    `owner` names whose work a snippet is (a request, a job): owners are served in turn, so
    one with many snippets cannot starve one with few. Callers that give none share one queue.
    """

    async def run(self, code: str, *, owner: Hashable | None = None) -> RunResult: ...

    def describe(self) -> dict[str, str]: ...

    async def aclose(self) -> None: ...
