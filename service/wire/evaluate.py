"""R evaluation results and settings: POST /v1/evaluate and a pair's `evaluation`."""

from __future__ import annotations

from typing import Literal

from service.wire.base import Base

__all__ = ["Evaluation", "EvaluationSettings", "Verdict"]

Verdict = Literal[
    "passed",
    "parse_error",
    "runtime_error",
    "timeout",
    "memory_limit",
    "output_limit",
    "killed",
    "no_code",
]


class Evaluation(Base):
    """What happened when the answer's R code ran in the sandbox.

    `flagged` is the policy's reading of the verdict (no_code passes for explain
    tasks, fails for write/fix tasks); exports and the drop policy use it.
    """

    verdict: Verdict
    flagged: bool
    message: str | None = None
    failing_call: str | None = None
    warnings: list[str] = []
    stdout: str = ""
    stdout_truncated: bool = False
    duration_ms: float = 0.0
    code: str = ""


class EvaluationSettings(Base):
    enabled: bool = True
    on_failure: Literal["flag", "drop"] = "flag"
