"""API keys and per-key quotas, through the app and over real HTTP, with the real sandbox where R runs."""

from __future__ import annotations

import asyncio
import hashlib
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
from litestar.testing import AsyncTestClient

from service.app import create_app
from service.server import check_exposure
from service.settings import ApiKey, Settings, SettingsError
from tests.conftest import serve, settings_for
from tests.fakes.llm_server import FakeLLMServer

ROOT = Path(__file__).resolve().parents[2]
ALICE = "qsk_alice-test-key-0000000000000000000000000"
BOB = "qsk_bob-test-key-00000000000000000000000000000"
DEDUP = {"items": [{"id": "a", "text": "how do I compute a trimmed mean in R"}]}


def key(name: str, secret: str, **quota: Any) -> ApiKey:
    return ApiKey(name=name, sha256=hashlib.sha256(secret.encode()).hexdigest(), **quota)


def bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


def keyed(*keys: ApiKey, **overrides: Any) -> Settings:
    return Settings(sandbox="none", default_provider="openai", api_keys=keys, **overrides)


async def test_a_request_without_a_key_is_401_with_a_bearer_challenge() -> None:
    async with AsyncTestClient(create_app(keyed(key("alice", ALICE)))) as client:
        r = await client.post("/v1/dedup", json=DEDUP)
        assert r.status_code == 401
        assert r.headers["www-authenticate"] == 'Bearer realm="qasynth"'
        assert r.headers["content-type"].startswith("application/problem+json")
        problem = r.json()
        assert problem["status"] == 401 and "Authorization: Bearer" in problem["detail"]
        for header in ("Basic YWxpY2U6c2VjcmV0", "Bearer", "Bearer two words", ALICE):
            r = await client.post("/v1/dedup", json=DEDUP, headers={"Authorization": header})
            assert r.status_code == 401, header
            assert r.headers["www-authenticate"] == 'Bearer realm="qasynth", error="invalid_request"'


async def test_an_unknown_key_is_403_and_a_known_one_is_served() -> None:
    async with AsyncTestClient(create_app(keyed(key("alice", ALICE), key("bob", BOB)))) as client:
        for wrong in (ALICE[:-1] + "1", BOB + "x", "qsk_" + "0" * 43):
            r = await client.post("/v1/dedup", json=DEDUP, headers=bearer(wrong))
            assert r.status_code == 403, wrong
            assert r.json()["detail"] == "unknown API key"
        for secret in (ALICE, BOB):
            r = await client.post("/v1/dedup", json=DEDUP, headers=bearer(secret))
            assert r.status_code == 200, r.text
            assert r.json()["results"][0]["kept"] is True
        # The scheme is case-insensitive (RFC 9110).
        r = await client.post("/v1/dedup", json=DEDUP, headers={"Authorization": f"bearer {ALICE}"})
        assert r.status_code == 200


async def test_health_and_the_schema_are_open_and_ready_is_not() -> None:
    async with AsyncTestClient(create_app(keyed(key("alice", ALICE)))) as client:
        assert (await client.get("/health")).status_code == 200
        schema = await client.get("/schema/openapi.json")
        assert schema.status_code == 200
        assert (await client.get("/ready")).status_code == 401
        ready = await client.get("/ready", headers=bearer(ALICE))
        assert ready.json()["sandbox"]["mode"] == "none"


async def test_without_keys_every_caller_is_served() -> None:
    async with AsyncTestClient(create_app(Settings(sandbox="none"))) as client:
        assert (await client.post("/v1/dedup", json=DEDUP)).status_code == 200
        # A key sent to a service that has none configured is not an error.
        assert (await client.post("/v1/dedup", json=DEDUP, headers=bearer(ALICE))).status_code == 200


async def test_a_key_limited_to_some_routes_is_403_elsewhere(llm_server: FakeLLMServer) -> None:
    reviewer = key("reviewer", BOB, scopes=("dedup", "export"))
    settings = settings_for(llm_server, sandbox="none", api_keys=(key("alice", ALICE), reviewer))
    spec = {"tasks": [{"id": "explain"}], "themes": [{"id": "regression"}], "per_cell": 1}
    spec["evaluation"] = {"enabled": False}
    async with AsyncTestClient(create_app(settings)) as client:
        assert (await client.post("/v1/dedup", json=DEDUP, headers=bearer(BOB))).status_code == 200
        config = await client.get("/v1/exports/label-studio/config", headers=bearer(BOB))
        assert config.status_code == 200
        refused = await client.post("/v1/generate", json=spec, headers=bearer(BOB))
        assert refused.status_code == 403
        assert refused.json()["detail"] == "the key 'reviewer' is not allowed to use generate routes"
        assert not llm_server.calls  # refused before any model call
        served = await client.post("/v1/generate", json=spec, headers=bearer(ALICE))
        assert served.status_code == 200 and len(served.json()["pairs"]) == 1


async def test_requests_per_minute_are_counted_per_key() -> None:
    settings = keyed(key("alice", ALICE, requests_per_minute=3), key("bob", BOB), quota_requests_per_minute=5)
    async with AsyncTestClient(create_app(settings)) as client:
        statuses = [
            (await client.post("/v1/dedup", json=DEDUP, headers=bearer(ALICE))).status_code for _ in range(4)
        ]
        assert statuses == [200, 200, 200, 429]
        r = await client.get("/ready", headers=bearer(ALICE))
        assert r.status_code == 429
        assert 1 <= int(r.headers["retry-after"]) <= 60
        problem = r.json()
        assert problem["status"] == 429 and "3 requests a minute" in problem["detail"]
        # bob has the default of 5, untouched by alice's use
        bob = [
            (await client.post("/v1/dedup", json=DEDUP, headers=bearer(BOB))).status_code for _ in range(6)
        ]
        assert bob == [200] * 5 + [429]


async def test_jobs_in_flight_hold_their_slot_until_the_stream_ends() -> None:
    """One job in flight for alice: a second is 429 while her NDJSON stream runs, bob is served, and
    once the stream has ended alice may start again."""
    with FakeLLMServer(latency_s=0.5) as llm:
        settings = settings_for(
            llm, sandbox="none", api_keys=(key("alice", ALICE, jobs=1), key("bob", BOB, jobs=1))
        )
        spec = {
            "tasks": [{"id": "explain"}],
            "themes": [{"id": "regression"}],
            "per_cell": 2,
            "model": {"questions_per_call": 1},
            "evaluation": {"enabled": False},
        }
        with serve(create_app(settings)) as url:
            async with httpx.AsyncClient(base_url=url, timeout=30) as http:
                ndjson = {**bearer(ALICE), "Accept": "application/x-ndjson"}
                async with http.stream("POST", "/v1/generate", json=spec, headers=ndjson) as stream:
                    assert stream.status_code == 200
                    lines = stream.aiter_lines()
                    first = json.loads(await anext(lines))
                    assert first["event"] == "cell_started"
                    busy = await http.post("/v1/dedup", json=DEDUP, headers=bearer(ALICE))
                    assert busy.status_code == 429, busy.text
                    assert busy.headers["retry-after"] == "5"
                    assert "1 jobs in flight" in busy.json()["detail"]
                    # Not a job: alice may still read /ready; bob has his own slot.
                    assert (await http.get("/ready", headers=bearer(ALICE))).status_code == 200
                    assert (await http.post("/v1/dedup", json=DEDUP, headers=bearer(BOB))).status_code == 200
                    events = [json.loads(line) async for line in lines]
                assert events[-1]["event"] == "done" and events[-1]["counts"]["returned"] == 2
                again = await http.post("/v1/dedup", json=DEDUP, headers=bearer(ALICE))
                assert again.status_code == 200


@pytest.mark.sandbox
async def test_a_keys_snippets_in_flight_are_bounded_in_the_real_sandbox() -> None:
    """Two warm workers: alice (1 snippet at a time) never has two of hers running, bob (2) does."""
    code = (
        't0 <- as.numeric(Sys.time()); Sys.sleep(0.4); cat(sprintf("%.3f %.3f", t0, as.numeric(Sys.time())))'
    )
    settings = Settings(
        default_provider="openai",
        eval_workers=2,
        api_keys=(key("alice", ALICE, snippets=1), key("bob", BOB, snippets=2)),
    )
    body = {"snippets": [{"id": f"s{i}", "code": code} for i in range(4)]}

    def intervals(response: httpx.Response) -> list[tuple[float, float]]:
        assert response.status_code == 200, response.text
        results = response.json()["snippets"]
        assert [r["evaluation"]["verdict"] for r in results] == ["passed"] * 4
        return sorted(tuple(map(float, r["evaluation"]["stdout"].split())) for r in results)  # type: ignore[misc]

    def most_at_once(spans: list[tuple[float, float]]) -> int:
        """The most snippets running at one moment: just after some snippet started."""
        return max(sum(1 for s, e in spans if s <= start + 0.01 < e) for start, _ in spans)

    async with AsyncTestClient(create_app(settings), timeout=60) as client:
        alice = intervals(await client.post("/v1/evaluate", json=body, headers=bearer(ALICE)))
        bob = intervals(await client.post("/v1/evaluate", json=body, headers=bearer(BOB)))
    assert most_at_once(alice) == 1, alice
    assert most_at_once(bob) == 2, bob


def test_keygen_prints_a_key_whose_digest_the_service_accepts() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "service", "keygen", "--name", "ci"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    lines = dict(line.split(None, 1) for line in result.stdout.splitlines()[:2])
    secret, digest = lines["key"], lines["sha256"]
    assert hashlib.sha256(secret.encode()).hexdigest() == digest
    assert secret not in result.stdout.split("\n", 1)[1]  # the key is printed once, the digest configured
    env_line = next(line.strip() for line in result.stdout.splitlines() if "QASYNTH_API_KEYS=" in line)
    name, value = env_line.split("=", 1)
    settings = Settings.from_env({name: value, "QASYNTH_SANDBOX": "none"})
    assert settings.api_keys[0].name == "ci"
    toml = result.stdout.split("names:\n", 1)[1]
    file_keys = msgspec.toml.decode(toml.replace("\n  ", "\n").strip().encode(), type=dict)["keys"]
    assert file_keys == [{"name": "ci", "sha256": digest}]

    async def call() -> int:
        async with AsyncTestClient(create_app(settings)) as client:
            return (await client.post("/v1/dedup", json=DEDUP, headers=bearer(secret))).status_code

    assert asyncio.run(call()) == 200


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.0.2.10", "qasynth.example.org"])
def test_a_non_loopback_address_needs_keys_or_an_explicit_flag(host: str) -> None:
    with pytest.raises(SettingsError, match="refusing to serve"):
        check_exposure(Settings(), host)
    check_exposure(Settings(allow_no_auth=True), host)
    check_exposure(Settings(api_keys=(key("alice", ALICE),)), host)


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "::1", "127.0.0.2"])
def test_loopback_needs_no_keys(host: str) -> None:
    check_exposure(Settings(), host)


def test_serve_refuses_to_start_open_on_every_interface() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "service", "serve", "--host", "0.0.0.0", "--port", "9"],
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert (
        "refusing to serve 0.0.0.0 with no API keys" in result.stderr
        and "--insecure-no-auth" in result.stderr
    )
    assert "Traceback" not in result.stderr


async def test_turn_slots_let_owners_in_by_turns_and_pass_on_a_cancelled_turn() -> None:
    from service.api.auth import TurnSlots

    slots = TurnSlots(1)
    order: list[str] = []
    gate = asyncio.Event()

    async def use(owner: str, name: str, *, hold: bool = False) -> None:
        async with slots.hold(owner):
            order.append(name)
            if hold:
                await gate.wait()

    first = asyncio.create_task(use("big", "big-0", hold=True))
    await asyncio.sleep(0)
    waiters = [asyncio.create_task(use("big", f"big-{i}")) for i in range(1, 4)]
    await asyncio.sleep(0)
    doomed = asyncio.create_task(use("gone", "gone-0"))
    small = asyncio.create_task(use("small", "small-0"))
    await asyncio.sleep(0)
    doomed.cancel()
    await asyncio.sleep(0)
    gate.set()
    await asyncio.gather(first, *waiters, small, return_exceptions=True)
    assert doomed.cancelled()
    # big's queue and small's take turns: small is second in, not behind all of big.
    assert order == ["big-0", "big-1", "small-0", "big-2", "big-3"]
    async with slots.hold("after"):  # every slot came back
        pass
