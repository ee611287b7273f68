"""Stage tests that run R use a real warm pool in real bubblewrap, shared by a module."""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from evaluator import Limits, WorkerPool
from service.stages.evaluate import Sandbox

HAVE_SANDBOX = shutil.which("R") is not None and shutil.which("bwrap") is not None
needs_sandbox = pytest.mark.skipif(
    not HAVE_SANDBOX, reason="needs R and bubblewrap (apt-get install r-base-core bubblewrap)"
)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def sandbox() -> AsyncIterator[Sandbox]:
    async with WorkerPool(sandbox="bwrap", workers=2, limits=Limits(wall_s=10.0, cpu_s=10.0)) as pool:
        yield Sandbox(pool)
