"""What the OpenAI and Anthropic providers share: one official SDK client, its retries off, and a lane
per model that paces, retries and guards every attempt (`limiter.Lane`)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from types import ModuleType
from typing import Any, TypeVar

from service.providers.base import Completion, classify_sdk_error
from service.providers.limiter import Adaptive, BreakerPolicy, Failure, Lane, LaneState, RetryPolicy
from service.settings import Settings

__all__ = ["SDKProvider", "lane_policies"]

T = TypeVar("T")


def lane_policies(settings: Settings) -> tuple[Adaptive, RetryPolicy, BreakerPolicy]:
    """The adaptive limit, retries and breaker the settings describe."""
    adaptive = Adaptive(
        initial=settings.concurrency,
        max=max(settings.concurrency, settings.concurrency_max),
    )
    retry = RetryPolicy(
        max_retries=settings.max_retries,
        max_throttled_retries=settings.max_throttled_retries,
        backoff_s=settings.retry_backoff_s,
        max_retry_after_s=settings.max_retry_after_s,
    )
    breaker = BreakerPolicy(failures=settings.breaker_failures, cooldown_s=settings.breaker_cooldown_s)
    return adaptive, retry, breaker


class SDKProvider:
    """`concurrency` is a fixed number of calls in flight per model (a local server that never
    rate-limits) or `Adaptive` bounds for AIMD. The client's own retries are turned off: the lane
    retries, so its limiter sees every 429 and 5xx."""

    name: str
    default_model: str
    _sdk: ModuleType

    def __init__(
        self,
        client: Any,
        *,
        name: str,
        default_model: str,
        concurrency: int | Adaptive,
        retry: RetryPolicy | None = None,
        breaker: BreakerPolicy | None = None,
    ) -> None:
        self.name = name
        self.default_model = default_model
        self._client = client.with_options(max_retries=0)
        self._concurrency = concurrency
        self._retry = retry or RetryPolicy()
        self._breaker = breaker if breaker is not None else BreakerPolicy()
        self._lanes: dict[str, Lane] = {}

    def lane(self, model: str) -> Lane:
        lane = self._lanes.get(model)
        if lane is None:
            lane = self._lanes[model] = Lane(
                provider=self.name,
                model=model,
                concurrency=self._concurrency,
                retry=self._retry,
                breaker=self._breaker,
            )
        return lane

    async def _call(self, model: str, attempt: Callable[[], Awaitable[Completion]]) -> Completion:
        return await self.lane(model).call(attempt, self._classify)

    async def _managed(self, send: Callable[[], Awaitable[T]]) -> T:
        """A call of the batch APIs (files, batches, results), paced and retried in a lane of its own."""
        return await self.lane("batches").call(send, self._classify)

    def _classify(self, exc: Exception) -> Failure | None:
        return classify_sdk_error(exc, sdk=self._sdk, provider=self.name)

    def lanes(self) -> list[LaneState]:
        return [lane.state() for lane in self._lanes.values()]

    async def aclose(self) -> None:
        await self._client.close()

    def describe(self) -> dict[str, str]:
        c = self._concurrency
        return {
            "base_url": str(self._client.base_url),
            "default_model": self.default_model,
            "concurrency": f"adaptive {c.min}–{c.max}, from {c.initial}"
            if isinstance(c, Adaptive)
            else str(c),
        }
