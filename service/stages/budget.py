"""A job-wide spending limit (`budget.usd`, `budget.tokens`), enforced before each call.

Every attempt reserves what it could cost at most before it is sent: its prompt (counted as in
`tokens.py`; for providers whose tokenizer is not OpenAI's, a quarter more), none of it cached and
all of it billed at the dearer of the input and cache-write prices, plus `max_tokens` of output.
A call whose reservation would take spent + reserved past the limit is not made
(`BudgetExhausted`); when a call returns, its reservation gives way to what it really cost. So the
job never spends past its budget, however many calls are in flight.
"""

from __future__ import annotations

import math
import threading

from service.errors import BudgetExhausted
from service.pricing import cost_of
from service.providers.base import Completion, CompletionRequest, Provider
from service.stages.tokens import encoding_for, request_tokens
from service.wire.base import Usage
from service.wire.pricing import ModelPrice

__all__ = ["BudgetedProvider", "JobBudget"]

# Our count of a prompt for a tokenizer we only approximate, times this, bounds the real count.
APPROXIMATE_MARGIN = 1.25


class JobBudget:
    def __init__(
        self, *, usd: float | None, tokens: int | None, price: ModelPrice | None, provider: str, model: str
    ) -> None:
        self.usd, self.tokens = usd, tokens
        self.price = price
        self.provider, self.encoding = provider, encoding_for(provider, model)
        self.spent = Usage()
        self.spent_usd = 0.0
        self._held_usd = 0.0
        self._held_tokens = 0
        self._lock = threading.Lock()

    def _bound(self, request: CompletionRequest) -> tuple[float, int]:
        prompt = request_tokens(request, self.provider, self.encoding)
        if self.provider != "openai":
            prompt = math.ceil(prompt * APPROXIMATE_MARGIN)
        tokens = prompt + request.max_tokens
        usd = 0.0
        if self.price is not None:
            dearest = max(self.price.input, self.price.cache_write or 0.0)
            usd = (prompt * dearest + request.max_tokens * self.price.output) / 1_000_000
        return usd, tokens

    def reserve(self, request: CompletionRequest) -> tuple[float, int]:
        usd, tokens = self._bound(request)
        with self._lock:
            spent_tokens = self.spent.input_tokens + self.spent.output_tokens
            if self.tokens is not None and spent_tokens + self._held_tokens + tokens > self.tokens:
                raise BudgetExhausted(
                    f"the next call could need {tokens} tokens; {spent_tokens} of the budget's {self.tokens} "
                    f"are spent and {self._held_tokens} held by calls in flight",
                    provider=self.provider,
                    limit="tokens",
                )
            if self.usd is not None and self.spent_usd + self._held_usd + usd > self.usd:
                raise BudgetExhausted(
                    f"the next call could cost ${usd:.6f}; ${self.spent_usd:.6f} of the budget's ${self.usd} "
                    f"are spent and ${self._held_usd:.6f} held by calls in flight",
                    provider=self.provider,
                    limit="usd",
                )
            self._held_usd += usd
            self._held_tokens += tokens
        return usd, tokens

    def settle(self, held: tuple[float, int], usage: Usage | None) -> None:
        """The call is over: release what it held, and count what it cost (None: it failed unbilled)."""
        with self._lock:
            self._held_usd -= held[0]
            self._held_tokens -= held[1]
            if usage is not None:
                self.spent = self.spent + usage
                self.spent_usd += cost_of(usage, self.price) or 0.0


class BudgetedProvider:
    """The job's provider, with each call paid for from the budget first."""

    def __init__(self, inner: Provider, budget: JobBudget) -> None:
        self.inner = inner
        self.budget = budget
        self.name = inner.name
        self.default_model = inner.default_model

    async def complete(self, request: CompletionRequest) -> Completion:
        held = self.budget.reserve(request)
        usage = None
        try:
            completion = await self.inner.complete(request)
            usage = completion.usage
            return completion
        finally:
            self.budget.settle(held, usage)

    async def aclose(self) -> None:
        """The inner provider belongs to the app, not to the job."""

    def describe(self) -> dict[str, str]:
        return self.inner.describe()
