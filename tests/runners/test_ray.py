"""The runners on a real local Ray cluster (2 CPUs): exact distributed dedup, and an evaluation that
survives its actor being killed."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from service.runners import EvalItem, InProcessRunner
from service.settings import Settings
from service.stages.dedup import deduplicate

ray = pytest.importorskip("ray")
from service.runners.cluster import RayRunner  # noqa: E402

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent.parent
CORPUS = ROOT / "tests" / "data" / "r_help_corpus.jsonl"


@pytest.fixture(scope="module")
def cluster() -> Iterator[str]:
    """A local cluster for this module; the workers import this checkout."""
    env_path = os.environ.get("PYTHONPATH", "")
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        logging_level="WARNING",
        runtime_env={"env_vars": {"PYTHONPATH": f"{ROOT}:{env_path}" if env_path else str(ROOT)}},
    )
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()


def corpus_items() -> list[tuple[str, str]]:
    with CORPUS.open(encoding="utf-8") as f:
        return [(f"r{i}", json.loads(line)["text"]) for i, line in enumerate(f)]


def test_distributed_dedup_equals_the_single_machine_filter_on_the_r_help_corpus(cluster: str) -> None:
    items = corpus_items()
    history, batch = items[:412], items[412:]
    for threshold in (0.7, 0.5):
        expected = deduplicate(batch, existing=history, threshold=threshold)
        runner = RayRunner.connect(Settings(), block_size=1500)
        got = list(runner.dedup(batch, existing=history, threshold=threshold))
        assert got == expected
        assert sum(not d.kept for d in got) > 100
        assert runner.stats.blocks == 6 and runner.stats.tasks >= 6 * 3


@pytest.mark.sandbox
def test_evaluation_survives_its_actor_being_killed(cluster: str) -> None:
    items = [
        EvalItem(
            "code", "generate", "stop('broken on purpose')" if i % 25 == 7 else f"Sys.sleep(0.02); cat({i})"
        )
        for i in range(300)
    ]

    async def in_process() -> list[Any]:
        runner = InProcessRunner(Settings())
        try:
            return [e async for e in runner.evaluate(items)]
        finally:
            await runner.aclose()

    async def on_ray() -> tuple[list[Any], int, int]:
        runner = RayRunner.connect(Settings())
        out, killed = [], 0
        try:
            async for evaluation in runner.evaluate(items):
                out.append(evaluation)
                if len(out) == 60:  # mid-job: the rest is queued on, or running in, the actor
                    killed = await runner.actors[0].pid.remote()
                    os.kill(killed, signal.SIGKILL)
            now = await runner.actors[0].pid.remote()
        finally:
            await runner.aclose()
        return out, killed, now

    expected = asyncio.run(in_process())
    got, killed, now = asyncio.run(on_ray())
    assert killed and now != killed  # the actor really died and Ray started another
    assert len(got) == len(items)  # nothing lost, nothing twice
    key = [(e.verdict, e.stdout, e.message, e.flagged) for e in got]
    assert key == [(e.verdict, e.stdout, e.message, e.flagged) for e in expected]
    assert [e.stdout for e in got if e.verdict == "passed"][:3] == ["0", "1", "2"]
    assert sum(e.verdict == "runtime_error" for e in got) == 12


def test_the_command_joins_a_running_cluster_by_address(cluster: str, tmp_path: Path) -> None:
    items = corpus_items()[:3000]
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps({"id": i, "text": t}) + "\n" for i, t in items), encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for name, extra in (("local.jsonl", []), ("ray.jsonl", ["--ray", cluster, "--block-size", "700"])):
        done = subprocess.run(
            [sys.executable, "-m", "service", "dedup", str(src), "-o", str(tmp_path / name), *extra],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, done.stderr
        assert "3,000 items" in done.stderr
    assert "(ray)" in done.stderr
    assert (tmp_path / "ray.jsonl").read_bytes() == (tmp_path / "local.jsonl").read_bytes()
