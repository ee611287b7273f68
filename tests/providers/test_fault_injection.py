"""Whole jobs through `/v1/generate` and `run_job` while the fake APIs misbehave as the real ones do.

Every test checks the same promise: every finished pair is kept, and every requested item is
accounted for (per cell, requested = returned + failed, every drop listed), whatever the provider did.
The jobs are generate tasks: one question call a few questions, then one answer call each.
"""

from __future__ import annotations

import json
import random
from typing import Any

import msgspec
import openai
import pytest
from litestar.testing import AsyncTestClient

from evaluator.fake import FakeRunner
from service.app import create_app
from service.providers.limiter import Adaptive, RetryPolicy
from service.providers.openai import OpenAIProvider
from service.stages.pipeline import collect, run_job
from service.stages.spec import resolve_spec
from service.wire.generate import Spec
from tests.api.test_generate import assert_accounted
from tests.conftest import settings_for
from tests.fakes.faults import After, Fault, RevokeKey, SlowTail, Storm
from tests.fakes.llm_server import WORDS, FakeLLMServer, default_reply, tokens_of

VENDORS = pytest.mark.parametrize("vendor", ["openai", "anthropic"])


def job_spec(vendor: str = "openai", *, per_cell: int = 2, **model: Any) -> dict[str, Any]:
    return {
        "tasks": [{"id": "generate"}],
        "themes": [
            {"id": t}
            for t in ("mean-variance", "regression", "distributions", "summaries", "hypothesis-tests")
        ]
        + [{"id": "power", "description": "Power analysis with power.t.test"}],
        "per_cell": per_cell,
        "model": {"provider": vendor, "questions_per_call": 2, **model},
        "evaluation": {"enabled": False},
    }


async def generate(
    server: FakeLLMServer, spec: dict[str, Any], **settings: Any
) -> tuple[int, dict[str, Any]]:
    app = create_app(settings_for(server, **settings), runner=FakeRunner())
    async with AsyncTestClient(app) as client:
        response = await client.post("/v1/generate", json=spec)
        ready = (await client.get("/ready")).json()
    body = response.json()
    body["_ready"] = ready
    return response.status_code, body


def lane_of(body: dict[str, Any], vendor: str) -> dict[str, Any]:
    [lane] = [lane for lane in body["_ready"]["lanes"] if lane["provider"] == vendor]
    return lane


@VENDORS
async def test_a_429_storm_mid_job_pauses_the_lane_and_loses_nothing(vendor: str) -> None:
    with FakeLLMServer(latency_s=0.02) as server:
        storm = server.faults.add(Storm(start=8, duration_s=0.8))
        status, body = await generate(server, job_spec(vendor))
    assert status == 200
    assert len(body["pairs"]) == 12 and body["failed"] == []
    assert_accounted(body)
    refused = [c for c in server.calls if c.status == 429]
    assert len(refused) == storm.refused > 0  # type: ignore[attr-defined]
    # The first 429's Retry-After paused the lane: only calls already in flight were refused, each once.
    assert len(refused) <= 16
    last_refused = max(c.at for c in refused)
    assert all(c.status == 200 for c in server.calls if c.at > last_refused)
    lane = lane_of(body, vendor)
    assert lane["throttled"] == len(refused) and lane["breaker"] == "closed"
    assert lane["limit"] < 16  # cut by the storm, not yet grown back


@VENDORS
async def test_bursts_of_server_errors_are_survived_and_the_breaker_closes_again(vendor: str) -> None:
    statuses = [500, 529, 503, 502, 529] if vendor == "anthropic" else [500, 502, 503, 500, 502]
    with FakeLLMServer(latency_s=0.01) as server:
        server.faults.add(After(5, *[Fault(kind="status", status=s) for s in statuses]))
        status, body = await generate(server, job_spec(vendor))
    assert status == 200
    assert len(body["pairs"]) == 12 and body["failed"] == []
    assert_accounted(body)
    assert sorted(c.status for c in server.calls if c.status != 200) == sorted(statuses)
    lane = lane_of(body, vendor)
    # Five failures in a row opened the breaker; a probe after the cool-down closed it. (A longer
    # burst than the calls in flight would fail its probe too: then calls fail at once, by design.)
    assert lane["failed"] == len(statuses) and lane["breaker"] == "closed"
    assert lane["consecutive_failures"] == 0


@VENDORS
async def test_dropped_connections_and_broken_bodies_are_retried(vendor: str) -> None:
    faults = [Fault(kind="reset"), Fault(kind="bad_json"), Fault(kind="reset"), Fault(kind="bad_json")]
    with FakeLLMServer() as server:
        server.faults.add(After(3, *faults))
        status, body = await generate(server, job_spec(vendor))
    assert status == 200
    assert len(body["pairs"]) == 12 and body["failed"] == []
    assert_accounted(body)
    assert sum(c.status == 0 for c in server.calls) == 2  # the resets
    assert lane_of(body, vendor)["failed"] == 4


async def test_a_slow_tail_past_the_timeout_is_retried() -> None:
    with FakeLLMServer(latency_s=0.01) as server:
        tail = server.faults.add(SlowTail(every=5, delay_s=1.5))
        status, body = await generate(server, job_spec(), request_timeout_s=0.5)
    assert status == 200
    assert len(body["pairs"]) == 12 and body["failed"] == []
    assert_accounted(body)
    lane = lane_of(body, "openai")
    assert tail.slowed > 0 and lane["failed"] == tail.slowed  # type: ignore[attr-defined]
    assert "did not answer in time" in lane["last_error"]


PROSE = "The sample variance divides by n - 1 because the mean was estimated from the same data. " * 20


def prose(user: str, words: int) -> str:
    """Prose that differs from question to question, so answer dedup keeps every answer."""
    rng = random.Random(user)
    return " ".join(rng.choice(WORDS) for _ in range(words))


def long_answer(system: str, user: str) -> str:
    """Questions as usual; answers whose code closes early, followed by long prose."""
    if "### Q1" in system:
        return default_reply(system, user)
    return f"Use var().\n\n```r\nx <- c(2, 4, 4, 5)\nprint(var(x))\n```\n\n{prose(user, 300)} END-OF-ANSWER"


@VENDORS
async def test_a_reply_cut_at_max_tokens_with_closed_fences_is_asked_again_with_more_room(
    vendor: str,
) -> None:
    assert all(256 < tokens_of(long_answer("", f"q{i}")) <= 512 for i in range(50))  # cut at 256 tokens
    with FakeLLMServer(reply=long_answer) as server:
        status, body = await generate(server, job_spec(vendor, per_cell=1, max_tokens=256))
    assert status == 200
    assert len(body["pairs"]) == 6 and body["failed"] == []
    assert_accounted(body)
    # Every answer is whole: the text cut at 256 tokens (fences closed) was never taken.
    assert all(p["answer"].endswith("END-OF-ANSWER") for p in body["pairs"])
    assert all(p["provenance"]["answer"]["attempts"] == 2 for p in body["pairs"])
    budgets = [c.body["max_tokens"] for c in server.calls if "### Q1" not in c.system]
    assert sorted(budgets) == [256] * 6 + [512] * 6


@VENDORS
async def test_a_reply_too_long_for_the_largest_budget_fails_as_truncated(vendor: str) -> None:
    def endless(system: str, user: str) -> str:
        if "### Q1" in system:
            return default_reply(system, user)
        return "```r\nprint(1)\n```\n" + PROSE * 10

    with FakeLLMServer(reply=endless) as server:
        status, body = await generate(server, job_spec(vendor, per_cell=1, max_tokens=256))
    assert status == 200
    assert body["pairs"] == []
    assert_accounted(body)
    # Each truncated answer is dropped and its item asked for again while the cell's budget of
    # 6 calls lasts: two items a cell, then the cell reports what it could not make. (A question
    # that comes second to a near-duplicate of another cell's is replaced too: which comes first
    # depends on timing, and it spends one of its cell's calls.)
    answers = [item for item in body["dropped"] if item["stage"] == "answer"]
    questions = [item for item in body["dropped"] if item["stage"] != "answer"]
    assert all(item["reason"] == "near_duplicate" for item in questions), questions
    assert 12 - len(questions) <= len(answers) <= 12
    for item in answers:
        assert item["reason"] == "truncated"
        assert "max_tokens=1024" in item["detail"] and "after 3 attempts" in item["detail"]
    assert [f["reason"] for f in body["failed"]] == ["cell_budget_exhausted"] * 6
    # Twice the room each time, up to four times what was asked, and no further.
    n = len(answers)
    budgets = [c.body["max_tokens"] for c in server.calls if "### Q1" not in c.system]
    assert sorted(budgets) == [256] * n + [512] * n + [1024] * n
    assert body["usage"]["output_tokens"] >= n * (256 + 512 + 1024)


@VENDORS
async def test_a_key_revoked_mid_job_fails_fast_and_keeps_the_pairs_already_made(vendor: str) -> None:
    with FakeLLMServer(latency_s=0.03) as server:
        revoke = server.faults.add(RevokeKey(after=16))
        status, body = await generate(
            server, job_spec(vendor, per_cell=4), concurrency=4, concurrency_max=4, breaker_cooldown_s=30
        )
    assert status == 200  # some pairs were finished before the key went: they are kept
    assert_accounted(body)
    assert 0 < len(body["pairs"]) < 24
    assert body["failed"] and all(f["reason"] == "provider_rejected" for f in body["failed"])
    assert any("401 from the" in f["detail"] for f in body["failed"])
    # No hammering: only the calls already in flight when the key went got a 401, never a retry.
    refused = [c for c in server.calls if c.status == 401]
    assert 1 <= len(refused) == revoke.refused <= 4  # type: ignore[attr-defined]
    assert len(server.calls) == revoke.started + revoke.refused  # type: ignore[attr-defined]
    lane = lane_of(body, vendor)
    assert lane["breaker"] == "open" and "401" in lane["last_error"]


async def test_a_revoked_key_streams_the_pairs_made_before_it(llm_server: FakeLLMServer) -> None:
    llm_server.latency_s = 0.02
    llm_server.faults.add(RevokeKey(after=16))
    app = create_app(settings_for(llm_server, concurrency=3, concurrency_max=3), runner=FakeRunner())
    async with AsyncTestClient(app) as client:
        response = await client.post(
            "/v1/generate", json=job_spec(per_cell=3), headers={"Accept": "application/x-ndjson"}
        )
    events = [json.loads(line) for line in response.text.splitlines()]
    kinds = [e["event"] for e in events]
    assert kinds[-1] == "done"
    counts = events[-1]["counts"]
    assert kinds.count("pair") == counts["returned"] > 0
    assert kinds.count("failed") == counts["failed"] > 0
    assert counts["requested"] == counts["returned"] + counts["failed"]


async def test_a_provider_that_stays_down_opens_the_breaker_and_ready_says_so(
    llm_server: FakeLLMServer,
) -> None:
    llm_server.fail_next(*[Fault(kind="status", status=503) for _ in range(500)])
    status, body = await generate(llm_server, job_spec(per_cell=1), max_retries=2)
    assert status == 502 and "503 from the openai API" in body["detail"]
    lane = lane_of(body, "openai")
    assert lane["breaker"] == "open" and lane["consecutive_failures"] >= 5
    assert lane["probe_in_s"] is not None and "503" in lane["last_error"]
    # Six cells of one question call each, three question calls a cell at most, three attempts each:
    # 54 attempts without the breaker. It opened after 5 failures, one probe failed, and the rest
    # failed at once.
    assert len(llm_server.calls) <= 5 + 16


async def test_a_run_job_under_mixed_faults_keeps_every_pair_it_finished() -> None:
    """Many faults at once, straight through `run_job` with a provider built by hand."""
    faults = [
        Fault(kind="status", status=429, retry_after_s=0.05),
        Fault(kind="status", status=500),
        Fault(kind="reset"),
        Fault(kind="bad_json"),
        Fault(kind="slow", delay_s=0.2),
        Fault(kind="status", status=503, retry_after_s=0.05),
        Fault(kind="malformed", body="I would rather not."),
        Fault(kind="empty"),
    ] * 3
    with FakeLLMServer(latency_s=0.01) as server:
        server.faults.add(After(2, *faults))
        client = openai.AsyncOpenAI(api_key="x", base_url=server.openai_base_url)
        provider = OpenAIProvider(
            client,
            default_model="fake",
            concurrency=Adaptive(initial=6, max=12),
            retry=RetryPolicy(backoff_s=0.02),
        )
        spec = msgspec.convert(job_spec(per_cell=3), Spec)
        response = await collect(run_job(resolve_spec(spec), provider, evaluate=None))
        await provider.aclose()
    body = msgspec.to_builtins(response)
    assert_accounted(body)
    assert len(body["pairs"]) == 18 and body["failed"] == []
    assert len({p["id"] for p in body["pairs"]}) == 18
    [lane] = provider.lanes()
    assert lane.throttled == 3 and lane.failed == 12  # 500, reset, bad JSON, 503: transport retries
    assert lane.in_flight == 0 and lane.queued == 0
