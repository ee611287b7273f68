"""The warm worker pool: N sandboxed R workers, one snippet each at a time.

Each worker is one long-lived R process (worker.R) inside its own sandbox; it forks a
throw-away child per snippet. The pool hands snippets to idle workers, replaces a worker
that died or was killed, and keeps two guards outside the sandbox that code inside cannot
switch off: a hard deadline per snippet (the wall limit plus a grace period) and a watch on
the machine's available memory.
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
from typing import Any

import msgspec

from evaluator._sandbox import (
    DEFAULT_UID_BASE,
    SandboxMode,
    build_launch,
    bwrap_version,
    check_tools,
    claim_uid,
    processes_of,
    worker_source,
)
from evaluator._types import Limits, RunResult, RunVerdict, SandboxUnavailable

__all__ = ["WorkerPool", "start_runner"]

log = logging.getLogger("evaluator")

GRACE_S = 5.0
"""How long past the wall limit the worker may take to answer before it is killed."""
START_TIMEOUT_S = 60.0
RESTART_ATTEMPTS = 3
LINE_LIMIT = 32 * 2**20


_UNESCAPE = re.compile(rb"\\(.)")
_ESCAPES = {b"n": b"\n", b"t": b"\t", b"\\": b"\\"}


def _fields(line: bytes) -> list[str]:
    """A reply line of worker.R: tab-separated, with backslash, tab and newline escaped."""
    return [
        _UNESCAPE.sub(lambda m: _ESCAPES.get(m[1], m[1]), field).decode("utf-8", errors="replace")
        for field in line.rstrip(b"\n").split(b"\t")
    ]


class _Reply(msgspec.Struct, frozen=True):
    job: int
    verdict: str
    line: int | None
    duration_ms: float
    cpu_ms: float
    peak_mem_bytes: float
    leftover_processes: int
    retire: bool
    message: str | None
    failing_call: str | None
    warnings: tuple[str, ...]

    @classmethod
    def parse(cls, line: bytes) -> _Reply:
        f = _fields(line)
        if len(f) < 10:
            raise ValueError(f"a reply of {len(f)} fields")
        return cls(
            job=int(f[0]),
            verdict=f[1],
            line=None if f[2] == "NA" else int(f[2]),
            duration_ms=float(f[3]),
            cpu_ms=float(f[4]),
            peak_mem_bytes=float(f[5]),
            leftover_processes=int(f[6]),
            retire=f[7] == "1",
            message=f[8] or None,
            failing_call=f[9] or None,
            warnings=tuple(f[10:]),
        )


def _mem_available_mb() -> float | None:
    try:
        with open("/proc/meminfo", "rb") as fh:
            for line in fh:
                if line.startswith(b"MemAvailable:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def _prepare_scratch(scratch: str, state: str, source: bytes, uid: int) -> None:
    """The host directory of a `none` worker: its state dir with worker.R, owned by the worker's uid."""
    os.makedirs(state)
    with open(os.path.join(state, "worker.R"), "wb") as fh:
        fh.write(source)
    if os.geteuid() == 0:
        for path in (scratch, state):
            os.chown(path, uid, uid)
        os.chmod(scratch, 0o700)


class _Channels:
    """A worker's descriptors (see worker.R): the console (its stdout and stderr, one in-memory
    file), the progress file, and the request and reply pipes. The console and the pipes are
    the only ways in or out; nothing of a worker is a path a snippet could replace."""

    def __init__(self, uid: int | None) -> None:
        self.console = os.memfd_create("qasynth-console", os.MFD_CLOEXEC)
        fcntl.fcntl(self.console, fcntl.F_SETFL, fcntl.fcntl(self.console, fcntl.F_GETFL) | os.O_APPEND)
        self.progress = os.memfd_create("qasynth-progress", os.MFD_CLOEXEC)
        self.request_r, self.request_w = os.pipe()
        self.reply_r, self.reply_w = os.pipe()
        if uid is not None:
            # R reopens its ends through /proc/self/fd, which checks the pipe's owner.
            for fd in (self.request_r, self.reply_r):
                os.fchown(fd, uid, uid)

    def parent_files(self) -> tuple[io.FileIO, io.FileIO]:
        """The reply pipe to read and the request pipe to write, for asyncio's pipe transports
        (which close these objects, never the descriptors: `close()` does that)."""
        return io.FileIO(self.reply_r, "rb", closefd=False), io.FileIO(self.request_w, "wb", closefd=False)

    def worker_ends(self) -> tuple[int, int, int]:
        return self.request_r, self.reply_w, self.progress

    def _close(self, *names: str) -> None:
        """Close each descriptor once: a number closed twice may by then be another file's."""
        for name in names:
            fd = getattr(self, name)
            if fd >= 0:
                setattr(self, name, -1)
                with contextlib.suppress(OSError):
                    os.close(fd)

    def close_worker_ends(self) -> None:
        self._close("request_r", "reply_w")

    def console_head(self, n: int = 4000) -> str:
        try:
            return os.pread(self.console, n, 0).decode(errors="replace").strip()
        except OSError:
            return ""

    def take_console(self, keep_bytes: int) -> tuple[str, int]:
        """What the snippet printed (its first `keep_bytes`) and how much; then an empty console
        and progress file for the next one."""
        try:
            size = os.fstat(self.console).st_size
            head = os.pread(self.console, min(size, keep_bytes), 0) if size else b""
            os.ftruncate(self.console, 0)
            os.ftruncate(self.progress, 0)
        except OSError:  # closed under a snippet by the pool's shutdown
            return "", 0
        return head.replace(b"\0", b"").decode("utf-8", errors="replace"), size

    def close(self) -> None:
        self._close("request_r", "reply_w", "console", "progress", "request_w", "reply_r")


async def _streams(
    channels: _Channels,
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, asyncio.BaseTransport]:
    """asyncio streams over the parent's ends of the reply and request pipes (the descriptors
    stay `channels`' to close, after the transports)."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=LINE_LIMIT)
    replies, requests = channels.parent_files()
    read_transport, _ = await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), replies)
    transport, protocol = await loop.connect_write_pipe(asyncio.streams.FlowControlMixin, requests)
    return reader, asyncio.StreamWriter(transport, protocol, None, loop), read_transport


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
        self.uid: int | None = None  # the dedicated uid, when started as root
        self._uid_lock: int | None = None

    async def start(self) -> None:
        worker_r = worker_w = None
        source = worker_source()
        try:
            if os.geteuid() == 0:
                self.uid, self._uid_lock = claim_uid(self.uid_base)
            self.channels = channels = _Channels(self.uid)
            if self.mode == "bwrap":
                worker_r, worker_w = os.pipe()
            else:
                self.scratch = tempfile.mkdtemp(prefix=f"qasynth-worker{self.slot}-")
            launch = build_launch(
                self.mode,
                uid=self.uid,
                limits=self.limits,
                packages=self.packages,
                worker_fd=worker_r,
                scratch=self.scratch,
                channels=channels.worker_ends(),
            )
            if self.scratch is not None:
                _prepare_scratch(self.scratch, launch.state_dir, source, launch.uid)
            self.proc = await asyncio.create_subprocess_exec(
                *launch.argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=channels.console,
                stderr=channels.console,
                pass_fds=launch.pass_fds,
                **launch.process_options(),
                start_new_session=True,
            )
            if worker_w is not None:
                # worker.R is far smaller than a pipe's buffer: this never blocks.
                os.write(worker_w, source)
                os.close(worker_w)
                worker_w = None
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
            for fd in (worker_r, worker_w):
                if fd is not None:
                    os.close(fd)
        channels.close_worker_ends()
        self.reader, self.writer, self._read_transport = await _streams(channels)
        try:
            raw = await asyncio.wait_for(self.reader.readline(), START_TIMEOUT_S)
        except TimeoutError:
            raw = b""
        hello = _fields(raw) if raw else []
        if hello[:1] != ["ready"] or len(hello) < 3:
            why = hello[1] if hello[:1] == ["failed"] and len(hello) > 1 else await self._failure_text()
            await self.close()
            raise SandboxUnavailable(f"the R worker did not start: {why}")
        self.r_version = hello[1]
        channels.take_console(0)  # what starting printed, and the warm-up's progress lines
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

    async def run(self, job: int, code: str) -> RunResult:
        assert self.writer is not None and self.reader is not None and self.channels is not None
        channels = self.channels  # close() lets go of it, maybe while this snippet runs
        limits = self.limits
        self.jobs += 1
        self.kill_reason = None
        job &= 0x7FFFFFFF  # the request carries it as a 32-bit integer
        source = code.replace("\x00", "").encode("utf-8", errors="replace")  # R strings hold no NUL
        request = struct.pack("<ii", job, len(source)) + source
        started = time.perf_counter()
        try:
            self.writer.write(request)
            await self.writer.drain()
            async with asyncio.timeout(limits.wall_s + GRACE_S):  # no task per snippet, as wait_for makes
                raw = await self.reader.readline()
        except TimeoutError:
            self.kill("deadline")
            stdout, stdout_bytes = channels.take_console(limits.keep_bytes)
            return RunResult(
                verdict="timeout",
                message=f"still running after {limits.wall_s:g} s; the sandbox was killed",
                stdout=stdout,
                stdout_bytes=stdout_bytes,
                duration_ms=(time.perf_counter() - started) * 1000,
            )
        except (ConnectionError, BrokenPipeError) as exc:
            self.kill("broken pipe")
            raw = b""
            log.warning("worker %d: pipe failed: %s", self.slot, exc)
        except asyncio.CancelledError:
            # The caller gave up mid-snippet: the worker's reply would reach the next
            # caller, so this worker is done.
            self.kill("cancelled")
            raise
        duration_ms = (time.perf_counter() - started) * 1000
        if not raw:
            reason = self.kill_reason
            self.kill("died")
            stdout, stdout_bytes = channels.take_console(limits.keep_bytes)  # what it printed till then
            if reason == "host_memory":
                return RunResult(
                    verdict="memory_limit",
                    message=f"the machine ran low on memory (under {limits.host_min_free_mb} MB available) "
                    "while it ran; the sandbox was killed",
                    stdout=stdout,
                    stdout_bytes=stdout_bytes,
                    duration_ms=duration_ms,
                )
            return RunResult(
                verdict="killed",
                message="the sandbox died while the snippet ran",
                stdout=stdout,
                stdout_bytes=stdout_bytes,
                duration_ms=duration_ms,
            )
        try:
            reply = _Reply.parse(raw)
        except ValueError as exc:
            self.kill("garbled reply")
            return RunResult(
                verdict="killed", message=f"the worker's reply could not be read ({exc}); it was replaced"
            )
        if reply.retire:
            self.kill("retired")  # it asked to be replaced
        if reply.job != job:
            self.kill("out of step")
            return RunResult(verdict="killed", message="the worker answered out of step; it was replaced")
        stdout, stdout_bytes = channels.take_console(limits.keep_bytes)
        verdict = reply.verdict if reply.verdict in _RUN_VERDICTS else "killed"
        return RunResult(
            verdict=verdict,  # type: ignore[arg-type]
            message=reply.message,
            failing_call=reply.failing_call,
            line=reply.line,
            warnings=reply.warnings,
            stdout=stdout,
            stdout_bytes=stdout_bytes,
            duration_ms=round(reply.duration_ms, 3),
            cpu_ms=reply.cpu_ms,
            peak_mem_mb=round(reply.peak_mem_bytes / 2**20, 1),
            leftover_processes=reply.leftover_processes,
        )


_RUN_VERDICTS = frozenset(typing.get_args(RunVerdict))


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
    ) -> None:
        if sandbox not in ("bwrap", "none"):
            raise ValueError(f"sandbox must be 'bwrap' or 'none', got {sandbox!r}")
        self.mode: SandboxMode = sandbox
        self.size = workers if workers and workers > 0 else max(1, os.cpu_count() or 1)
        self.packages = tuple(packages)
        self.limits = limits or Limits()
        self.uid_base = uid_base
        self._idle: asyncio.Queue[_Worker | None] = asyncio.Queue()
        self._waiting = 0
        self._workers: dict[int, _Worker] = {}
        self._busy: set[_Worker] = set()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._ids = itertools.count(1)
        self._broken: str | None = None
        self._closed = False
        self._watchdog: asyncio.Task[None] | None = None
        self._r_version = ""
        self._bwrap_version = ""
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
        self._idle.put_nowait(worker)

    def _replace(self, worker: _Worker) -> None:
        self._workers.pop(worker.slot, None)
        task = asyncio.create_task(self._restart(worker))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

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
        """A `None` per waiting caller: each wakes, sees the pool is unusable, and says why."""
        for _ in range(self._waiting):
            self._idle.put_nowait(None)

    async def _acquire(self) -> _Worker:
        while True:
            if (why := self._unusable()) is not None:
                raise SandboxUnavailable(why)
            self._waiting += 1
            try:
                worker = await self._idle.get()
            finally:
                self._waiting -= 1
            if worker is not None:
                return worker

    async def run(self, code: str) -> RunResult:
        """Run one snippet in a fresh fork of a warm worker."""
        worker = await self._acquire()
        self._busy.add(worker)
        try:
            return await worker.run(next(self._ids), code)
        finally:
            self._busy.discard(worker)
            if worker.alive and not self._closed:
                self._idle.put_nowait(worker)
            else:
                self._replace(worker)

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
            "restarts": str(self.restarts),
        }
        if self.mode == "bwrap":
            info["bwrap"] = self._bwrap_version
        else:
            info["warning"] = "no namespaces: files, network and background processes are not contained"
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
) -> WorkerPool:
    """Start a warm pool (one worker per core by default); raises `SandboxUnavailable` saying why not."""
    pool = WorkerPool(sandbox=sandbox, workers=workers, packages=packages, limits=limits, uid_base=uid_base)
    await pool.start()
    return pool
