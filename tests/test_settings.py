"""Settings come from the environment once; bad values are refused with the variable's name."""

from __future__ import annotations

import subprocess
import sys

import pytest

from service.settings import Settings, SettingsError


def test_defaults_without_environment() -> None:
    s = Settings.from_env({})
    assert (s.host, s.port, s.sandbox, s.r_packages) == ("127.0.0.1", 8000, "bwrap", ("stats", "utils"))
    assert s.resolved_default_provider == "local"


def test_sdk_variables_and_overrides() -> None:
    s = Settings.from_env(
        {
            "QASYNTH_HOST": "0.0.0.0",
            "QASYNTH_PORT": "9001",
            "OPENAI_API_KEY": "sk-1",
            "OPENAI_BASE_URL": "http://127.0.0.1:8080/v1",
            "ANTHROPIC_API_KEY": "sk-ant",
            "QASYNTH_R_PACKAGES": "stats, utils ,MASS",
            "QASYNTH_CONCURRENCY": "4",
            "QASYNTH_EVAL_WALL_S": "2.5",
            "QASYNTH_EVAL_MEM_MB": "512",
        }
    )
    assert (s.eval_wall_s, s.eval_mem_mb, s.eval_cpu_s) == (2.5, 512, 10.0)
    assert (s.host, s.port, s.concurrency) == ("0.0.0.0", 9001, 4)
    assert s.openai_base_url == "http://127.0.0.1:8080/v1"
    assert s.r_packages == ("stats", "utils", "MASS")
    assert s.resolved_default_provider == "openai"
    assert Settings.from_env({"ANTHROPIC_API_KEY": "k"}).resolved_default_provider == "anthropic"
    # A keyless OpenAI-compatible server (vLLM, Ollama) is chosen by its base URL alone.
    assert (
        Settings.from_env({"OPENAI_BASE_URL": "http://127.0.0.1:11434/v1"}).resolved_default_provider
        == "openai"
    )
    assert (
        Settings.from_env({"OPENAI_API_KEY": "k", "QASYNTH_PROVIDER": "local"}).resolved_default_provider
        == "local"
    )


@pytest.mark.parametrize(
    ("env", "name"),
    [
        ({"QASYNTH_PORT": "http"}, "QASYNTH_PORT"),
        ({"QASYNTH_PROVIDER": "gemini"}, "QASYNTH_PROVIDER"),
        ({"QASYNTH_SANDBOX": "docker"}, "QASYNTH_SANDBOX"),
        ({"QASYNTH_REQUEST_TIMEOUT_S": "soon"}, "QASYNTH_REQUEST_TIMEOUT_S"),
    ],
)
def test_bad_values_name_the_variable(env: dict[str, str], name: str) -> None:
    with pytest.raises(SettingsError, match=name):
        Settings.from_env(env)


def test_cli_reports_a_bad_variable_without_a_traceback() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "service", "serve"],
        env={"QASYNTH_PORT": "http", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "QASYNTH_PORT" in result.stderr and "Traceback" not in result.stderr


def test_lane_settings_and_their_bounds() -> None:
    s = Settings.from_env(
        {
            "QASYNTH_CONCURRENCY": "8",
            "QASYNTH_CONCURRENCY_MAX": "32",
            "QASYNTH_MAX_RETRIES": "0",
            "QASYNTH_MAX_THROTTLED_RETRIES": "50",
            "QASYNTH_RETRY_BACKOFF_S": "0.25",
            "QASYNTH_MAX_RETRY_AFTER_S": "120",
            "QASYNTH_BREAKER_FAILURES": "3",
            "QASYNTH_BREAKER_COOLDOWN_S": "10",
        }
    )
    assert (s.concurrency, s.concurrency_max, s.max_retries, s.max_throttled_retries) == (8, 32, 0, 50)
    assert (s.retry_backoff_s, s.max_retry_after_s, s.breaker_failures, s.breaker_cooldown_s) == (
        0.25,
        120,
        3,
        10,
    )
    for name, value in (
        ("QASYNTH_CONCURRENCY", "0"),
        ("QASYNTH_MAX_RETRIES", "-1"),
        ("QASYNTH_BREAKER_FAILURES", "0"),
        ("QASYNTH_RETRY_BACKOFF_S", "-0.5"),
    ):
        with pytest.raises(SettingsError, match=f"{name} must be at least"):
            Settings.from_env({name: value})
