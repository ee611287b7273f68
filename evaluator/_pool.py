"""The warm worker pool: N sandboxed R workers, one snippet each at a time.

Each worker is one long-lived R process (worker.R) inside its own sandbox; it forks a
throw-away child per snippet. The pool hands snippets to idle workers, serving the owners of
waiting snippets in turn (one request of thousands cannot starve a request of one), refuses
work beyond a bounded queue, stops a snippet whose caller has gone, replaces a worker that
died or was killed, and keeps two guards outside the sandbox that code inside cannot switch
off: a hard deadline per snippet (the wall limit plus a grace period) and a watch on the
machine's available memory.

What crosses from a worker to the pool is read as data, never trusted: the worker's reply
line (numbers it measured itself), and, from the snippet's side, the console, the progress
file, the child's result and the janitor's file report, each read with a cap and parsed
defensively. Nothing a worker or a snippet writes can make `run` raise.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import io
import itertools
import logging
import os
import re
import shutil
import signal
import struct
import tempfile
import time
import typing
from collections import deque
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Any

from evaluator._sandbox import (
    DEFAULT_UID_BASE,
    SandboxMode,
    build_launch,
    bwrap_version,
    check_tools,
    claim_uid,
    prepare_scratch,
    processes_of,
)
from evaluator._types import Limits, QueueFull, RunResult, RunVerdict, SandboxUnavailable

__all__ = ["DEFAULT_MAX_QUEUE", "WorkerPool", "start_runner"]

log = logging.getLogger("evaluator")

GRACE_S = 5.0
"""How long past the wall limit the worker may take to answer before it is killed."""
DRAIN_S = 5.0
"""How long a worker whose snippet was cancelled may take to answer before it is replaced."""
START_TIMEOUT_S = 60.0
RESTART_ATTEMPTS = 3
REPLY_LIMIT = 64 * 2**10
"""A worker's reply line is a few numbers: anything longer is garbled."""
RESULT_LIMIT = 256 * 2**10
"""The child writes at most about 60 KB (message, call and warnings clipped); more is forged."""
CONSOLE_TAIL = 4096
DEFAULT_MAX_QUEUE = 20_000

_UNESCAPE = re.compile(rb"\\(.)")
_ESCAPES = {b"n": b"\n", b"t": b"\t", b"r": b"\r", b"\\": b"\\"}
_RUN_VERDICTS = frozenset(typing.get_args(RunVerdict))
_CHILD_VERDICTS = frozenset({"passed", "parse_error", "runtime_error", "timeout", "memory_limit"})
_STOPS = frozenset({"", "output_limit", "memory_limit", "timeout", "cpu", "cancelled"})
_CRASH = re.compile(rb"caught (segfault|illegal|bus error)")


def _text(field_: bytes) -> str:
    """A field of worker.R: backslash, tab, CR and newline escaped; decoded as UTF-8."""
    return _UNESCAPE.sub(lambda m: _ESCAPES.get(m[1], m[1]), field_).decode("utf-8", errors="replace")


@dataclass(frozen=True)
class _Reply:
    """What the worker measured about one snippet (never anything the snippet wrote)."""

    job: int
    ended: bool
    stop: str
    duration_ms: float
    cpu_ms: float
    peak_mem_bytes: float
    leftover_processes: int
    retire: bool
    dirty: bool
    error: str

    @classmethod
    def parse(cls, line: bytes) -> _Reply | None:
        f = line.rstrip(b"\n").split(b"\t")
        if len(f) != 10:
            return None
        try:
            reply = cls(
                job=int(f[0]),
                ended=f[1] == b"1",
                stop=f[2].decode("ascii"),
                duration_ms=float(f[3]),
                cpu_ms=float(f[4]),
                peak_mem_bytes=float(f[5]),
                leftover_processes=int(f[6]),
                retire=f[7] == b"1",
                dirty=f[8] == b"1",
                error=_text(f[9]),
            )
        except ValueError:  # UnicodeDecodeError is one
            return None
        return reply if reply.stop in _STOPS else None


@dataclass
class _ChildResult:
    """What the snippet's own process says happened: its verdict is the snippet's own business
    (a snippet can only ever forge its own), so it is checked for shape, not believed blindly."""

    verdict: str = ""
    line: int | None = None
    message: str | None = None
    failing_call: str | None = None
    warnings: list[str] = field(default_factory=list)


def _parse_result(raw: bytes, size: int) -> tuple[_ChildResult | None, str | None]:
    """`(result, None)`; `(None, None)` when there is none (the child died before writing it);
    `(None, why)` when what is there is garbled or oversized."""
    if size == 0:
        return None, None
    if size > RESULT_LIMIT:
        return None, f"it is {size} bytes, more than the {RESULT_LIMIT} a result may take"
    lines = raw.split(b"\n")
    if lines[-1] == b"":
        lines.pop()
    if not lines or lines[-1] != b"end":
        return None, None  # cut off mid-write: the child was stopped or died
    if lines[0] != b"qasynth-result 1":
        return None, "it does not start as a result does"
    res = _ChildResult()
    for line in lines[1:-1]:
        key, sep, value = line.partition(b"\t")
        if not sep:
            return None, "a line without a field name"
        if key == b"verdict":
            res.verdict = _text(value)
        elif key == b"line":
            try:
                res.line = int(value)
            except ValueError:
                return None, "a line number that is not a number"
            if not 0 < res.line < 10**7:
                return None, "a line number out of range"
        elif key == b"message":
            res.message = _text(value)[:8000]
        elif key == b"call":
            res.failing_call = _text(value)[:1000]
        elif key == b"warning":
            if len(res.warnings) >= 50:
                return None, "more than 50 warnings"
            res.warnings.append(_text(value)[:2000])
        else:
            return None, "an unknown field"
    if res.verdict not in _CHILD_VERDICTS:
        return None, "an unknown verdict"
    return res, None


def _mem_available_mb() -> float | None:
    try:
        with open("/proc/meminfo", "rb") as fh:
            for line in fh:
                if line.startswith(b"MemAvailable:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


class _Channels:
    """A worker's descriptors (see worker.R): the console (its stdout and stderr, one in-memory
    file), the progress, code, result and files memory files, and the request, reply and abort
    pipes. These are the only ways in or out; nothing of a worker is a path a snippet could
    replace. Every memory file is emptied before the next snippet is handed over."""

    MEMFDS = ("console", "progress", "code", "result", "files")

    def __init__(self, uid: int | None) -> None:
        for name in self.MEMFDS:
            setattr(self, name, os.memfd_create(f"qasynth-{name}", os.MFD_CLOEXEC))
        self._append()
        self.request_r, self.request_w = os.pipe()
        self.reply_r, self.reply_w = os.pipe()
        self.abort_r, self.abort_w = os.pipe()
        os.set_blocking(self.abort_w, False)
        if uid is not None:
            # R reopens its ends through /proc/self/fd, which checks the pipe's owner.
            for fd in (self.request_r, self.reply_r, self.abort_r):
                os.fchown(fd, uid, uid)

    def _append(self) -> None:
        # The console's open file is shared by every process of the worker: a snippet may have
        # cleared O_APPEND on it, which would leave the next one writing at its offset.
        fcntl.fcntl(self.console, fcntl.F_SETFL, os.O_APPEND)

    def parent_files(self) -> tuple[io.FileIO, io.FileIO]:
        """The reply pipe to read and the request pipe to write, for asyncio's pipe transports
        (which close these objects, never the descriptors: `close()` does that)."""
        return io.FileIO(self.reply_r, "rb", closefd=False), io.FileIO(self.request_w, "wb", closefd=False)

    def worker_ends(self) -> tuple[int, ...]:
        return (
            self.request_r, self.reply_w, self.abort_r, self.progress, self.code, self.result, self.files,
        )  # fmt: skip

    def _close(self, *names: str) -> None:
        """Close each descriptor once: a number closed twice may by then be another file's."""
        for name in names:
            fd = getattr(self, name)
            if fd >= 0:
                setattr(self, name, -1)
                with contextlib.suppress(OSError):
                    os.close(fd)

    def close_worker_ends(self) -> None:
        # The abort pipe's read end stays open here too, to empty it of an abort that came
        # too late (see `forget_aborts`); the worker's open file of it is its own.
        self._close("request_r", "reply_w")
        os.set_blocking(self.abort_r, False)

    def forget_aborts(self) -> None:
        with contextlib.suppress(OSError):  # empty: BlockingIOError
            while os.read(self.abort_r, 64):
                pass

    def hand_over(self, source: bytes) -> None:
        """Empty every memory file, then put the next snippet's code in place."""
        for name in self.MEMFDS:
            os.ftruncate(getattr(self, name), 0)
        self._append()
        os.pwrite(self.code, source, 0)

    def abort(self) -> None:
        with contextlib.suppress(OSError):  # full (it has been asked already) or closed
            os.write(self.abort_w, b"x")

    def _read(self, name: str, n: int, *, tail: bool = False) -> tuple[bytes, int]:
        fd = getattr(self, name)
        try:
            size = os.fstat(fd).st_size
            start = max(0, size - n) if tail else 0
            return (os.pread(fd, min(size, n), start) if size else b""), size
        except OSError:  # closed under a snippet by the pool's shutdown
            return b"", 0

    def console_head(self, n: int = 4000) -> str:
        return self._read("console", n)[0].decode(errors="replace").strip()

    def take(self, keep_bytes: int) -> _Taken:
        """Everything the snippet's side left for the pool, each with its cap; then empty files."""
        head, size = self._read("console", keep_bytes)
        tail, _ = self._read("console", CONSOLE_TAIL, tail=True)
        progress, progress_size = self._read("progress", 64, tail=True)
        result, result_size = self._read("result", RESULT_LIMIT)
        files, _ = self._read("files", 1024)
        with contextlib.suppress(OSError):
            for name in self.MEMFDS:
                os.ftruncate(getattr(self, name), 0)
        return _Taken(
            stdout=head.replace(b"\0", b"").decode("utf-8", errors="replace"),
            stdout_bytes=size,
            crashed=bool(_CRASH.search(tail) or _CRASH.search(head)),  # the traceback may follow
            line=_last_line(progress, cut=progress_size > 64),
            result=result,
            result_size=result_size,
            largest_file=_largest_file(files),
        )

    def close(self) -> None:
        self._close(
            "request_r", "reply_w", "abort_r", *self.MEMFDS, "request_w", "reply_r", "abort_w",
        )  # fmt: skip


@dataclass(frozen=True)
class _Taken:
    stdout: str
    stdout_bytes: int
    crashed: bool
    line: int | None
    result: bytes
    result_size: int
    largest_file: tuple[int, str] | None


def _last_line(progress: bytes, *, cut: bool) -> int | None:
    """The line of the last top-level expression the child started (one number a line);
    `progress` is the file's end, its first line `cut` when the file is longer."""
    lines = progress.split(b"\n")
    for raw in reversed(lines[1:] if cut else lines):
        if raw.strip():
            try:
                value = int(raw)
            except ValueError:
                return None
            return value if 0 < value < 10**7 else None
    return None


def _largest_file(report: bytes) -> tuple[int, str] | None:
    size, sep, name = report.rstrip(b"\n").partition(b"\t")
    try:
        return (int(size), _text(name)[:200]) if sep else None
    except ValueError:
        return None


async def _streams(
    channels: _Channels,
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, asyncio.BaseTransport]:
    """asyncio streams over the parent's ends of the reply and request pipes (the descriptors
    stay `channels`' to close, after the transports)."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=REPLY_LIMIT)
    replies, requests = channels.parent_files()
    read_transport, _ = await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), replies)
    transport, protocol = await loop.connect_write_pipe(asyncio.streams.FlowControlMixin, requests)
    return reader, asyncio.StreamWriter(transport, protocol, None, loop), read_transport


def _verdict(reply: _Reply, taken: _Taken, limits: Limits) -> tuple[RunResult, bool]:
    """The snippet's result from what the worker measured and what the snippet's side left;
    and whether the worker should be replaced (a garbled result: in doubt, start afresh)."""
    child, garbled = _parse_result(taken.result, taken.result_size)
    evidence: dict[str, Any] = {
        "stdout": taken.stdout,
        "stdout_bytes": taken.stdout_bytes,
        "duration_ms": round(reply.duration_ms, 3),
        "cpu_ms": reply.cpu_ms,
        "peak_mem_mb": round(reply.peak_mem_bytes / 2**20, 1),
        "leftover_processes": reply.leftover_processes,
    }
    stop = reply.stop
    if child is not None and not stop:
        result = RunResult(
            verdict=child.verdict,  # type: ignore[arg-type]
            message=child.message,
            failing_call=child.failing_call,
            line=child.line,
            warnings=tuple(child.warnings),
            **evidence,
        )
    else:
        line = taken.line
        largest = taken.largest_file
        if garbled is not None and not stop:
            verdict, message = "killed", f"the snippet's result could not be read ({garbled})"
        elif stop == "output_limit" or taken.stdout_bytes > limits.output_bytes:
            verdict, message = "output_limit", f"printed more than {limits.output_bytes} bytes"
        elif stop == "memory_limit":
            verdict = "memory_limit"
            message = f"its processes held more than {limits.total_mem_mb} MB of memory together"
        elif stop == "timeout":
            verdict, message = "timeout", f"still running after {limits.wall_s:g} s (wall clock)"
        elif stop == "cpu" or (limits.cpu_s > 0 and reply.cpu_ms >= (limits.cpu_s - 0.1) * 1000):
            verdict, message = "timeout", f"used more than {limits.cpu_s:g} s of CPU time"
        elif stop == "cancelled":
            verdict, message = "killed", "stopped: its caller no longer wanted the result"
        elif largest is not None and largest[0] >= limits.file_mb * 2**20:
            verdict = "output_limit"
            message = f"wrote a file of {largest[0]} bytes ({largest[1]}), the most a file may hold"
        else:
            verdict = "killed"
            message = "the R process died before the script finished" + (
                "; R reported a crash" if taken.crashed else ""
            )
        result = RunResult(verdict=verdict, message=message, line=line, **evidence)  # type: ignore[arg-type]
    if reply.leftover_processes > 0 and result.verdict == "passed":
        result = RunResult(
            verdict="killed",
            message=f"left {reply.leftover_processes} background process(es) running after it finished; "
            "they were killed",
            **evidence,
        )
    return result, garbled is not None


class _Worker:
    def __init__(
        self, slot: int, mode: SandboxMode, limits: Limits, packages: tuple[str, ...], uid_base: int
    ):
        self.slot = slot
        self.mode = mode
        self.limits = limits
        self.packages = packages
        self.uid_base = uid_base
        self.proc: asyncio.subprocess.Process | None = None
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self._read_transport: asyncio.BaseTransport | None = None
        self.channels: _Channels | None = None
        self.scratch: str | None = None
        self.alive = False
        self.kill_reason: str | None = None
        self.r_version = ""
        self.jobs = 0
        self.pending: int | None = None
        """The job whose reply has not been read yet."""
        self.uid: int | None = None  # the dedicated uid, when started as root
        self._uid_lock: int | None = None

    async def start(self) -> None:
        launch = None
        try:
            if os.geteuid() == 0:
                self.uid, self._uid_lock = claim_uid(self.uid_base)
            self.channels = channels = _Channels(self.uid)
            if self.mode == "none":
                self.scratch = tempfile.mkdtemp(prefix=f"qasynth-worker{self.slot}-")
                prepare_scratch(self.scratch, self.uid if self.uid is not None else os.geteuid())
            launch = build_launch(
                self.mode,
                uid=self.uid,
                limits=self.limits,
                packages=self.packages,
                scratch=self.scratch,
                channels=channels.worker_ends(),
            )
            self.proc = await asyncio.create_subprocess_exec(
                *launch.argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=channels.console,
                stderr=channels.console,
                pass_fds=launch.pass_fds,
                **launch.process_options(),
                start_new_session=True,
            )
        except (OSError, SandboxUnavailable) as exc:
            if self.channels is not None:
                self.channels.close()
                self.channels = None
            if self._uid_lock is not None:
                os.close(self._uid_lock)
                self._uid_lock = None
            if isinstance(exc, SandboxUnavailable):
                raise
            raise SandboxUnavailable(f"could not start the R worker: {exc}") from exc
        finally:
            if launch is not None:
                launch.close_owned()
        channels.close_worker_ends()
        self.reader, self.writer, self._read_transport = await _streams(channels)
        try:
            raw = await asyncio.wait_for(self.reader.readline(), START_TIMEOUT_S)
        except (TimeoutError, ValueError):
            raw = b""
        hello = [_text(f) for f in raw.rstrip(b"\n").split(b"\t")] if raw else []
        if hello[:1] != ["ready"] or len(hello) < 3:
            if hello[:1] == ["failed"] and len(hello) > 1:
                printed = self.channels.console_head(1000) if self.channels is not None else ""
                why = hello[1] + (f" ({printed})" if printed else "")
            else:
                why = await self._failure_text()
            await self.close()
            raise SandboxUnavailable(f"the R worker did not start: {why}")
        if self.mode == "bwrap" and hello[2] != "2":
            # The seccomp filter protects the worker by its pid: it must be the one expected.
            await self.close()
            raise SandboxUnavailable(f"the R worker runs as pid {hello[2]} in its sandbox, not 2")
        self.r_version = hello[1]
        channels.take(0)  # what starting printed
        self.alive = True

    async def _failure_text(self) -> str:
        parts = []
        if self.proc is not None:
            self.kill("start failed")
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.proc.wait(), 5)
        if self.channels is not None:
            parts.append(self.channels.console_head())
        text = " | ".join(p for p in parts if p)
        return text or "it exited without a word (is R installed, and can bwrap create user namespaces here?)"

    def kill(self, reason: str) -> None:
        """Kill the whole sandbox now; bwrap's PID namespace takes every process in it along."""
        self.kill_reason = self.kill_reason or reason
        self.alive = False
        if self.proc is not None and self.proc.returncode is None:
            # The group holds bwrap (or R), which leads it. Not proc.kill() as well: Popen polls
            # before it signals, and that poll would reap the child under asyncio's watcher.
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                with contextlib.suppress(ProcessLookupError):
                    self.proc.kill()

    async def close(self) -> None:
        self.kill("closed")
        if self.proc is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.proc.wait(), 10)
        if self.writer is not None:
            self.writer.close()
            self.writer = None
        if self._read_transport is not None:
            self._read_transport.close()
            self._read_transport = None
        if self.channels is not None:
            self.channels.close()
            self.channels = None
        if self.uid is not None:
            # The namespace dies with its init, a moment after bwrap; make sure of it, since
            # a dedicated uid names exactly this worker's processes.
            # Processes that are freeing a lot of memory can take a few seconds to go.
            for _ in range(1000):
                left = processes_of(self.uid)
                if not left:
                    break
                for pid in left:
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.kill(pid, signal.SIGKILL)
                await asyncio.sleep(0.01)
            if self._uid_lock is not None and not processes_of(self.uid):
                os.close(self._uid_lock)  # the uid is free for the next worker
                self._uid_lock = None
        if self.scratch is not None:
            shutil.rmtree(self.scratch, ignore_errors=True)
            self.scratch = None

    async def _reply(self, timeout_s: float) -> tuple[bytes, str | None]:
        """The next reply line, or b"" and why there is none. Never raises but CancelledError."""
        assert self.reader is not None
        try:
            async with asyncio.timeout(timeout_s):  # no task per snippet, as wait_for makes
                raw = await self.reader.readline()
        except TimeoutError:
            return b"", "deadline"
        except ValueError:  # over REPLY_LIMIT
            return b"", "garbled reply"
        except (ConnectionError, OSError) as exc:
            log.warning("worker %d: reading its reply failed: %s", self.slot, exc)
            return b"", "broken pipe"
        if not raw.endswith(b"\n"):
            return b"", "died"
        return raw, None

    async def run(self, job: int, code: str) -> RunResult:
        assert self.writer is not None and self.channels is not None
        channels = self.channels  # close() lets go of it, maybe while this snippet runs
        limits = self.limits
        self.jobs += 1
        self.kill_reason = None
        job &= 0x7FFFFFFF  # the request carries it as a 32-bit integer
        source = code.replace("\x00", "").encode("utf-8", errors="replace")  # R strings hold no NUL
        started = time.perf_counter()
        try:
            channels.hand_over(source)
            self.writer.write(struct.pack("<ii", job, 0))
            self.pending = job
            await self.writer.drain()
            raw, why = await self._reply(limits.wall_s + GRACE_S)
        except (OSError, ConnectionError) as exc:
            self.kill("broken pipe")
            log.warning("worker %d: handing over a snippet failed: %s", self.slot, exc)
            return RunResult(verdict="killed", message="the sandbox died before the snippet started")
        except asyncio.CancelledError:
            # The caller gave up mid-snippet: the worker is told to stop it (see `drain`).
            channels.abort()
            raise
        self.pending = None
        duration_ms = (time.perf_counter() - started) * 1000
        if not raw:
            reason = self.kill_reason or why
            self.kill(why or "died")
            taken = channels.take(limits.keep_bytes)  # what it printed till then
            evidence = {
                "stdout": taken.stdout,
                "stdout_bytes": taken.stdout_bytes,
                "duration_ms": duration_ms,
            }
            if reason == "deadline":
                return RunResult(
                    verdict="timeout",
                    message=f"still running after {limits.wall_s:g} s; the sandbox was killed",
                    **evidence,
                )
            if reason == "host_memory":
                return RunResult(
                    verdict="memory_limit",
                    message=f"the machine ran low on memory (under {limits.host_min_free_mb} MB available) "
                    "while it ran; the sandbox was killed",
                    **evidence,
                )
            if reason == "garbled reply":
                return RunResult(
                    verdict="killed",
                    message="the worker's reply could not be read; it was replaced",
                    **evidence,
                )
            return RunResult(verdict="killed", message="the sandbox died while the snippet ran", **evidence)
        reply = _Reply.parse(raw)
        if reply is None or reply.job != job:
            self.kill("garbled reply" if reply is None else "out of step")
            channels.take(0)
            return RunResult(
                verdict="killed", message="the worker's reply could not be read; it was replaced",
                duration_ms=duration_ms,
            )  # fmt: skip
        if reply.error:
            log.warning("worker %d: %s", self.slot, reply.error)
        result, recycle = _verdict(reply, channels.take(limits.keep_bytes), limits)
        if reply.retire or recycle:
            self.kill("retired")  # it asked to be replaced, or its snippet wrote garbage
        return result

    async def drain(self) -> None:
        """After a cancelled snippet: wait for the worker to answer (it stops the snippet within
        a few tens of milliseconds of the abort), so the worker goes back to the pool warm."""
        if self.pending is None or self.channels is None:
            return
        raw, _ = await self._reply(DRAIN_S)
        reply = _Reply.parse(raw) if raw else None
        self.pending = None
        if reply is None or reply.retire:
            self.kill("cancelled")
        if self.channels is not None:
            self.channels.forget_aborts()  # the worker may have answered before it read it
            self.channels.take(0)


@dataclass(eq=False)
class _Waiter:
    future: asyncio.Future[_Worker | None]


class WorkerPool:
    """Warm, sandboxed R workers. `run` is safe to call from many tasks at once.

    Use `await start_runner(...)`, or `async with WorkerPool(...) as pool`.
    """

    def __init__(
        self,
        *,
        sandbox: SandboxMode = "bwrap",
        workers: int | None = None,
        packages: tuple[str, ...] | list[str] = ("stats", "utils"),
        limits: Limits | None = None,
        uid_base: int = DEFAULT_UID_BASE,
        max_queue: int = DEFAULT_MAX_QUEUE,
    ) -> None:
        if sandbox not in ("bwrap", "none"):
            raise ValueError(f"sandbox must be 'bwrap' or 'none', got {sandbox!r}")
        if max_queue < 0:
            raise ValueError(f"max_queue must not be negative, got {max_queue}")
        self.mode: SandboxMode = sandbox
        self.size = workers if workers and workers > 0 else max(1, os.cpu_count() or 1)
        self.packages = tuple(packages)
        self.limits = limits or Limits()
        self.uid_base = uid_base
        self.max_queue = max_queue
        self._idle: deque[_Worker] = deque()
        self._queues: dict[Hashable | None, deque[_Waiter]] = {}
        """Waiting snippets per owner, owners in the order they are served next."""
        self._queued = 0
        self._workers: dict[int, _Worker] = {}
        self._busy: set[_Worker] = set()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._ids = itertools.count(1)
        self._broken: str | None = None
        self._closed = False
        self._watchdog: asyncio.Task[None] | None = None
        self._r_version = ""
        self._bwrap_version = ""
        self._mean_ms = 50.0
        self.restarts = 0
        self.uids: set[int] = set()
        """Every dedicated uid this pool's workers have run as (empty when not started as root)."""

    async def __aenter__(self) -> WorkerPool:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def start(self) -> None:
        check_tools(self.mode)
        if self.mode == "bwrap":
            self._bwrap_version = await asyncio.to_thread(bwrap_version)
        results = await asyncio.gather(
            *(self._start_worker(slot) for slot in range(self.size)), return_exceptions=True
        )
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors:
            await self.aclose()
            raise (
                errors[0] if isinstance(errors[0], SandboxUnavailable) else SandboxUnavailable(str(errors[0]))
            )
        self._watchdog = asyncio.create_task(self._watch_host_memory())

    async def _start_worker(self, slot: int) -> None:
        worker = _Worker(slot, self.mode, self.limits, self.packages, self.uid_base)
        await worker.start()
        if self._closed:
            await worker.close()
            return
        self._r_version = worker.r_version
        if worker.uid is not None:
            self.uids.add(worker.uid)
        self._workers[slot] = worker
        self._release(worker)

    def _spawn(self, coro: typing.Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _replace(self, worker: _Worker) -> None:
        self._workers.pop(worker.slot, None)
        self._spawn(self._restart(worker))

    async def _restart(self, old: _Worker) -> None:
        await old.close()
        if self._closed:
            return
        self.restarts += 1
        last = ""
        for attempt in range(RESTART_ATTEMPTS):
            try:
                await self._start_worker(old.slot)
                return
            except SandboxUnavailable as exc:
                log.warning("worker %d did not restart (attempt %d): %s", old.slot, attempt + 1, exc)
                await asyncio.sleep(0.5 * 2**attempt)
                last = str(exc)
        if not self._workers:
            self._broken = last
            self._wake_waiters()

    def _unusable(self) -> str | None:
        if self._closed:
            return "the R worker pool is closed"
        if self._broken is not None and not self._workers:
            return f"no R worker could be restarted: {self._broken}"
        return None

    def _wake_waiters(self) -> None:
        """Each waiting caller wakes with None, sees the pool is unusable, and says why."""
        for queue in self._queues.values():
            for waiter in queue:
                if not waiter.future.done():
                    waiter.future.set_result(None)
        self._queues.clear()
        self._queued = 0

    def _release(self, worker: _Worker) -> None:
        """An idle worker goes to the next owner in turn, the head of its queue; else it waits."""
        while self._queues:
            owner = next(iter(self._queues))
            queue = self._queues.pop(owner)
            while queue and queue[0].future.done():  # cancelled while waiting
                queue.popleft()
            if not queue:
                continue
            waiter = queue.popleft()
            if queue:
                self._queues[owner] = queue  # back of the line
            self._queued -= 1
            waiter.future.set_result(worker)
            return
        self._idle.append(worker)

    def _back(self, worker: _Worker) -> None:
        if worker.alive and not self._closed:
            self._release(worker)
        else:
            self._replace(worker)

    async def _acquire(self, owner: Hashable | None) -> _Worker:
        if (why := self._unusable()) is not None:
            raise SandboxUnavailable(why)
        if self._idle and not self._queued:
            return self._idle.popleft()
        if self._queued >= self.max_queue:
            retry = max(1.0, round(self._queued * self._mean_ms / 1000 / max(1, self.size)))
            raise QueueFull(
                f"{self._queued} snippets are waiting for the R workers, the most this service queues",
                retry_after_s=retry,
            )
        waiter = _Waiter(asyncio.get_running_loop().create_future())
        self._queues.setdefault(owner, deque()).append(waiter)
        self._queued += 1
        try:
            worker = await waiter.future
        except asyncio.CancelledError:
            if waiter.future.done() and not waiter.future.cancelled():
                handed = waiter.future.result()  # handed over as the caller was cancelled
                if handed is not None:
                    self._release(handed)
            else:
                self._queued -= 1  # never started; `_release` skips it
            raise
        if worker is None:
            raise SandboxUnavailable(self._unusable() or "the R worker pool is closed")
        return worker

    async def run(self, code: str, *, owner: Hashable | None = None) -> RunResult:
        """Run one snippet in a fresh fork of a warm worker. Snippets of the same `owner` run in
        order of arrival; owners take turns. Raises `QueueFull` when too many are waiting.
        Cancelling the call cancels the snippet: a waiting one never starts, a running one is
        stopped and its worker goes back to the pool."""
        worker = await self._acquire(owner)
        self._busy.add(worker)
        try:
            result = await worker.run(next(self._ids), code)
        except asyncio.CancelledError:
            self._spawn(self._drain(worker))
            raise
        except BaseException:
            self._busy.discard(worker)
            worker.kill("error")
            self._back(worker)
            raise
        self._busy.discard(worker)
        self._mean_ms = 0.9 * self._mean_ms + 0.1 * result.duration_ms
        self._back(worker)
        return result

    async def _drain(self, worker: _Worker) -> None:
        try:
            await worker.drain()
        finally:
            self._busy.discard(worker)
            self._back(worker)

    async def _watch_host_memory(self) -> None:
        floor = self.limits.host_min_free_mb
        while not self._closed:
            await asyncio.sleep(0.1 if self._busy else 0.5)
            if not self._busy:
                continue
            available = _mem_available_mb()
            if available is not None and available < floor:
                log.warning(
                    "only %.0f MB of memory available: killing %d busy workers", available, len(self._busy)
                )
                for worker in list(self._busy):
                    worker.kill("host_memory")

    @property
    def queued(self) -> int:
        """Snippets waiting for a worker."""
        return self._queued

    def describe(self) -> dict[str, str]:
        lim = self.limits
        info = {
            "mode": self.mode,
            "workers": str(self.size),
            "alive": str(sum(w.alive for w in self._workers.values())),
            "r_version": self._r_version,
            "packages": ",".join(self.packages),
            "limits": (
                f"wall {lim.wall_s:g} s, cpu {lim.cpu_s:g} s, memory {lim.mem_mb} MB a process and "
                f"{lim.total_mem_mb} MB in all, output {lim.output_bytes} B, files {lim.file_mb} MB, "
                f"/tmp {lim.tmp_mb} MB, {lim.procs} processes"
            ),
            "queue": f"{self._queued} waiting, at most {self.max_queue}",
            "restarts": str(self.restarts),
        }
        if self.mode == "bwrap":
            info["bwrap"] = self._bwrap_version
        else:
            info["warning"] = (
                "no namespaces or seccomp: files, network and background processes are not contained"
            )
        return info

    async def aclose(self) -> None:
        self._closed = True
        self._wake_waiters()
        if self._watchdog is not None:
            self._watchdog.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watchdog
        for task in list(self._tasks):
            with contextlib.suppress(Exception):
                await task
        workers = list(self._workers.values())
        self._workers.clear()
        await asyncio.gather(*(w.close() for w in workers), return_exceptions=True)


async def start_runner(
    *,
    sandbox: SandboxMode = "bwrap",
    workers: int | None = None,
    packages: tuple[str, ...] | list[str] = ("stats", "utils"),
    limits: Limits | None = None,
    uid_base: int = DEFAULT_UID_BASE,
    max_queue: int = DEFAULT_MAX_QUEUE,
) -> WorkerPool:
    """Start a warm pool (one worker per core by default); raises `SandboxUnavailable` saying why not."""
    pool = WorkerPool(
        sandbox=sandbox,
        workers=workers,
        packages=packages,
        limits=limits,
        uid_base=uid_base,
        max_queue=max_queue,
    )
    await pool.start()
    return pool
