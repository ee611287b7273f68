"""Evaluator tests run real R in real bubblewrap: a module shares one warm pool."""

from __future__ import annotations

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
