"""Service configuration, read from the environment once, in `Settings.from_env`.

Provider credentials use the vendor SDKs' own variables, so any OpenAI-compatible
server (vLLM, llama.cpp server, Ollama) works by setting `OPENAI_BASE_URL`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec

__all__ = ["SCOPES", "ApiKey", "Settings", "SettingsError"]


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


def _bool(env: Mapping[str, str], name: str) -> bool:
    raw = (env.get(name) or "").strip().lower()
    if raw in ("", "0", "false", "no", "off"):
        return False
    if raw in ("1", "true", "yes", "on"):
        return True
    raise SettingsError(f"{name} must be 1/true/yes or 0/false/no, got {raw!r}")


# What a key may be limited to: route groups, named as the OpenAPI tags name them.
Scope = Literal["generate", "dedup", "evaluate", "reports", "export"]
SCOPES: tuple[Scope, ...] = ("generate", "dedup", "evaluate", "reports", "export")


class ApiKey(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """One caller. Only the SHA-256 of its key is configured; a quota left out takes the service's
    default, and `scopes` left out allows every route group."""

    name: Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_.@-]{1,64}$")]
    sha256: Annotated[str, msgspec.Meta(pattern=r"^[0-9a-f]{64}$")]
    requests_per_minute: Annotated[int, msgspec.Meta(ge=0)] | None = None
    jobs: Annotated[int, msgspec.Meta(ge=0)] | None = None
    snippets: Annotated[int, msgspec.Meta(ge=1)] | None = None
    scopes: tuple[Scope, ...] | None = None


class _KeysFile(msgspec.Struct, forbid_unknown_fields=True):
    keys: list[ApiKey] = []


_ENTRY_OPTIONS = {"rpm": "requests_per_minute", "jobs": "jobs", "snippets": "snippets", "scopes": "scopes"}


def _key_entry(entry: str) -> ApiKey:
    """`name:sha256[:rpm=N][:jobs=N][:snippets=N][:scopes=a+b]`, as `python -m service keygen` prints it."""
    name, _, rest = entry.partition(":")
    digest, *options = rest.split(":")
    fields: dict[str, Any] = {"name": name, "sha256": digest.lower()}
    for option in options:
        key, eq, value = option.partition("=")
        if not eq or key not in _ENTRY_OPTIONS:
            raise SettingsError(
                f"QASYNTH_API_KEYS: unknown option {option!r} for key {name!r}; "
                "one of rpm=N, jobs=N, snippets=N, scopes=a+b"
            )
        fields[_ENTRY_OPTIONS[key]] = value.split("+") if key == "scopes" else value
    try:
        return msgspec.convert(fields, ApiKey, strict=False)
    except msgspec.ValidationError as exc:
        raise SettingsError(f"QASYNTH_API_KEYS: key {name!r}: {exc}") from None


def _api_keys(env: Mapping[str, str]) -> tuple[ApiKey, ...]:
    """Keys from QASYNTH_API_KEYS (comma-separated entries) and QASYNTH_API_KEYS_FILE (TOML `[[keys]]`)."""
    keys = [_key_entry(e.strip()) for e in (env.get("QASYNTH_API_KEYS") or "").split(",") if e.strip()]
    path = env.get("QASYNTH_API_KEYS_FILE")
    if path:
        try:
            keys += msgspec.toml.decode(Path(path).read_bytes(), type=_KeysFile).keys
        except OSError as exc:
            raise SettingsError(f"QASYNTH_API_KEYS_FILE: cannot read {path}: {exc.strerror}") from None
        except (msgspec.ValidationError, msgspec.DecodeError) as exc:
            raise SettingsError(f"QASYNTH_API_KEYS_FILE: {path}: {exc}") from None
    for attr in ("name", "sha256"):
        seen: set[str] = set()
        for key in keys:
            value = getattr(key, attr)
            if value in seen:
                raise SettingsError(f"API keys: two keys have the same {attr} {value!r}")
            seen.add(value)
    return tuple(keys)


def _origins(env: Mapping[str, str], name: str) -> tuple[str, ...]:
    """Comma-separated origins (`scheme://host[:port]`), normalised to lower case without a path."""
    origins = []
    for raw in (env.get(name) or "").split(","):
        raw = raw.strip().rstrip("/")
        if not raw:
            continue
        m = re.fullmatch(r"(https?)://([A-Za-z0-9.\-]+|\[[0-9A-Fa-f:.]+\])(:\d{1,5})?", raw)
        if m is None:
            raise SettingsError(f"{name}: {raw!r} is not an origin like https://labelstudio.example.org")
        origins.append(raw.lower())
    return tuple(origins)


class Settings(msgspec.Struct, kw_only=True, frozen=True):
    host: str = "127.0.0.1"
    port: int = 8000
    # Provider calls, per provider and model (see service/providers/limiter.py). Calls in flight
    # start at `concurrency` and adapt (AIMD) between 1 and `concurrency_max`. The SDKs' own retries
    # are off: failed attempts (5xx, 529, timeouts, dropped connections) are retried `max_retries`
    # times with exponential backoff from `retry_backoff_s`; throttled ones (429)
    # `max_throttled_retries` times, after the Retry-After the server names; a server asking for
    # more than `max_retry_after_s` fails the call. `breaker_failures` failed attempts in a row open
    # the breaker: calls wait `breaker_cooldown_s` (doubling while probes fail) for one probe.
    concurrency: int = 16
    concurrency_max: int = 64
    max_retries: int = 4
    max_throttled_retries: int = 20
    retry_backoff_s: float = 0.5
    max_retry_after_s: float = 60.0
    breaker_failures: int = 5
    breaker_cooldown_s: float = 5.0
    request_timeout_s: float = 300.0
    # Retries of a call whose reply was unusable (no question found, empty answer).
    content_retries: int = 2
    # Batch jobs (/v1/batches): the key their handles are signed with (None: a random one per
    # process, so handles do not outlive it nor pass between replicas), and the most rounds a job
    # may take before its unmade items fail with `batch_rounds_exhausted`.
    batch_secret: str | None = None
    batch_max_rounds: int = 12

    openai_api_key: str | None = None
    openai_base_url: str | None = None
    openai_model: str = "gpt-4o-mini"
    anthropic_api_key: str | None = None
    anthropic_base_url: str | None = None
    anthropic_model: str = "claude-3-5-haiku-latest"
    # None: openai if its key or base URL is set, else anthropic likewise, else local.
    default_provider: Literal["openai", "anthropic", "local"] | None = None

    # A TOML price table whose entries replace or add to the shipped one (service/data/prices.toml).
    prices_file: str | None = None

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
    # Snippets that may wait for a worker, over all requests; beyond it, 503 with Retry-After.
    eval_queue: int = 20_000

    # Who may call, and how much. No keys: every caller is `anonymous` (refused off loopback
    # unless `allow_no_auth`). Quotas are per key and per process; 0 means no limit.
    api_keys: tuple[ApiKey, ...] = ()
    allow_no_auth: bool = False
    quota_requests_per_minute: int = 600
    quota_jobs: int = 4
    quota_snippets: int = 4
    # The one body size limit of every route; item limits live in the wire types.
    max_body_bytes: int = 100 * 1024 * 1024
    # Origins /v1/exports may push Label Studio tasks to; none: pushing is off.
    label_studio_urls: tuple[str, ...] = ()
    # The HTTP server (uvicorn): connections at once, idle keep-alive, the time a client has to send
    # a whole request head, and the largest request head.
    max_connections: int = 256
    keep_alive_s: int = 5
    header_timeout_s: float = 10.0
    max_header_bytes: int = 16 * 1024

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
        if _int(env, "QASYNTH_EVAL_QUEUE", defaults.eval_queue) < 0:
            raise SettingsError("QASYNTH_EVAL_QUEUE must not be negative")
        if _int(env, "QASYNTH_BATCH_MAX_ROUNDS", defaults.batch_max_rounds) < 1:
            raise SettingsError("QASYNTH_BATCH_MAX_ROUNDS must be at least 1")
        packages = tuple(
            p.strip() for p in env.get("QASYNTH_R_PACKAGES", "stats,utils").split(",") if p.strip()
        )
        settings = cls(
            host=env.get("QASYNTH_HOST") or defaults.host,
            port=_int(env, "QASYNTH_PORT", defaults.port),
            concurrency=_int(env, "QASYNTH_CONCURRENCY", defaults.concurrency),
            concurrency_max=_int(env, "QASYNTH_CONCURRENCY_MAX", defaults.concurrency_max),
            max_retries=_int(env, "QASYNTH_MAX_RETRIES", defaults.max_retries),
            max_throttled_retries=_int(env, "QASYNTH_MAX_THROTTLED_RETRIES", defaults.max_throttled_retries),
            retry_backoff_s=_float(env, "QASYNTH_RETRY_BACKOFF_S", defaults.retry_backoff_s),
            max_retry_after_s=_float(env, "QASYNTH_MAX_RETRY_AFTER_S", defaults.max_retry_after_s),
            breaker_failures=_int(env, "QASYNTH_BREAKER_FAILURES", defaults.breaker_failures),
            breaker_cooldown_s=_float(env, "QASYNTH_BREAKER_COOLDOWN_S", defaults.breaker_cooldown_s),
            request_timeout_s=_float(env, "QASYNTH_REQUEST_TIMEOUT_S", defaults.request_timeout_s),
            content_retries=_int(env, "QASYNTH_CONTENT_RETRIES", defaults.content_retries),
            batch_secret=env.get("QASYNTH_BATCH_SECRET") or None,
            batch_max_rounds=_int(env, "QASYNTH_BATCH_MAX_ROUNDS", defaults.batch_max_rounds),
            openai_api_key=env.get("OPENAI_API_KEY") or None,
            openai_base_url=env.get("OPENAI_BASE_URL") or None,
            openai_model=env.get("QASYNTH_OPENAI_MODEL") or defaults.openai_model,
            anthropic_api_key=env.get("ANTHROPIC_API_KEY") or None,
            anthropic_base_url=env.get("ANTHROPIC_BASE_URL") or None,
            anthropic_model=env.get("QASYNTH_ANTHROPIC_MODEL") or defaults.anthropic_model,
            prices_file=env.get("QASYNTH_PRICES_FILE") or None,
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
            eval_queue=_int(env, "QASYNTH_EVAL_QUEUE", defaults.eval_queue),
            **_security_and_limits(env, defaults),
        )
        for name, value, minimum in (
            ("QASYNTH_CONCURRENCY", settings.concurrency, 1),
            ("QASYNTH_CONCURRENCY_MAX", settings.concurrency_max, 1),
            ("QASYNTH_MAX_RETRIES", settings.max_retries, 0),
            ("QASYNTH_MAX_THROTTLED_RETRIES", settings.max_throttled_retries, 0),
            ("QASYNTH_RETRY_BACKOFF_S", settings.retry_backoff_s, 0),
            ("QASYNTH_MAX_RETRY_AFTER_S", settings.max_retry_after_s, 0),
            ("QASYNTH_BREAKER_FAILURES", settings.breaker_failures, 1),
            ("QASYNTH_BREAKER_COOLDOWN_S", settings.breaker_cooldown_s, 0),
        ):
            if value < minimum:
                raise SettingsError(f"{name} must be at least {minimum}, got {value}")
        return settings

    @property
    def auth_enabled(self) -> bool:
        return bool(self.api_keys)

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


def _security_and_limits(env: Mapping[str, str], defaults: Settings) -> dict[str, Any]:
    values: dict[str, Any] = {
        "api_keys": _api_keys(env),
        "allow_no_auth": _bool(env, "QASYNTH_ALLOW_NO_AUTH"),
        "quota_requests_per_minute": _int(env, "QASYNTH_QUOTA_RPM", defaults.quota_requests_per_minute),
        "quota_jobs": _int(env, "QASYNTH_QUOTA_JOBS", defaults.quota_jobs),
        "quota_snippets": _int(env, "QASYNTH_QUOTA_SNIPPETS", defaults.quota_snippets),
        "max_body_bytes": _int(env, "QASYNTH_MAX_BODY_BYTES", defaults.max_body_bytes),
        "label_studio_urls": _origins(env, "QASYNTH_LABEL_STUDIO_URLS"),
        "max_connections": _int(env, "QASYNTH_MAX_CONNECTIONS", defaults.max_connections),
        "keep_alive_s": _int(env, "QASYNTH_KEEP_ALIVE_S", defaults.keep_alive_s),
        "header_timeout_s": _float(env, "QASYNTH_HEADER_TIMEOUT_S", defaults.header_timeout_s),
        "max_header_bytes": _int(env, "QASYNTH_MAX_HEADER_BYTES", defaults.max_header_bytes),
    }
    for name, value in (
        ("QASYNTH_QUOTA_RPM", values["quota_requests_per_minute"]),
        ("QASYNTH_QUOTA_JOBS", values["quota_jobs"]),
    ):
        if value < 0:
            raise SettingsError(f"{name} must be 0 (no limit) or more, got {value}")
    for name, value in (
        ("QASYNTH_QUOTA_SNIPPETS", values["quota_snippets"]),
        ("QASYNTH_MAX_BODY_BYTES", values["max_body_bytes"]),
        ("QASYNTH_MAX_CONNECTIONS", values["max_connections"]),
        ("QASYNTH_KEEP_ALIVE_S", values["keep_alive_s"]),
        ("QASYNTH_HEADER_TIMEOUT_S", values["header_timeout_s"]),
        ("QASYNTH_MAX_HEADER_BYTES", values["max_header_bytes"]),
    ):
        if value <= 0:
            raise SettingsError(f"{name} must be more than 0, got {value}")
    return values
