"""Japanese and other CJK text: meaningful tokens, sensible scores, and the `auto` rule."""

from __future__ import annotations

import pytest

from service.stages.dedup import Deduplicator, deduplicate, japanese_available, resolve, tokenize

MEAN_VAR = "Rで平均と分散を計算する方法を教えてください。"
MEAN_VAR_PARAPHRASE = "Rを使って平均と分散を計算する方法を教えて。"
NA_MEAN = "データフレームの欠損値を除いて平均を求めるには？"
NA_MEAN_PARAPHRASE = "データフレームから欠損値を取り除いて平均値を求める方法は？"
LOGISTIC = "ロジスティック回帰モデルをglmで当てはめ、オッズ比を解釈してください。"
T_TEST = "二標本t検定をRで行う方法は？"
HISTOGRAM = "ヒストグラムを描いて分布の形を確認したい。"

needs_mecab = pytest.mark.skipif(not japanese_available(), reason="fugashi + unidic-lite not installed")


def test_rouge_scores_tokenizer_erases_japanese() -> None:
    # The problem being solved: both questions collapse to ['r'] and look identical.
    assert tokenize("rouge", MEAN_VAR) == ["r"]
    assert Deduplicator(tokenizer="rouge").score(MEAN_VAR, "Rでヒストグラムを描く") == 1.0


@needs_mecab
@pytest.mark.parametrize(("a", "b"), [(MEAN_VAR, MEAN_VAR_PARAPHRASE), (NA_MEAN, NA_MEAN_PARAPHRASE)])
def test_japanese_paraphrases_score_high(a: str, b: str) -> None:
    assert Deduplicator().score(a, b) > 0.7


@needs_mecab
@pytest.mark.parametrize(("a", "b"), [(MEAN_VAR, LOGISTIC), (T_TEST, HISTOGRAM), (NA_MEAN, LOGISTIC)])
def test_japanese_questions_on_different_topics_score_low(a: str, b: str) -> None:
    assert Deduplicator().score(a, b) < 0.35


@needs_mecab
def test_mixed_japanese_and_r_code_keeps_r_identifiers_whole() -> None:
    text = "t.test()とlm()で回帰分析を行い、summary(fit)$coefficientsとna.omit(df)を確認する。"
    tokens = tokenize("japanese", text)
    assert {"t.test", "lm", "summary", "fit", "coefficients", "na.omit", "df"} <= set(tokens)
    assert {"回帰", "分析", "確認"} <= set(tokens)
    assert not {"(", ")", "、", "。", "$", "."} & set(tokens)
    # Full-width forms normalise to the same identifier.
    assert tokenize("japanese", "ｔ．ｔｅｓｔで検定する")[0] == "t.test"


def test_char_tokenizer_gives_one_token_per_letter_and_keeps_code() -> None:
    assert tokenize("char", "평균을 계산, t.test!") == ["평", "균", "을", "계", "산", "t.test"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Compute the mean of x in R", "rouge"),
        ("Café naïve résumé", "rouge"),
        ("Rで平均を計算", "japanese"),
        ("カイ二乗検定", "japanese"),
        ("平均値", "japanese"),
        ("평균을 계산하는 방법", "char"),
        ("韓國語 한국어", "char"),
    ],
)
def test_auto_picks_the_tokenizer_by_script(text: str, expected: str) -> None:
    if expected == "japanese" and not japanese_available():
        expected = "char"
    assert resolve("auto", text) == expected


def test_explicit_tokenizers_are_used_as_asked() -> None:
    assert resolve("rouge", "Rで平均") == "rouge"
    assert resolve("char", "Compute the mean") == "char"


@needs_mecab
def test_auto_filters_japanese_duplicates_and_keeps_english_rouge_exact() -> None:
    items = [
        ("en1", "Compute the mean and variance of a numeric vector in R."),
        ("ja1", MEAN_VAR),
        ("ja2", MEAN_VAR_PARAPHRASE),
        ("ja3", LOGISTIC),
        ("en2", "compute the mean and the variance of a numeric vector in R"),
        ("ja4", T_TEST),
    ]
    got = {d.id: d for d in deduplicate(items)}
    assert [k for k, d in got.items() if not d.kept] == ["ja2", "en2"]
    assert got["ja2"].nearest_id == "ja1"
    assert got["en2"].nearest_id == "en1"
    # An English item is compared with rouge-score's tokenizer, as rouge-score would.
    rouge = Deduplicator(tokenizer="rouge")
    assert got["en2"].score == rouge.score(items[4][1], items[0][1])
    # The Japanese items did not all collapse into one another.
    assert got["ja3"].kept and got["ja4"].kept
