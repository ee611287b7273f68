"""`python -m service demo`, the README's main job, end to end in a subprocess (fake model, real R)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.fakes.llm_server import FakeLLMServer


@pytest.mark.sandbox
def test_demo_prints_evaluated_pairs(llm_server: FakeLLMServer) -> None:
    env = {
        **os.environ,
        "OPENAI_API_KEY": "sk-test",
        "OPENAI_BASE_URL": llm_server.openai_base_url,
        "QASYNTH_OPENAI_MODEL": "fake-gpt",
    }
    result = subprocess.run(
        [sys.executable, "-m", "service", "demo"], env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert out.count("verdict=passed") == 4, out
    assert "model=openai/fake-gpt" in out
    assert "done in" in out and "4 of 4 pairs returned" in out
    assert "default provider openai" in result.stderr


def test_help_lists_the_commands() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "service", "--help"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0
    for command in ("serve", "demo", "prepare-model", "openapi", "export", "import-review"):
        assert command in result.stdout
