"""The task-aware checks: prose language by lingua, shown output against real output, lintr and the
print()/cat() probe in the real sandbox, the policy, and the code-first helpers."""

from __future__ import annotations

import pytest

from service.stages.calls import MalformedReply
from service.stages.evaluate import Sandbox
from service.stages.quality import (
    QuestionFacts,
    check_answer,
    check_question,
    combine,
    compare_output,
    diversity,
    judge_locale,
    linters_for,
    parse_snippet,
    parse_tokens,
    policy_for,
    r_string,
    shown_output,
)
from service.stages.quality._rcode import inspect_snippet, parse_inspection
from service.stages.snippets import compose_question, parse_code, strip_hints
from service.stages.spec import locale_defaults
from tests.stages.conftest import needs_sandbox

module_loop = pytest.mark.asyncio(loop_scope="module")

EN_ANSWER = (
    "The paired t-test compares the mean of the differences with zero.\n\n```r\nx <- c(1, 2)\nprint(x)\n```\n\n"
    "A small p-value suggests that the mean reaction time changed after the coffee."
)
JA_ANSWER = (
    "対応のある t 検定で差の平均が 0 かどうかを調べます。\n\n```r\nx <- c(1, 2)\nprint(x)\n```\n\n"
    "p 値が小さければ、平均の反応時間が変わったと考えられます。"
)


# -- the language of the prose


def test_prose_in_the_asked_language_passes() -> None:
    assert judge_locale(EN_ANSWER, "en")[0] is True
    assert judge_locale(JA_ANSWER, "ja")[0] is True


def test_japanese_drifting_into_chinese_is_caught() -> None:
    drifted = JA_ANSWER + "\n\n然后我们计算样本的标准偏差并输出结果。"
    passed, evidence = judge_locale(drifted, "ja")
    assert passed is False
    assert "chinese: 然后我们计算样本的标准偏差并输出结果" in evidence
    # A single simplified form inside Japanese is caught too: 标 is in no Japanese character set.
    passed, evidence = judge_locale("標本の标准偏差を計算して、結果を出力します。", "ja")
    assert passed is False and "标" in evidence and "準" not in evidence


def test_english_asked_for_japanese_and_the_reverse_fail() -> None:
    assert judge_locale(EN_ANSWER, "ja")[0] is False
    passed, evidence = judge_locale(JA_ANSWER, "en")
    assert passed is False and "japanese" in evidence


def test_code_and_inline_code_are_not_prose() -> None:
    # Only code and a two-word line: too little prose to judge either way.
    passed, evidence = judge_locale(
        "Use `mean(x)`:\n\n```r\n# 平均を計算する\nprint(mean(c(1, 2)))\n```", "en"
    )
    assert passed is None and "too little prose" in evidence


# -- shown output against what the code printed


def test_invented_output_is_caught_and_rounded_output_is_not() -> None:
    printed = "[1] 4\n[1] 4\n"
    answer = "Mean and variance.\n\n```r\nprint(mean(x))\n```\n\nOutput:\n\n```\n[1] 5.25\n[1] 4\n```"
    [shown] = shown_output(answer)
    passed, evidence = compare_output(shown.text, printed)
    assert passed is False and "5.25" in evidence and "[1] 4" in evidence
    assert compare_output("p-value = 0.02", "t = 3.1, df = 7, p-value = 0.01734")[0] is True
    assert compare_output("p-value = 0.05", "p-value = 0.01734")[0] is False
    assert compare_output("TRUE", "[1] FALSE")[0] is False


@pytest.mark.parametrize(
    ("answer", "where"),
    [
        ("Run it:\n\n```r\n> mean(c(2, 4))\n[1] 3\n```", "console transcript"),
        ("Code:\n\n```r\nprint(mean(c(2, 4)))  #> [1] 3\n```", "comments in the code"),
        ("Code:\n\n```r\nm <- mean(c(2, 4))\n```\n\n実行結果:\n\n```\n[1] 3\n```", "block after"),
        ("Code:\n\n```r\nm <- mean(c(2, 4))\n```\n\n```\n[1] 3\n```", "output block"),
    ],
)
def test_every_way_of_showing_output_is_found(answer: str, where: str) -> None:
    [shown] = shown_output(answer)
    assert shown.where.startswith(where) and "3" in shown.text


def test_code_introduced_as_printing_the_results_is_not_output() -> None:
    # The embedded model's words before its code; the code's own data are not "shown output".
    answer = (
        "Here's the R code to perform the t-test and print the results:\n\n```r\n"
        "before <- c(312, 298, 305)\nresult <- t.test(before, mu = 300)\nprint(result)\n```"
    )
    assert shown_output(answer) == []
    # An R-tagged block of printed lines after "Output:" is still output.
    [shown] = shown_output("Output:\n\n```r\n[1] 305\n```")
    assert shown.where.startswith("block after") and shown.text.strip() == "[1] 305"


def test_code_and_section_comments_are_not_output() -> None:
    assert shown_output("```r\n## Step 2: fit the model\nfit <- lm(y ~ x)\nprint(coef(fit))\n```") == []


# -- the policy and the linters the conventions call for


def test_linters_follow_the_conventions() -> None:
    assert linters_for(locale_defaults("en").conventions) == ["assignment", "names", "usage", "library"]
    assert linters_for(locale_defaults("ja").conventions) == ["assignment", "names", "usage", "library"]
    assert linters_for("Use tidyverse and library(dplyr) freely.") == ["usage"]


def test_policy_is_declared_per_task_and_overridden_per_spec() -> None:
    fix = policy_for("fix", "fix", {})
    assert fix.blocks("question_code_broken") and fix.blocks("answer_changes_code")
    assert fix.applies("lint_style") and not fix.blocks("lint_style")
    generate = policy_for("generate", "generate", {})
    assert not generate.applies("question_has_code")
    custom = policy_for("tidy", None, {"*": {"lint_style": "block"}, "tidy": {"answer_locale": "off"}})
    assert custom.blocks("lint_style") and not custom.applies("answer_locale")


# -- code-first helpers


def test_the_checked_code_replaces_whatever_the_model_put_in_the_question() -> None:
    code = "x <- c(1, 2)\nprint(mean(x))"
    reply = "Question:\nI wrote this:\n\n```r\nx <- c(1, 2)\nprint(mean(x)) # fixed!\n```\n\nWhy?\n\n```r\nmean(x)\n```"
    assert compose_question(reply, code) == f"I wrote this:\n\n```r\n{code}\n```\n\nWhy?"
    composed = compose_question("I get an error with this script.\n\nHow do I fix it?", code)
    assert composed == f"I get an error with this script.\n\n```r\n{code}\n```\n\nHow do I fix it?"
    with pytest.raises(MalformedReply):
        compose_question("```r\nx\n```", code)


def test_a_reply_without_r_code_is_malformed() -> None:
    assert parse_code("Here:\n```r\nx <- 1\nprint(x)\n```") == "x <- 1\nprint(x)"
    with pytest.raises(MalformedReply, match="no ```r code block"):
        parse_code("I would compute the mean with mean().")


def test_diversity_is_the_mean_highest_rouge_l() -> None:
    assert diversity(["a b c d", "a b c d"]) == 1.0
    assert diversity(["a b c d", "e f g h"]) == 0.0
    assert diversity(["one question"]) is None


# -- in the sandbox


@needs_sandbox
@module_loop
async def test_code_is_data_to_the_inspection(sandbox: Sandbox) -> None:
    """The code reaches R as an escaped literal: lint-only parses it and never runs it, whatever it holds."""
    nasty = 'x <- "\\")\ncat(\'RAN\', "\\n")\n"\n # 平均 \\u00e9 \\\\ `) }} {{lines}} \U0001f600\nsystem("echo RAN")'
    snippet, marker = inspect_snippet(nasty, linters=["usage"], probe=False)
    result = await sandbox.run(snippet)
    assert result.verdict == "passed", result.message
    assert "RAN" not in result.stdout.replace(marker, "")
    assert parse_inspection(result.stdout, marker).lint_ran
    # The literal holds the text exactly.
    echo = await sandbox.run(f"cat({r_string(nasty)})")
    assert echo.stdout == nasty


@needs_sandbox
@module_loop
async def test_lintr_and_the_print_probe_find_what_they_should(sandbox: Sandbox) -> None:
    code = "\n".join(
        [
            "myScores = c(12, 15, 11)",
            "df <- data.frame(g = factor(c('a', 'b', 'a')), y = myScores)",
            "library(stats)",
            "f <- function() {",
            "  print(not_defined_anywhere)",
            "}",
            'print("Mean:", mean(myScores))',
            "cat(df$g, '\\n')",
            "print(cat('x\\n'))",
            "cat(df)",
        ]
    )
    snippet, marker = inspect_snippet(code, linters=["assignment", "names", "usage", "library"], probe=True)
    result = await sandbox.run(snippet)
    found = parse_inspection(result.stdout, marker)
    assert {(lint.line, lint.linter) for lint in found.lints} >= {
        (1, "assignment"),
        (1, "names"),
        (3, "library"),
        (5, "usage"),
    }
    kinds = [(f.kind, f.call) for f in found.findings]
    assert kinds == [
        ("print_extra_args", 'print("Mean:", mean(myScores))'),
        ("cat_of", 'cat(df$g, "\\n")'),
        ("print_of_cat", 'print(cat("x\\n"))'),
        ("cat_of", "cat(df)"),
    ]
    # The call that prints what was meant is named, for the repair to use.
    assert [f.fix for f in found.findings] == ['cat("Mean:", mean(myScores), "\\n")', "", "", ""]
    assert "factor" in found.findings[1].what and "data frame" in found.findings[3].what


@needs_sandbox
@module_loop
async def test_mutations_come_from_rs_parser_and_each_changes_one_line(sandbox: Sandbox) -> None:
    code = "\n".join(
        [
            "scores <- c(3, 5, 9)",
            "# bug: should be scores",
            "m <- mean(scores, na.rm = TRUE)",
            "fit <- lm(y ~ x, data = data.frame(x = 1:3, y = scores))",
            "print(m)",
        ]
    )
    snippet, marker = parse_snippet(code)
    result = await sandbox.run(snippet)
    facts = parse_tokens(result.stdout, marker)
    comments, mutations = facts.comments, facts.mutations
    assert facts.parsed and [c.text for c in comments] == ["# bug: should be scores"]
    assert facts.mends == []
    assert strip_hints(code, comments) == code.replace("# bug: should be scores\n", "")
    kinds = {m.kind for m in mutations}
    assert kinds == {"missing_object", "wrong_function", "wrong_argument", "swapped_formula"}
    lines = code.split("\n")
    for m in mutations:
        assert m.new_line != lines[m.line - 1]
    assert any(m.new_line == "m <- mean(score, na.rm = TRUE)" for m in mutations)
    assert any(m.new_line == "fit <- lm(x ~ y, data = data.frame(x = 1:3, y = scores))" for m in mutations)


FIX_POLICY = policy_for("fix", "fix", {})


@needs_sandbox
@module_loop
async def test_a_fix_question_needs_code_with_something_to_fix(sandbox: Sandbox) -> None:
    async def broken(question: str) -> tuple[bool, str]:
        checks, _ = await check_question(
            sandbox, task="fix", kind="fix", locale="en", question=question, policy=FIX_POLICY
        )
        [check] = [c for c in checks.checks if c.name == "question_code_broken"]
        return check.passed, check.evidence

    fails = "My script stops with an error; how do I fix it?\n\n```r\nx <- c(1, 2)\nprint(mean(y))\n```"
    runs = "Please look at my script and fix it for me.\n\n```r\nx <- c(1, 2)\nprint(mean(x))\n```"
    says = "This should print the median, but it prints the wrong value.\n\n```r\nx <- c(1, 2, 9)\nprint(mean(x))\n```"
    assert await broken(fails) == (
        True,
        "R stops: runtime_error — object 'y' not found — at line 2: mean(y)",
    )
    passed, evidence = await broken(runs)
    assert not passed and "nothing to fix" in evidence
    assert (await broken(says))[0] is True
    no_code = await broken("Why does my t-test give a p-value above one?")
    assert no_code == (False, "the question shows no R code")


@needs_sandbox
@module_loop
async def test_a_fix_answer_must_change_the_code_and_run(sandbox: Sandbox) -> None:
    question = "This should print the median, but prints the wrong value.\n\n```r\nx <- c(1, 2, 9)\nprint(mean(x))\n```"
    _, facts = await check_question(
        sandbox, task="fix", kind="fix", locale="en", question=question, policy=FIX_POLICY
    )
    assert facts.run is not None and facts.run.stdout == "[1] 4\n"

    async def failed(answer: str) -> set[str]:
        evaluation = await sandbox("fix", answer)
        checks = await check_answer(
            sandbox, task="fix", kind="fix", locale="en", conventions=locale_defaults("en").conventions,
            question=facts, answer=answer, evaluation=evaluation, policy=FIX_POLICY,
        )  # fmt: skip
        return {c.name for c in checks.checks if not c.passed}

    prose = "The script takes the mean where the median was meant, so it prints the wrong centre of x."
    assert await failed(f"{prose}\n\n```r\nx <- c(1, 2, 9)\nprint(median(x))\n```") == set()
    assert await failed(f"{prose}\n\n```r\nx <- c(1, 2, 9)\nprint(mean(x))\n```") == {
        "answer_changes_code",
        "answer_fixes_output",
    }
    assert await failed(f"{prose}\n\n```r\nx <- c(1, 2, 9)\nprint(medianx(x))\n```") == {"answer_code_runs"}
    invented = f"{prose}\n\n```r\nx <- c(1, 2, 9)\nprint(median(x))\n```\n\nOutput:\n\n```\n[1] 3\n```"
    assert await failed(invented) == {"output_shown_matches"}


@needs_sandbox
@module_loop
async def test_the_quality_of_a_pair_is_flagged_by_blocking_checks_only(sandbox: Sandbox) -> None:
    policy = policy_for("generate", "generate", {})
    answer = (
        "Compute the mean of the scores with mean() and show it.\n\n```r\nmyScores = c(1, 2)\n"
        "print(mean(myScores))\n```\n\nThe printed value is the average of the two scores in the vector."
    )
    evaluation = await sandbox("generate", answer)
    checks = await check_answer(
        sandbox, task="generate", kind="generate", locale="en", conventions=locale_defaults("en").conventions,
        question=QuestionFacts(), answer=answer, evaluation=evaluation, policy=policy,
    )  # fmt: skip
    quality = combine(checks)
    style = next(c for c in quality.checks if c.name == "lint_style")
    assert not style.passed and not style.blocking and "Use <-, not =" in style.evidence
    assert quality.flagged is False
    strict = policy_for("generate", "generate", {"*": {"lint_style": "block"}})
    checks = await check_answer(
        sandbox, task="generate", kind="generate", locale="en", conventions="Use <- for assignment.",
        question=QuestionFacts(), answer=answer, evaluation=evaluation, policy=strict,
    )  # fmt: skip
    assert combine(checks).flagged is True
