"""The R code of a markdown answer: its fenced R blocks, in order, joined into one script.

What counts as R:
- a fence whose info string names R: ```r, ```R, ```{r}, ```{r label, echo=FALSE}, ```rscript, ```splus;
  an R Markdown chunk with `eval=FALSE` (or `eval = F`) is shown, not run, and is skipped;
- an untagged fence that reads like R code and not like printed output;
- an R console transcript (```r with `> ` prompts) keeps the prompted lines without the
  prompts and drops the printed output between them.
Other languages (python, bash, text, output…) are never run. An unclosed fence (a reply cut
off by the token limit) runs to the end of the answer, so it usually ends in a parse error,
which is the truth about that answer.

`Extraction.answer_line(n)` maps a line of the joined code back to the answer's line, so a
verdict can point at the line a reader sees.
"""

from __future__ import annotations

import re

import msgspec

__all__ = ["CodeBlock", "Extraction", "extract_code"]

_FENCE = re.compile(r"^(?P<indent> {0,3})(?P<fence>`{3,}|~{3,})\s*(?P<info>[^`]*?)\s*$")
_R_NAMES = {"r", "rscript", "splus", "s", "rconsole", "r-console", "rout"}
_OUTPUT_LINE = re.compile(r"^\s*(\[\d+\]|#>|##\s|Error\b|Warning\b|Call:|Coefficients:|Residuals:|\s*<NA>)")
_R_HINT = re.compile(
    r"<-|->|\|>|%>%|^\s*(library|require|set\.seed|print|cat|function)\s*\(|\b[A-Za-z_.][\w.]*\s*\(.*\)",
    re.MULTILINE,
)
_PROMPT = re.compile(r"^(> |\+ |>$|\+$)")
_EVAL_FALSE = re.compile(r"\beval\s*=\s*(FALSE|F)\b")


class CodeBlock(msgspec.Struct, frozen=True):
    """One fenced block of the answer: `start_line` is the 1-based answer line of its first code line."""

    language: str
    code: str
    start_line: int
    closed: bool = True


class Extraction(msgspec.Struct, frozen=True):
    """The runnable code and where each of its lines came from."""

    code: str
    blocks: tuple[CodeBlock, ...]
    line_map: tuple[int, ...]
    """line_map[i] is the answer line (1-based) of code line i + 1."""

    def answer_line(self, code_line: int | None) -> int | None:
        if code_line is None or not 1 <= code_line <= len(self.line_map):
            return None
        return self.line_map[code_line - 1]


def _language(info: str) -> tuple[str, bool]:
    """(language, runnable) from a fence's info string."""
    info = info.strip()
    if info.startswith("{") and info.endswith("}"):
        inner = info[1:-1].strip()
        name = re.split(r"[\s,]", inner, maxsplit=1)[0].lower() if inner else ""
        return name, not _EVAL_FALSE.search(inner)
    name = info.split()[0].lower() if info else ""
    name = name.removeprefix("language-").removeprefix(".")
    return name, True


def _looks_like_output(lines: list[str]) -> bool:
    content = [ln for ln in lines if ln.strip()]
    if not content:
        return True
    printed = sum(bool(_OUTPUT_LINE.match(ln)) for ln in content)
    return printed * 2 >= len(content)


def _looks_like_r(code: str) -> bool:
    return bool(_R_HINT.search(code))


def _strip_console(lines: list[str], first_line: int) -> tuple[list[str], list[int]]:
    """Keep prompted lines of a console transcript, without the prompts; `[]` if it is no transcript."""
    content = [ln for ln in lines if ln.strip()]
    prompted = [ln for ln in content if _PROMPT.match(ln)]
    if not prompted or not content[0].startswith(">"):
        return [], []
    kept, where = [], []
    for offset, ln in enumerate(lines):
        if _PROMPT.match(ln):
            kept.append(ln[2:] if len(ln) > 1 else "")
            where.append(first_line + offset)
    return kept, where


def _blocks(markdown: str) -> list[tuple[str, bool, list[str], int, bool]]:
    """(language, runnable, lines, first line number, closed) of every fenced block."""
    lines = markdown.splitlines()
    found = []
    i = 0
    while i < len(lines):
        m = _FENCE.match(lines[i])
        if not m or (m.group("fence")[0] == "`" and "`" in m.group("info")):
            i += 1
            continue
        fence = m.group("fence")
        indent = len(m.group("indent"))
        language, runnable = _language(m.group("info"))
        body: list[str] = []
        j = i + 1
        closed = False
        while j < len(lines):
            close = re.match(r"^ {0,3}(`{3,}|~{3,})\s*$", lines[j])
            if close and close.group(1)[0] == fence[0] and len(close.group(1)) >= len(fence):
                closed = True
                break
            line = lines[j]
            # Content indented like its fence (a fence inside a list item) loses that indent.
            if indent and line.startswith(" " * indent):
                line = line[indent:]
            body.append(line)
            j += 1
        found.append((language, runnable, body, i + 2, closed))
        i = j + 1
    return found


def extract_code(markdown: str) -> Extraction:
    """The answer's R code; `code` is empty when it has none."""
    blocks: list[CodeBlock] = []
    code_lines: list[str] = []
    line_map: list[int] = []
    for language, runnable, body, first, closed in _blocks(markdown):
        if not runnable:
            continue
        text = "\n".join(body)
        is_r = language in _R_NAMES or (
            language == "" and _looks_like_r(text) and not _looks_like_output(body)
        )
        if not is_r:
            continue
        kept, where = _strip_console(body, first)
        if not kept:
            kept, where = body, list(range(first, first + len(body)))
        if not any(ln.strip() for ln in kept):
            continue
        blocks.append(
            CodeBlock(language=language or "r", code="\n".join(kept), start_line=where[0], closed=closed)
        )
        code_lines.extend(kept)
        line_map.extend(where)
    return Extraction(code="\n".join(code_lines), blocks=tuple(blocks), line_map=tuple(line_map))
