"""Shared fixtures: a fake model server on loopback and apps wired to it through the real SDKs."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import pytest
from litestar import Litestar

from service.__main__ import serve_in_background
from service.settings import Settings
from tests.fakes.llm_server import FakeLLMServer


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--slow",
        action="store_true",
        help="also run tests marked slow (real local model, Label Studio, Chromium); the README's test command does",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--slow"):
        return
    skip = pytest.mark.skip(reason="slow: run with --slow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def llm_server() -> Iterator[FakeLLMServer]:
    with FakeLLMServer() as server:
        yield server


def settings_for(server: FakeLLMServer, **overrides: object) -> Settings:
    """Settings whose openai and anthropic providers both talk to `server`, with quick retries."""
    values: dict[str, object] = {
        "openai_api_key": "sk-test",
        "openai_base_url": server.openai_base_url,
        "anthropic_api_key": "sk-ant-test",
        "anthropic_base_url": server.anthropic_base_url,
        "default_provider": "openai",
        "max_retries": 2,
        "retry_backoff_s": 0.05,
        "breaker_cooldown_s": 0.2,
        "request_timeout_s": 5.0,
        "openai_model": "fake-gpt",
        "anthropic_model": "fake-claude",
    }
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]


def cell_key(cell: dict[str, Any]) -> tuple[Any, ...]:
    """What two runs of one job must agree on per cell (`counts.cells[i]`), however they ran."""
    fields = (
        "task",
        "theme",
        "requested",
        "returned",
        "dropped",
        "failed",
        "flagged",
        "calls",
        "top_up_calls",
    )
    return tuple(cell[f] for f in fields)


def serve(app: Litestar) -> contextlib.AbstractContextManager[str]:
    """Run `app` under uvicorn on a free loopback port, for tests that need real concurrent HTTP."""
    return serve_in_background(app)
