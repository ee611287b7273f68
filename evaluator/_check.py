"""An answer in, a `Check` out: extract the R code, run it, map the evidence back to the answer."""

from __future__ import annotations

from collections.abc import Hashable

from evaluator._extract import extract_code
from evaluator._types import Check, Runner, RunResult

__all__ = ["check_answer", "check_code"]


async def _run(runner: Runner, code: str, owner: Hashable | None) -> RunResult:
    # Runners that know nothing of owners keep working for callers that name none.
    return await (runner.run(code) if owner is None else runner.run(code, owner=owner))


async def check_code(runner: Runner, code: str, *, owner: Hashable | None = None) -> Check:
    """Run plain R code (no markdown)."""
    if not code.strip():
        return Check(verdict="no_code", message="the code is empty")
    result = await _run(runner, code, owner)
    return Check(
        verdict=result.verdict,
        code=code,
        blocks=1,
        message=result.message,
        failing_call=result.failing_call,
        line=result.line,
        answer_line=result.line,
        warnings=result.warnings,
        stdout=result.stdout,
        stdout_truncated=result.stdout_truncated,
        duration_ms=result.duration_ms,
    )


async def check_answer(runner: Runner, answer: str, *, owner: Hashable | None = None) -> Check:
    """Run the R code of a markdown answer; `no_code` when it has none."""
    extraction = extract_code(answer)
    if not extraction.code.strip():
        return Check(verdict="no_code", message="the answer has no R code block")
    result = await _run(runner, extraction.code, owner)
    message = result.message
    if result.verdict == "parse_error" and extraction.blocks and not extraction.blocks[-1].closed:
        message = f"{message} (the last code block is not closed: the answer looks cut off)"
    return Check(
        verdict=result.verdict,
        code=extraction.code,
        blocks=len(extraction.blocks),
        message=message,
        failing_call=result.failing_call,
        line=result.line,
        answer_line=extraction.answer_line(result.line),
        warnings=result.warnings,
        stdout=result.stdout,
        stdout_truncated=result.stdout_truncated,
        duration_ms=result.duration_ms,
    )
