"""The checks themselves: a question or an answer in, named checks with their evidence out.

R runs only through the sandbox the caller hands in; prose and output comparison are text work done
off the event loop. A check that cannot run (no sandbox, no lintr, too little prose) is left out and
named in `skipped`, never passed by default.
"""

from __future__ import annotations

import asyncio
import re
from typing import TYPE_CHECKING

import msgspec

import evaluator
from service.stages.quality._locale import judge_locale
from service.stages.quality._markdown import shown_output
from service.stages.quality._output import compare_output
from service.stages.quality._policy import Policy, linters_for
from service.stages.quality._rcode import Finding, Inspection, Lint, inspect_snippet, parse_inspection
from service.wire.evaluate import CheckName, Evaluation, Quality, QualityCheck

if TYPE_CHECKING:
    # Only its type: stages.evaluate imports this package to check the pairs of a report.
    from service.stages.evaluate import Sandbox

__all__ = [
    "AnswerChecks",
    "QuestionFacts",
    "check_answer",
    "check_question",
    "combine",
    "says_output_is_wrong",
]

_SAYS_WRONG = re.compile(
    r"\b(wrong|incorrect|unexpected|expected|should (?:be|print|give|return|show)|instead of|not what|"
    r"doesn't match|does not match|different)\b|間違|誤り|誤った|おかしい|期待|はず|違う|正しい|正しくな|予想|本来",
    re.I,
)
_FAILED_TO_RUN = frozenset({"parse_error", "runtime_error"})
MAX_EVIDENCE_ITEMS = 5


class QuestionFacts(msgspec.Struct, frozen=True):
    """What the answer checks need to know of the question: the R code it shows and how that ran."""

    code: str = ""
    run: Evaluation | None = None
    says_output_wrong: bool = False


class AnswerChecks(msgspec.Struct, frozen=True):
    checks: list[QualityCheck]
    skipped: list[str]


def says_output_is_wrong(question: str) -> bool:
    return bool(_SAYS_WRONG.search(question))


def _check(policy: Policy, name: CheckName, passed: bool, evidence: str) -> QualityCheck:
    return QualityCheck(name=name, passed=passed, blocking=policy.blocks(name), evidence=evidence)


def _run_evidence(ev: Evaluation) -> str:
    parts = [ev.verdict]
    if ev.message:
        parts.append(ev.message.strip())
    if ev.line is not None:
        parts.append(f"at line {ev.line}" + (f": {ev.failing_call}" if ev.failing_call else ""))
    return " — ".join(parts)


def _finding(f: Finding) -> str:
    # The rewrite is named because small models repair what they are shown, not what they are told.
    return f"{f.what}: {f.call}" + (f" — write {f.fix} instead" if f.fix else "")


def _normalised(code: str) -> str:
    return "\n".join(" ".join(line.split()) for line in code.splitlines() if line.strip())


def combine(*parts: AnswerChecks) -> Quality:
    checks = [c for p in parts for c in p.checks]
    skipped = [s for p in parts for s in p.skipped]
    return Quality(flagged=any(c.blocking and not c.passed for c in checks), checks=checks, skipped=skipped)


async def check_question(
    sandbox: Sandbox | None,
    *,
    task: str,
    kind: str | None,
    locale: str,
    question: str,
    policy: Policy,
    known_run: Evaluation | None = None,
) -> tuple[AnswerChecks, QuestionFacts]:
    """The question checks of the task. `known_run` is the question code's run when the caller ran
    exactly that code already (the code-first steps do)."""
    checks: list[QualityCheck] = []
    skipped: list[str] = []
    code = evaluator.extract_code(question).code
    says_wrong = says_output_is_wrong(question)
    if policy.applies("question_locale"):
        passed, evidence = await asyncio.to_thread(judge_locale, question, locale)
        if passed is None:
            skipped.append(f"question_locale: {evidence}")
        else:
            checks.append(_check(policy, "question_locale", passed, evidence))
    if policy.applies("question_has_code"):
        checks.append(
            _check(
                policy,
                "question_has_code",
                bool(code.strip()),
                f"{len(code.splitlines())} lines of R in a fenced block"
                if code.strip()
                else "the question shows no R code in a fenced block",
            )
        )
    run = known_run if known_run is not None and known_run.code == code else None
    wants_run = policy.applies("question_code_runs") or policy.applies("question_code_broken")
    if code.strip() and run is None and (wants_run or kind == "fix"):
        if sandbox is None:
            skipped.append("question_code_runs/broken: evaluation is off, so the question's code was not run")
        else:
            run = await sandbox.code(task, code)
    if run is not None and code.strip():
        if policy.applies("question_code_runs"):
            checks.append(
                _check(
                    policy,
                    "question_code_runs",
                    run.verdict == "passed",
                    "the code runs" if run.verdict == "passed" else _run_evidence(run),
                )
            )
        if policy.applies("question_code_broken"):
            if run.verdict in _FAILED_TO_RUN:
                checks.append(_check(policy, "question_code_broken", True, "R stops: " + _run_evidence(run)))
            elif run.verdict == "passed" and says_wrong:
                checks.append(
                    _check(
                        policy,
                        "question_code_broken",
                        True,
                        "the code runs, and the question says its output is wrong",
                    )
                )
            else:
                checks.append(
                    _check(
                        policy,
                        "question_code_broken",
                        False,
                        "the code runs without an error and the question does not say its output is wrong: "
                        "there is nothing to fix"
                        if run.verdict == "passed"
                        else f"the code does not fail with an error but ends in {run.verdict}",
                    )
                )
    elif not code.strip() and policy.applies("question_code_broken"):
        checks.append(_check(policy, "question_code_broken", False, "the question shows no R code"))
    return AnswerChecks(checks=checks, skipped=skipped), QuestionFacts(
        code=code, run=run, says_output_wrong=says_wrong
    )


def _shown_output_check(policy: Policy, answer: str, evaluation: Evaluation) -> QualityCheck | None:
    shown = shown_output(answer)
    if not shown:
        return None
    problems = []
    compared = 0
    for block in shown:
        passed, evidence = compare_output(block.text, evaluation.stdout)
        compared += 1
        if not passed:
            problems.append(f"{block.where}: {evidence}")
    if problems:
        return _check(policy, "output_shown_matches", False, "\n".join(problems[:2]))
    note = " (the printed output was cut, only its start was compared)" if evaluation.stdout_truncated else ""
    return _check(
        policy, "output_shown_matches", True, f"{compared} shown output block(s) match what ran{note}"
    )


def _static_answer(
    policy: Policy, locale: str, answer: str, evaluation: Evaluation | None
) -> tuple[list[QualityCheck], list[str]]:
    checks: list[QualityCheck] = []
    skipped: list[str] = []
    if policy.applies("answer_locale"):
        passed, evidence = judge_locale(answer, locale)
        if passed is None:
            skipped.append(f"answer_locale: {evidence}")
        else:
            checks.append(_check(policy, "answer_locale", passed, evidence))
    if policy.applies("output_shown_matches"):
        if evaluation is None:
            if shown_output(answer):
                skipped.append(
                    "output_shown_matches: evaluation is off, so there is no real output to compare"
                )
        else:
            check = _shown_output_check(policy, answer, evaluation)
            if check is not None:
                checks.append(check)
    return checks, skipped


def _lint_checks(
    policy: Policy, code: str, linters: list[str], inspection: Inspection
) -> tuple[list[QualityCheck], list[str]]:
    if not inspection.lint_ran:
        return [], [f"lint_*: {inspection.lint_problem or 'lintr did not finish'}"]
    lines = code.split("\n")

    def shown(lints: list[Lint]) -> str:
        items = []
        for lint in lints[:MAX_EVIDENCE_ITEMS]:
            source = lines[lint.line - 1].strip() if 0 < lint.line <= len(lines) else ""
            items.append(f"line {lint.line}: {lint.message}" + (f" ({source})" if source else ""))
        more = f"; and {len(lints) - MAX_EVIDENCE_ITEMS} more" if len(lints) > MAX_EVIDENCE_ITEMS else ""
        return "; ".join(items) + more

    checks = []
    groups: list[tuple[CheckName, bool, list[Lint]]] = [
        (
            "lint_style",
            "assignment" in linters or "names" in linters,
            [x for x in inspection.lints if x.linter in ("assignment", "names")],
        ),
        (
            "lint_undefined",
            True,
            [x for x in inspection.lints if x.linter == "usage" and "no visible" in x.message],
        ),
        ("lint_library", "library" in linters, [x for x in inspection.lints if x.linter == "library"]),
    ]
    for name, chosen, found in groups:
        if not chosen or not policy.applies(name):
            continue
        checks.append(_check(policy, name, not found, shown(found) if found else "lintr found nothing"))
    return checks, []


async def check_answer(
    sandbox: Sandbox | None,
    *,
    task: str,
    kind: str | None,
    locale: str,
    conventions: str,
    question: QuestionFacts,
    answer: str,
    evaluation: Evaluation | None,
    policy: Policy,
) -> AnswerChecks:
    """The answer checks of the task, given the answer's evaluation (None when evaluation is off)."""
    checks, skipped = await asyncio.to_thread(_static_answer, policy, locale, answer, evaluation)
    if evaluation is None:
        skipped.append("answer_code_runs, prints_right_thing, lint_*: evaluation is off")
        return AnswerChecks(checks=checks, skipped=skipped)
    code = evaluation.code
    if policy.applies("answer_code_runs"):
        if evaluation.verdict == "passed":
            checks.append(_check(policy, "answer_code_runs", True, "the code runs"))
        elif evaluation.verdict == "no_code" and kind == "explain":
            checks.append(_check(policy, "answer_code_runs", True, "no code: the explanation is prose"))
        else:
            checks.append(_check(policy, "answer_code_runs", False, _run_evidence(evaluation)))
    if kind == "fix" and policy.applies("answer_changes_code"):
        if not code.strip():
            checks.append(_check(policy, "answer_changes_code", False, "the answer shows no code"))
        elif question.code and _normalised(code) == _normalised(question.code):
            checks.append(
                _check(
                    policy, "answer_changes_code", False, "the answer's code is the question's code unchanged"
                )
            )
        else:
            checks.append(
                _check(policy, "answer_changes_code", True, "the answer's code differs from the question's")
            )
    if (
        kind == "fix"
        and policy.applies("answer_fixes_output")
        and question.run is not None
        and question.run.verdict == "passed"
        and evaluation.verdict == "passed"
    ):
        same = " ".join(evaluation.stdout.split()) == " ".join(question.run.stdout.split())
        checks.append(
            _check(
                policy,
                "answer_fixes_output",
                not same,
                "the fixed code prints the same as the question's code"
                if same
                else "the fixed code prints something else than the question's code",
            )
        )
    wants_lint = any(policy.applies(n) for n in ("lint_style", "lint_undefined", "lint_library"))
    wants_probe = policy.applies("prints_right_thing")
    if code.strip() and sandbox is not None and (wants_lint or wants_probe):
        linters = linters_for(conventions) if wants_lint else []
        snippet, marker = inspect_snippet(code, linters=linters, probe=wants_probe)
        result = await sandbox.run(snippet)
        inspection = parse_inspection(result.stdout, marker)
        if linters:
            more, notes = _lint_checks(policy, code, linters, inspection)
            checks += more
            skipped += notes
        if wants_probe:
            if inspection.probe_ran:
                found = inspection.findings
                evidence = (
                    "; ".join(_finding(f) for f in found[:MAX_EVIDENCE_ITEMS])
                    if found
                    else "print() and cat() were given what they print well"
                )
                checks.append(_check(policy, "prints_right_thing", not found, evidence))
            else:
                skipped.append("prints_right_thing: the code could not be parsed for the probe")
    return AnswerChecks(checks=checks, skipped=skipped)
