"""Which checks each task gets, and which of them block: one declared policy per task kind.

A blocking check that fails flags the pair (its answer is repaired, then `on_failure` decides);
a warning is recorded and does nothing else; `off` does not run. A spec overrides the built-in
policy per task id, or for every task with `"*"` (the task's own entry wins).
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import msgspec

from service.wire.evaluate import CheckName, Severity

__all__ = ["BUILT_IN", "Policy", "linters_for", "policy_for"]

_EVERY_ANSWER: dict[CheckName, Severity] = {
    "answer_code_runs": "block",
    "answer_locale": "block",
    "output_shown_matches": "block",
    "prints_right_thing": "block",
    "lint_undefined": "block",
    "lint_library": "block",
    "lint_style": "warn",
}

BUILT_IN: dict[str | None, dict[CheckName, Severity]] = {
    "explain": {
        "question_has_code": "block",
        "question_code_runs": "block",
        "question_locale": "block",
        **_EVERY_ANSWER,
    },
    "fix": {
        "question_has_code": "block",
        "question_code_broken": "block",
        "question_locale": "block",
        **_EVERY_ANSWER,
        "answer_changes_code": "block",
        "answer_fixes_output": "block",
    },
    "generate": {"question_locale": "block", **_EVERY_ANSWER},
    # A task that follows no built-in kind.
    None: {"question_locale": "block", **_EVERY_ANSWER},
}

QUESTION_CHECKS = frozenset(
    {"question_has_code", "question_code_runs", "question_code_broken", "question_locale"}
)


class Policy(msgspec.Struct, frozen=True):
    """The severity of every check a task gets; checks it does not list do not apply to it."""

    severities: dict[CheckName, Severity]

    def applies(self, name: CheckName) -> bool:
        return self.severities.get(name, "off") != "off"

    def blocks(self, name: CheckName) -> bool:
        return self.severities.get(name) == "block"


def policy_for(
    task_id: str, kind: str | None, overrides: Mapping[str, Mapping[CheckName, Severity]]
) -> Policy:
    severities = dict(BUILT_IN.get(kind, BUILT_IN[None]))
    for key in ("*", task_id):
        for name, severity in overrides.get(key, {}).items():
            severities[name] = severity
    return Policy(severities=severities)


_FORBIDS = re.compile(
    r"\b(no|not|never|without|avoid|don't|do not|forbidden)\b|使わない|使用しない|禁止|しない|不可|なし", re.I
)


def linters_for(conventions: str) -> list[str]:
    """The lintr linters the conventions call for, read from what they say: `<-` assignment,
    snake_case names, and no library() when a line of them forbids it. Undefined objects always."""
    chosen = []
    if "<-" in conventions:
        chosen.append("assignment")
    if re.search(r"snake[_ ]case", conventions, re.I):
        chosen.append("names")
    chosen.append("usage")
    for line in conventions.splitlines():
        if re.search(r"\b(library|require)\s*\(", line) and _FORBIDS.search(line):
            chosen.append("library")
            break
    return chosen
