"""Which pairs an export carries, and in what order.

Review formats carry every pair (filtered by verdict if asked), failed ones first, so reviewers see
the doubtful pairs early. Training formats leave out flagged and rejected pairs unless asked, and
count what they left out.
"""

from __future__ import annotations

from collections.abc import Sequence

from service.wire.export import ExportOptions, LeftOut, Review
from service.wire.generate import Pair

__all__ = ["for_review", "for_training", "verdict_of"]


def verdict_of(pair: Pair) -> str:
    return pair.evaluation.verdict if pair.evaluation is not None else "unevaluated"


def _flagged(pair: Pair) -> bool:
    return pair.evaluation is not None and pair.evaluation.flagged


def _filtered(pairs: Sequence[Pair], options: ExportOptions) -> tuple[list[Pair], int]:
    if options.verdicts is None:
        return list(pairs), 0
    keep = set(options.verdicts)
    kept = [p for p in pairs if verdict_of(p) in keep]
    return kept, len(pairs) - len(kept)


def for_review(pairs: Sequence[Pair], options: ExportOptions) -> tuple[list[Pair], LeftOut]:
    kept, filtered = _filtered(pairs, options)
    if options.flagged_first:
        kept.sort(key=lambda p: (not _flagged(p), verdict_of(p) == "passed"))
    return kept, LeftOut(filtered=filtered)


def for_training(
    pairs: Sequence[Pair], reviews: Sequence[Review], options: ExportOptions
) -> tuple[list[Pair], LeftOut]:
    kept, filtered = _filtered(pairs, options)
    rejected_ids = {r.pair_id for r in reviews if r.decision == "reject"}
    out: list[Pair] = []
    flagged = rejected = 0
    for pair in kept:
        if pair.id in rejected_ids and not options.include_rejected:
            rejected += 1
        elif _flagged(pair) and not options.include_flagged:
            flagged += 1
        else:
            out.append(pair)
    return out, LeftOut(flagged=flagged, rejected=rejected, filtered=filtered)
