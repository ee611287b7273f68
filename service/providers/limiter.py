"""Calls to one provider and model (a *lane*) that survive rate limits and outages.

    Lane.call(send, classify)
      ├─ Breaker.admit     closed: go · open: wait out the cool-down, then one caller probes ·
      │                    open on a rejected key or after a failed probe: fail at once
      ├─ Limiter.acquire   at most `limit` calls in flight, none while paused for Retry-After
      ├─ send()            one HTTP attempt (the SDKs' own retries are off, so every 429 is seen here)
      └─ classify(exc)     → Failure: throttled (429) · failed (5xx, 529, timeout, dropped connection,
                             unreadable body) · rejected (bad or revoked key, exhausted quota) ·
                             invalid (the request itself is wrong)

The limit follows AIMD. A throttle or an overload signal (429, 529, 5xx, a timeout) cuts it to
floor(decrease × limit), at least `min`, once per episode: answers to calls sent before the last cut
do not cut again, since they report the load that cut already answered. Every `increase_after`
successes of calls sent while the limit was the bottleneck grow it by one, up to `max`; until its
first 429 a lane needs only ⌈limit / 4⌉ of them, so a fresh lane finds the server's capacity quickly
when `initial` was set low. A step up that a 429 answers doubles the successes the next step needs
(up to 8 × `increase_after`), so a limit that has found the server's capacity stops knocking on it;
a step that holds resets that. A 429 pauses new calls on the lane until its Retry-After
(`retry-after-ms` first, then `retry-after` in seconds or as a date; `pause_s` when the server gives
none); so does a 5xx that names one.

The breaker counts consecutive failed attempts (not throttles). At `failures` it opens: no call
reaches the provider until `cooldown_s` has passed, then a single call probes while the others wait,
so a burst of errors costs a pause, not the items. A success closes the breaker. A failed probe opens
it again for twice as long (up to `max_cooldown_s`) and fails the waiting calls: the provider is
down, and until a later probe succeeds every call fails at once (`CircuitOpen`) instead of hanging.
A rejected key (401, 403, an exhausted quota) opens the breaker at once, and every call fails fast
with that rejection until a probe after the cool-down succeeds.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import math
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Literal, TypeVar

import msgspec

from service.errors import ProviderError, ProviderRejected, ProviderUnavailable

__all__ = [
    "Adaptive",
    "Breaker",
    "BreakerPolicy",
    "CircuitOpen",
    "Failure",
    "Lane",
    "LaneState",
    "Limiter",
    "Paused",
    "RetryPolicy",
    "parse_retry_after",
]

T = TypeVar("T")
Clock = Callable[[], float]


class Adaptive(msgspec.Struct, frozen=True, kw_only=True):
    """AIMD bounds and steps. A plain int instead of this means a fixed limit (a local server)."""

    initial: int = 16
    min: int = 1
    max: int = 64
    decrease: float = 0.9
    increase_after: int = 25
    # Pause of the lane after a 429 that names no Retry-After.
    pause_s: float = 1.0

    def __post_init__(self) -> None:
        if not 1 <= self.min <= self.initial <= self.max:
            raise ValueError(f"need 1 <= min <= initial <= max, got {self.min}, {self.initial}, {self.max}")
        if not 0 < self.decrease < 1:
            raise ValueError(f"decrease must lie strictly between 0 and 1, got {self.decrease}")
        if self.increase_after < 1:
            raise ValueError("increase_after must be at least 1")


class RetryPolicy(msgspec.Struct, frozen=True, kw_only=True):
    # Retries of failed attempts (5xx, 529, timeouts, dropped connections, unreadable bodies).
    max_retries: int = 4
    # Retries of throttled attempts (429): the limiter paces them, so they get a budget of their own.
    max_throttled_retries: int = 20
    # Exponential backoff of failed attempts: backoff_s, 2 × backoff_s, … up to max_backoff_s, less up to 25 % jitter.
    backoff_s: float = 0.5
    max_backoff_s: float = 8.0
    # A server asking for a longer wait than this fails the call instead.
    max_retry_after_s: float = 60.0

    def backoff(self, failed: int) -> float:
        delay = min(self.backoff_s * 2 ** (failed - 1), self.max_backoff_s)
        return delay * (1 - 0.25 * random.random())


class BreakerPolicy(msgspec.Struct, frozen=True, kw_only=True):
    failures: int = 5
    cooldown_s: float = 5.0
    max_cooldown_s: float = 60.0


FailureKind = Literal["throttled", "failed", "rejected", "invalid"]


@dataclass(frozen=True)
class Failure:
    """What one failed attempt means for the lane; `error` is what the caller sees if it is the last."""

    kind: FailureKind
    error: ProviderError
    retry_after_s: float | None = None
    # A sign of load (5xx, 529, timeouts) that cuts the limit; a 429 always does.
    overload: bool = False


class CircuitOpen(ProviderUnavailable):
    """The lane's breaker is open and its last probe failed: the call fails without an attempt."""


class LaneState(msgspec.Struct, frozen=True, kw_only=True):
    """What /ready reports about one provider and model."""

    provider: str
    model: str
    adaptive: bool
    limit: int
    max_limit: int
    in_flight: int
    queued: int
    breaker: Literal["closed", "open", "half_open"]
    consecutive_failures: int
    calls: int
    throttled: int
    failed: int
    paused_s: float = 0.0
    probe_in_s: float | None = None
    last_error: str | None = None


def parse_retry_after(headers: Mapping[str, str], *, now: float | None = None) -> float | None:
    """Seconds to wait from `retry-after-ms`, else `retry-after` (seconds or an HTTP date); None if absent."""
    raw = headers.get("retry-after-ms")
    if raw is not None:
        try:
            value = float(raw) / 1000
        except ValueError:
            value = math.nan
        if math.isfinite(value) and value >= 0:
            return value
    raw = headers.get("retry-after")
    if raw is None:
        return None
    try:
        value = float(raw)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(raw)
        except (TypeError, ValueError):
            return None
        return max(0.0, when.timestamp() - (time.time() if now is None else now))
    return value if math.isfinite(value) and value >= 0 else None


@dataclass(frozen=True)
class Ticket:
    """A slot in flight: the episode it was sent in, and whether the limit was the bottleneck then."""

    epoch: int
    binding: bool


class Paused(Exception):
    """The lane is paused for longer than a call may wait."""

    def __init__(self, seconds: float) -> None:
        super().__init__(f"paused for {seconds:.1f} s")
        self.seconds = seconds


class Limiter:
    """Calls in flight on one lane, adaptive (AIMD) or fixed; waiters are served first come, first served."""

    def __init__(
        self, concurrency: int | Adaptive, *, clock: Clock = time.monotonic, max_pause_s: float = math.inf
    ) -> None:
        if isinstance(concurrency, int):
            if concurrency < 1:
                raise ValueError(f"concurrency must be at least 1, got {concurrency}")
            self.policy: Adaptive | None = None
            self.limit = self.max_limit = concurrency
        else:
            self.policy = concurrency
            self.limit, self.max_limit = concurrency.initial, concurrency.max
        self.in_flight = 0
        self.max_pause_s = max_pause_s
        self._clock = clock
        self._paused_until = 0.0
        self._epoch = 0
        self._successes = 0
        self._increase_after = concurrency.increase_after if isinstance(concurrency, Adaptive) else 0
        self._step_pending = False
        self._throttled_ever = False
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._timer: asyncio.TimerHandle | None = None

    @property
    def adaptive(self) -> bool:
        return self.policy is not None

    @property
    def queued(self) -> int:
        return sum(1 for w in self._waiters if not w.done())

    def paused_for(self) -> float:
        return max(0.0, self._paused_until - self._clock())

    async def acquire(self) -> Ticket:
        """A slot, in arrival order; raises `Paused` when the lane is paused longer than `max_pause_s`."""
        paused = self.paused_for()
        if paused > self.max_pause_s:
            raise Paused(paused)
        self._drop_gone()
        if not self._waiters and not paused and self.in_flight < self.limit:
            self.in_flight += 1
        else:
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            self._wake()
            try:
                await waiter
            except asyncio.CancelledError:
                if waiter.done() and not waiter.cancelled():
                    # The slot was handed over just as the caller gave up: pass it on.
                    self.in_flight -= 1
                    self._wake()
                raise
        return Ticket(epoch=self._epoch, binding=self.in_flight >= self.limit or bool(self._waiters))

    def release(
        self,
        ticket: Ticket,
        outcome: Literal["ok", "throttled", "overload", "neutral"],
        *,
        retry_after_s: float | None = None,
    ) -> None:
        """Free the slot and learn from how its call ended (see the module docstring)."""
        self.in_flight -= 1
        policy = self.policy
        if policy is not None:
            if outcome == "ok":
                if ticket.binding and ticket.epoch == self._epoch:
                    self._successes += 1
                    needed = self._increase_after
                    if not self._throttled_ever:
                        needed = min(needed, math.ceil(self.limit / 4))
                    if self._successes >= needed and self.limit < self.max_limit:
                        if self._step_pending:  # the last step held
                            self._increase_after = policy.increase_after
                        self._successes = 0
                        self._step_pending = True
                        self.limit += 1
            elif outcome in ("throttled", "overload") and ticket.epoch == self._epoch:
                self._throttled_ever = self._throttled_ever or outcome == "throttled"
                if outcome == "throttled" and self._step_pending:
                    self._increase_after = min(self._increase_after * 2, 8 * policy.increase_after)
                self._step_pending = False
                self._epoch += 1
                self._successes = 0
                self.limit = max(policy.min, math.floor(policy.decrease * self.limit))
        pause = retry_after_s
        if pause is None and outcome == "throttled":
            pause = policy.pause_s if policy is not None else 1.0
        if pause:
            self._paused_until = max(self._paused_until, self._clock() + pause)
            if pause > self.max_pause_s:
                for waiter in self._waiters:
                    if not waiter.done():
                        waiter.set_exception(Paused(pause))
                self._waiters.clear()
        self._wake()

    def _drop_gone(self) -> None:
        while self._waiters and self._waiters[0].done():
            self._waiters.popleft()

    def _wake(self) -> None:
        """Hand free slots to waiters in order, unless paused; a timer resumes after a pause."""
        self._drop_gone()
        if not self._waiters:
            return
        paused = self.paused_for()
        if paused:
            if self._timer is None:
                self._timer = asyncio.get_running_loop().call_later(paused, self._resume)
            return
        while self._waiters and self.in_flight < self.limit:
            waiter = self._waiters.popleft()
            if waiter.done():
                continue
            self.in_flight += 1
            waiter.set_result(None)

    def _resume(self) -> None:
        self._timer = None
        self._wake()


BreakerStateName = Literal["closed", "open", "half_open"]


class Breaker:
    """Consecutive failed attempts on one lane open it; see the module docstring for the states."""

    def __init__(self, policy: BreakerPolicy | None, *, clock: Clock = time.monotonic) -> None:
        self.policy = policy
        self.state: BreakerStateName = "closed"
        self.failures = 0
        self.cause: ProviderError | None = None
        self._clock = clock
        self._cooldown = policy.cooldown_s if policy else 0.0
        self._probe_at = 0.0
        self._probing = False
        self._round = 0  # how many times it has opened
        self._failed_probes = 0  # since it last closed
        self._changed = asyncio.Event()

    def probe_in(self) -> float | None:
        if self.state != "open":
            return None
        return max(0.0, self._probe_at - self._clock())

    async def admit(self) -> bool:
        """Wait until a call may go; True when this call is the half-open probe.

        Raises the rejection itself while a rejected key holds the breaker open, and `CircuitOpen`
        once a probe has failed.
        """
        seen = self._round
        while True:
            if self.state == "closed":
                return False
            if self._round != seen:
                raise self._open_error()
            if self.state == "open":
                wait = self._probe_at - self._clock()
                if wait > 0 and (self._failed_probes or isinstance(self.cause, ProviderRejected)):
                    raise self._open_error()
                if wait <= 0:
                    self.state = "half_open"
                    self._probing = True
                    self._notify()
                    return True
                await self._wait(wait)
            elif not self._probing:
                self._probing = True
                return True
            else:
                await self._wait(None)

    def record(self, outcome: Literal["ok", "failed", "rejected", "neutral"], *, probe: bool) -> None:
        policy = self.policy
        if policy is None:
            return
        if outcome == "ok":
            self.failures = 0
            if self.state != "closed" and (probe or self.state == "half_open"):
                self.state = "closed"
                self._cooldown = policy.cooldown_s
                self._failed_probes = 0
                self.cause = None
                self._probing = False
                self._notify()
            return
        if outcome == "neutral":
            if probe:
                self._probing = False
                self._notify()
            return
        self.failures += 1
        if self.state == "half_open" and probe:
            self._cooldown = min(self._cooldown * 2, policy.max_cooldown_s)
            self._failed_probes += 1
            self._open()
        elif self.state == "closed" and (outcome == "rejected" or self.failures >= policy.failures):
            self._open()

    def note_cause(self, error: ProviderError) -> None:
        self.cause = error

    def _open(self) -> None:
        self.state = "open"
        self._probing = False
        self._probe_at = self._clock() + self._cooldown
        self._round += 1
        self._notify()

    def _open_error(self) -> ProviderError:
        cause = self.cause
        if isinstance(cause, ProviderRejected):
            return cause
        last = f" (last: {cause.detail})" if cause is not None else ""
        provider = cause.provider if cause is not None else "provider"
        return CircuitOpen(
            f"the {provider} API failed {self.failures} attempts in a row and a probe after the cool-down "
            f"failed too{last}; next probe in {self.probe_in() or 0:.1f} s",
            provider=provider,
        )

    async def _wait(self, seconds: float | None) -> None:
        """Until the state changes, or `seconds` pass."""
        event = self._changed
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), seconds)

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()


class Lane:
    """One provider and model: the limiter, the breaker and the retry loop around each attempt."""

    def __init__(
        self,
        *,
        provider: str,
        model: str,
        concurrency: int | Adaptive,
        retry: RetryPolicy,
        breaker: BreakerPolicy | None,
        clock: Clock = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.provider = provider
        self.model = model
        self.retry = retry
        self.limiter = Limiter(concurrency, clock=clock, max_pause_s=retry.max_retry_after_s)
        self.breaker = Breaker(breaker, clock=clock)
        self._sleep = sleep
        self.calls = 0
        self.throttled = 0
        self.failed = 0
        self.last_error: str | None = None

    async def call(
        self, send: Callable[[], Awaitable[T]], classify: Callable[[Exception], Failure | None]
    ) -> T:
        """`send` makes one attempt; `classify` reads what its exception means (None: not the API's,
        raised as it is). Raises a `ProviderError` when the call cannot succeed."""
        failed = throttled = 0
        while True:
            probe = await self.breaker.admit()
            outcome: Literal["ok", "failed", "rejected", "neutral"] = "neutral"
            try:
                try:
                    ticket = await self.limiter.acquire()
                except Paused as exc:
                    raise ProviderUnavailable(
                        f"the {self.provider} API asked to wait {exc.seconds:.0f} s, longer than the "
                        f"{self.retry.max_retry_after_s:.0f} s a call may wait; last: {self.last_error}",
                        provider=self.provider,
                    ) from None
                if self.breaker.state != "closed" and not probe:
                    # The breaker opened while this call queued: wait for the probe like everyone else.
                    self.limiter.release(ticket, "neutral")
                    continue
                self.calls += 1
                try:
                    result = await send()
                except Exception as exc:
                    failure = classify(exc)
                    if failure is None:
                        self.limiter.release(ticket, "neutral")
                        raise
                except BaseException:
                    self.limiter.release(ticket, "neutral")
                    raise
                else:
                    self.limiter.release(ticket, "ok")
                    outcome = "ok"
                    return result
                self.last_error = failure.error.detail
                if failure.kind == "throttled":
                    self.throttled += 1
                    throttled += 1
                    self.limiter.release(ticket, "throttled", retry_after_s=failure.retry_after_s)
                elif failure.kind == "failed":
                    self.failed += 1
                    failed += 1
                    signal = "overload" if failure.overload else "neutral"
                    self.limiter.release(ticket, signal, retry_after_s=failure.retry_after_s)
                    self.breaker.note_cause(failure.error)
                    outcome = "failed"
                else:
                    self.failed += 1
                    self.limiter.release(ticket, "neutral")
                    if failure.kind == "rejected":
                        self.breaker.note_cause(failure.error)
                        outcome = "rejected"
                    raise failure.error
            finally:
                self.breaker.record(outcome, probe=probe)
            if throttled > self.retry.max_throttled_retries or failed > self.retry.max_retries:
                error = failure.error
                raise type(error)(
                    f"{error.detail} (after {failed + throttled} attempts)", provider=error.provider
                ) from error
            wait = failure.retry_after_s
            if wait is not None and wait > self.retry.max_retry_after_s:
                raise failure.error
            if failure.kind == "failed" and wait is None:
                await self._sleep(self.retry.backoff(failed))
            # Throttled calls, and those told a Retry-After, wait in the limiter's pause.

    def state(self) -> LaneState:
        probe_in = self.breaker.probe_in()
        return LaneState(
            provider=self.provider,
            model=self.model,
            adaptive=self.limiter.adaptive,
            limit=self.limiter.limit,
            max_limit=self.limiter.max_limit,
            in_flight=self.limiter.in_flight,
            queued=self.limiter.queued,
            breaker=self.breaker.state,
            consecutive_failures=self.breaker.failures,
            calls=self.calls,
            throttled=self.throttled,
            failed=self.failed,
            paused_s=round(self.limiter.paused_for(), 3),
            probe_in_s=None if probe_in is None else round(probe_in, 3),
            last_error=self.last_error,
        )
