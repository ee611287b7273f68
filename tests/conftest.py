"""Shared fixtures: a fake model server on loopback and apps wired to it through the real SDKs."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator

import pytest
import uvicorn
from litestar import Litestar

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
        "request_timeout_s": 5.0,
        "openai_model": "fake-gpt",
        "anthropic_model": "fake-claude",
    }
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]


@contextlib.contextmanager
def serve(app: Litestar) -> Iterator[str]:
    """Run `app` under uvicorn on a free loopback port, for tests that need real concurrent HTTP."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
