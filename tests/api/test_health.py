"""GET /health and GET /ready."""

from __future__ import annotations

import pytest
from litestar.testing import AsyncTestClient

from service.app import create_app
from service.settings import Settings
from tests.conftest import settings_for
from tests.fakes.llm_server import FakeLLMServer


async def test_health_is_cheap_and_always_ok() -> None:
    async with AsyncTestClient(create_app(Settings())) as client:
        response = await client.get("/health")
    assert response.status_code == 200 and response.json() == {"status": "ok"}


@pytest.mark.sandbox
async def test_ready_reports_sandbox_and_providers(llm_server: FakeLLMServer) -> None:
    async with AsyncTestClient(create_app(settings_for(llm_server))) as client:
        response = await client.get("/ready")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["ready"] is True and body["default_provider"] == "openai"
    assert body["sandbox"]["status"] == "ok" and body["sandbox"]["mode"] == "bwrap"
    assert body["sandbox"]["r_version"].startswith("4.")
    assert body["providers"]["openai"]["configured"] == "true"
    assert "sk-test" not in response.text  # never a secret


@pytest.mark.sandbox
async def test_ready_says_when_r_runs_unsandboxed() -> None:
    async with AsyncTestClient(create_app(Settings(sandbox="none", default_provider="openai"))) as client:
        body = (await client.get("/ready")).json()
    assert body["sandbox"]["mode"] == "none" and "not contained" in body["sandbox"]["warning"]


async def test_ready_is_503_when_the_default_provider_cannot_run() -> None:
    settings = Settings(local_model_path="/nonexistent/model.gguf")
    async with AsyncTestClient(create_app(settings)) as client:
        response = await client.get("/ready")
    assert response.status_code == 503
    body = response.json()
    assert body["ready"] is False and body["default_provider"] == "local"
    assert body["providers"]["local"]["configured"] == "false"


@pytest.mark.sandbox
async def test_sandbox_limits_come_from_settings() -> None:
    settings = Settings(default_provider="openai", eval_wall_s=3.0, eval_mem_mb=512)
    async with AsyncTestClient(create_app(settings)) as client:
        body = (await client.get("/ready")).json()
    assert "wall 3 s" in body["sandbox"]["limits"] and "memory 512 MB a process" in body["sandbox"]["limits"]
