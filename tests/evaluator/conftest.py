"""Evaluator tests run real R in real bubblewrap: a module shares one warm pool."""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from evaluator import Limits, WorkerPool

HAVE_SANDBOX = shutil.which("R") is not None and shutil.which("bwrap") is not None
needs_sandbox = pytest.mark.skipif(
    not HAVE_SANDBOX, reason="needs R and bubblewrap (apt-get install r-base-core bubblewrap)"
)

# Short clocks keep the suite quick; memory, file and process limits stay at their defaults,
# which are what the hostile tests must prove safe.
TEST_LIMITS = Limits(wall_s=3.0, cpu_s=3.0)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def pool() -> AsyncIterator[WorkerPool]:
    async with WorkerPool(sandbox="bwrap", workers=2, limits=TEST_LIMITS) as p:
        yield p


def worker_processes(pool: WorkerPool) -> list[int]:
    """Host pids of the pool's R workers (pid 2 in each sandbox), found by their dedicated uids:
    what a fault outside the sandbox would hit. Needs root, as the dedicated uids do."""
    if os.geteuid() != 0:
        pytest.skip("finding the workers from outside needs the dedicated uids (root)")
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/status") as fh:
                fields = dict(line.rstrip("\n").split(":\t", 1) for line in fh if ":\t" in line)
        except OSError:
            continue
        if int(fields.get("Uid", "-1").split()[0]) in pool.uids and fields.get("NSpid", "").split()[-1:] == [
            "2"
        ]:
            found.append(int(entry.name))
    return found
