"""How a worker is launched: the bubblewrap command line, its environment and its rlimits.

The sandbox, from the outside in:

- a dedicated user: run as root, each worker drops to an unprivileged uid of its own
  (the first free one from `uid_base` up, held by a lock file for the worker's life, so
  two pools or two services never share one) before anything starts, so file permissions protect the host
  (root's 0600 files stay unreadable) and RLIMIT_NPROC, which the kernel never
  enforces for root, counts exactly that worker's processes and threads;
- rlimits on every process: address space (RLIMIT_AS), file size (RLIMIT_FSIZE),
  processes and threads (RLIMIT_NPROC), open files, no core dumps;
- bubblewrap: new user (with no nested ones), PID, network, IPC, UTS and cgroup
  namespaces (no network at all); only what R needs visible: /usr read-only without
  /usr/local, compilers and other interpreters, a few files of /etc; a fresh /proc and /dev
  (read-only), /tmp and /dev/shm on size-limited tmpfs, an empty environment, a new
  session (no terminal), and death with its parent;
- a seccomp filter (`_seccomp.py`) on every process in it;
- R started from a run-only copy of its binary: the worker is non-dumpable, so no process
  of the sandbox can read or write its memory;
- in the worker itself (worker.R): a per-snippet wall clock, CPU time, printed-output and
  total-resident-memory watch, and a sweep of every process left behind.

`mode="none"` keeps the dedicated user and the rlimits but has no namespaces: files, the
network and background processes are not contained. It is for machines without
bubblewrap, and says so in `describe()`.
"""

from __future__ import annotations

import contextlib
import fcntl
import fnmatch
import functools
import glob
import os
import resource
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from evaluator._seccomp import seccomp_program
from evaluator._types import Limits, SandboxUnavailable

__all__ = [
    "DEFAULT_UID_BASE",
    "Launch",
    "SandboxMode",
    "build_launch",
    "bwrap_sandbox",
    "check_tools",
    "claim_uid",
    "prepare_scratch",
    "processes_of",
    "r_runtime",
    "worker_source",
]

SandboxMode = Literal["bwrap", "none"]

DEFAULT_UID_BASE = 6_400_000
"""Far above ordinary users and the usual subordinate-uid ranges (100000–165535)."""
UID_SPAN = 4096

STATE_DIR = "/tmp/.qasynth"
WORKER_PATH = f"{STATE_DIR}/worker.R"
R_PATH = f"{STATE_DIR}/R"
SHM_BYTES = 16 * 2**20
HINT = (
    "install R and bubblewrap (Debian: `apt-get install r-base-core bubblewrap`), "
    "or set QASYNTH_SANDBOX=none to run R without namespaces"
)


def worker_source() -> bytes:
    return resources.files("evaluator").joinpath("worker.R").read_bytes()


def check_tools(mode: SandboxMode) -> dict[str, str]:
    """Paths of R and bwrap; raises `SandboxUnavailable` naming what is missing and how to get it."""
    tools = {"R": shutil.which("R")}
    if mode == "bwrap":
        tools["bwrap"] = shutil.which("bwrap")
    missing = [name for name, path in tools.items() if path is None]
    if missing:
        raise SandboxUnavailable(f"{' and '.join(missing)} not found on PATH: {HINT}")
    return {name: str(path) for name, path in tools.items()}


def _user_tasks(uid: int) -> int:
    """Processes and threads the user already has: RLIMIT_NPROC counts them too."""
    count = 0
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/status", "rb") as fh:
                status = fh.read()
        except OSError:
            continue
        fields = dict(
            line.split(b":", 1) for line in status.splitlines() if line.startswith((b"Uid:", b"Threads:"))
        )
        if int(fields.get(b"Uid", b"-1 ").split()[0]) == uid:
            count += int(fields.get(b"Threads", b"1").strip() or 1)
    return count


def processes_of(uid: int, *, zombies: bool = False) -> list[int]:
    """Processes owned by `uid`: live ones, and zombies too if asked."""
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            if os.stat(f"/proc/{entry.name}").st_uid != uid:
                continue
            with open(f"/proc/{entry.name}/stat", "rb") as fh:
                state = fh.read().rsplit(b")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if zombies or state not in (b"Z", b"X"):
            found.append(int(entry.name))
    return found


def claim_uid(base: int = DEFAULT_UID_BASE) -> tuple[int, int]:
    """A dedicated uid that no other worker, of this process or another, holds: `(uid, lock_fd)`.

    The claim is an flock on a file named after the uid; closing `lock_fd` (or dying) frees it.
    A uid that still owns processes, even zombies waiting for init to reap them, is passed
    over: RLIMIT_NPROC counts those too.
    """
    lock_dir = os.path.join(tempfile.gettempdir(), "qasynth-uids")
    os.makedirs(lock_dir, mode=0o700, exist_ok=True)
    for uid in range(base, base + UID_SPAN):
        fd = os.open(os.path.join(lock_dir, str(uid)), os.O_CREAT | os.O_RDWR | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue
        if processes_of(uid, zombies=True):
            os.close(fd)
            continue
        return uid, fd
    raise SandboxUnavailable(f"no free sandbox uid in {base}..{base + UID_SPAN - 1}")


@dataclass(frozen=True)
class Launch:
    """Everything needed to start one worker. `owned_fds` (the data bubblewrap copies into the
    sandbox) are the caller's to close once the process has started."""

    argv: list[str]
    env: dict[str, str]
    preexec: Callable[[], None]
    user: int | None
    pass_fds: tuple[int, ...]
    state_dir: str
    """Where worker.R lives, as the worker sees it."""
    uid: int
    owned_fds: tuple[int, ...] = ()

    def process_options(self) -> dict[str, Any]:
        """Keyword arguments for `asyncio.create_subprocess_exec`: who the process runs as, its
        rlimits, its environment."""
        return {
            "preexec_fn": self.preexec,
            "user": self.user,
            "group": self.user,
            "extra_groups": [] if self.user is not None else None,
            "env": self.env,
            "cwd": "/",
        }

    def close_owned(self) -> None:
        for fd in self.owned_fds:
            with contextlib.suppress(OSError):
                os.close(fd)


def _rlimits(limits: Limits, nproc: int) -> Callable[[], None]:
    values = [
        (resource.RLIMIT_AS, limits.mem_mb * 2**20),
        (resource.RLIMIT_FSIZE, limits.file_mb * 2**20),
        (resource.RLIMIT_NPROC, nproc),
        (resource.RLIMIT_NOFILE, 256),
        (resource.RLIMIT_CORE, 0),
    ]

    def apply() -> None:  # runs in the child between fork and exec: no allocation-heavy work
        for which, value in values:
            resource.setrlimit(which, (value, value))

    return apply


@dataclass(frozen=True)
class RRuntime:
    """R's own binary and the environment its shell wrapper (`/usr/bin/R`) would give it."""

    binary: str
    env: dict[str, str]


@functools.cache
def r_runtime() -> RRuntime:
    """Asked of R once: the wrapper exports R_HOME and friends and LD_LIBRARY_PATH, then execs
    `$R_HOME/bin/exec$R_ARCH/R`. The worker execs that binary itself, from a copy it may run
    but not read (see `build_launch`)."""
    r = check_tools("none")["R"]
    names = ("R_HOME", "R_SHARE_DIR", "R_INCLUDE_DIR", "R_DOC_DIR", "R_ARCH", "LD_LIBRARY_PATH")
    script = "cat(Sys.getenv(c(" + ", ".join(f"'{n}'" for n in names) + ")), sep = '\\n')"
    try:
        out = subprocess.run(
            [r, "--vanilla", "--no-echo", "-e", script],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
            env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"},
        ).stdout.split("\n")
    except (OSError, subprocess.SubprocessError) as exc:
        raise SandboxUnavailable(f"R does not start ({exc}): {HINT}") from exc
    env = dict(zip(names, (line.strip() for line in out), strict=False))
    binary = os.path.join(env.get("R_HOME", ""), "bin", "exec" + env.get("R_ARCH", ""), "R")
    if not env.get("R_HOME") or not os.path.isfile(binary):
        raise SandboxUnavailable(f"R's binary was not found at {binary!r}: {HINT}")
    return RRuntime(binary=binary, env={k: v for k, v in env.items() if v or k == "R_ARCH"})


def _memfd(name: str, data: bytes) -> int:
    fd = os.memfd_create(name, 0)  # inherited by bwrap, which reads it to its end
    os.write(fd, data)
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


# Names in /usr/bin and /usr/sbin that the sandbox does not get: compilers, assemblers and
# linkers, interpreters other than R and the shell, debuggers and tracers. Each is replaced by
# /dev/null (not executable); the directories below are replaced by an empty tmpfs.
MASKED_PROGRAMS = (
    "gcc*", "cc", "c++", "g++*", "cpp", "cpp-*", "c89*", "c99*", "*-gcc*", "*-g++*", "*-cpp*", "*-as",
    "*-ld", "*-ld.*", "as", "ld", "ld.bfd", "ld.gold", "gold", "tcc", "clang*", "gfortran*",
    "*-gfortran*", "python*", "perl*", "tclsh*", "wish*", "gdb*", "strace*", "ltrace", "perf", "perf_*",
    "node", "nodejs", "ruby*", "lua*", "php*", "busybox", "java", "jshell",
)  # fmt: skip
MASKED_DIRS = (
    "/usr/lib/gcc", "/usr/libexec/gcc", "/usr/lib/python3*", "/usr/lib/x86_64-linux-gnu/perl*",
    "/usr/share/perl*", "/usr/lib/tcltk", "/usr/share/tcltk", "/usr/lib/jvm", "/usr/lib/node_modules",
    "/usr/share/nodejs", "/usr/lib/llvm-*",
)  # fmt: skip
# What R needs from /etc: its own configuration, the shared-library cache, the alternatives
# (BLAS and LAPACK are chosen there), name-service and font configuration, the time zone.
ETC = (
    "R", "alternatives", "ld.so.cache", "ld.so.conf", "ld.so.conf.d", "nsswitch.conf", "fonts",
    "localtime", "timezone", "os-release", "mime.types", "papersize",
)  # fmt: skip
MERGED = ("bin", "sbin", "lib", "lib32", "lib64", "libx32")
THP = "/sys/kernel/mm/transparent_hugepage"


@functools.cache
def _visible_files() -> tuple[str, ...]:
    """The bubblewrap arguments that decide which files the sandbox sees: /usr read-only
    without /usr/local (but /usr/local/lib/R, R's site library, where it exists) and without
    the masked programs and directories; the merged-usr links; a few files of /etc."""
    args = ["--ro-bind", "/usr", "/usr", "--size", "4096", "--tmpfs", "/usr/local"]
    if os.path.isdir("/usr/local/lib/R"):
        args += ["--ro-bind", "/usr/local/lib/R", "/usr/local/lib/R"]
    args += ["--remount-ro", "/usr/local"]
    for pattern in MASKED_DIRS:
        for path in sorted(glob.glob(pattern)):
            if os.path.isdir(path) and not os.path.islink(path):
                args += ["--size", "4096", "--tmpfs", path, "--remount-ro", path]
    masked: set[str] = set()
    for directory in ("/usr/bin", "/usr/sbin"):
        with contextlib.suppress(OSError):
            for entry in os.scandir(directory):
                if any(fnmatch.fnmatchcase(entry.name, p) for p in MASKED_PROGRAMS):
                    real = os.path.realpath(entry.path)
                    # Only programs themselves: never a library one of them points at.
                    if os.path.dirname(real) in ("/usr/bin", "/usr/sbin") and os.path.isfile(real):
                        masked.add(real)
    for path in sorted(masked):
        args += ["--ro-bind", "/dev/null", path]
    for name in MERGED:
        path = "/" + name
        if os.path.islink(path):
            args += ["--symlink", os.readlink(path), path]
        elif os.path.isdir(path):
            args += ["--ro-bind", path, path]
    for name in ETC:
        path = "/etc/" + name
        if os.path.exists(path):
            args += ["--ro-bind", path, path]
    if os.path.isdir("/var/cache/fontconfig"):
        args += ["--ro-bind", "/var/cache/fontconfig", "/var/cache/fontconfig"]
    # The C library reads the transparent-huge-page mode here before it puts R's heap on huge
    # pages (GLIBC_TUNABLES below); without it every fork copies and frees 4 KiB page tables
    # for the whole heap (about 30 % of a short snippet's CPU).
    if os.path.isdir(THP):
        args += ["--ro-bind", THP, THP]
    return tuple(args)


def base_env() -> dict[str, str]:
    return {
        "PATH": "/usr/bin:/bin",
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "TZ": "UTC",
        "OPENBLAS_NUM_THREADS": "1",
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "R_DEFAULT_DEVICE": "pdf",
        # R's heap on transparent huge pages (where the host allows them on request): the
        # kernel copies and frees memory in large folios in batches, so every fork of a warm
        # worker and every exit of its child costs less.
        "GLIBC_TUNABLES": "glibc.malloc.hugetlb=1:glibc.malloc.top_pad=67108864",
    }


def bwrap_sandbox(tools: dict[str, str], limits: Limits, seccomp_fd: int) -> list[str]:
    """The sandbox itself, up to (not including) what runs in it: namespaces (user, with no
    nested ones, PID, network, IPC, UTS, cgroup), the visible files, a fresh /dev and /proc,
    size-limited /tmp and /dev/shm, the seccomp filter, an empty environment and a new session.
    The worker and the fresh-Rscript reference both start from it."""
    argv = [
        tools["bwrap"],
        "--unshare-all",
        "--unshare-user",
        "--disable-userns",
        "--die-with-parent",
        "--new-session",
        *_visible_files(),
        "--dev", "/dev",
        "--size", str(SHM_BYTES), "--tmpfs", "/dev/shm",
        "--remount-ro", "/dev",
        "--proc", "/proc",
        "--size", str(limits.tmp_mb * 2**20), "--tmpfs", "/tmp",
        "--seccomp", str(seccomp_fd),
        "--clearenv",
    ]  # fmt: skip
    env = {**base_env(), "HOME": "/tmp/work", "TMPDIR": "/tmp"}
    for key, value in env.items():
        argv += ["--setenv", key, value]
    return argv


def build_launch(
    mode: SandboxMode,
    *,
    uid: int | None,
    limits: Limits,
    packages: tuple[str, ...],
    scratch: str | None,
    channels: tuple[int, ...] = (-1,) * 7,
) -> Launch:
    """The command for one worker. `uid` is its claimed dedicated uid (root only; None runs as
    the caller); `scratch` is the host directory of a `none` worker (created by the caller,
    owned by the worker's uid, with `prepare_scratch`). `channels` are the worker's ends of the
    request, reply and abort pipes and its progress, code, result and files memory files
    (see worker.R).

    R starts from a copy of its binary that it may execute but not read: the kernel then
    marks the process non-dumpable, which every fork inherits, so no process of the sandbox
    can open the worker's /proc/<pid>/mem, fd/ or environ, nor ptrace it (seccomp denies
    ptrace on top)."""
    tools = check_tools(mode)
    runtime = r_runtime()
    as_root = uid is not None
    uid = uid if uid is not None else os.geteuid()
    # RLIMIT_NPROC is per user: as a dedicated uid the worker starts from zero; as an
    # ordinary user it starts from what that user already runs.
    nproc = limits.procs if as_root else _user_tasks(uid) + limits.procs
    # worker.R's mode: 1 in bwrap; without namespaces, 2 when the uid is the worker's own (as
    # root), so it may sweep every process of that uid; else 0.
    worker_mode = "1" if mode == "bwrap" else "2" if as_root else "0"
    worker_args = [
        "--args",
        worker_mode,
        ",".join(packages),
        *(str(fd) for fd in channels),
        repr(float(limits.wall_s)),
        repr(float(limits.cpu_s)),
        str(limits.output_bytes),
        str(limits.total_mem_mb * 2**20),
        str(limits.file_mb * 2**20),
    ]
    pass_fds = tuple(fd for fd in channels if fd >= 0)
    if mode == "bwrap":
        owned = (
            _memfd("qasynth-seccomp", seccomp_program()),
            _memfd("qasynth-worker", worker_source()),
            _memfd("qasynth-r", Path(runtime.binary).read_bytes()),
        )
        seccomp_fd, worker_fd, binary_fd = owned
        argv = bwrap_sandbox(tools, limits, seccomp_fd)
        argv += [
            "--dir", STATE_DIR,
            "--ro-bind-data", str(worker_fd), WORKER_PATH,
            "--perms", "0111", "--ro-bind-data", str(binary_fd), R_PATH,
            "--chdir", "/tmp",
        ]  # fmt: skip
        for key, value in runtime.env.items():
            argv += ["--setenv", key, value]
        argv += ["--", R_PATH, "--vanilla", "--no-echo", f"--file={WORKER_PATH}", *worker_args]
        return Launch(
            argv=argv,
            env={},
            preexec=_rlimits(limits, nproc),
            user=uid if as_root else None,
            pass_fds=(*owned, *pass_fds),
            state_dir=STATE_DIR,
            uid=uid,
            owned_fds=owned,
        )
    assert scratch is not None
    state = os.path.join(scratch, ".qasynth")
    env = {**base_env(), **runtime.env, "HOME": scratch, "TMPDIR": scratch}
    return Launch(
        argv=[os.path.join(state, "R"), "--vanilla", "--no-echo", f"--file={state}/worker.R", *worker_args],
        env=env,
        preexec=_rlimits(limits, nproc),
        user=uid if as_root else None,
        pass_fds=pass_fds,
        state_dir=state,
        uid=uid,
    )


def prepare_scratch(scratch: str, uid: int) -> None:
    """The host directory of a `none` worker: its state dir with worker.R and the run-only copy
    of R's binary (root's when started as root), the rest owned by the worker's uid."""
    state = os.path.join(scratch, ".qasynth")
    os.makedirs(state)
    with open(os.path.join(state, "worker.R"), "wb") as fh:
        fh.write(worker_source())
    binary = os.path.join(state, "R")
    with open(binary, "wb") as fh:
        fh.write(Path(r_runtime().binary).read_bytes())
    os.chmod(binary, 0o111)
    if os.geteuid() == 0:
        for path in (scratch, state):
            os.chown(path, uid, uid)
        os.chmod(scratch, 0o700)


def bwrap_version() -> str:
    try:
        out = subprocess.run(["bwrap", "--version"], capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip().removeprefix("bubblewrap ") or "unknown"
