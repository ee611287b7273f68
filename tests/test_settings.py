"""Settings come from the environment once; bad values are refused with the variable's name."""

from __future__ import annotations

import re
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


DIGEST = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"  # sha256("test")


def test_api_keys_from_the_environment_and_a_file(tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "keys.toml"
    path.write_text(
        f'[[keys]]\nname = "labelers"\nsha256 = "{DIGEST.replace("9", "8")}"\njobs = 1\nscopes = ["export"]\n'
    )
    s = Settings.from_env(
        {
            "QASYNTH_API_KEYS": (
                f"ci:{DIGEST.upper()}:rpm=1200:jobs=8:snippets=16:scopes=dedup+evaluate, bob:{DIGEST[::-1]}"
            ),
            "QASYNTH_API_KEYS_FILE": str(path),
            "QASYNTH_QUOTA_RPM": "60",
            "QASYNTH_LABEL_STUDIO_URLS": "https://LS.example.org/, http://127.0.0.1:8080",
        }
    )
    ci, bob, labelers = s.api_keys
    assert (ci.name, ci.sha256, ci.requests_per_minute, ci.jobs, ci.snippets) == ("ci", DIGEST, 1200, 8, 16)
    assert ci.scopes == ("dedup", "evaluate") and bob.scopes is None and bob.jobs is None
    assert (labelers.name, labelers.jobs, labelers.scopes) == ("labelers", 1, ("export",))
    assert s.quota_requests_per_minute == 60 and s.auth_enabled
    assert s.label_studio_urls == ("https://ls.example.org", "http://127.0.0.1:8080")
    assert not Settings.from_env({}).auth_enabled


@pytest.mark.parametrize(
    ("env", "words"),
    [
        ({"QASYNTH_API_KEYS": "ci:abc"}, "QASYNTH_API_KEYS: key 'ci'"),
        ({"QASYNTH_API_KEYS": f"ci:{DIGEST}:burst=3"}, "unknown option 'burst=3'"),
        ({"QASYNTH_API_KEYS": f"ci:{DIGEST}:jobs=many"}, "QASYNTH_API_KEYS: key 'ci'"),
        ({"QASYNTH_API_KEYS": f"ci:{DIGEST}:scopes=admin"}, "QASYNTH_API_KEYS: key 'ci'"),
        ({"QASYNTH_API_KEYS": f"ci:{DIGEST},ci:{DIGEST[::-1]}"}, "same name 'ci'"),
        ({"QASYNTH_API_KEYS": f"a:{DIGEST},b:{DIGEST}"}, "same sha256"),
        ({"QASYNTH_API_KEYS_FILE": "/nonexistent/keys.toml"}, "QASYNTH_API_KEYS_FILE: cannot read"),
        ({"QASYNTH_LABEL_STUDIO_URLS": "https://ls.example.org/api"}, "QASYNTH_LABEL_STUDIO_URLS"),
        ({"QASYNTH_ALLOW_NO_AUTH": "maybe"}, "QASYNTH_ALLOW_NO_AUTH"),
        ({"QASYNTH_MAX_BODY_BYTES": "0"}, "QASYNTH_MAX_BODY_BYTES"),
        ({"QASYNTH_QUOTA_JOBS": "-1"}, "QASYNTH_QUOTA_JOBS"),
    ],
)
def test_bad_security_settings_say_what_is_wrong(env: dict[str, str], words: str) -> None:
    with pytest.raises(SettingsError, match=re.escape(words)):
        Settings.from_env(env)


def test_a_malformed_keys_file_names_the_file_and_field(tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "keys.toml"
    path.write_text(f'[[keys]]\nname = "x"\nsha256 = "{DIGEST}"\nrpm = 3\n')
    with pytest.raises(SettingsError, match=r"QASYNTH_API_KEYS_FILE: .*keys.toml: .*rpm"):
        Settings.from_env({"QASYNTH_API_KEYS_FILE": str(path)})


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


def test_batch_settings() -> None:
    s = Settings.from_env({"QASYNTH_BATCH_SECRET": "s3cret", "QASYNTH_BATCH_MAX_ROUNDS": "3"})
    assert (s.batch_secret, s.batch_max_rounds) == ("s3cret", 3)
    assert (Settings.from_env({}).batch_secret, Settings.from_env({}).batch_max_rounds) == (None, 12)
    with pytest.raises(SettingsError, match="QASYNTH_BATCH_MAX_ROUNDS"):
        Settings.from_env({"QASYNTH_BATCH_MAX_ROUNDS": "0"})
