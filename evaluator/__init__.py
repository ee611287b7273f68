"""Runs the R code of answers in a sandbox and says what happened.

    start_runner(...) -> WorkerPool      warm, sandboxed R workers (bubblewrap + rlimits)
    WorkerPool.run(code) -> RunResult    one snippet: a verdict and its evidence
    check_answer(runner, markdown)       extract the answer's R code, run it -> Check
    extract_code(markdown) -> Extraction
    FakeRunner                           scripted results, for tests of code that uses a runner
    build_report / render_html           a validation report over many checked answers

Bad R is data (a verdict); only a sandbox that cannot run at all raises
`SandboxUnavailable` (`QueueFull` when too many snippets wait). This package never imports the service.
"""

from evaluator._check import check_answer, check_code
from evaluator._extract import CodeBlock, Extraction, extract_code
from evaluator._pool import WorkerPool, start_runner
from evaluator._report import (
    CheckTally,
    QualityMark,
    Report,
    ReportEntry,
    ReportGroup,
    build_report,
    render_html,
)
from evaluator._types import (
    CODE_OPTIONAL_TASKS,
    Check,
    Limits,
    QueueFull,
    Runner,
    RunResult,
    RunVerdict,
    SandboxUnavailable,
    Verdict,
    is_flagged,
)
from evaluator.fake import FakeRunner

__all__ = [
    "CODE_OPTIONAL_TASKS",
    "Check",
    "CheckTally",
    "CodeBlock",
    "Extraction",
    "FakeRunner",
    "Limits",
    "QualityMark",
    "QueueFull",
    "Report",
    "ReportEntry",
    "ReportGroup",
    "RunResult",
    "RunVerdict",
    "Runner",
    "SandboxUnavailable",
    "Verdict",
    "WorkerPool",
    "build_report",
    "check_answer",
    "check_code",
    "extract_code",
    "is_flagged",
    "render_html",
    "start_runner",
]
