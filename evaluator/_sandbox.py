"""How a worker is launched: the bubblewrap command line, its environment and its rlimits.

The sandbox, from the outside in:

- a dedicated user: run as root, each worker drops to an unprivileged uid of its own
  (the first free one from `uid_base` up, held by a lock file for the worker's life, so
  two pools or two services never share one) before anything starts, so file permissions protect the host
  (root's 0600 files stay unreadable) and RLIMIT_NPROC, which the kernel never
  enforces for root, counts exactly that worker's processes and threads;
- rlimits on every process: address space (RLIMIT_AS), file size (RLIMIT_FSIZE),
  processes and threads (RLIMIT_NPROC), open files, no core dumps;
- bubblewrap: new user, PID, network, IPC, UTS and cgroup namespaces (no network at all),
  the host's / read-only, /root /home /srv /mnt /media /var /work hidden behind empty
  read-only tmpfs, a fresh /proc and /dev (read-only), /tmp and /dev/shm on size-limited
  tmpfs, an empty environment, a new session (no terminal), and death with its parent;
- in the worker itself (worker.R): a per-snippet wall clock, CPU time, printed-output and
  total-resident-memory watch, and a sweep of every process left behind.

`mode="none"` keeps the dedicated user and the rlimits but has no namespaces: files, the
network and background processes are not contained. It is for machines without
bubblewrap, and says so in `describe()`.
"""

from __future__ import annotations

import fcntl
import os
import resource
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from typing import Any, Literal

from evaluator._types import Limits, SandboxUnavailable

__all__ = [
    "DEFAULT_UID_BASE",
    "Launch",
    "SandboxMode",
    "build_launch",
    "check_tools",
    "claim_uid",
    "processes_of",
    "worker_source",
]

SandboxMode = Literal["bwrap", "none"]

DEFAULT_UID_BASE = 6_400_000
"""Far above ordinary users and the usual subordinate-uid ranges (100000–165535)."""
UID_SPAN = 4096

HIDDEN = ("/root", "/home", "/srv", "/mnt", "/media", "/var", "/work", "/opt")
STATE_DIR = "/tmp/.qasynth"
WORKER_PATH = f"{STATE_DIR}/worker.R"
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
    """Everything needed to start one worker."""

    argv: list[str]
    env: dict[str, str]
    preexec: Callable[[], None]
    user: int | None
    pass_fds: tuple[int, ...]
    state_dir: str
    """Where worker.R lives, as the worker sees it."""
    uid: int

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


def build_launch(
    mode: SandboxMode,
    *,
    uid: int | None,
    limits: Limits,
    packages: tuple[str, ...],
    worker_fd: int | None,
    scratch: str | None,
    channels: tuple[int, int, int] = (-1, -1, -1),
) -> Launch:
    """The command for one worker. `uid` is its claimed dedicated uid (root only; None runs as
    the caller). `worker_fd` feeds worker.R to bwrap; `scratch` is the host directory of a
    `none` worker (created by the caller, owned by the worker's uid). `channels` are the
    worker's ends of the request pipe, the reply pipe and the progress file (see worker.R)."""
    tools = check_tools(mode)
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
    base_env = {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "TZ": "UTC",
        "OPENBLAS_NUM_THREADS": "1",
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "R_DEFAULT_DEVICE": "pdf",
        # R's heap on transparent huge pages (where the host allows them on request): the
        # kernel copies and frees memory in large folios in batches, so every fork of a warm
        # worker and every exit of its child costs less (about 10 % of a short snippet's CPU).
        "GLIBC_TUNABLES": "glibc.malloc.hugetlb=1:glibc.malloc.top_pad=67108864",
    }
    if mode == "bwrap":
        assert worker_fd is not None
        argv = [
            tools["bwrap"],
            "--unshare-all",
            "--die-with-parent",
            "--new-session",
            "--ro-bind", "/", "/",
        ]  # fmt: skip
        for path in HIDDEN:
            if os.path.isdir(path) and not os.path.islink(path):
                argv += ["--size", "4096", "--tmpfs", path, "--remount-ro", path]
        argv += [
            "--dev", "/dev",
            "--size", str(SHM_BYTES), "--tmpfs", "/dev/shm",
            "--remount-ro", "/dev",
            "--proc", "/proc",
            "--size", str(limits.tmp_mb * 2**20), "--tmpfs", "/tmp",
            "--dir", STATE_DIR,
            "--ro-bind-data", str(worker_fd), WORKER_PATH,
            "--chdir", "/tmp",
            "--clearenv",
        ]  # fmt: skip
        env = {**base_env, "HOME": "/tmp/work", "TMPDIR": "/tmp"}
        for key, value in env.items():
            argv += ["--setenv", key, value]
        argv += ["--", "R", "--vanilla", "--no-echo", "-f", WORKER_PATH, *worker_args]
        return Launch(
            argv=argv,
            env={},
            preexec=_rlimits(limits, nproc),
            user=uid if as_root else None,
            pass_fds=(worker_fd, *pass_fds),
            state_dir=STATE_DIR,
            uid=uid,
        )
    assert scratch is not None
    state = os.path.join(scratch, ".qasynth")
    worker_path = os.path.join(state, "worker.R")
    env = {**base_env, "HOME": scratch, "TMPDIR": scratch}
    return Launch(
        argv=[tools["R"], "--vanilla", "--no-echo", "-f", worker_path, *worker_args],
        env=env,
        preexec=_rlimits(limits, nproc),
        user=uid if as_root else None,
        pass_fds=pass_fds,
        state_dir=state,
        uid=uid,
    )


def bwrap_version() -> str:
    try:
        out = subprocess.run(["bwrap", "--version"], capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip().removeprefix("bubblewrap ") or "unknown"
