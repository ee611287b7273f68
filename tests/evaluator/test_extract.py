"""Code extraction from markdown answers: which blocks run, and where their lines came from."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from evaluator import extract_code


def test_r_blocks_are_joined_in_order_and_mapped_to_answer_lines() -> None:
    answer = "Intro.\n\n```r\nx <- 1\n```\n\nThen:\n\n```R\nprint(x + 1)\n```\n"
    ex = extract_code(answer)
    assert ex.code == "x <- 1\nprint(x + 1)"
    assert len(ex.blocks) == 2
    assert ex.answer_line(1) == 4
    assert ex.answer_line(2) == 10
    assert answer.splitlines()[ex.answer_line(2) - 1] == "print(x + 1)"
    assert ex.answer_line(3) is None and ex.answer_line(None) is None


def test_rmarkdown_chunks_run_unless_eval_false() -> None:
    answer = (
        "```{r setup, echo=FALSE}\na <- 2\n```\n"
        "```{r, eval = FALSE}\ninstall.packages('x')\n```\n"
        "```{r}\nb <- a\n```"
    )
    assert extract_code(answer).code == "a <- 2\nb <- a"


def test_other_languages_and_output_blocks_are_not_run() -> None:
    answer = (
        "```python\nprint(1)\n```\n"
        "```bash\nRscript x.R\n```\n"
        "```text\n[1] 2\n```\n"
        "```\n[1] 0.5 0.7\n[2] 0.1\n```\n"
        "```\nmean_x <- mean(c(1, 2))\nprint(mean_x)\n```\n"
    )
    ex = extract_code(answer)
    assert ex.code == "mean_x <- mean(c(1, 2))\nprint(mean_x)"
    assert [b.language for b in ex.blocks] == ["r"]


def test_console_transcript_keeps_prompted_lines_only() -> None:
    answer = "```r\n> x <- c(1, 2,\n+       3)\n> mean(x)\n[1] 2\n```"
    ex = extract_code(answer)
    assert ex.code == "x <- c(1, 2,\n      3)\nmean(x)"
    assert ex.line_map == (2, 3, 4)


def test_tilde_fences_longer_fences_and_list_indentation() -> None:
    answer = "1. Step one:\n\n   ```r\n   y <- 3\n   ```\n\n~~~r\nz <- y\n~~~\n\n````r\ncat('```')\n````"
    assert extract_code(answer).code == "y <- 3\nz <- y\ncat('```')"


def test_unclosed_fence_runs_to_the_end() -> None:
    ex = extract_code("Here:\n```r\nx <- c(1,\n")
    assert ex.code == "x <- c(1,"
    assert ex.blocks[0].closed is False


def test_no_code() -> None:
    assert extract_code("Use `mean(x)` to get the mean.").code == ""
    assert extract_code("```r\n\n```").code == ""


@given(st.text(max_size=400))
def test_never_raises_and_maps_every_line(text: str) -> None:
    ex = extract_code(text)
    lines = ex.code.split("\n") if ex.code else []
    assert len(ex.line_map) == len(lines)
    assert all(1 <= n <= max(1, len(text.splitlines())) for n in ex.line_map)
