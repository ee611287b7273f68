"""/v1/batches end to end over real HTTP on loopback: the service under uvicorn, the official SDKs'
batch methods against the fake server's Files/Batch and Message Batches protocols."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from service.app import create_app
from service.settings import ApiKey
from tests.api.test_generate import assert_accounted, grid_spec
from tests.conftest import serve, settings_for
from tests.fakes.llm_server import FakeLLMServer, Fault, Scripted, answer_that_fails

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


def test_anthropic_job_through_every_round(service: httpx.Client, llm_server: FakeLLMServer) -> None:
    done, _ = run_to_end(service, spec("anthropic"))
    result = done["result"]
    assert_accounted(result)
    assert len(result["pairs"]) == 12 and not result["failed"]
    assert all(b.vendor == "anthropic" for b in llm_server.batches.batches.values())
    assert all(p["provenance"]["answer"]["via"] == "batch" for p in result["pairs"])
    assert all(p["provenance"]["answer"]["provider"] == "anthropic" for p in result["pairs"])
    # Batch requests keep the cache breakpoint on the system prompt, as direct calls do.
    lines = [c for c in llm_server.calls if c.protocol == "anthropic"]
    assert lines and all(c.body["system"][0]["cache_control"] == {"type": "ephemeral"} for c in lines)


def small_spec(provider: str, **overrides: Any) -> dict[str, Any]:
    """One generate cell of three, one question a call: the first round is three calls."""
    return spec(
        provider,
        tasks=[{"id": "generate"}],
        themes=[{"id": "regression"}],
        per_cell=3,
        few_shot=[],
        model={"provider": provider, "temperature": 0.7, "questions_per_call": 1},
        **overrides,
    )


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_an_errored_line_fails_its_item_only(
    service: httpx.Client, llm_server: FakeLLMServer, provider: str
) -> None:
    llm_server.fail_next(Fault(kind="status", status=400, body="Invalid 'messages': too long."))
    done, _ = run_to_end(service, small_spec(provider))
    result = done["result"]
    assert_accounted(result)
    assert len(result["pairs"]) == 2
    [failed] = result["failed"]
    assert failed["reason"] == "batch_errored" and failed["stage"] == "question"
    assert "too long" in failed["detail"] and failed["detail"].startswith(f"{provider}: batch ")


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_an_expired_batch_fails_what_it_did_not_run(
    service: httpx.Client, llm_server: FakeLLMServer, provider: str
) -> None:
    llm_server.batches.expire_next(after=1)
    done, seen = run_to_end(service, small_spec(provider))
    ready = next(j for j in seen if j["state"] == "ready")
    assert ready["batch"]["status"] == ("expired" if provider == "openai" else "ended")
    assert ready["batch"]["counts"]["expired"] == 2 and ready["batch"]["counts"]["succeeded"] == 1
    result = done["result"]
    assert_accounted(result)
    assert len(result["pairs"]) == 1
    assert [f["reason"] for f in result["failed"]] == ["batch_expired", "batch_expired"]
    assert all("expired" in f["detail"] for f in result["failed"])


def test_a_batch_that_expired_whole(service: httpx.Client, llm_server: FakeLLMServer) -> None:
    llm_server.batches.expire_next(after=0)
    done, _ = run_to_end(service, small_spec("openai"))
    result = done["result"]
    assert_accounted(result)
    assert not result["pairs"] and [f["reason"] for f in result["failed"]] == ["batch_expired"] * 3
    assert done["round"] == 1


def _submitted(client: httpx.Client, body: dict[str, Any]) -> str:
    reply = client.post("/v1/batches", json=body)
    assert reply.status_code == 202, reply.text
    return str(reply.json()["handle"])


def test_a_tampered_or_foreign_handle_is_refused(service: httpx.Client, llm_server: FakeLLMServer) -> None:
    body = small_spec("openai")
    handle = _submitted(service, body)
    payload, mac = handle.split(".")
    flipped = payload[:-2] + ("A" if payload[-2] != "A" else "B") + payload[-1]
    for bad in (f"{flipped}.{mac}", f"{payload}.{mac[::-1]}"):
        for reply in (service.get(f"/v1/batches/{bad}"), service.post(f"/v1/batches/{bad}", json=body)):
            assert reply.status_code == 403, reply.text
            assert "signature" in reply.json()["detail"]
    with serve(create_app(settings_for(llm_server, batch_secret="another-server"))) as url:
        reply = httpx.get(f"{url}/v1/batches/{handle}")
    assert reply.status_code == 403 and "another server" in reply.json()["detail"]
    reply = service.get("/v1/batches/not-a-handle")
    assert reply.status_code == 400 and reply.headers["content-type"].startswith("application/problem+json")


def test_a_spec_that_does_not_match_the_handle(service: httpx.Client) -> None:
    body = small_spec("openai")
    handle = _submitted(service, body)
    service.get(f"/v1/batches/{handle}")
    reply = service.post(f"/v1/batches/{handle}", json={**body, "per_cell": 4})
    assert reply.status_code == 400, reply.text
    problem = reply.json()
    assert problem["field"] == "spec" and "does not match" in problem["detail"]
    # The right spec goes on.
    assert service.post(f"/v1/batches/{handle}", json=body).status_code == 200


def test_bad_specs_are_refused_as_generate_refuses_them(service: httpx.Client) -> None:
    reply = service.post("/v1/batches", json={**small_spec("openai"), "per_cell": -1})
    assert reply.status_code == 400 and "per_cell" in reply.text
    reply = service.post("/v1/batches", json=small_spec("local"))
    assert reply.status_code == 400 and reply.json()["field"] == "model.provider"


def test_the_round_limit_fails_what_is_left(llm_server: FakeLLMServer) -> None:
    app = create_app(settings_for(llm_server, batch_secret=SECRET, sandbox="none", batch_max_rounds=1))
    with serve(app) as url, httpx.Client(base_url=url, timeout=60) as client:
        done, _ = run_to_end(client, small_spec("openai"))
    result = done["result"]
    assert_accounted(result)
    assert not result["pairs"] and [f["reason"] for f in result["failed"]] == ["batch_rounds_exhausted"] * 3
    # The first round's questions were answered; their answers would have needed a second.
    assert all(f["stage"] == "answer" and f["question"] for f in result["failed"])


def test_the_same_accounting_as_generate_with_the_sandbox(llm_server: FakeLLMServer) -> None:
    """Fix questions (script, bug, question around it), answers that fail in the sandbox and their
    repairs: the batch job takes a round for each, and counts what /v1/generate counts."""
    llm_server.reply = Scripted(answer=answer_that_fails)
    body = spec(
        tasks=[{"id": "fix"}, {"id": "generate"}],
        themes=[{"id": "mean-variance"}],
        per_cell=2,
        few_shot=[],
        evaluation={"enabled": True, "on_failure": "flag", "repair_attempts": 1},
    )
    app = create_app(settings_for(llm_server, batch_secret=SECRET))
    with serve(app) as url, httpx.Client(base_url=url, timeout=120) as client:
        direct = client.post("/v1/generate", json=body)
        assert direct.status_code == 200, direct.text
        done, seen = run_to_end(client, body)
    expected, result = direct.json(), done["result"]
    assert_accounted(result)
    keys = (
        "requested",
        "returned",
        "failed",
        "flagged",
        "repaired",
        "repair_calls",
        "calls",
        "answers_generated",
    )
    assert {k: result["counts"][k] for k in keys} == {k: expected["counts"][k] for k in keys}
    cell_keys = ("task", "theme", "requested", "returned", "failed", "dropped", "calls", "repaired")
    assert [{k: c[k] for k in cell_keys} for c in result["counts"]["cells"]] == [
        {k: c[k] for k in cell_keys} for c in expected["counts"]["cells"]
    ]
    assert result["counts"]["returned"] == 4 and result["counts"]["repaired"] == 4
    for pair in result["pairs"]:
        assert pair["evaluation"]["verdict"] == "passed" and not pair["quality"]["flagged"]
        [repair] = pair["provenance"]["repairs"]
        assert repair["step"]["via"] == "batch" and repair["verdict"] == "passed"
        if pair["task"] == "fix":
            prov = pair["provenance"]
            assert prov["snippet"]["via"] == prov["bug"]["step"]["via"] == "batch"
    # Fix: scripts, bugs, questions, answers, repairs.
    assert done["round"] == 5
    per_round = {j["round"]: j["requests"] for j in seen if j["state"] != "done"}
    assert sum(per_round.values()) == expected["counts"]["calls"], per_round


def test_a_handle_belongs_to_the_key_that_made_it(llm_server: FakeLLMServer) -> None:
    keys = {name: f"qsk_{name}-{'0' * 40}" for name in ("alice", "bob")}
    settings = settings_for(
        llm_server,
        batch_secret=SECRET,
        sandbox="none",
        api_keys=tuple(
            ApiKey(name=n, sha256=hashlib.sha256(k.encode()).hexdigest()) for n, k in keys.items()
        ),
    )
    body = small_spec("openai")
    with serve(create_app(settings)) as url:
        alice = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {keys['alice']}"}, timeout=60)
        bob = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {keys['bob']}"}, timeout=60)
        handle = _submitted(alice, body)
        assert alice.get(f"/v1/batches/{handle}").status_code == 200
        for reply in (bob.get(f"/v1/batches/{handle}"), bob.post(f"/v1/batches/{handle}", json=body)):
            assert reply.status_code == 403 and "another API key" in reply.json()["detail"]
        assert httpx.get(f"{url}/v1/batches/{handle}").status_code == 401
