"""R evaluation results and settings: POST /v1/evaluate and a pair's `evaluation`."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

from evaluator import Verdict
from service.wire.base import Base, Id

__all__ = [
    "CHECK_NAMES",
    "MAX_EVALUATE_ITEMS",
    "CheckName",
    "EvaluateRequest",
    "EvaluateResponse",
    "Evaluation",
    "EvaluationSettings",
    "Quality",
    "QualityCheck",
    "Severity",
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


CheckName = Literal[
    "question_has_code",
    "question_code_runs",
    "question_code_broken",
    "question_locale",
    "answer_code_runs",
    "answer_changes_code",
    "answer_fixes_output",
    "answer_locale",
    "output_shown_matches",
    "prints_right_thing",
    "lint_style",
    "lint_undefined",
    "lint_library",
]
"""The checks a pair can carry; docs/quality.md says what each one looks at."""

CHECK_NAMES: tuple[CheckName, ...] = CheckName.__args__  # type: ignore[attr-defined]

Severity = Literal["block", "warn", "off"]
"""What a failed check does: `block` flags the pair (repair, then `on_failure`), `warn` only records it,
`off` does not run it."""


class QualityCheck(Base):
    """One named check of a question or an answer, with what it saw."""

    name: CheckName
    passed: bool
    blocking: bool
    evidence: str = ""


class Quality(Base):
    """The task-aware checks of a pair. `flagged` when a blocking check failed; `skipped` says which
    checks could not run and why (no sandbox, lintr not installed, too little prose to judge)."""

    flagged: bool
    checks: list[QualityCheck] = []
    skipped: list[str] = []

    def failed(self) -> list[CheckName]:
        return [c.name for c in self.checks if not c.passed]


class EvaluationSettings(Base):
    """`on_failure`: what happens to a pair still flagged after repair: `flag` returns it with the
    evidence, `drop` leaves it out and the cell asks for another. `repair_attempts`: further answer calls
    a flagged answer gets, each shown its previous answer and the evidence. `policy`: per task id (or
    `"*"` for every task), which checks block, warn or are off, over the built-in policy."""

    enabled: bool = True
    on_failure: Literal["flag", "drop"] = "flag"
    repair_attempts: Annotated[int, msgspec.Meta(ge=0, le=5)] = 2
    policy: Annotated[dict[str, dict[CheckName, Severity]], msgspec.Meta(max_length=51)] = {}


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
