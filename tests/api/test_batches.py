"""/v1/batches end to end over real HTTP on loopback: the service under uvicorn, the official SDKs'
batch methods against the fake server's Files/Batch and Message Batches protocols."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from service.app import create_app
from tests.api.test_generate import assert_accounted, grid_spec
from tests.conftest import serve, settings_for
from tests.fakes.llm_server import FakeLLMServer, Fault

SECRET = "batch-secret-for-tests"


@pytest.fixture
def service(llm_server: FakeLLMServer) -> Iterator[httpx.Client]:
    app = create_app(settings_for(llm_server, batch_secret=SECRET, sandbox="none"))
    with serve(app) as url, httpx.Client(base_url=url, timeout=60) as client:
        yield client


def spec(provider: str = "openai", **overrides: Any) -> dict[str, Any]:
    overrides.setdefault("model", {"provider": provider, "temperature": 0.7, "questions_per_call": 2})
    return grid_spec(**overrides)


def run_to_end(
    client: httpx.Client, body: dict[str, Any], *, max_steps: int = 40
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Submit, then poll and go on until done: the final reply and every reply on the way."""
    reply = client.post("/v1/batches", json=body)
    assert reply.status_code == 202, reply.text
    seen = [reply.json()]
    for _ in range(max_steps):
        job = seen[-1]
        if job["state"] == "done":
            return job, seen
        polled = client.get(f"/v1/batches/{job['handle']}")
        assert polled.status_code == 200, polled.text
        seen.append(polled.json())
        if seen[-1]["state"] == "running":
            continue
        step = client.post(f"/v1/batches/{job['handle']}", json=body)
        assert step.status_code == 200, step.text
        seen.append(step.json())
    raise AssertionError(f"not done after {max_steps} steps: {seen[-1]}")


def test_openai_job_through_every_round(service: httpx.Client, llm_server: FakeLLMServer) -> None:
    body = spec()
    done, seen = run_to_end(service, body)
    result = done["result"]
    assert_accounted(result)
    assert result["counts"]["requested"] == 12 and len(result["pairs"]) == 12 and not result["failed"]
    # Every model call went through a batch line, none as a direct call.
    assert llm_server.batches.batches and all(
        b.vendor == "openai" for b in llm_server.batches.batches.values()
    )
    for pair in result["pairs"]:
        steps = [pair["provenance"]["question"], pair["provenance"]["answer"]]
        assert all(s["via"] == "batch" and s["provider"] == "openai" for s in steps)
    rounds = [j["round"] for j in seen if j["state"] == "running" and j.get("requests")]
    assert done["round"] == max(rounds) >= 3  # explain: scripts, questions around them, answers
    print([(j["state"], j["round"], j["requests"]) for j in seen])
