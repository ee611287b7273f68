"""Model output made safe for markdown viewers that render raw HTML (Label Studio's `<Markdown>`).

Nothing of the input reaches the renderer as markup. Fenced code blocks are re-emitted inside a
fence this module chooses (longer than any backtick run inside), so the renderer sees code, which
it never parses as HTML. Inline code becomes `<code>` with entity-escaped content. Everything else
has `& < >` turned into entities and `\\ [ ] `` ` backslash-escaped, which removes HTML tags, HTML
blocks, links, images and stray code spans while the text still reads the same.
"""

from __future__ import annotations

import html
import re

__all__ = ["code_block", "escape_text", "safe_markdown"]

_FENCE_OPEN = re.compile(r"^( {0,3})(`{3,}|~{3,})(.*)$")
_LANG = re.compile(r"[A-Za-z0-9_+.-]{1,30}")
_TEXT_ESCAPES = {"&": "&amp;", "<": "&lt;", ">": "&gt;", "\\": "\\\\", "[": "\\[", "]": "\\]", "`": "\\`"}
_BACKTICKS = re.compile(r"`+")


def escape_text(text: str) -> str:
    """One line of prose: entities for HTML, backslashes for markdown link and code syntax."""
    return "".join(_TEXT_ESCAPES.get(ch, ch) for ch in text)


def _inline(line: str) -> str:
    """Escape a line, turning well-formed code spans into `<code>` so `x <- 1` reads as written."""
    out: list[str] = []
    pos = 0
    while True:
        m = _BACKTICKS.search(line, pos)
        if m is None:
            out.append(escape_text(line[pos:]))
            return "".join(out)
        n = len(m.group())
        close = m.end()
        while True:
            c = _BACKTICKS.search(line, close)
            if c is None or len(c.group()) == n:
                break
            close = c.end()
        if c is None:
            out.append(escape_text(line[pos : m.end()]))
            pos = m.end()
            continue
        out.append(escape_text(line[pos : m.start()]))
        content = line[m.end() : c.start()]
        if len(content) > 1 and content.startswith(" ") and content.endswith(" ") and content.strip():
            content = content[1:-1]
        out.append("<code>" + html.escape(content, quote=False) + "</code>")
        pos = c.end()


def code_block(code: str, lang: str = "") -> str:
    """A fenced block no content can close early: the fence outgrows every backtick run inside."""
    longest = max((len(run) for run in _BACKTICKS.findall(code)), default=0)
    fence = "`" * max(3, longest + 1)
    lang = lang if _LANG.fullmatch(lang) else ""
    body = code if code.endswith("\n") or not code else code + "\n"
    return f"{fence}{lang}\n{body}{fence}"


def safe_markdown(text: str) -> str:
    """Markdown for an untrusted answer: its code stays code, its prose stays prose, no HTML survives."""
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    blocks: list[str] = []
    prose: list[str] = []
    i = 0
    while i < len(lines):
        m = _FENCE_OPEN.match(lines[i])
        if m is None or (m.group(2)[0] == "`" and "`" in m.group(3)):
            prose.append(_inline(lines[i]))
            i += 1
            continue
        indent, fence, info = len(m.group(1)), m.group(2), m.group(3).strip()
        closing = re.compile(r"^ {0,3}" + re.escape(fence[0]) + "{" + str(len(fence)) + r",}\s*$")
        code: list[str] = []
        i += 1
        while i < len(lines) and not closing.match(lines[i]):
            line = lines[i]
            strip = len(line) - len(line.lstrip(" "))
            code.append(line[min(strip, indent) :])
            i += 1
        i += 1  # the closing fence, or past the end when the block was never closed
        if prose:
            blocks.append("\n".join(prose).strip("\n"))
            prose = []
        blocks.append(code_block("\n".join(code), info.split(" ")[0] if info else ""))
    if prose:
        blocks.append("\n".join(prose).strip("\n"))
    return "\n\n".join(b for b in blocks if b.strip())
