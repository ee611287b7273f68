"""Service configuration, read from the environment once, in `Settings.from_env`.

Provider credentials use the vendor SDKs' own variables, so any OpenAI-compatible
server (vLLM, llama.cpp server, Ollama) works by setting `OPENAI_BASE_URL`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Literal

import msgspec

__all__ = ["Settings", "SettingsError"]


class SettingsError(ValueError):
    """An environment variable has a value the service cannot use; the message names it."""


def _int(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise SettingsError(f"{name} must be an integer, got {raw!r}") from None


def _at_least(env: Mapping[str, str], name: str, default: int, minimum: int) -> int:
    value = _int(env, name, default)
    if value < minimum:
        raise SettingsError(f"{name} must be at least {minimum}, got {value}")
    return value


def _float(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        return float(raw)
    except ValueError:
        raise SettingsError(f"{name} must be a number, got {raw!r}") from None


class Settings(msgspec.Struct, kw_only=True, frozen=True):
    host: str = "127.0.0.1"
    port: int = 8000
    # Provider calls in flight at once, per provider.
    concurrency: int = 16
    # Transport retries (429/5xx/timeouts) done by the SDKs, honouring Retry-After.
    max_retries: int = 4
    request_timeout_s: float = 300.0
    # Retries of a call whose reply was unusable (no question found, empty answer).
    content_retries: int = 2

    openai_api_key: str | None = None
    openai_base_url: str | None = None
    openai_model: str = "gpt-4o-mini"
    anthropic_api_key: str | None = None
    anthropic_base_url: str | None = None
    anthropic_model: str = "claude-3-5-haiku-latest"
    # None: openai if its key or base URL is set, else anthropic likewise, else local.
    default_provider: Literal["openai", "anthropic", "local"] | None = None

    local_model_path: str | None = None
    # Parallel decoding slots of the embedded model (continuous batching); also its calls in flight.
    local_slots: int = 4
    # llama.cpp threads; 0: one per core this process may use (affinity mask and cgroup quota).
    local_threads: int = 0
    # Context of each slot in tokens (llama.cpp's n_ctx is this times the slots): prompt + max_tokens.
    local_context: int = 4096

    sandbox: Literal["bwrap", "none"] = "bwrap"
    eval_workers: int = 0  # 0: one per core
    # Per-snippet limits of the R sandbox.
    eval_wall_s: float = 10.0
    eval_cpu_s: float = 10.0
    eval_mem_mb: int = 1024
    eval_output_bytes: int = 1_000_000
    r_packages: tuple[str, ...] = ("stats", "utils")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        defaults = cls()
        provider = env.get("QASYNTH_PROVIDER") or None
        if provider not in (None, "openai", "anthropic", "local"):
            raise SettingsError(f"QASYNTH_PROVIDER must be openai, anthropic or local, got {provider!r}")
        sandbox = env.get("QASYNTH_SANDBOX") or "bwrap"
        if sandbox not in ("bwrap", "none"):
            raise SettingsError(f"QASYNTH_SANDBOX must be bwrap or none, got {sandbox!r}")
        packages = tuple(
            p.strip() for p in env.get("QASYNTH_R_PACKAGES", "stats,utils").split(",") if p.strip()
        )
        return cls(
            host=env.get("QASYNTH_HOST") or defaults.host,
            port=_int(env, "QASYNTH_PORT", defaults.port),
            concurrency=_int(env, "QASYNTH_CONCURRENCY", defaults.concurrency),
            max_retries=_int(env, "QASYNTH_MAX_RETRIES", defaults.max_retries),
            request_timeout_s=_float(env, "QASYNTH_REQUEST_TIMEOUT_S", defaults.request_timeout_s),
            content_retries=_int(env, "QASYNTH_CONTENT_RETRIES", defaults.content_retries),
            openai_api_key=env.get("OPENAI_API_KEY") or None,
            openai_base_url=env.get("OPENAI_BASE_URL") or None,
            openai_model=env.get("QASYNTH_OPENAI_MODEL") or defaults.openai_model,
            anthropic_api_key=env.get("ANTHROPIC_API_KEY") or None,
            anthropic_base_url=env.get("ANTHROPIC_BASE_URL") or None,
            anthropic_model=env.get("QASYNTH_ANTHROPIC_MODEL") or defaults.anthropic_model,
            default_provider=provider,  # type: ignore[arg-type]
            local_model_path=env.get("QASYNTH_LOCAL_MODEL") or None,
            local_slots=_at_least(env, "QASYNTH_LOCAL_SLOTS", defaults.local_slots, 1),
            local_threads=_at_least(env, "QASYNTH_LOCAL_THREADS", defaults.local_threads, 0),
            local_context=_at_least(env, "QASYNTH_LOCAL_CONTEXT", defaults.local_context, 512),
            sandbox=sandbox,  # type: ignore[arg-type]
            eval_workers=_int(env, "QASYNTH_EVAL_WORKERS", defaults.eval_workers),
            eval_wall_s=_float(env, "QASYNTH_EVAL_WALL_S", defaults.eval_wall_s),
            eval_cpu_s=_float(env, "QASYNTH_EVAL_CPU_S", defaults.eval_cpu_s),
            eval_mem_mb=_int(env, "QASYNTH_EVAL_MEM_MB", defaults.eval_mem_mb),
            eval_output_bytes=_int(env, "QASYNTH_EVAL_OUTPUT_BYTES", defaults.eval_output_bytes),
            r_packages=packages,
        )

    @property
    def openai_configured(self) -> bool:
        """A key, or a base URL alone: OpenAI-compatible servers (vLLM, Ollama) often need no key."""
        return bool(self.openai_api_key or self.openai_base_url)

    @property
    def anthropic_configured(self) -> bool:
        return bool(self.anthropic_api_key or self.anthropic_base_url)

    @property
    def resolved_default_provider(self) -> Literal["openai", "anthropic", "local"]:
        if self.default_provider is not None:
            return self.default_provider
        if self.openai_configured:
            return "openai"
        if self.anthropic_configured:
            return "anthropic"
        return "local"
