"""ROUGE-L near-duplicate filtering, exact to rouge-score and fast enough to run per item.

`Deduplicator` is the incremental filter the pipeline feeds one item at a time;
`deduplicate` runs it over a batch. Both are pure CPU work: call them off the event loop.
"""

from service.stages.dedup._filter import Decision, Deduplicator, deduplicate, rouge_f
from service.stages.dedup._tokenize import TOKENIZERS, japanese_available, resolve, tokenize

__all__ = [
    "TOKENIZERS",
    "Decision",
    "Deduplicator",
    "deduplicate",
    "japanese_available",
    "resolve",
    "rouge_f",
    "tokenize",
]
