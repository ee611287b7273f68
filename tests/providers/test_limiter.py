"""The lane's arithmetic and behaviour: AIMD limits, Retry-After pauses, the breaker, the retry loop."""

from __future__ import annotations

import asyncio
import email.utils
import time

import pytest

from service.errors import ProviderRejected, ProviderUnavailable
from service.providers.limiter import (
    Adaptive,
    Breaker,
    BreakerPolicy,
    CircuitOpen,
    Failure,
    Lane,
    Limiter,
    Paused,
    RetryPolicy,
    parse_retry_after,
)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def fill(limiter: Limiter, n: int) -> list:
    return [await limiter.acquire() for _ in range(n)]


# -- parse_retry_after


def test_retry_after_prefers_milliseconds_then_seconds_then_a_date() -> None:
    assert parse_retry_after({"retry-after-ms": "250", "retry-after": "3"}) == 0.25
    assert parse_retry_after({"retry-after": "3"}) == 3.0
    assert parse_retry_after({"retry-after": "1.5"}) == 1.5
    date = email.utils.formatdate(time.time() + 30, usegmt=True)
    assert 28 <= parse_retry_after({"retry-after": date}) <= 31  # type: ignore[operator]
    assert parse_retry_after({}) is None
    assert parse_retry_after({"retry-after": "soon"}) is None
    assert parse_retry_after({"retry-after": "-4"}) is None
    assert parse_retry_after({"retry-after-ms": "nan", "retry-after": "2"}) == 2.0


# -- Limiter arithmetic


async def test_a_throttle_cuts_to_floor_of_decrease_times_limit() -> None:
    limiter = Limiter(Adaptive(initial=20, max=64, decrease=0.9), clock=Clock())
    tickets = await fill(limiter, 20)
    limiter.release(tickets[0], "throttled", retry_after_s=0)
    assert limiter.limit == 18  # floor(0.9 × 20) = 18 < 20 outstanding - 1
    limiter = Limiter(Adaptive(initial=20, max=64, decrease=0.75), clock=Clock())
    tickets = await fill(limiter, 20)
    limiter.release(tickets[0], "throttled", retry_after_s=0)
    assert limiter.limit == 15


async def test_a_throttle_cuts_once_per_episode() -> None:
    limiter = Limiter(Adaptive(initial=16, max=64, decrease=0.9), clock=Clock())
    tickets = await fill(limiter, 16)
    for t in tickets[:8]:  # eight 429s to calls sent together: one cut
        limiter.release(t, "throttled", retry_after_s=0)
    assert limiter.limit == 14
    again = await fill(limiter, 6)  # 8 still out + 6 = 14: a new episode
    limiter.release(again[0], "throttled", retry_after_s=0)
    assert limiter.limit == 12  # floor(0.9 × 14)
    limiter.release(tickets[8], "throttled", retry_after_s=0)  # an answer from before that cut
    assert limiter.limit == 12


async def test_a_step_up_answered_by_a_429_doubles_the_wait_for_the_next() -> None:
    limiter = Limiter(Adaptive(initial=5, max=64, decrease=0.8, increase_after=3), clock=Clock())

    async def binding_successes(n: int) -> None:
        for _ in range(n):
            ts = await fill(limiter, limiter.limit)  # the last call of each round fills the limit
            for t in ts:
                limiter.release(t, "ok")

    async def throttle() -> None:
        [t] = await fill(limiter, 1)
        limiter.release(t, "throttled", retry_after_s=0)

    await throttle()  # the lane's first 429 ends its start-up: floor(0.8 × 5) = 4
    assert limiter.limit == 4
    await binding_successes(2)
    assert limiter.limit == 4
    await binding_successes(1)
    assert limiter.limit == 5  # a step up
    await throttle()  # … answered by a 429: floor(0.8 × 5) = 4, and the next step needs 6
    assert limiter.limit == 4
    await binding_successes(5)
    assert limiter.limit == 4
    await binding_successes(1)
    assert limiter.limit == 5
    await throttle()  # again: 12 needed now
    await binding_successes(11)
    assert limiter.limit == 4
    await binding_successes(1)
    assert limiter.limit == 5
    await binding_successes(12)  # that step held: the next needs 3 again
    assert limiter.limit == 6
    await binding_successes(3)
    assert limiter.limit == 7
    # Steps answered by 429s again and again: 6, 12, 24, and never more than 8 × 3 = 24.
    for needed in (6, 12, 24, 24):
        await throttle()
        before = limiter.limit
        await binding_successes(needed - 1)
        assert limiter.limit == before
        await binding_successes(1)
        assert limiter.limit == before + 1


async def test_an_overload_cuts_once_per_episode_and_never_below_min() -> None:
    limiter = Limiter(Adaptive(initial=10, min=2, max=64, decrease=0.5), clock=Clock())
    first = await fill(limiter, 10)
    for t in first:  # a burst of 5xx to calls of one episode: one cut
        limiter.release(t, "overload")
    assert limiter.limit == 5
    for _ in range(4):  # each new episode cuts again, down to min
        [t] = await fill(limiter, 1)
        limiter.release(t, "overload")
    assert limiter.limit == 2


async def rounds(limiter: Limiter, n: int) -> None:
    """n rounds that each fill the limit: the last call of a round is sent while the limit binds."""
    for _ in range(n):
        ts = await fill(limiter, limiter.limit)
        for t in ts:
            limiter.release(t, "ok")


async def test_growth_is_quick_until_the_first_429_then_one_per_increase_after() -> None:
    limiter = Limiter(Adaptive(initial=8, max=12, decrease=0.9, increase_after=5), clock=Clock())
    await rounds(limiter, 1)
    assert limiter.limit == 8  # start-up: ⌈8 / 4⌉ = 2 binding successes a step
    await rounds(limiter, 1)
    assert limiter.limit == 9
    await rounds(limiter, 3)  # ⌈9 / 4⌉ = 3
    assert limiter.limit == 10
    [t] = await fill(limiter, 1)
    limiter.release(t, "throttled", retry_after_s=0)
    assert limiter.limit == 9  # floor(0.9 × 10); the step to 10 was answered by a 429: 10 needed now
    await rounds(limiter, 9)
    assert limiter.limit == 9
    await rounds(limiter, 1)
    assert limiter.limit == 10
    await rounds(limiter, 10)  # that step held: back to 5 a step
    assert limiter.limit == 11
    await rounds(limiter, 5)
    assert limiter.limit == 12
    await rounds(limiter, 50)
    assert limiter.limit == 12  # capped at max


async def test_successes_that_never_fill_the_limit_do_not_grow_it() -> None:
    limiter = Limiter(Adaptive(initial=4, max=64, increase_after=2), clock=Clock())
    for _ in range(50):
        [t] = await fill(limiter, 1)  # 1 of 4 in flight: the limit is not what holds calls back
        limiter.release(t, "ok")
    assert limiter.limit == 4


async def test_successes_of_calls_sent_before_a_cut_do_not_count_toward_growth() -> None:
    limiter = Limiter(Adaptive(initial=4, max=64, increase_after=3), clock=Clock())
    old = await fill(limiter, 4)
    limiter.release(old[0], "throttled", retry_after_s=0)  # cut to 3, a new episode
    assert limiter.limit == 3
    for t in old[1:]:
        limiter.release(t, "ok")
    assert limiter.limit == 3
    await rounds(limiter, 2)
    assert limiter.limit == 3
    await rounds(limiter, 1)
    assert limiter.limit == 4


async def test_a_fixed_limit_never_moves() -> None:
    limiter = Limiter(3, clock=Clock())
    ts = await fill(limiter, 3)
    limiter.release(ts[0], "throttled", retry_after_s=0)
    limiter.release(ts[1], "overload")
    limiter.release(ts[2], "ok")
    await rounds(limiter, 30)
    assert (limiter.limit, limiter.max_limit, limiter.adaptive) == (3, 3, False)


def test_adaptive_bounds_are_checked() -> None:
    with pytest.raises(ValueError, match="min <= initial <= max"):
        Adaptive(initial=10, max=5)
    with pytest.raises(ValueError, match="decrease"):
        Adaptive(decrease=1.0)
    with pytest.raises(ValueError, match="at least 1"):
        Limiter(0)


# -- Limiter behaviour


async def test_waiters_are_served_in_arrival_order_and_a_cancelled_one_leaks_no_slot() -> None:
    limiter = Limiter(1)
    first = await limiter.acquire()
    order: list[int] = []

    async def take(i: int) -> None:
        t = await limiter.acquire()
        order.append(i)
        await asyncio.sleep(0)
        limiter.release(t, "ok")

    tasks = [asyncio.create_task(take(i)) for i in range(4)]
    await asyncio.sleep(0)
    tasks[1].cancel()
    limiter.release(first, "ok")
    await asyncio.gather(*tasks, return_exceptions=True)
    assert order == [0, 2, 3]
    assert limiter.in_flight == 0 and limiter.queued == 0


async def test_a_throttle_pauses_new_calls_until_its_retry_after() -> None:
    limiter = Limiter(Adaptive(initial=4, max=8))
    [t] = await fill(limiter, 1)
    limiter.release(t, "throttled", retry_after_s=0.3)
    assert 0.25 < limiter.paused_for() <= 0.3
    started = time.monotonic()
    again = await limiter.acquire()
    assert time.monotonic() - started >= 0.28
    limiter.release(again, "ok")


async def test_a_throttle_without_retry_after_pauses_for_the_default() -> None:
    limiter = Limiter(Adaptive(initial=4, max=8, pause_s=0.2))
    [t] = await fill(limiter, 1)
    limiter.release(t, "throttled")
    assert 0.15 < limiter.paused_for() <= 0.2
    # A failure without a Retry-After pauses nobody: only its own call backs off.
    limiter = Limiter(Adaptive(initial=4, max=8, pause_s=0.2))
    [t] = await fill(limiter, 1)
    limiter.release(t, "overload")
    assert limiter.paused_for() == 0


async def test_a_pause_longer_than_a_call_may_wait_fails_waiters_and_newcomers() -> None:
    limiter = Limiter(1, max_pause_s=5)
    held = await limiter.acquire()
    waiter = asyncio.create_task(limiter.acquire())
    await asyncio.sleep(0)
    limiter.release(held, "throttled", retry_after_s=3600)
    with pytest.raises(Paused):
        await waiter
    with pytest.raises(Paused):
        await limiter.acquire()


# -- Breaker


async def test_breaker_opens_after_consecutive_failures_and_a_success_resets_the_count() -> None:
    breaker = Breaker(BreakerPolicy(failures=3, cooldown_s=10), clock=Clock())
    breaker.record("failed", probe=False)
    breaker.record("failed", probe=False)
    breaker.record("ok", probe=False)
    breaker.record("failed", probe=False)
    breaker.record("failed", probe=False)
    assert breaker.state == "closed" and breaker.failures == 2
    breaker.record("neutral", probe=False)  # a 429 is neither
    breaker.record("failed", probe=False)
    assert breaker.state == "open" and breaker.probe_in() == 10


async def test_open_breaker_lets_one_probe_through_after_the_cool_down() -> None:
    breaker = Breaker(BreakerPolicy(failures=1, cooldown_s=0.2))
    breaker.note_cause(ProviderUnavailable("503 from the openai API: down", provider="openai"))
    breaker.record("failed", probe=False)
    assert breaker.state == "open"
    started = time.monotonic()
    callers = [asyncio.create_task(breaker.admit()) for _ in range(2)]
    done, waiting = await asyncio.wait(callers, return_when=asyncio.FIRST_COMPLETED)
    [probe] = done
    assert probe.result() is True  # the probe, after the cool-down
    assert time.monotonic() - started >= 0.19 and breaker.state == "half_open"
    await asyncio.sleep(0.05)
    [other] = waiting
    assert not other.done()  # waits for the probe's outcome
    breaker.record("ok", probe=True)
    assert await other is False
    assert breaker.state == "closed"


async def test_probe_success_closes_and_failure_reopens_for_twice_as_long() -> None:
    breaker = Breaker(BreakerPolicy(failures=1, cooldown_s=0.1, max_cooldown_s=0.3))
    breaker.note_cause(ProviderUnavailable("503 from the openai API: down", provider="openai"))
    breaker.record("failed", probe=False)
    probe = await breaker.admit()
    assert probe is True and breaker.state == "half_open"
    waiter = asyncio.create_task(breaker.admit())
    await asyncio.sleep(0.01)
    assert not waiter.done()  # one probe at a time
    breaker.record("failed", probe=True)
    assert breaker.state == "open" and 0.15 < breaker.probe_in() <= 0.2  # type: ignore[operator]
    with pytest.raises(CircuitOpen, match="down"):
        await waiter  # a failed probe fails the calls that waited for it …
    with pytest.raises(CircuitOpen, match=r"failed 2 attempts in a row .* next probe in 0\.\d s"):
        await breaker.admit()  # … and those that come before the next probe, at once
    await asyncio.sleep(0.2)
    probe = await breaker.admit()
    breaker.record("failed", probe=True)
    assert 0.25 < breaker.probe_in() <= 0.3  # type: ignore[operator]  # doubled, capped at max
    await asyncio.sleep(0.3)
    probe = await breaker.admit()
    waiter = asyncio.create_task(breaker.admit())
    await asyncio.sleep(0.01)
    breaker.record("ok", probe=True)
    assert await waiter is False
    assert breaker.state == "closed" and breaker.failures == 0


async def test_a_rejected_key_opens_the_breaker_at_once_and_calls_fail_fast() -> None:
    breaker = Breaker(BreakerPolicy(failures=5, cooldown_s=30))
    rejected = ProviderRejected("401 from the openai API: Incorrect API key provided", provider="openai")
    breaker.note_cause(rejected)
    breaker.record("rejected", probe=False)
    assert breaker.state == "open"
    started = time.monotonic()
    with pytest.raises(ProviderRejected, match="Incorrect API key"):
        await breaker.admit()
    assert time.monotonic() - started < 0.05


# -- Lane: the retry loop


def failure(kind: str, status: int, *, retry_after_s: float | None = None, overload: bool = False) -> Failure:
    cls = ProviderRejected if kind in ("rejected", "invalid") else ProviderUnavailable
    return Failure(
        kind=kind,  # type: ignore[arg-type]
        error=cls(f"{status} from the fake API: scripted", provider="fake"),
        retry_after_s=retry_after_s,
        overload=overload,
    )


class Script:
    """A stand-in for one HTTP attempt: raises the scripted failures in turn, then succeeds."""

    def __init__(self, *failures: Failure) -> None:
        self.failures = list(failures)
        self.attempts = 0

    async def send(self) -> str:
        self.attempts += 1
        if self.failures:
            raise _Scripted(self.failures.pop(0))
        return "ok"

    @staticmethod
    def classify(exc: Exception) -> Failure | None:
        return exc.failure if isinstance(exc, _Scripted) else None


class _Scripted(Exception):
    def __init__(self, failure: Failure) -> None:
        self.failure = failure


def lane(**retry: float) -> tuple[Lane, list[float]]:
    slept: list[float] = []

    async def sleep(s: float) -> None:
        slept.append(s)

    policy = RetryPolicy(**{"max_retries": 3, "max_throttled_retries": 5, "backoff_s": 0.1, **retry})  # type: ignore[arg-type]
    return (
        Lane(
            provider="fake",
            model="m",
            concurrency=Adaptive(initial=4, max=8, pause_s=0.01),
            retry=policy,
            breaker=BreakerPolicy(failures=10, cooldown_s=0.1),
            sleep=sleep,
        ),
        slept,
    )


async def test_failed_attempts_back_off_exponentially_and_then_succeed() -> None:
    la, slept = lane()
    script = Script(*(failure("failed", 500, overload=True) for _ in range(3)))
    assert await la.call(script.send, script.classify) == "ok"
    assert script.attempts == 4
    # 0.1, 0.2, 0.4 s, each less up to 25 % jitter.
    assert len(slept) == 3 and all(0.75 * 0.1 * 2**i <= s <= 0.1 * 2**i for i, s in enumerate(slept))
    state = la.state()
    assert (state.calls, state.failed, state.throttled, state.breaker) == (4, 3, 0, "closed")


async def test_failed_attempts_give_up_after_max_retries_naming_the_count() -> None:
    la, _ = lane()
    script = Script(*(failure("failed", 503, overload=True) for _ in range(10)))
    with pytest.raises(ProviderUnavailable, match=r"503 from the fake API: scripted \(after 4 attempts\)"):
        await la.call(script.send, script.classify)
    assert script.attempts == 4


async def test_throttled_attempts_have_their_own_budget_and_wait_in_the_pause() -> None:
    la, slept = lane()
    script = Script(*(failure("throttled", 429, retry_after_s=0.02) for _ in range(5)))
    started = time.monotonic()
    assert await la.call(script.send, script.classify) == "ok"
    assert script.attempts == 6 and slept == []  # no backoff sleeps: the limiter's pause paced them
    assert time.monotonic() - started >= 5 * 0.02 * 0.9
    assert la.state().throttled == 5 and la.state().breaker == "closed"
    script = Script(*(failure("throttled", 429, retry_after_s=0.0) for _ in range(9)))
    with pytest.raises(ProviderUnavailable, match="after 6 attempts"):
        await la.call(script.send, script.classify)


async def test_rejected_and_invalid_are_not_retried() -> None:
    la, _ = lane()
    script = Script(failure("invalid", 400))
    with pytest.raises(ProviderRejected, match="400"):
        await la.call(script.send, script.classify)
    assert script.attempts == 1 and la.state().breaker == "closed"
    script = Script(failure("rejected", 401))
    with pytest.raises(ProviderRejected, match="401"):
        await la.call(script.send, script.classify)
    assert script.attempts == 1 and la.state().breaker == "open"
    # The next call fails at once without an attempt.
    fresh = Script()
    with pytest.raises(ProviderRejected, match="401"):
        await la.call(fresh.send, fresh.classify)
    assert fresh.attempts == 0


async def test_a_retry_after_beyond_the_limit_fails_the_call() -> None:
    la, _ = lane(max_retry_after_s=5)
    script = Script(failure("throttled", 429, retry_after_s=120))
    with pytest.raises(ProviderUnavailable, match="429"):
        await la.call(script.send, script.classify)
    fresh = Script()
    with pytest.raises(ProviderUnavailable, match="asked to wait 120 s"):
        await la.call(fresh.send, fresh.classify)
    assert fresh.attempts == 0


async def test_an_exception_that_is_not_the_apis_propagates_and_frees_the_slot() -> None:
    la, _ = lane()

    async def broken() -> str:
        raise KeyError("a bug, not a fault")

    with pytest.raises(KeyError):
        await la.call(broken, Script.classify)
    assert la.limiter.in_flight == 0


async def test_a_cancelled_call_frees_its_slot_and_its_probe() -> None:
    la, _ = lane()
    la.breaker.note_cause(ProviderUnavailable("503", provider="fake"))
    for _ in range(10):
        la.breaker.record("failed", probe=False)
    assert la.breaker.state == "open"

    async def hang() -> str:
        await asyncio.sleep(10)
        return "late"

    task = asyncio.create_task(la.call(hang, Script.classify))
    await asyncio.sleep(0.15)  # past the cool-down: this call is the probe, in flight
    assert la.breaker.state == "half_open" and la.limiter.in_flight == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert la.limiter.in_flight == 0
    ok = Script()
    assert await la.call(ok.send, ok.classify) == "ok"  # another call may probe
    assert la.breaker.state == "closed"


async def test_calls_wait_out_a_burst_but_fail_fast_once_a_probe_has_failed() -> None:
    la, _ = lane(max_retries=1)
    la.breaker.policy = BreakerPolicy(failures=2, cooldown_s=0.05)
    down = Script(*(failure("failed", 503, overload=True) for _ in range(100)))
    results = await asyncio.gather(
        *(la.call(down.send, down.classify) for _ in range(6)), return_exceptions=True
    )
    assert all(isinstance(r, ProviderUnavailable) for r in results)
    # Six calls with two attempts each would be 12; the open breaker kept most of them away.
    assert down.attempts < 12
    assert la.state().breaker == "open"
    started = time.monotonic()
    with pytest.raises(CircuitOpen, match="503 from the fake API"):
        await la.call(down.send, down.classify)
    assert time.monotonic() - started < 0.02
    # A burst that ends: calls wait for the probe, which succeeds, and all of them go through.
    la, _ = lane()
    la.breaker.policy = BreakerPolicy(failures=3, cooldown_s=0.05)
    burst = Script(*(failure("failed", 500, overload=True) for _ in range(3)))
    results = await asyncio.gather(*(la.call(burst.send, burst.classify) for _ in range(6)))
    assert results == ["ok"] * 6 and la.state().breaker == "closed"
