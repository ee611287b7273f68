"""Spec resolution, prompt rendering and reply parsing: the parts of the pipeline that need no network."""

from __future__ import annotations

import msgspec
import pytest

from service.errors import InvalidInput
from service.stages.answers import parse_answer
from service.stages.calls import MalformedReply
from service.stages.prompts import (
    answer_request,
    bug_request,
    code_question_request,
    load_template,
    load_templates,
    question_request,
    repair_request,
)
from service.stages.questions import parse_questions
from service.stages.spec import resolve_spec
from service.wire.generate import Spec


def job_for(**fields: object):
    return resolve_spec(msgspec.convert({"per_cell": 1, **fields}, Spec))


def test_defaults_fill_tasks_themes_and_conventions() -> None:
    job = job_for()
    assert set(job.tasks) == {"explain", "fix", "generate"}
    assert {"mean-variance", "hypothesis-tests", "regression"} <= set(job.themes)
    assert len(job.cells) == len(job.tasks) * len(job.themes)
    assert "no library()" in job.conventions
    assert {e.task for e in job.few_shot} == {"explain", "fix", "generate"}
    ja = job_for(locale="ja")
    assert ja.tasks["explain"].description == "R コードの説明"


def test_spec_hash_is_stable_and_sensitive() -> None:
    assert job_for().spec_sha256 == job_for().spec_sha256
    assert job_for().spec_sha256 != job_for(conventions="x").spec_sha256


def test_explicit_cells() -> None:
    job = resolve_spec(
        msgspec.convert(
            {
                "tasks": [{"id": "fix"}],
                "themes": [{"id": "regression"}, {"id": "summaries"}],
                "cells": [{"task": "fix", "theme": "summaries", "count": 4}],
            },
            Spec,
        )
    )
    assert job.requested == 4 and [(c.task, c.theme) for c in job.cells] == [("fix", "summaries")]


def test_system_prompt_is_identical_across_calls_of_a_task_and_carries_its_own_examples() -> None:
    job = job_for(
        conventions="CONV-1",
        answer_rules="RULES-2",
        few_shot=[{"task": "fix", "question": "FS-Q", "answer": "FS-A"}],
    )
    q_tpl, a_tpl = load_template(job, "question"), load_template(job, "answer")
    explain, fix = job.tasks["explain"], job.tasks["fix"]
    mv, reg = job.themes["mean-variance"], job.themes["regression"]
    q1 = question_request(job, q_tpl, fix, mv, count=3, avoid=[])
    q2 = question_request(job, q_tpl, fix, reg, count=1, avoid=["an earlier question"])
    assert q1.system == q2.system
    assert "CONV-1" in q1.system and "FS-Q" in q1.system and "FS-A" not in q1.system
    assert "Write 3 new" in q1.messages[0].content
    assert "an earlier question" in q2.messages[0].content and "an earlier question" not in q2.system
    # Asked for one question, a second heading ends the reply.
    assert (q1.stop, q2.stop) == ((), ("\n### Q",))
    assert a_tpl and answer_request(job, a_tpl, fix, mv, question="Q").stop == ()
    a1 = answer_request(job, a_tpl, fix, mv, question="Q-ONE")
    a2 = answer_request(job, a_tpl, fix, reg, question="Q-TWO")
    assert a1.system == a2.system
    assert "RULES-2" in a1.system and "FS-A" in a1.system
    assert a1.messages[0].content.endswith("Write the answer in English now.")
    assert "Q-ONE" in a1.messages[0].content
    # Another task sees none of the fix examples.
    other = answer_request(job, a_tpl, explain, mv, question="Q-ONE")
    assert "FS-A" not in other.system and "FS-Q" not in other.system and "RULES-2" in other.system


def test_each_step_has_its_template_and_its_placeholders() -> None:
    job = job_for(locale="ja")
    templates = load_templates(job)
    assert {t.id for t in templates.values()} == {
        f"{kind}.ja.md" for kind in ("question", "answer", "snippet", "bug", "code_question", "repair")
    }
    fix, reg = job.tasks["fix"], job.themes["regression"]
    bug = bug_request(job, templates["bug"], fix, reg, code="x <- 1\nprint(x)", output="[1] 1")
    assert "```r\nx <- 1\nprint(x)\n```" in bug.messages[0].content and "[1] 1" in bug.messages[0].content
    # The built-in fix example teaches the bug step as working code beside its broken version.
    assert "mean(scores)" in bug.system and "mean(score)" in bug.system
    cq = code_question_request(job, templates["code_question"], fix, reg, code="f(1)", run_result="RESULT-9")
    assert "RESULT-9" in cq.messages[0].content and "質問を書いてください。" in cq.messages[0].content
    repair = repair_request(
        job,
        templates["repair"],
        fix,
        reg,
        question="Q",
        question_output="",
        answer="OLD-ANSWER",
        evidence="EV-3",
    )
    assert [m.role for m in repair.messages] == ["user", "assistant", "user"]
    assert repair.messages[1].content == "OLD-ANSWER" and "EV-3" in repair.messages[2].content
    # The repair step shares the answer step's system prompt, so the provider's cache serves both.
    assert repair.system == answer_request(job, templates["answer"], fix, reg, question="Q").system


def test_turns_must_alternate_and_end_with_the_user() -> None:
    for text, message in [
        ("s\n=== user ===\nq\n=== assistant ===\na", "last turn"),
        ("s\n=== user ===\nq\n=== user ===\nq2", "two user turns"),
    ]:
        with pytest.raises(InvalidInput, match=message):
            load_template(job_for(prompts={"repair": text}), "repair")


def test_every_template_can_be_overridden_and_is_checked() -> None:
    job = job_for(prompts={"snippet": "S {{conventions}}\n=== user ===\n{{theme_id}} {{avoid}}"})
    assert load_template(job, "snippet").id == "request:snippet"
    with pytest.raises(InvalidInput) as info:
        load_template(job_for(prompts={"repair": "x\n=== user ===\n{{count}}"}), "repair")
    assert info.value.field == "prompts.repair" and "count" in info.value.detail


def test_answer_temperature_overrides_for_answers_only() -> None:
    job = job_for(model={"temperature": 0.9, "answer_temperature": 0.2, "seed": 7, "name": "m"})
    task, theme = job.tasks["fix"], job.themes["regression"]
    q = question_request(job, load_template(job, "question"), task, theme, count=1, avoid=[])
    a = answer_request(job, load_template(job, "answer"), task, theme, question="q")
    assert (q.temperature, a.temperature, a.seed, a.model) == (0.9, 0.2, 7, "m")


def test_template_override_is_used_and_identified() -> None:
    job = job_for(prompts={"answer": "Be brief. {{conventions}}\n=== user ===\n{{question}}"})
    template = load_template(job, "answer")
    assert template.id == "request:answer" and len(template.sha256) == 64
    request = answer_request(job, template, job.tasks["fix"], job.themes["regression"], question="why?")
    assert request.system.startswith("Be brief.") and request.messages[0].content == "why?"


def test_call_placeholders_are_refused_in_the_system_part() -> None:
    job = job_for(prompts={"question": "{{theme_id}}\n=== user ===\n{{count}}"})
    with pytest.raises(InvalidInput) as info:
        load_template(job, "question")
    assert info.value.field == "prompts.question" and "theme_id" in info.value.detail


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        ("### Q1\nFirst question here?\n\n### Q2\nSecond question\nwith ```r\nx <- 1\n```", 2),
        ("**Q1:** How do I test normality in R?\n**Q2:** What does sd() return exactly?", 2),
        ("### 問題1\nR で平均を計算するにはどうすればよいですか?", 1),
        ('{"questions": ["How do I fit lm in R?", "What is a p-value in t.test?"]}', 2),
        ('```json\n["How do I fit lm in R?"]\n```', 1),
    ],
)
def test_parse_questions(reply: str, expected: int) -> None:
    questions = parse_questions(reply)
    assert len(questions) == expected
    assert all(not q.startswith(("#", "*", "Q1")) for q in questions)


def test_question_with_code_keeps_its_code() -> None:
    [question] = parse_questions("### Q1\nWhy does this fail?\n```r\nmean('a')\n```\n")
    assert "```r\nmean('a')\n```" in question


@pytest.mark.parametrize(
    "reply", ["", "Sure! Here you go.", "### Q1\nshort", '{"questions": [1, 2]}', "[broken"]
)
def test_unusable_question_replies_are_malformed(reply: str) -> None:
    with pytest.raises(MalformedReply):
        parse_questions(reply)


def test_parse_answer() -> None:
    assert (
        parse_answer("Answer: Use var(x) to get the sample variance.")
        == "Use var(x) to get the sample variance."
    )
    with pytest.raises(MalformedReply, match="empty"):
        parse_answer("  \n")
    with pytest.raises(MalformedReply, match="unclosed code fence"):
        parse_answer("Here is the code:\n```r\nx <- rnorm(10)\nprint(mean(x)")


def test_echoed_few_shot_layout_is_stripped() -> None:
    echoed = "## Example 2 (generate)\nQuestion:\nHow do I get a mean?\n\nAnswer:\nUse mean(x) on the numeric vector x."
    assert parse_answer(echoed) == "Use mean(x) on the numeric vector x."
    assert (
        parse_answer("## Example 1 (fix)\nUse mean(x) on the numeric vector.")
        == "Use mean(x) on the numeric vector."
    )
