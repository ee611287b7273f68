"""POST /v1/reports: a validation report over pairs, as JSON or as one self-contained HTML page."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

from service.wire.base import Base
from service.wire.evaluate import Evaluation
from service.wire.generate import MAX_TOTAL_COUNT, Pair

__all__ = ["Report", "ReportGroup", "ReportItem", "ReportRequest"]


class ReportRequest(Base):
    """Pairs to report on (a /v1/generate response's `pairs`).

    `evaluate`: `missing` runs the R code of pairs without an `evaluation`, `all` runs
    every pair again, `none` reports what the pairs already carry.
    """

    pairs: Annotated[list[Pair], msgspec.Meta(min_length=1, max_length=MAX_TOTAL_COUNT)]
    title: Annotated[str, msgspec.Meta(min_length=1, max_length=200)] = "R answer validation report"
    evaluate: Literal["missing", "all", "none"] = "missing"


class ReportGroup(Base):
    task: str
    theme: str
    total: int
    passed: int
    flagged: int
    verdicts: dict[str, int]


class ReportItem(Base):
    id: str
    task: str
    theme: str
    verdict: str
    flagged: bool
    question: str = ""
    evaluation: Evaluation | None = None


class Report(Base):
    """The summary and every item, flagged ones first. `verdicts` counts `unevaluated` too."""

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
