"""How many CPU cores this process may really use: its affinity mask and its cgroup's CPU quota.

`os.cpu_count()` counts the machine's cores; a container limited to 2 CPUs on a 64-core host, or a
process pinned with `taskset`, gets far less. Giving llama.cpp more threads than the cores it can
run on makes its threads wait at every barrier for one that has lost its core, which is slower than
fewer threads. The quota is rounded down: 1.5 CPUs cannot keep 2 threads busy.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

__all__ = ["available_cores", "cgroup_cpu_limit"]


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def _v2_limit(directory: Path) -> float | None:
    raw = _read(directory / "cpu.max")
    if raw is None:
        return None
    quota, _, period = raw.partition(" ")
    try:
        return int(quota) / int(period) if int(period) > 0 else None
    except ValueError:  # "max": no quota
        return None


def _v1_limit(directory: Path) -> float | None:
    try:
        quota = int(_read(directory / "cpu.cfs_quota_us") or "-1")
        period = int(_read(directory / "cpu.cfs_period_us") or "0")
    except ValueError:
        return None
    return quota / period if quota > 0 and period > 0 else None  # -1: no quota


def _ancestors(mount: Path, cgroup_path: str) -> list[Path]:
    """The process's cgroup directory and every parent up to the mount; a limit anywhere applies."""
    parts = [p for p in cgroup_path.split("/") if p]
    dirs = [mount.joinpath(*parts[:i]) for i in range(len(parts), -1, -1)]
    return [d for d in dirs if d.is_dir()]


def cgroup_cpu_limit(root: Path = Path("/")) -> float | None:
    """The tightest CPU quota (in CPUs) of this process's cgroups, v2 or v1; None when unlimited."""
    membership = _read(root / "proc/self/cgroup")
    if membership is None:
        return None
    limits: list[float] = []
    for line in membership.splitlines():
        if line.count(":") < 2:
            continue
        _, controllers, path = line.split(":", 2)
        if controllers == "":
            dirs = _ancestors(root / "sys/fs/cgroup", path)
            limits += [v for d in dirs if (v := _v2_limit(d)) is not None]
        elif "cpu" in controllers.split(","):
            for name in (controllers, "cpu", "cpu,cpuacct"):
                mount = root / "sys/fs/cgroup" / name
                if mount.is_dir():
                    # Inside a container the cgroup namespace shows "/" while the files sit at the mount.
                    dirs = _ancestors(mount, path) or [mount]
                    limits += [v for d in dirs if (v := _v1_limit(d)) is not None]
                    break
    return min(limits) if limits else None


def available_cores(root: Path = Path("/")) -> int:
    """Cores in the affinity mask, capped by the cgroup quota rounded down; at least 1."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    limit = cgroup_cpu_limit(root)
    if limit is not None:
        cores = min(cores, math.floor(limit))
    return max(1, cores)
