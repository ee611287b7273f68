"""A job run through the providers' batch APIs, in rounds, with no state kept between requests.

A round is every model call whose inputs are known. The first holds the cells' first calls
(questions for `generate`, scripts for `explain` and `fix`); when its provider batch has ended,
the next holds what those replies made possible (answers, bugs, questions around the code, top-ups
for dropped items), then repairs, and so on. Each round is found by running the whole job again —
the same `pipeline.run_job`, the same stages — with a provider that answers every call from the
ended rounds' results and defers the others (`Replay`): a deferred call fails its item for this
run, and the run's deferred calls are the next round. When a run defers nothing, its response is
the job's, with the same accounting as POST /v1/generate; every step's provenance says `via:
batch`. A request that errored, expired or was cancelled in its batch fails its item with that
reason.

The handle names the provider batches so far, the spec's hash and the caller, signed with the
server's secret (HMAC-SHA256); the spec comes back with every request that goes on, so the
service keeps nothing. Calls are told apart by a digest of the request and, for identical
requests (lanes of a cell asking for a script the same way), its occurrence in the run.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
from collections import Counter
from collections.abc import Mapping
from typing import Literal

import msgspec

from service.errors import BatchRequestFailed, Forbidden, InvalidInput, ProviderError, ProviderUnavailable
from service.providers.base import Completion, CompletionRequest, Provider
from service.stages.evaluate import Sandbox
from service.stages.pipeline import collect, run_job
from service.stages.spec import Job
from service.wire.generate import GenerateResponse
from service.wire.pricing import ModelPrice

__all__ = ["Deferred", "Handle", "Replay", "open_handle", "replay", "sign_handle"]


# How long the replay waits for more calls before it answers those waiting: one "wave" of calls.
QUIET_S = 0.01


class Deferred(ProviderUnavailable):
    """A call whose reply is in no ended round yet: it goes into the next one."""


class Replay:
    """A provider that answers from the ended rounds' results and collects the calls it cannot."""

    def __init__(
        self,
        inner: Provider,
        results: Mapping[str, Completion | ProviderError],
        *,
        last_round: bool = False,
    ) -> None:
        self.name = inner.name
        self.default_model = inner.default_model
        self._inner = inner
        self._results = results
        self._seen: Counter[str] = Counter()
        self._last_round = last_round
        self.pending: dict[str, CompletionRequest] = {}
        self._wave: asyncio.Event | None = None
        self._timer: asyncio.TimerHandle | None = None

    async def complete(self, request: CompletionRequest) -> Completion:
        digest = hashlib.sha256(msgspec.json.encode(request)).hexdigest()[:40]
        custom_id = f"{digest}-{self._seen[digest]}"
        self._seen[digest] += 1
        await self._quiet()
        result = self._results.get(custom_id)
        if isinstance(result, ProviderError):
            raise result
        if result is not None:
            return result
        if self._last_round:
            raise BatchRequestFailed(
                "the job reached its limit of batch rounds before this call",
                provider=self.name,
                reason="batch_rounds_exhausted",
            )
        self.pending[custom_id] = request
        raise Deferred("deferred to the next batch round", provider=self.name)

    async def _quiet(self) -> None:
        """Wait until no call has come for a moment, then answer all those waiting at once.

        A real call takes long enough for every lane to send its own before any reply is back; a
        reply given at once would let one lane run ahead and change what the others ask (their
        avoid-lists), so the run would ask for calls the ended rounds never held.
        """
        if self._wave is None:
            self._wave = asyncio.Event()
        wave = self._wave
        if self._timer is not None:
            self._timer.cancel()
        self._timer = asyncio.get_running_loop().call_later(QUIET_S, self._release)
        await wave.wait()

    def _release(self) -> None:
        if self._wave is not None:
            self._wave.set()
        self._wave, self._timer = None, None

    async def aclose(self) -> None:
        pass

    def describe(self) -> dict[str, str]:
        return self._inner.describe()


async def replay(
    job: Job,
    provider: Provider,
    results: Mapping[str, Completion | ProviderError],
    *,
    evaluate: Sandbox | None,
    retries: int,
    last_round: bool = False,
    price: ModelPrice | None = None,
    price_taken: str | None = None,
) -> tuple[GenerateResponse, dict[str, CompletionRequest]]:
    """Run the job on what the ended rounds answered: the response and the calls of the next round
    (none: the response is the job's). Costs are at the batch price (`price` × the discount)."""
    source = Replay(provider, results, last_round=last_round)
    events = run_job(
        job, source, evaluate=evaluate, retries=retries, via="batch", price=price, price_taken=price_taken
    )
    response = await collect(events)
    return response, source.pending


class Handle(msgspec.Struct, frozen=True, kw_only=True, array_like=True):
    """What a handle carries: array-like, so it stays short enough for a URL."""

    v: Literal[1] = 1
    provider: str
    spec_sha256: str
    caller: str
    batches: list[str]
    # Calls in the current round, for status replies that do not read the results.
    requests: int


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _mac(secret: bytes, payload: str) -> str:
    return _b64(hmac.new(secret, b"qasynth-batch-handle\x1f" + payload.encode(), hashlib.sha256).digest())


def sign_handle(handle: Handle, *, secret: bytes) -> str:
    payload = _b64(msgspec.json.encode(handle))
    return f"{payload}.{_mac(secret, payload)}"


def open_handle(text: str, *, secret: bytes, caller: str, spec_sha256: str | None = None) -> Handle:
    """The handle's content, once its signature, its caller and (when given) the spec's hash match."""
    payload, _, mac = text.partition(".")
    if not payload or not mac:
        raise InvalidInput("not a batch handle (expected payload.signature)", field="handle")
    if not hmac.compare_digest(mac, _mac(secret, payload)):
        raise Forbidden(
            "the batch handle's signature does not match: it was altered or made by another server"
        )
    try:
        handle = msgspec.json.decode(_unb64(payload), type=Handle)
    except (ValueError, msgspec.DecodeError) as exc:
        raise InvalidInput(f"unreadable batch handle: {exc}", field="handle") from None
    if handle.caller != caller:
        raise Forbidden("the batch handle belongs to another API key")
    if spec_sha256 is not None and spec_sha256 != handle.spec_sha256:
        raise InvalidInput(
            f"the spec does not match the batch handle's (spec_sha256 {spec_sha256[:12]}… "
            f"against {handle.spec_sha256[:12]}…): send the spec the job was submitted with",
            field="spec",
        )
    return handle
