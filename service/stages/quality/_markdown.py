"""What a markdown question or answer says in prose, and what it claims its code printed.

Parsed with markdown-it (CommonMark), so fences, inline code and lists are read as a renderer reads
them. Pure text work: nothing here runs code.
"""

from __future__ import annotations

import re
from functools import cache

import msgspec
from markdown_it import MarkdownIt

__all__ = ["Fence", "ShownOutput", "fences", "prose", "shown_output"]

R_LANGUAGES = frozenset({"r", "rscript", "splus", "s", "rconsole", "r-console", "rout", "{r}"})
OUTPUT_LANGUAGES = frozenset({"", "text", "txt", "output", "out", "console", "plaintext", "plain", "none"})
# A label right before a block that says what follows is printed output.
OUTPUT_LABEL = re.compile(
    r"(output|result|prints?|printed|displays?|console|gives|returns|実行結果|出力|結果|表示)[^\n]{0,30}[:：]\s*$",
    re.I,
)
_PROMPT = re.compile(r"^(> |>$)")
_CONTINUATION = re.compile(r"^(\+ |\+$)")
# Printed values written into the code as comments: `#> [1] 5`, `## [1] 5`, `x  # [1] 5`, `# Output: 5`.
_COMMENT_OUTPUT = re.compile(
    r"#>\s?(.*)$|#+\s*(\[\d+\].*)$|#+\s*(?:output|prints|出力|結果|実行結果)\s*[:：]\s*(.+)$", re.I
)
_PRINTED_LINE = re.compile(r"^\s*(\[\d+\]|\[\d*,\d*\]|#>|##\s)")
_URL = re.compile(r"https?://\S+")
# A line of R code rather than of printed output: an assignment or a call at its start.
_CODE_LINE = re.compile(r"^\s*[\w.$\[\]]+\s*(<-|=[^=]|\()")


class Fence(msgspec.Struct, frozen=True):
    """A fenced block: its language (lower-cased first word of the info string), text, the 0-based lines
    it opens on and ends before, and the prose line right before it (for labels such as "Output:")."""

    language: str
    content: str
    line: int
    end: int
    before: str


class ShownOutput(msgspec.Struct, frozen=True):
    """Text an answer presents as what its code printed, and where it found it."""

    text: str
    where: str


@cache
def _parser() -> MarkdownIt:
    return MarkdownIt("commonmark")


def _language(info: str) -> str:
    info = info.strip().lower()
    if info.startswith("{") and info.endswith("}"):
        inner = info[1:-1].strip()
        return re.split(r"[\s,]", inner, maxsplit=1)[0] if inner else ""
    return info.split()[0].removeprefix("language-") if info else ""


def fences(markdown: str) -> list[Fence]:
    found = []
    last_text, last_end = "", -10
    for token in _parser().parse(markdown):
        if token.type == "inline" and token.map:
            last_text, last_end = token.content, token.map[1]
        elif token.type == "fence" and token.map:
            before = last_text.splitlines()[-1] if last_text and token.map[0] - last_end <= 1 else ""
            found.append(
                Fence(
                    language=_language(token.info),
                    content=token.content,
                    line=token.map[0],
                    end=token.map[1],
                    before=before,
                )
            )
    return found


def prose(markdown: str) -> str:
    """The text a reader reads as sentences: paragraphs, headings and list items, one a line, without
    code blocks, inline code or URLs."""
    lines = []
    for token in _parser().parse(markdown):
        if token.type != "inline":
            continue
        parts = []
        for child in token.children or []:
            if child.type == "text":
                parts.append(child.content)
            elif child.type in ("softbreak", "hardbreak") or child.type == "code_inline":
                parts.append(" ")
        text = _URL.sub(" ", "".join(parts))
        text = " ".join(text.split())
        if text:
            lines.append(text)
    return "\n".join(lines)


def _transcript_output(content: str) -> str:
    """The printed lines of an R console transcript (`> ` prompts), or "" if it is none."""
    lines = content.splitlines()
    body = [ln for ln in lines if ln.strip()]
    if not body or not _PROMPT.match(body[0]):
        return ""
    return "\n".join(
        ln for ln in lines if ln.strip() and not _PROMPT.match(ln) and not _CONTINUATION.match(ln)
    )


def shown_output(markdown: str) -> list[ShownOutput]:
    """Everything the answer presents as printed output: a block labelled as output ("Output:",
    "実行結果:"), an untagged or text block of printed lines, the printed part of a console
    transcript, and printed values written as comments in the code."""
    shown = []
    for fence in fences(markdown):
        labelled = bool(OUTPUT_LABEL.search(fence.before))
        if labelled and fence.language in R_LANGUAGES and _has_code(fence.content):
            # "Here is the code that prints the results:" introduces code, not output.
            labelled = False
        if fence.language in R_LANGUAGES or (fence.language == "" and not labelled):
            printed = _transcript_output(fence.content)
            if printed:
                shown.append(ShownOutput(text=printed, where=f"console transcript at line {fence.line + 1}"))
                continue
            if labelled:
                shown.append(ShownOutput(text=fence.content, where=f"block after {fence.before.strip()!r}"))
                continue
            if fence.language == "" and _mostly_printed(fence.content):
                shown.append(ShownOutput(text=fence.content, where=f"output block at line {fence.line + 1}"))
                continue
            comments = [
                next(g for g in m.groups() if g is not None).strip()
                for m in map(_COMMENT_OUTPUT.search, fence.content.splitlines())
                if m
            ]
            comments = [c for c in comments if c]
            if comments:
                shown.append(
                    ShownOutput(
                        text="\n".join(comments), where=f"comments in the code at line {fence.line + 1}"
                    )
                )
        elif labelled:
            shown.append(ShownOutput(text=fence.content, where=f"block after {fence.before.strip()!r}"))
        elif fence.language in OUTPUT_LANGUAGES and _mostly_printed(fence.content):
            shown.append(ShownOutput(text=fence.content, where=f"output block at line {fence.line + 1}"))
    return shown


def _has_code(content: str) -> bool:
    return any(_CODE_LINE.match(line) for line in content.splitlines())


def _mostly_printed(content: str) -> bool:
    lines = [ln for ln in content.splitlines() if ln.strip()]
    return bool(lines) and 2 * sum(bool(_PRINTED_LINE.match(ln)) for ln in lines) >= len(lines)
