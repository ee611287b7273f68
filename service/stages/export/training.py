"""Training formats: OpenAI chat fine-tuning, Alpaca, ShareGPT, and a Hugging Face dataset.

All of them leave out flagged (failed evaluation) and rejected pairs unless the options ask for
them, and count what they left out. Samples, one line each:

    openai    {"messages": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}]}
    alpaca    {"instruction": "Q", "input": "", "output": "A"}
    sharegpt  {"conversations": [{"from": "human", "value": "Q"}, {"from": "gpt", "value": "A"}]}
    hf-jsonl  {"id": "p-1f3a", "task": "explain", "theme": "regression", "locale": "en", "question": "Q",
               "answer": "A", "verdict": "passed", "flagged": false, "model": "openai/gpt-4o-mini",
               "spec_sha256": "…", "messages": [...]}

`hf-parquet` holds the same rows as Parquet; `hf-card` is the dataset card (README.md) for them.
"""

from __future__ import annotations

import dataclasses
import io
from collections import Counter
from collections.abc import Sequence
from typing import Any

from service.stages.export.base import Export
from service.stages.export.policy import for_training, verdict_of
from service.wire.export import ExportOptions, LeftOut, Review
from service.wire.generate import Pair

__all__ = [
    "dataset_card",
    "hf_row",
    "to_alpaca",
    "to_hf_card",
    "to_hf_jsonl",
    "to_hf_parquet",
    "to_openai",
    "to_sharegpt",
]


def _messages(pair: Pair, system: str | None) -> list[dict[str, str]]:
    head = [{"role": "system", "content": system}] if system else []
    return [*head, {"role": "user", "content": pair.question}, {"role": "assistant", "content": pair.answer}]


def _jsonl(name: str, rows: list[Any], left_out: LeftOut) -> Export:
    return Export(
        format=name,
        kind="jsonl",
        payload=rows,
        media_type="application/jsonl",
        filename=f"{name}.jsonl",
        exported=len(rows),
        left_out=left_out,
    )


def to_openai(pairs: Sequence[Pair], reviews: Sequence[Review], options: ExportOptions) -> Export:
    kept, left_out = for_training(pairs, reviews, options)
    return _jsonl("openai", [{"messages": _messages(p, options.system_prompt)} for p in kept], left_out)


def to_alpaca(pairs: Sequence[Pair], reviews: Sequence[Review], options: ExportOptions) -> Export:
    kept, left_out = for_training(pairs, reviews, options)
    return _jsonl(
        "alpaca", [{"instruction": p.question, "input": "", "output": p.answer} for p in kept], left_out
    )


def to_sharegpt(pairs: Sequence[Pair], reviews: Sequence[Review], options: ExportOptions) -> Export:
    kept, left_out = for_training(pairs, reviews, options)
    head = [{"from": "system", "value": options.system_prompt}] if options.system_prompt else []
    rows = [
        {"conversations": [*head, {"from": "human", "value": p.question}, {"from": "gpt", "value": p.answer}]}
        for p in kept
    ]
    return _jsonl("sharegpt", rows, left_out)


def hf_row(pair: Pair, system: str | None = None) -> dict[str, Any]:
    """A flat row: every column has one type across rows, so `datasets` infers a stable schema."""
    prov = pair.provenance
    return {
        "id": pair.id,
        "task": pair.task,
        "theme": pair.theme,
        "locale": pair.locale,
        "question": pair.question,
        "answer": pair.answer,
        "verdict": verdict_of(pair),
        "flagged": bool(pair.evaluation and pair.evaluation.flagged),
        "model": f"{prov.answer.provider}/{prov.answer.model}" if prov else "",
        "spec_sha256": prov.spec_sha256 if prov else "",
        "messages": _messages(pair, system),
    }


def to_hf_jsonl(pairs: Sequence[Pair], reviews: Sequence[Review], options: ExportOptions) -> Export:
    kept, left_out = for_training(pairs, reviews, options)
    export = _jsonl("hf-jsonl", [hf_row(p, options.system_prompt) for p in kept], left_out)
    return dataclasses.replace(export, filename="train.jsonl")


def to_hf_parquet(pairs: Sequence[Pair], reviews: Sequence[Review], options: ExportOptions) -> Export:
    import pyarrow as pa
    import pyarrow.parquet as pq

    kept, left_out = for_training(pairs, reviews, options)
    message = pa.struct([("role", pa.string()), ("content", pa.string())])
    schema = pa.schema(
        [
            *[
                (name, pa.string())
                for name in ("id", "task", "theme", "locale", "question", "answer", "verdict")
            ],
            ("flagged", pa.bool_()),
            ("model", pa.string()),
            ("spec_sha256", pa.string()),
            ("messages", pa.list_(message)),
        ]
    )
    table = pa.Table.from_pylist([hf_row(p, options.system_prompt) for p in kept], schema=schema)
    buf = io.BytesIO()
    pq.write_table(table, buf)
    return Export(
        format="hf-parquet",
        kind="bytes",
        payload=buf.getvalue(),
        media_type="application/vnd.apache.parquet",
        filename="train.parquet",
        exported=len(kept),
        left_out=left_out,
    )


def _size_category(n: int) -> str:
    for bound, name in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K")):
        if n < bound:
            return name
    return "100K<n<1M"


def dataset_card(kept: Sequence[Pair], left_out: LeftOut, data_file: str = "train.jsonl") -> str:
    """README.md for the Hugging Face dataset: what produced it and what was left out."""
    locales = sorted({p.locale for p in kept}) or ["en"]
    specs = sorted({p.provenance.spec_sha256 for p in kept if p.provenance})
    models = Counter(
        f"{step.provider}/{step.model}"
        for p in kept
        if p.provenance
        for step in (p.provenance.question, p.provenance.answer)
    )
    templates = sorted(
        {
            f"{step.template_id} ({step.template_sha256[:12]})"
            for p in kept
            if p.provenance
            for step in (p.provenance.question, p.provenance.answer)
        }
    )
    verdicts = Counter(verdict_of(p) for p in kept)
    tasks = Counter(p.task for p in kept)

    def bullets(items: Any) -> str:
        lines = [f"- {item}" for item in items]
        return "\n".join(lines) if lines else "- (none)"

    return f"""---
language: [{", ".join(locales)}]
pretty_name: R for statistics question/answer pairs
task_categories: [text-generation, question-answering]
tags: [r, statistics, code, synthetic]
size_categories: [{_size_category(len(kept))}]
configs:
  - config_name: default
    data_files:
      - split: train
        path: {data_file}
---

# R for statistics question/answer pairs

Synthetic question/answer pairs about R for statistics, generated by qasynth. Each answer's R
code was run in a sandbox; `verdict` records what happened and `flagged` marks answers whose code
failed for their task.

Rows: {len(kept)}. Left out: {left_out.flagged} flagged, {left_out.rejected} rejected by reviewers,
{left_out.filtered} filtered by verdict.

## Counts by verdict
{bullets(f"{v}: {n}" for v, n in sorted(verdicts.items()))}

## Counts by task
{bullets(f"{t}: {n}" for t, n in sorted(tasks.items()))}

## Generation spec (SHA-256)
{bullets(f"`{s}`" for s in specs)}

## Models (calls)
{bullets(f"{m}: {n}" for m, n in sorted(models.items()))}

## Prompt templates
{bullets(templates)}

## Columns
`id`, `task`, `theme`, `locale`, `question`, `answer`, `verdict`, `flagged`, `model`, `spec_sha256`,
and `messages` (the pair as a chat: user question, assistant answer).
"""


def to_hf_card(pairs: Sequence[Pair], reviews: Sequence[Review], options: ExportOptions) -> Export:
    kept, left_out = for_training(pairs, reviews, options)
    return Export(
        format="hf-card",
        kind="bytes",
        payload=dataset_card(kept, left_out).encode(),
        media_type="text/markdown",
        filename="README.md",
        exported=len(kept),
        left_out=left_out,
    )
