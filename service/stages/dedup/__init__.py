"""ROUGE-L near-duplicate filtering, exact to rouge-score and fast enough to run per item.

`Deduplicator` is the incremental filter the pipeline feeds one item at a time;
`deduplicate` runs it over a batch; `BlockDedup` cuts the same filter into blocks for an
`Executor` (this process, or a cluster) with the same decisions. All are pure CPU work: call
them off the event loop.
"""

from service.stages.dedup._blocks import DEFAULT_BLOCK, BlockDedup, BlockStats, Executor, InlineExecutor
from service.stages.dedup._filter import Decision, Deduplicator, deduplicate, rouge_f
from service.stages.dedup._tokenize import TOKENIZERS, japanese_available, resolve, tokenize

__all__ = [
    "DEFAULT_BLOCK",
    "TOKENIZERS",
    "BlockDedup",
    "BlockStats",
    "Decision",
    "Deduplicator",
    "Executor",
    "InlineExecutor",
    "deduplicate",
    "japanese_available",
    "resolve",
    "rouge_f",
    "tokenize",
]
