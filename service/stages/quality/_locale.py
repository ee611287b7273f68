"""Is the prose in the requested language? Judged by lingua, a language-identification library.

The default model writes Japanese answers that drift into Chinese (标准偏差, 然后我们…). Three things
catch it: Han characters that are not Japanese kanji at all (no Japanese character set, JIS X 0213,
holds them), sentences long enough to judge that lingua reads as another language, and prose that is
not in the requested language as a whole. Code, inline code and URLs are left out first.
"""

from __future__ import annotations

import re
import threading
import unicodedata
from typing import Any

from service.stages.quality._markdown import prose

__all__ = ["judge_locale", "warm_up"]

MIN_LETTERS = 20  # less prose than this is not judged
MIN_SENTENCE = 10  # letters in a sentence before it is judged on its own
CONFIDENCE = 0.9
MAX_QUOTED = 3

_KANA = re.compile(r"[\u3040-\u30ff\u31f0-\u31ff\uff66-\uff9f]")
_HAN = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
_SENTENCE = re.compile(r"[^。．！？!?\n]+[。．！？!?]?")
_EN_SENTENCE = re.compile(r"[^.!?\n]+(?:[.!?](?=\s|$))?")

_lock = threading.Lock()
_detector: Any = None


def _lingua() -> Any:
    """Built once, on first use (it loads language models): English, Japanese, Chinese and the other
    languages a model most often drifts into."""
    global _detector
    with _lock:
        if _detector is None:
            from lingua import Language, LanguageDetectorBuilder

            languages = [
                Language.ENGLISH,
                Language.JAPANESE,
                Language.CHINESE,
                Language.KOREAN,
                Language.SPANISH,
                Language.FRENCH,
                Language.GERMAN,
                Language.PORTUGUESE,
                Language.ITALIAN,
                Language.RUSSIAN,
            ]
            # Models load on first need (about 1.5 s for the Latin-script ones), not all at once.
            _detector = LanguageDetectorBuilder.from_languages(*languages).build()
        return _detector


def warm_up() -> None:
    """Load the language models now (call it in a thread) so the first check does not wait for them."""
    _top("The mean of the sample is printed.")
    _top("標本の平均を出力します。")


def _letters(text: str) -> int:
    return sum(ch.isalpha() for ch in text)


def _top(text: str) -> tuple[str, float]:
    values = _lingua().compute_language_confidence_values(text)
    if not values:
        return "UNKNOWN", 0.0
    return values[0].language.name, values[0].value


def _not_japanese(text: str) -> list[str]:
    """Han characters outside every Japanese character set: simplified Chinese forms like 标, 们, 这."""
    found: list[str] = []
    for ch in _HAN.findall(text):
        try:
            ch.encode("euc_jis_2004")
        except UnicodeEncodeError:
            if ch not in found:
                found.append(ch)
    return found


def _quote(sentence: str) -> str:
    sentence = sentence.strip()
    return sentence if len(sentence) <= 80 else sentence[:80] + "…"


def _judge_ja(text: str) -> tuple[bool, str]:
    problems = []
    chinese_chars = _not_japanese(text)
    if chinese_chars:
        problems.append("characters that are Chinese, not Japanese: " + " ".join(chinese_chars[:12]))
    foreign = []
    for sentence in _SENTENCE.findall(text):
        if _KANA.search(sentence) or _letters(sentence) < MIN_SENTENCE:
            continue
        language, confidence = _top(sentence)
        if language != "JAPANESE" and confidence >= CONFIDENCE and not sentence.isascii():
            foreign.append(f"{language.lower()}: {_quote(sentence)}")
    if foreign:
        problems.append("sentences in another language: " + " | ".join(foreign[:MAX_QUOTED]))
    if not _KANA.search(text):
        language, _ = _top(text)
        problems.append(f"no Japanese kana at all; the prose reads as {language.lower()}")
    if problems:
        return False, "; ".join(problems)
    return True, "Japanese"


def _judge_en(text: str) -> tuple[bool, str]:
    problems = []
    language, confidence = _top(text)
    if language != "ENGLISH":
        problems.append(f"the prose reads as {language.lower()} ({confidence:.2f})")
    cjk = len(_KANA.findall(text)) + len(_HAN.findall(text))
    if cjk:
        problems.append(f"{cjk} Chinese or Japanese characters")
    foreign = []
    for sentence in _EN_SENTENCE.findall(text):
        if _letters(sentence) < 3 * MIN_SENTENCE:
            continue
        lang, conf = _top(sentence)
        if lang != "ENGLISH" and conf >= CONFIDENCE:
            foreign.append(f"{lang.lower()}: {_quote(sentence)}")
    if foreign:
        problems.append("sentences in another language: " + " | ".join(foreign[:MAX_QUOTED]))
    if problems:
        return False, "; ".join(problems)
    return True, f"English ({confidence:.2f})"


def judge_locale(markdown: str, locale: str) -> tuple[bool | None, str]:
    """(passed, evidence) for the prose of a question or answer; passed is None when there is too
    little prose to judge."""
    text = prose(markdown)
    text = unicodedata.normalize("NFKC", text)
    if _letters(text) < MIN_LETTERS:
        return None, f"too little prose to judge ({_letters(text)} letters)"
    if locale == "ja":
        return _judge_ja(text)
    return _judge_en(text)
