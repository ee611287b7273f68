"""The qasynth error tree. Callers catch at the level they need.

    QasynthError
    ├── InvalidInput          a request is well-formed JSON but asks for something impossible (400)
    ├── ProviderError         a language-model provider could not give a usable answer
    │   ├── ProviderNotConfigured   the named provider has no credentials or runtime (400)
    │   ├── ProviderUnavailable     transport failures, 5xx and 429 after retries (502)
    │   │   └── BatchRequestFailed  one request of a provider batch errored, expired or was cancelled
    │   ├── ProviderRejected        the provider refused the request: bad key, unknown model (502)
    │   └── BudgetExhausted         the job's budget cannot pay for the next call (items fail with it)
    ├── LabelStudioFailed     a push to Label Studio was refused or could not connect (502)
    ├── SandboxUnavailable    the R sandbox cannot run at all (503)
    │   └── SandboxBusy       too many snippets are waiting for the R workers (503, Retry-After)
    ├── Unauthenticated       no usable `Authorization: Bearer <key>` header (401)
    ├── Forbidden             an unknown key, a key not allowed this route, a push target not allowed (403)
    └── QuotaExceeded         the key's requests per minute or jobs in flight are used up (429)

Expected outcomes are data, not exceptions: a duplicate, an unparsable model reply
or an R error in an answer become dropped/failed items in the response.
"""

from __future__ import annotations

import math

__all__ = [
    "BatchRequestFailed",
    "BudgetExhausted",
    "Forbidden",
    "InvalidInput",
    "LabelStudioFailed",
    "ProviderError",
    "ProviderNotConfigured",
    "ProviderRejected",
    "ProviderUnavailable",
    "QasynthError",
    "QuotaExceeded",
    "SandboxBusy",
    "SandboxUnavailable",
    "Unauthenticated",
]


class QasynthError(Exception):
    """Root of every error qasynth raises on purpose."""

    status_code: int = 500
    title: str = "Internal error"

    def __init__(self, detail: str, *, field: str | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.field = field
        # Response headers the status needs (WWW-Authenticate, Retry-After).
        self.headers: dict[str, str] = {}


class InvalidInput(QasynthError):
    status_code = 400
    title = "Invalid request"


class ProviderError(QasynthError):
    status_code = 502
    title = "Model provider failed"

    def __init__(self, detail: str, *, provider: str, field: str | None = None) -> None:
        super().__init__(detail, field=field)
        self.provider = provider


class ProviderNotConfigured(ProviderError):
    status_code = 400
    title = "Model provider not configured"


class BudgetExhausted(ProviderError):
    """Raised in place of a call the job's budget (`budget.usd`, `budget.tokens`) cannot pay for: it
    travels the paths a failed call does, and the job ends with its items failed `budget_exhausted`.
    `usage` and `attempts`: what the step had spent on earlier attempts before this one was refused."""

    title = "Budget exhausted"

    def __init__(self, detail: str, *, provider: str, limit: str) -> None:
        super().__init__(detail, provider=provider)
        self.limit = limit
        self.usage: object = None
        self.attempts = 0


class ProviderUnavailable(ProviderError):
    title = "Model provider unavailable"


class BatchRequestFailed(ProviderUnavailable):
    """`reason` is the item's failure reason: `batch_errored`, `batch_expired`, `batch_canceled` or
    `batch_rounds_exhausted`; one line of a batch failing fails only its item."""

    title = "Model provider batch request failed"

    def __init__(self, detail: str, *, provider: str, reason: str) -> None:
        super().__init__(detail, provider=provider)
        self.reason = reason


class ProviderRejected(ProviderError):
    title = "Model provider rejected the request"


class LabelStudioFailed(QasynthError):
    """The detail carries Label Studio's own answer."""

    status_code = 502
    title = "Label Studio failed"


class SandboxUnavailable(QasynthError):
    status_code = 503
    title = "R sandbox unavailable"


class SandboxBusy(SandboxUnavailable):
    """The evaluation queue is full; `retry_after_s` says when to try again."""

    title = "R sandbox busy"

    def __init__(self, detail: str, *, retry_after_s: float, field: str | None = None) -> None:
        super().__init__(detail, field=field)
        self.retry_after_s = math.ceil(retry_after_s)  # RFC 9110: whole seconds
        self.headers = {"Retry-After": str(self.retry_after_s)}


class Unauthenticated(QasynthError):
    """`error` is RFC 6750's code for the WWW-Authenticate challenge (None when no key was sent)."""

    status_code = 401
    title = "Authentication required"

    def __init__(self, detail: str, *, error: str | None = None) -> None:
        super().__init__(detail)
        challenge = 'Bearer realm="qasynth"'
        if error:
            challenge += f', error="{error}"'
        self.headers = {"WWW-Authenticate": challenge}


class Forbidden(QasynthError):
    status_code = 403
    title = "Forbidden"


class QuotaExceeded(QasynthError):
    status_code = 429
    title = "Quota exceeded"

    def __init__(self, detail: str, *, retry_after_s: int) -> None:
        super().__init__(detail)
        self.retry_after_s = retry_after_s
        self.headers = {"Retry-After": str(retry_after_s)}
