"""R evaluation results and settings: POST /v1/evaluate and a pair's `evaluation`."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

from evaluator import Verdict
from service.wire.base import Base, Id

__all__ = [
    "MAX_EVALUATE_ITEMS",
    "EvaluateRequest",
    "EvaluateResponse",
    "Evaluation",
    "EvaluationSettings",
    "Snippet",
    "SnippetResult",
    "Verdict",
]

MAX_EVALUATE_ITEMS = 5_000


class Evaluation(Base):
    """What happened when the answer's R code ran in the sandbox.

    `flagged` is the policy's reading of the verdict (no_code passes for explain
    tasks, fails for write/fix tasks); exports and the drop policy use it.
    The evidence: `message` (R's error, or which limit was hit), `failing_call`,
    `line` (1-based, in `code`: where the failing expression starts, or what was
    running when the snippet was stopped) and `answer_line` (the same line in the
    answer's markdown), `warnings`, and the start of what the code printed.
    """

    verdict: Verdict
    flagged: bool
    message: str | None = None
    failing_call: str | None = None
    line: int | None = None
    answer_line: int | None = None
    warnings: list[str] = []
    stdout: str = ""
    stdout_truncated: bool = False
    duration_ms: float = 0.0
    code: str = ""
    blocks: int = 0


class EvaluationSettings(Base):
    enabled: bool = True
    on_failure: Literal["flag", "drop"] = "flag"


class Snippet(Base):
    """Plain R code to run; it is never flagged for having no code unless it is empty."""

    id: Id
    code: Annotated[str, msgspec.Meta(max_length=100_000)]


class EvaluateRequest(Base):
    """`pairs` (their markdown answers' R code blocks are run; `task` decides whether an answer
    without code is flagged) and/or `snippets` of plain R. At least one item in all."""

    pairs: Annotated[list[_generate.Pair], msgspec.Meta(max_length=MAX_EVALUATE_ITEMS)] = []
    snippets: Annotated[list[Snippet], msgspec.Meta(max_length=MAX_EVALUATE_ITEMS)] = []


class SnippetResult(Base):
    id: str
    evaluation: Evaluation


class EvaluateResponse(Base):
    """The pairs back, each with its new `evaluation`, and one result per snippet, both in request
    order; `counts` by verdict over all items."""

    pairs: list[_generate.Pair]
    snippets: list[SnippetResult]
    counts: dict[str, int]
    flagged: int
    elapsed_s: float


# `Pair` lives in generate, which imports this module for `Evaluation`: the annotations above
# name it through the module and are resolved on first use, when both modules are complete.
from service.wire import generate as _generate  # noqa: E402
