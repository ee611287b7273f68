"""Jobs run through the providers' batch APIs: `POST /v1/batches` and `/v1/batches/{handle}`.

The service keeps no state: the handle it returns names the provider batches made so far, the
spec's hash and the caller, signed. The client sends it back with the same spec to go on.
"""

from __future__ import annotations

from typing import Literal

from service.wire.base import Base
from service.wire.generate import GenerateResponse

__all__ = ["BatchCounts", "BatchJob", "BatchState", "ProviderBatch"]


class BatchCounts(Base):
    """The provider's own counts of one batch's requests."""

    total: int = 0
    processing: int = 0
    succeeded: int = 0
    errored: int = 0
    expired: int = 0
    canceled: int = 0


class ProviderBatch(Base):
    """One provider batch: `status` is the vendor's word (OpenAI: validating, in_progress, finalizing,
    completed, failed, expired, cancelling, cancelled; Anthropic: in_progress, canceling, ended);
    `ended` says whether its results can be read."""

    id: str
    status: str
    ended: bool
    counts: BatchCounts


BatchState = Literal["running", "ready", "done"]
"""`running`: the round's provider batch is still at work, poll again later; `ready`: it has ended,
POST the spec to `/v1/batches/{handle}` to read it and go on; `done`: `result` holds the pairs."""


class BatchJob(Base):
    """Where a batch job stands. `handle` is what to send back (null once `done`); `round` counts the
    provider batches made so far; `requests` is how many model calls the current round holds."""

    state: BatchState
    provider: str
    spec_sha256: str
    round: int
    requests: int = 0
    handle: str | None = None
    batch: ProviderBatch | None = None
    # Once done: exactly what POST /v1/generate returns for the spec.
    result: GenerateResponse | None = None
