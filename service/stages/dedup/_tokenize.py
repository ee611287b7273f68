"""Tokenizers for ROUGE-L, and the `auto` rule that picks one from a text's script.

    rouge     rouge-score's default tokenizer, reproduced: lower-case, keep runs of [a-z0-9].
              Everything else (including every non-ASCII character) separates tokens and vanishes.
    japanese  NFKC, then ASCII stretches give code-like tokens (`t.test`, `na.omit`, `lm`) and the
              rest goes through MeCab (fugashi + unidic-lite); punctuation and spaces are dropped.
    char      NFKC, ASCII stretches as above, then one token per letter or digit: the fallback for
              other CJK scripts and for Japanese when the analyser is not installed.

`auto` looks at the text: kana, or Han characters without Hangul, mean Japanese; Hangul,
Bopomofo or Han mixed with Hangul mean char; anything else is rouge.
"""

from __future__ import annotations

import logging
import re
import threading
import unicodedata
from collections.abc import Callable
from typing import Any, Literal

__all__ = ["TOKENIZERS", "Tokenizer", "japanese_available", "resolve", "tokenize"]

log = logging.getLogger("qasynth")

Tokenizer = Literal["rouge", "japanese", "char"]
TOKENIZERS: tuple[str, ...] = ("auto", "rouge", "japanese", "char")

_ROUGE_TOKEN = re.compile(r"[a-z0-9]+")
_SEGMENT = re.compile(r"[\x00-\x7f]+|[^\x00-\x7f]+")
# An R identifier or number: `t.test`, `.libPaths`, `p_value`, `0.05`. A trailing dot is sentence punctuation.
_CODE_TOKEN = re.compile(r"[a-z0-9_.]*[a-z0-9_]")
_KANA = re.compile(r"[\u3040-\u30ff\u31f0-\u31ff\uff66-\uff9f]")
_HAN = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0003134f]")
_OTHER_CJK = re.compile(r"[\u1100-\u11ff\u3100-\u312f\u3130-\u318f\ua960-\ua97f\uac00-\ud7af\ud7b0-\ud7ff]")
# UniDic's part-of-speech tags for punctuation, symbols and white space.
_DROPPED_POS = frozenset({"補助記号", "空白"})


def _rouge(text: str) -> list[str]:
    """Same tokens as rouge_score.tokenize.tokenize(text, None), without its per-call regex compilation."""
    return _ROUGE_TOKEN.findall(text.lower())


def _code_tokens(segment: str) -> list[str]:
    return _CODE_TOKEN.findall(segment.lower())


_local = threading.local()
_missing_logged = False


def _tagger() -> Any | None:
    """One MeCab tagger per thread: taggers are not safe to share between threads."""
    global _missing_logged
    tagger = getattr(_local, "tagger", False)
    if tagger is False:
        try:
            import fugashi

            tagger = fugashi.Tagger()
        except (ImportError, RuntimeError) as exc:
            if not _missing_logged:
                log.warning(
                    "Japanese analyser unavailable (%s); using character tokens. Install it with "
                    "`pip install fugashi unidic-lite`.",
                    exc,
                )
                _missing_logged = True
            tagger = None
        _local.tagger = tagger
    return tagger


def japanese_available() -> bool:
    return _tagger() is not None


def _split(text: str, other: Callable[[str], list[str]]) -> list[str]:
    tokens: list[str] = []
    for segment in _SEGMENT.findall(unicodedata.normalize("NFKC", text)):
        if segment[0] < "\x80":
            tokens.extend(_code_tokens(segment))
        else:
            tokens.extend(other(segment))
    return tokens


def _chars(segment: str) -> list[str]:
    return [c for c in segment.lower() if unicodedata.category(c)[0] in "LN"]


def _japanese(text: str) -> list[str]:
    tagger = _tagger()
    if tagger is None:
        return _split(text, _chars)

    def words(segment: str) -> list[str]:
        return [
            w.surface.lower() for w in tagger(segment) if w.feature.pos1 not in _DROPPED_POS and w.surface
        ]

    return _split(text, words)


def _char(text: str) -> list[str]:
    return _split(text, _chars)


_FUNCTIONS: dict[str, Callable[[str], list[str]]] = {"rouge": _rouge, "japanese": _japanese, "char": _char}


def resolve(name: str, text: str) -> Tokenizer:
    """The tokenizer `name` means for this text: `auto` decides by script, and Japanese needs the analyser."""
    if name == "auto":
        if _KANA.search(text) or (_HAN.search(text) and not _OTHER_CJK.search(text)):
            name = "japanese"
        elif _HAN.search(text) or _OTHER_CJK.search(text):
            name = "char"
        else:
            return "rouge"
    if name == "japanese":
        return "japanese" if japanese_available() else "char"
    if name in ("rouge", "char"):
        return name  # type: ignore[return-value]
    raise ValueError(f"unknown tokenizer {name!r}; expected one of {', '.join(TOKENIZERS)}")


def tokenize(name: Tokenizer, text: str) -> list[str]:
    return _FUNCTIONS[name](text)
