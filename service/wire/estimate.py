"""POST /v1/estimate: what a spec would cost before anything is spent."""

from __future__ import annotations

from typing import Literal

from service.wire.base import Base
from service.wire.generate import Counts, Spec
from service.wire.pricing import ModelPrice

__all__ = ["CacheNote", "CostSpan", "Estimate", "EstimateRequest", "EstimateStep", "Span", "StepName"]

StepName = Literal["question", "snippet", "bug", "code_question", "answer", "repair"]


class EstimateRequest(Spec):
    """A /v1/generate spec, and optionally `observed`: the `counts` of an earlier job on the same
    model (from its response, its stream's `done` event or its report). Its cells tell how many calls
    an item of each task really took and how long the model's replies really were; the `expected`
    figures of those tasks then follow them instead of the built-in rates and the examples' lengths."""

    observed: Counts | None = None


class Span(Base):
    """A count under the estimate's three scenarios: every reply usable and kept (`low`), the
    drop, retry and repair rates measured on typical jobs (`expected`), and many drops and repairs
    (`high`, never past the cells' call budgets)."""

    low: int
    expected: int
    high: int


class CostSpan(Base):
    """US dollars under the same three scenarios; `low` with the `low` calls and the shortest replies."""

    low: float
    expected: float
    high: float


class EstimateStep(Base):
    """One step over the whole job. `input_tokens` are whole prompts; of them `cached_tokens` are
    expected from the provider's prompt cache and `cache_write_tokens` written to it."""

    step: StepName
    calls: Span
    input_tokens: Span
    cached_tokens: Span
    cache_write_tokens: Span
    output_tokens: Span
    cost_usd: CostSpan | None = None


class CacheNote(Base):
    """Whether one task's step has a prompt prefix the provider will cache: the tokens that are the
    same for every call (system prompt and framing) against the provider's minimum for the model."""

    task: str
    step: StepName
    prefix_tokens: int
    minimum_tokens: int
    cacheable: bool
    detail: str


class Estimate(Base):
    """What the spec's job would send and cost, from the prompts it would really render.

    `tokenizer` says how tokens were counted (`o200k_base`, `cl100k_base`; `calibrated` when the
    provider's own counter, Anthropic's count_tokens or llama.cpp's tokenizer, scaled them, else the
    approximation used). `cost_usd` is null when the model has no price (give `pricing`)."""

    provider: str
    model: str
    requested: int
    tokenizer: str
    steps: list[EstimateStep]
    calls: Span
    input_tokens: Span
    cached_tokens: Span
    cache_write_tokens: Span
    output_tokens: Span
    cost_usd: CostSpan | None = None
    cost_per_pair_usd: CostSpan | None = None
    price: ModelPrice | None = None
    price_taken: str | None = None
    cache: list[CacheNote] = []
    assumptions: dict[str, str] = {}
    # Per task, what `observed` gave: calls, input and output tokens against the estimate's own model.
    calibration: dict[str, str] = {}
