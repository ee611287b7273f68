"""POST /v1/reports: a validation report over pairs, as JSON or as one self-contained HTML page."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

from service.wire.base import Base
from service.wire.evaluate import CheckName, Evaluation, Quality
from service.wire.generate import MAX_TOTAL_COUNT, CheckCount, Pair

__all__ = ["Report", "ReportGroup", "ReportItem", "ReportRequest"]


class ReportRequest(Base):
    """Pairs to report on (a /v1/generate response's `pairs`).

    `evaluate`: `missing` runs the R code of pairs without an `evaluation`, `all` runs
    every pair again, `none` reports what the pairs already carry. A pair that is run gets the
    task-aware checks of its task too (built-in policy and conventions of its locale) when it
    carries none, or always under `all`.
    """

    pairs: Annotated[list[Pair], msgspec.Meta(min_length=1, max_length=MAX_TOTAL_COUNT)]
    title: Annotated[str, msgspec.Meta(min_length=1, max_length=200)] = "R answer validation report"
    evaluate: Literal["missing", "all", "none"] = "missing"


class ReportGroup(Base):
    """One task × theme: verdicts, each check's counts and pass rate, answers repaired from evidence,
    pairs that replaced a dropped item (`top_up`), and `diversity` (the mean over its questions of each
    one's highest ROUGE-L against the others; lower is more varied)."""

    task: str
    theme: str
    total: int
    passed: int
    flagged: int
    verdicts: dict[str, int]
    checks: dict[CheckName, CheckCount] = {}
    repaired: int = 0
    cost_usd: float | None = None
    cost_per_pair_usd: float | None = None
    top_up: int = 0
    diversity: float | None = None
    # The pairs' own model calls (provenance `cost_usd`); null unless every pair carries one.
    cost_usd: float | None = None
    cost_per_pair_usd: float | None = None


class ReportItem(Base):
    id: str
    task: str
    theme: str
    verdict: str
    flagged: bool
    question: str = ""
    evaluation: Evaluation | None = None
    quality: Quality | None = None


class Report(Base):
    """The summary and every item, flagged ones first. `verdicts` counts `unevaluated` too; `flagged`
    follows a pair's checks when it carries them, else its verdict; `checks` sums the groups'.
    `cost_usd` sums the pairs' own model calls (provenance `cost_usd`), `cost_per_pair_usd` divides it by
    the pairs; null unless every pair carries a cost. (A generate job's `counts.cost_per_returned_pair_usd`
    also charges the items it dropped on the way.)"""

    title: str
    generated_at: str
    total: int
    passed: int
    flagged: int
    unevaluated: int
    pass_rate: float
    verdicts: dict[str, int]
    groups: list[ReportGroup]
    items: list[ReportItem]
    sandbox: dict[str, str] = {}
    checks: dict[CheckName, CheckCount] = {}
    repaired: int = 0
    cost_usd: float | None = None
    cost_per_pair_usd: float | None = None
