"""R snippets that look at untrusted R code, run in the sandbox like any other snippet.

The code under inspection is data: it enters the snippet as a vector of R string literals in which
every character outside printable ASCII, every quote and every backslash is escaped, so nothing in it
can end the literal. What the snippet finds comes back as console lines tagged with a marker the
inspected code cannot know (a fresh random one per run), tab-separated:

    inspect   lintr's lints for the linters the conventions call for (the code is parsed, never run),
              then the code run once with print() and cat() watched for calls that run but print the
              wrong thing: print() given more than one positional argument, print() of what cat()
              returned, cat() of a data frame, list, factor, table, matrix, date or other object.
    parse     the code's comments and candidate bugs, from R's own parser (getParseData): an object
              misspelled after it was defined, a function swapped for a similar one, a logical
              argument flipped, a formula turned round.
"""

from __future__ import annotations

import re
import secrets
from functools import cache
from pathlib import Path

import msgspec

__all__ = [
    "CodeFacts",
    "Comment",
    "Finding",
    "Inspection",
    "Lint",
    "Mutation",
    "inspect_snippet",
    "parse_inspection",
    "parse_snippet",
    "parse_tokens",
    "r_string",
]

MAX_LINTS = 40

# The linters each convention maps to, as R expressions. Only these fixed texts reach R.
LINTERS = {
    "assignment": "lintr::assignment_linter()",
    "names": 'lintr::object_name_linter(styles = "snake_case")',
    "usage": "lintr::object_usage_linter()",
    "library": (
        "lintr::undesirable_function_linter(fun = c(library = 'code that needs no package', "
        "require = 'code that needs no package', requireNamespace = 'code that needs no package'))"
    ),
}


class Lint(msgspec.Struct, frozen=True):
    line: int
    column: int
    linter: str
    message: str


class Finding(msgspec.Struct, frozen=True):
    """A call that ran but printed the wrong thing."""

    kind: str
    what: str
    call: str
    # The call that prints what was meant, when there is one obvious rewrite.
    fix: str = ""


class Comment(msgspec.Struct, frozen=True):
    line: int
    col1: int
    col2: int
    text: str


class Mutation(msgspec.Struct, frozen=True):
    """A one-line change of the code: line `line` (1-based) becomes `new_line`."""

    kind: str
    description: str
    line: int
    new_line: str


class CodeFacts(msgspec.Struct, frozen=True):
    """What R's parser says of a script: its comments, bugs it could be given (`mutations`), and
    rewrites of calls that run but print the wrong thing (`mends`)."""

    comments: list[Comment]
    mutations: list[Mutation]
    mends: list[Mutation]
    parsed: bool


def r_string(text: str) -> str:
    """An R string literal holding `text` exactly (NUL, which R strings cannot hold, and lone
    surrogates become U+FFFD)."""
    out = ['"']
    for ch in text:
        code = ord(ch)
        if ch == '"':
            out.append('\\"')
        elif ch == "\\":
            out.append("\\\\")
        elif 0x20 <= code < 0x7F:
            out.append(ch)
        elif code == 0 or 0xD800 <= code <= 0xDFFF:
            out.append("\\ufffd")
        elif code < 0x10000:
            out.append(f"\\u{{{code:04x}}}")
        else:
            out.append(f"\\U{{{code:08x}}}")
    out.append('"')
    return "".join(out)


def _lines_literal(code: str) -> str:
    return "c(" + ", ".join(r_string(line) for line in code.split("\n")) + ")"


# print() and cat() as the code sees them, from the global environment; methods, the base namespace
# and autoprinting still use base's own, so only the code's own calls are watched.


@cache
def _source(name: str) -> str:
    return (Path(__file__).parent / name).read_text(encoding="utf-8")


def _fill(name: str, **values: str) -> str:
    """An R source of this package with its `{{name}}` holes filled (only with values made here)."""
    return re.sub(r"\{\{(\w+)\}\}", lambda m: values[m.group(1)], _source(name))


def _marker() -> str:
    return "QASYNTH-" + secrets.token_hex(12)


def inspect_snippet(code: str, *, linters: list[str], probe: bool) -> tuple[str, str]:
    """(snippet, marker): lint `code` with the named `LINTERS`, then (if `probe`) run it with print()
    and cat() watched."""
    marker = _marker()
    lines = _lines_literal(code)
    parts = [_fill("prelude.R", marker=r_string(marker))]
    if linters:
        chosen = ", ".join(f"{name} = {LINTERS[name]}" for name in linters)
        parts.append(_fill("lint.R", lines=lines, linters=chosen, max_lints=str(MAX_LINTS)))
    if probe:
        parts.append(_fill("probe.R", lines=lines))
    return "".join(parts), marker


def parse_snippet(code: str, *, seed: int = 0) -> tuple[str, str]:
    """(snippet, marker): the comments and candidate bugs of `code`, from R's parser; nothing runs."""
    marker = _marker()
    snippet = _fill("prelude.R", marker=r_string(marker)) + _fill(
        "parse.R", lines=_lines_literal(code), seed=str(int(seed))
    )
    return snippet, marker


def _records(stdout: str, marker: str) -> list[list[str]]:
    out = []
    for line in stdout.splitlines():
        if line.startswith(marker + "\t"):
            out.append(line[len(marker) + 1 :].split("\t"))
    return out


class Inspection(msgspec.Struct, frozen=True):
    lints: list[Lint]
    findings: list[Finding]
    lint_ran: bool
    lint_problem: str | None
    probe_ran: bool


def parse_inspection(stdout: str, marker: str) -> Inspection:
    lints: list[Lint] = []
    findings: list[Finding] = []
    lint_ran = probe_ran = False
    problem = None
    for fields in _records(stdout, marker):
        kind = fields[0]
        if kind == "lint" and len(fields) >= 5:
            try:
                lints.append(
                    Lint(line=int(fields[1]), column=int(fields[2]), linter=fields[3], message=fields[4])
                )
            except ValueError:
                continue
        elif kind == "lint_done":
            lint_ran = problem is None
        elif kind in ("lint_unavailable", "lint_error"):
            problem = fields[1] if len(fields) > 1 else kind
        elif kind == "probe_start":
            probe_ran = True
        elif kind in ("print_extra_args", "print_of_cat", "cat_of") and len(fields) >= 3:
            fix = fields[3] if len(fields) > 3 else ""
            findings.append(Finding(kind=kind, what=fields[1], call=fields[2], fix=fix))
    return Inspection(
        lints=lints, findings=findings, lint_ran=lint_ran, lint_problem=problem, probe_ran=probe_ran
    )


def parse_tokens(stdout: str, marker: str) -> CodeFacts:
    """The facts a `parse_snippet` run printed."""
    comments: list[Comment] = []
    mutations: list[Mutation] = []
    mends: list[Mutation] = []
    parsed = False
    for fields in _records(stdout, marker):
        try:
            if fields[0] == "comment" and len(fields) >= 5:
                comments.append(
                    Comment(line=int(fields[1]), col1=int(fields[2]), col2=int(fields[3]), text=fields[4])
                )
            elif fields[0] in ("mutation", "mend") and len(fields) >= 5:
                edit = Mutation(
                    kind=fields[1], description=fields[2], line=int(fields[3]), new_line=fields[4]
                )
                (mutations if fields[0] == "mutation" else mends).append(edit)
            elif fields[0] == "parse_done":
                parsed = True
        except ValueError:
            continue
    return CodeFacts(comments=comments, mutations=mutations, mends=mends, parsed=parsed)
