"""Label Studio: the labeling config and the task list for `POST /api/projects/{id}/import`.

A task shows the question (plain `<Text>`), the answer and the evaluator's evidence (`<Markdown>`,
made safe by `markdown.safe_markdown`: Label Studio renders raw HTML there). The reviewer picks
accept / reject / needs-fix, edits the answer in a text area pre-filled through `predictions`,
and may leave a comment. The whole pair rides along in `data.pair` so the review import needs
nothing but Label Studio's export.

Sample task (abridged):
    {"data": {"pair_id": "p-1f3a", "question": "What does summary(lm(y ~ x)) report?",
              "answer_md": "It prints <code>Estimate</code> ...", "evidence_md": "**Verdict:** passed ...",
              "task": "explain", "theme": "regression", "locale": "en", "verdict": "passed",
              "flagged": false, "model": "openai/gpt-4o-mini", "pair": {...}},
     "predictions": [{"model_version": "qasynth", "result": [{"from_name": "answer",
              "to_name": "question", "type": "textarea", "value": {"text": ["It prints ..."]}}]}]}
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from xml.sax.saxutils import quoteattr

from service.stages.export.base import Export
from service.stages.export.markdown import code_block, escape_text, safe_markdown
from service.stages.export.policy import for_review, verdict_of
from service.wire.export import (
    MODEL_VERSION,
    ExportOptions,
    LSPrediction,
    LSResult,
    LSTask,
    LSTaskData,
    Review,
)
from service.wire.generate import Pair

__all__ = [
    "ANSWER",
    "COMMENT",
    "CONTROLS",
    "DECISION",
    "DECISION_VALUES",
    "LABELS",
    "OBJECT",
    "config_locale",
    "evidence_markdown",
    "label_config",
    "task_for",
    "to_label_studio",
]

# Names shared by the config, the predictions and the review import.
OBJECT = "question"
DECISION = "decision"
ANSWER = "answer"
COMMENT = "comment"
DECISION_VALUES = ("accept", "reject", "needs-fix")
CONTROLS = {DECISION: "choices", ANSWER: "textarea", COMMENT: "textarea"}

LABELS = {
    "en": {
        "question": "Question",
        "answer": "Answer",
        "evidence": "Evaluator",
        "decision": "Decision",
        "accept": "Accept",
        "reject": "Reject",
        "needs-fix": "Needs fix",
        "edit": "Answer (edit to correct it)",
        "comment": "Comment",
        "verdict": "Verdict",
        "flagged": "flagged",
        "error": "Error",
        "failing_call": "Failing call",
        "warnings": "Warnings",
        "stdout": "Output",
        "truncated": "output truncated",
        "not_evaluated": "not evaluated",
        "model": "Model",
    },
    "ja": {
        "question": "質問",
        "answer": "回答",
        "evidence": "評価結果",
        "decision": "判定",
        "accept": "承認",
        "reject": "却下",
        "needs-fix": "要修正",
        "edit": "回答（修正する場合は編集）",
        "comment": "コメント",
        "verdict": "判定結果",
        "flagged": "要確認",
        "error": "エラー",
        "failing_call": "失敗した呼び出し",
        "warnings": "警告",
        "stdout": "出力",
        "truncated": "出力は途中で切られています",
        "not_evaluated": "未評価",
        "model": "モデル",
    },
}


def label_config(locale: str = "en") -> str:
    """The labeling config matching `task_for`; labels in Japanese or English, values always English."""
    t = LABELS["ja" if locale == "ja" else "en"]
    choices = "\n".join(
        f"    <Choice value={quoteattr(t[v])} alias={quoteattr(v)}/>" for v in DECISION_VALUES
    )
    return f"""<View>
  <Header value="$task / $theme"/>
  <Header value={quoteattr(t["question"])} size="4"/>
  <Text name="{OBJECT}" value="$question"/>
  <Header value={quoteattr(t["answer"])} size="4"/>
  <Markdown name="answer_view" value="$answer_md"/>
  <Header value={quoteattr(t["evidence"])} size="4"/>
  <Markdown name="evidence_view" value="$evidence_md"/>
  <Header value={quoteattr(t["decision"])} size="4"/>
  <Choices name="{DECISION}" toName="{OBJECT}" choice="single-radio" required="true" showInline="true">
{choices}
  </Choices>
  <Header value={quoteattr(t["edit"])} size="4"/>
  <TextArea name="{ANSWER}" toName="{OBJECT}" editable="true" maxSubmissions="1" rows="14"/>
  <Header value={quoteattr(t["comment"])} size="4"/>
  <TextArea name="{COMMENT}" toName="{OBJECT}" editable="true" maxSubmissions="1" rows="3"/>
</View>
"""


def evidence_markdown(pair: Pair) -> str:
    t = LABELS["ja" if pair.locale == "ja" else "en"]
    ev = pair.evaluation
    if ev is None:
        return f"**{t['verdict']}:** {t['not_evaluated']}"
    head = f"**{t['verdict']}:** {escape_text(ev.verdict)}" + (f" ({t['flagged']})" if ev.flagged else "")
    parts = [head]
    if ev.message:
        parts.append(f"**{t['error']}:**\n\n{code_block(ev.message)}")
    if ev.failing_call:
        parts.append(f"**{t['failing_call']}:**\n\n{code_block(ev.failing_call, 'r')}")
    if ev.warnings:
        parts.append(f"**{t['warnings']}:**\n\n{code_block(chr(10).join(ev.warnings))}")
    if ev.stdout:
        note = f" ({t['truncated']})" if ev.stdout_truncated else ""
        parts.append(f"**{t['stdout']}:**{note}\n\n{code_block(ev.stdout)}")
    if pair.provenance is not None:
        step = pair.provenance.answer
        parts.append(f"**{t['model']}:** {escape_text(step.provider + '/' + step.model)}")
    return "\n\n".join(parts)


def _model(pair: Pair) -> str:
    if pair.provenance is None:
        return ""
    return f"{pair.provenance.answer.provider}/{pair.provenance.answer.model}"


def task_for(pair: Pair) -> LSTask:
    data = LSTaskData(
        pair_id=pair.id,
        question=pair.question,
        answer_md=safe_markdown(pair.answer),
        evidence_md=evidence_markdown(pair),
        task=pair.task,
        theme=pair.theme,
        locale=pair.locale,
        verdict=verdict_of(pair),
        flagged=bool(pair.evaluation and pair.evaluation.flagged),
        model=_model(pair),
        pair=pair,
    )
    prefill = LSResult(from_name=ANSWER, to_name=OBJECT, type="textarea", value={"text": [pair.answer]})
    return LSTask(data=data, predictions=[LSPrediction(model_version=MODEL_VERSION, result=[prefill])])


def config_locale(pairs: Sequence[Pair], options: ExportOptions) -> str:
    if options.locale is not None:
        return options.locale
    counts = Counter(p.locale for p in pairs)
    return counts.most_common(1)[0][0] if counts else "en"


def to_label_studio(pairs: Sequence[Pair], reviews: Sequence[Review], options: ExportOptions) -> Export:
    kept, left_out = for_review(pairs, options)
    return Export(
        format="label-studio",
        kind="json",
        payload=[task_for(p) for p in kept],
        media_type="application/json",
        filename="tasks.json",
        exported=len(kept),
        left_out=left_out,
    )
