"""Who is calling and how much they may do: API keys, per-key quotas, and the middleware applying both.

    Authorization: Bearer <key> ─► SHA-256 ─► hmac.compare_digest against every configured digest
        missing or malformed ─► 401 (WWW-Authenticate: Bearer)
        unknown, or its `scopes` leave out the route's group ─► 403
    per key:  requests per minute (moving window) ─────────────► 429 + Retry-After
              jobs in flight (routes marked `job`, until the last byte of the response, streams included)
                                                    ─────────────► 429 + Retry-After
              sandbox snippets in flight ─► `Caller.runner(runner)`: the key's extra snippets wait their turn

The middleware sits on the router of every route but /health and the OpenAPI document; routes say what
they need in `opt`: `scope` (the route group a key's `scopes` must include) and `job=True`. Without
configured keys every caller is `anonymous`, with the default quotas. Only digests are kept, so the
configuration holds nothing that lets anyone call the service.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import math
import re
import time
from collections import Counter, OrderedDict, deque
from collections.abc import AsyncIterator, Hashable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from typing import Any

from limits import RateLimitItemPerMinute
from limits.storage import MemoryStorage
from limits.strategies import MovingWindowRateLimiter
from litestar import Request
from litestar.enums import ScopeType
from litestar.middleware import ASGIMiddleware
from litestar.types import ASGIApp, Receive, Scope, Send

from service.errors import Forbidden, QuotaExceeded, Unauthenticated
from service.settings import ApiKey, Settings

__all__ = ["ANONYMOUS", "Caller", "Gate", "GateMiddleware", "QuotaRunner", "TurnSlots", "provide_caller"]

ANONYMOUS = "anonymous"
# A job's end cannot be foreseen: a client refused for jobs in flight is asked to come back after this.
JOB_RETRY_AFTER_S = 5
# RFC 6750 b64token.
_BEARER = re.compile(r"^Bearer +([A-Za-z0-9\-._~+/]+=*) *$", re.IGNORECASE)


@dataclass(frozen=True)
class Quota:
    requests_per_minute: int
    jobs: int
    snippets: int


class TurnSlots:
    """At most `size` holders at once. Waiters of different owners are let in by turns, an owner's
    own waiters in arrival order, so one request's thousand snippets cannot starve another's one
    while both wait for the same key's quota (the pool behind takes turns the same way)."""

    def __init__(self, size: int) -> None:
        self._free = size
        self._waiting: OrderedDict[Hashable, deque[asyncio.Future[None]]] = OrderedDict()

    @asynccontextmanager
    async def hold(self, owner: Hashable) -> AsyncIterator[None]:
        if self._free > 0 and not self._waiting:
            self._free -= 1
        else:
            turn: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._waiting.setdefault(owner, deque()).append(turn)
            try:
                await turn
            except asyncio.CancelledError:
                if turn.done() and not turn.cancelled():
                    self._release()  # handed the slot as it was cancelled: pass it on
                else:
                    queue = self._waiting.get(owner)
                    if queue is not None:
                        queue.remove(turn)
                        if not queue:
                            del self._waiting[owner]
                raise
        try:
            yield
        finally:
            self._release()

    def _release(self) -> None:
        while self._waiting:
            owner, queue = self._waiting.popitem(last=False)
            turn = queue.popleft()
            if queue:
                self._waiting[owner] = queue  # its next waiter goes to the back of the turns
            if not turn.done():
                turn.set_result(None)
                return
        self._free += 1


class QuotaRunner:
    """The evaluator's runner as one caller sees it: at most its `snippets` quota of snippets at once,
    the requests of the caller taking turns for them.

    Stages only call `run` and `describe`; the pool itself belongs to the runtime, so `aclose` is a no-op.
    """

    def __init__(self, runner: Any, slots: TurnSlots) -> None:
        self._runner = runner
        self._slots = slots

    async def run(self, code: str, *, owner: Hashable | None = None) -> Any:
        async with self._slots.hold(owner):
            return await self._runner.run(code, owner=owner)

    def describe(self) -> dict[str, str]:
        return self._runner.describe()

    async def aclose(self) -> None:
        return None


@dataclass(frozen=True)
class Caller:
    """The authenticated caller of one request (`request.user`); `name` is the key's label."""

    name: str
    quota: Quota
    scopes: frozenset[str] | None
    _snippet_slots: TurnSlots

    def runner(self, runner: Any) -> QuotaRunner:
        return QuotaRunner(runner, self._snippet_slots)


class Gate:
    """The keys and every caller's quota state, for one process. `start` binds it to the serving loop."""

    def __init__(self, settings: Settings) -> None:
        self._keys: list[tuple[ApiKey, bytes]] = [(k, bytes.fromhex(k.sha256)) for k in settings.api_keys]
        self._default = Quota(
            requests_per_minute=settings.quota_requests_per_minute,
            jobs=settings.quota_jobs,
            snippets=settings.quota_snippets,
        )
        self.start()

    @property
    def enabled(self) -> bool:
        return bool(self._keys)

    def start(self) -> None:
        """Fresh counters: called when the app starts, so semaphores belong to the loop that serves."""
        self._limiter = MovingWindowRateLimiter(MemoryStorage())
        self._jobs: Counter[str] = Counter()
        self._callers: dict[str, Caller] = {}

    def _quota(self, key: ApiKey | None) -> Quota:
        if key is None:
            return self._default
        return Quota(
            requests_per_minute=(
                key.requests_per_minute
                if key.requests_per_minute is not None
                else self._default.requests_per_minute
            ),
            jobs=key.jobs if key.jobs is not None else self._default.jobs,
            snippets=key.snippets if key.snippets is not None else self._default.snippets,
        )

    def _caller(self, key: ApiKey | None) -> Caller:
        name = key.name if key is not None else ANONYMOUS
        caller = self._callers.get(name)
        if caller is None:
            quota = self._quota(key)
            scopes = frozenset(key.scopes) if key is not None and key.scopes is not None else None
            caller = Caller(name, quota, scopes, TurnSlots(quota.snippets))
            self._callers[name] = caller
        return caller

    def identify(self, authorization: str | None) -> Caller:
        """The caller an `Authorization` header names; raises `Unauthenticated` or `Forbidden`."""
        if not self._keys:
            return self._caller(None)
        if not authorization:
            raise Unauthenticated("this route needs an API key: send `Authorization: Bearer <key>`")
        m = _BEARER.match(authorization)
        if m is None:
            raise Unauthenticated("the Authorization header must be `Bearer <key>`", error="invalid_request")
        digest = hashlib.sha256(m.group(1).encode()).digest()
        found: ApiKey | None = None
        for key, expected in self._keys:  # every digest is compared, so the time says nothing of which
            if hmac.compare_digest(digest, expected):
                found = key
        if found is None:
            raise Forbidden("unknown API key")
        return self._caller(found)

    def admit(self, caller: Caller, *, scope: str | None) -> None:
        """One request of `caller` to a route of group `scope`: allowed, or why not."""
        if scope is not None and caller.scopes is not None and scope not in caller.scopes:
            raise Forbidden(f"the key {caller.name!r} is not allowed to use {scope} routes")
        rpm = caller.quota.requests_per_minute
        if rpm == 0:
            return
        item = RateLimitItemPerMinute(rpm)
        if not self._limiter.hit(item, caller.name):
            reset = self._limiter.get_window_stats(item, caller.name).reset_time
            wait = max(1, math.ceil(reset - time.time()))
            raise QuotaExceeded(
                f"{caller.name!r} has used its {rpm} requests a minute; retry in {wait} s", retry_after_s=wait
            )

    @contextmanager
    def job(self, caller: Caller) -> Iterator[None]:
        """Holds one of the caller's job slots for as long as the block runs."""
        limit = caller.quota.jobs
        if limit and self._jobs[caller.name] >= limit:
            raise QuotaExceeded(
                f"{caller.name!r} already has {limit} jobs in flight, its quota; retry when one has finished",
                retry_after_s=JOB_RETRY_AFTER_S,
            )
        self._jobs[caller.name] += 1
        try:
            yield
        finally:
            self._jobs[caller.name] -= 1


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key.lower() == name:
            return value.decode("latin-1")
    return None


class GateMiddleware(ASGIMiddleware):
    """Applies the gate before a route runs; a job's slot is released only after the response is sent."""

    scopes = (ScopeType.HTTP,)

    def __init__(self, gate: Gate) -> None:
        self.gate = gate

    async def handle(self, scope: Scope, receive: Receive, send: Send, next_app: ASGIApp) -> None:
        opt = scope["route_handler"].opt
        caller = self.gate.identify(_header(scope, b"authorization"))
        self.gate.admit(caller, scope=opt.get("scope"))
        scope["user"] = caller
        if not opt.get("job"):
            await next_app(scope, receive, send)
            return
        with self.gate.job(caller):
            await next_app(scope, receive, send)


def provide_caller(request: Request[Any, Any, Any]) -> Caller:
    return request.scope["user"]  # type: ignore[no-any-return]
