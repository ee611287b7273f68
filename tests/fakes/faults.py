"""Provider faults for the fake model server, shaped as each vendor sends them.

    FaultInjector           what the server asks before answering each request
    ├── fail_next(*Fault)   one-off faults for the next (matching) requests, in order
    └── add(rule)           standing behaviour, asked on every request:
        ├── ConcurrencyLimit  429 above N requests in flight, Retry-After = until a slot frees
        ├── Storm             every request 429s for a while (a per-minute quota spent)
        ├── RevokeKey         401 on every request once N have succeeded
        ├── SlowTail          every k-th request answers late
        └── After             one-off faults once N requests have arrived

Error bodies and headers follow the vendors' documentation: OpenAI sends `{"error": {"message",
"type", "param", "code"}}` with `x-request-id` and `x-ratelimit-*` headers (a 429 adds `retry-after`
and `retry-after-ms`), and its 502s come from the gateway as HTML; Anthropic sends `{"type":
"error", "error": {"type", "message"}, "request_id"}` with `request-id`, `anthropic-ratelimit-*`
headers and, on a 429, `retry-after` in whole seconds; 529 is its `overloaded_error`.
"""

from __future__ import annotations

import itertools
import json
import math
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, Protocol

__all__ = [
    "After",
    "ConcurrencyLimit",
    "Fault",
    "FaultInjector",
    "RevokeKey",
    "Rule",
    "SlowTail",
    "Storm",
    "error_response",
    "success_headers",
]

Vendor = Literal["openai", "anthropic"]


class CallView(Protocol):
    protocol: str
    system: str
    user: str
    body: dict[str, Any]


@dataclass
class Fault:
    """One scripted misbehaviour.

    `status`: an error answer in the vendor's shape (`body` replaces its message, `retry_after_s`
    adds the vendor's Retry-After headers, `headers` adds or overrides any); `malformed`: a 200 whose
    text is unusable (`body`); `empty`: a 200 with no text; `slow`: a normal answer `delay_s` late;
    `bad_json`: a 200 whose body is cut-off JSON; `reset`: the connection is reset halfway through
    the body. `match` limits the fault to the requests it accepts.
    """

    kind: Literal["status", "malformed", "empty", "slow", "bad_json", "reset"]
    status: int = 500
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0
    body: str = ""
    retry_after_s: float | None = None
    code: str | None = None
    match: Callable[[CallView], bool] | None = None


class Rule(Protocol):
    def decide(self, call: CallView, now: float) -> Fault | None:
        """A fault for this request, or None to let it through (to the next rule)."""
        ...

    def finished(self, call: CallView, status: int) -> None:
        """The request was answered with `status` (200 for a reply)."""
        ...


class _Rule:
    def decide(self, call: CallView, now: float) -> Fault | None:
        return None

    def finished(self, call: CallView, status: int) -> None:
        pass


class ConcurrencyLimit(_Rule):
    """At most `limit` requests in flight; one more is answered 429 at once, with a Retry-After (and, for
    OpenAI, `retry-after-ms`) saying when the oldest request in flight will be done (`service_s` is
    how long the server takes for one). `honest=False` sends a flat one-second Retry-After instead."""

    def __init__(self, limit: int, *, service_s: float, honest: bool = True) -> None:
        self.limit = limit
        self.service_s = service_s
        self.honest = honest
        self.in_flight: dict[int, float] = {}
        self.peak = 0
        self.refused = 0

    def decide(self, call: CallView, now: float) -> Fault | None:
        if len(self.in_flight) >= self.limit:
            self.refused += 1
            wait = 1.0
            if self.honest:
                wait = max(0.001, min(self.in_flight.values()) + self.service_s - now)
            return Fault(kind="status", status=429, retry_after_s=wait)
        self.in_flight[id(call)] = now
        self.peak = max(self.peak, len(self.in_flight))
        return None

    def finished(self, call: CallView, status: int) -> None:
        self.in_flight.pop(id(call), None)


class Storm(_Rule):
    """From the `start`-th request on, every request for `duration_s` is answered 429 with a Retry-After
    counting down to the storm's end: a per-minute quota spent."""

    def __init__(self, *, start: int, duration_s: float) -> None:
        self.start = start
        self.duration_s = duration_s
        self.seen = 0
        self.began: float | None = None
        self.refused = 0

    def decide(self, call: CallView, now: float) -> Fault | None:
        self.seen += 1
        if self.began is None and self.seen >= self.start:
            self.began = now
        if self.began is not None and now < self.began + self.duration_s:
            self.refused += 1
            return Fault(kind="status", status=429, retry_after_s=self.began + self.duration_s - now)
        return None


class RevokeKey(_Rule):
    """Once `after` requests have succeeded the key is revoked: every later request gets 401."""

    def __init__(self, *, after: int) -> None:
        self.after = after
        self.succeeded = 0
        self.refused = 0
        self.started = 0

    def decide(self, call: CallView, now: float) -> Fault | None:
        if self.succeeded >= self.after:
            self.refused += 1
            return Fault(kind="status", status=401)
        self.started += 1
        return None

    def finished(self, call: CallView, status: int) -> None:
        if status == 200:
            self.succeeded += 1


class SlowTail(_Rule):
    """Every `every`-th request answers `delay_s` late: the slow tail of a busy API."""

    def __init__(self, *, every: int, delay_s: float) -> None:
        self.every = every
        self.delay_s = delay_s
        self._count = itertools.count(1)
        self.slowed = 0

    def decide(self, call: CallView, now: float) -> Fault | None:
        if next(self._count) % self.every == 0:
            self.slowed += 1
            return Fault(kind="slow", delay_s=self.delay_s)
        return None


class After(_Rule):
    """The given one-off faults, in order, to the requests that arrive after the first `calls`."""

    def __init__(self, calls: int, *faults: Fault) -> None:
        self.calls = calls
        self.faults = deque(faults)
        self.seen = 0

    def decide(self, call: CallView, now: float) -> Fault | None:
        self.seen += 1
        if self.seen > self.calls and self.faults:
            return self.faults.popleft()
        return None


class FaultInjector:
    """Thread-safe: the server answers each request on a thread of its own."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._lock = threading.Lock()
        self._queue: deque[Fault] = deque()
        self._rules: list[Rule] = []
        self._clock = clock

    def fail_next(self, *faults: Fault) -> None:
        with self._lock:
            self._queue.extend(faults)

    def add(self, rule: Rule) -> Rule:
        with self._lock:
            self._rules.append(rule)
        return rule

    @contextmanager
    def serving(self, call: CallView) -> Iterator[_Outcome]:
        """The fault for this request, if any; the caller sets `outcome.status` to what it answered."""
        with self._lock:
            fault = self._draw(call)
        outcome = _Outcome(fault=fault)
        try:
            yield outcome
        finally:
            with self._lock:
                for rule in self._rules:
                    rule.finished(call, outcome.status)

    def _draw(self, call: CallView) -> Fault | None:
        for i, fault in enumerate(self._queue):
            if fault.match is None or fault.match(call):
                del self._queue[i]
                return fault
        now = self._clock()
        for rule in self._rules:
            fault = rule.decide(call, now)
            if fault is not None:
                return fault
        return None


@dataclass
class _Outcome:
    fault: Fault | None
    status: int = 0


# -- the vendors' shapes

_OPENAI_ERRORS: dict[int, tuple[str, str | None, str]] = {
    400: ("invalid_request_error", None, "Invalid request."),
    401: (
        "invalid_request_error",
        "invalid_api_key",
        "Incorrect API key provided: sk-****. You can find your API key at https://platform.openai.com/account/api-keys.",
    ),
    403: (
        "request_forbidden",
        "unsupported_country_region_territory",
        "Country, region, or territory not supported",
    ),
    404: (
        "invalid_request_error",
        "model_not_found",
        "The model `{model}` does not exist or you do not have access to it.",
    ),
    429: (
        "requests",
        "rate_limit_exceeded",
        "Rate limit reached for {model} in organization org-fake on requests per min (RPM): Limit 500, Used 500, "
        "Requested 1. Please try again in {wait}. Visit https://platform.openai.com/account/rate-limits to learn more.",
    ),
    500: ("server_error", None, "The server had an error while processing your request. Sorry about that!"),
    503: ("server_error", None, "The server is overloaded or not ready yet."),
}
_OPENAI_QUOTA = (
    "insufficient_quota",
    "insufficient_quota",
    "You exceeded your current quota, please check your plan and billing details.",
)
_ANTHROPIC_ERRORS: dict[int, tuple[str, str]] = {
    400: ("invalid_request_error", "Invalid request."),
    401: ("authentication_error", "invalid x-api-key"),
    403: ("permission_error", "Your API key does not have permission to use the specified resource."),
    404: ("not_found_error", "model: {model}"),
    413: ("request_too_large", "Request exceeds the maximum allowed number of bytes."),
    429: (
        "rate_limit_error",
        "This request would exceed the rate limit for your organization of 50 requests per minute. "
        "For details, refer to: https://docs.claude.com/en/api/rate-limits.",
    ),
    500: ("api_error", "Internal server error"),
    529: ("overloaded_error", "Overloaded"),
}
_GATEWAY_502 = (
    "<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n<center><h1>502 Bad Gateway</h1></center>\r\n"
    "<hr><center>cloudflare</center>\r\n</body>\r\n</html>\r\n"
)


def _request_id(vendor: Vendor) -> str:
    return ("req_" + secrets.token_hex(16)) if vendor == "openai" else ("req_011C" + secrets.token_hex(10))


def _duration(seconds: float) -> str:
    """OpenAI's reset durations: `120ms`, `1.5s`, `6m0s`."""
    if seconds < 1:
        return f"{max(1, round(seconds * 1000))}ms"
    minutes, rest = divmod(seconds, 60)
    rest = round(rest, 2)
    return f"{int(minutes)}m{rest:g}s" if minutes else f"{rest:g}s"


def _rate_headers(vendor: Vendor, *, remaining: int, reset_s: float) -> dict[str, str]:
    if vendor == "openai":
        return {
            "x-ratelimit-limit-requests": "500",
            "x-ratelimit-remaining-requests": str(remaining),
            "x-ratelimit-reset-requests": _duration(reset_s),
            "x-ratelimit-limit-tokens": "200000",
            "x-ratelimit-remaining-tokens": str(remaining * 400),
            "x-ratelimit-reset-tokens": _duration(reset_s),
        }
    reset = (
        (datetime.now(UTC) + timedelta(seconds=reset_s))
        .replace(microsecond=0)
        .isoformat()
        .replace("+00:00", "Z")
    )
    out: dict[str, str] = {}
    for kind, limit in (
        ("requests", 50),
        ("tokens", 90000),
        ("input-tokens", 80000),
        ("output-tokens", 10000),
    ):
        scale = limit // 50
        out[f"anthropic-ratelimit-{kind}-limit"] = str(limit)
        out[f"anthropic-ratelimit-{kind}-remaining"] = str(remaining * scale)
        out[f"anthropic-ratelimit-{kind}-reset"] = reset
    return out


def success_headers(vendor: Vendor) -> dict[str, str]:
    """What every successful answer carries besides its body."""
    headers = {"x-request-id" if vendor == "openai" else "request-id": _request_id(vendor)}
    if vendor == "openai":
        headers["openai-processing-ms"] = "12"
        headers["openai-version"] = "2020-10-01"
    else:
        headers["anthropic-organization-id"] = "00000000-0000-0000-0000-000000000000"
    headers.update(_rate_headers(vendor, remaining=499 if vendor == "openai" else 49, reset_s=0.12))
    return headers


def error_response(vendor: Vendor, fault: Fault, *, model: str) -> tuple[int, bytes, dict[str, str]]:
    """Status, body and headers (content type included) of an error answer, as the vendor sends it."""
    status = fault.status
    request_id = _request_id(vendor)
    wait = fault.retry_after_s
    headers: dict[str, str] = {"content-type": "application/json"}
    if vendor == "openai":
        headers["x-request-id"] = request_id
        if status == 502:
            headers["content-type"] = "text/html"
            body = _GATEWAY_502.encode()
        else:
            kind, code, message = _OPENAI_ERRORS.get(status, ("server_error", None, "Unexpected error."))
            if fault.code in ("insufficient_quota",):
                kind, code, message = _OPENAI_QUOTA
            message = fault.body or message.format(model=model, wait=_duration(wait or 1.0))
            error = {"message": message, "type": kind, "param": None, "code": fault.code or code}
            body = json.dumps({"error": error}).encode()
        if status == 429:
            headers.update(_rate_headers(vendor, remaining=0, reset_s=wait or 1.0))
        if wait is not None:
            headers["retry-after"] = str(max(1, math.ceil(wait)))
            headers["retry-after-ms"] = str(max(1, round(wait * 1000)))
    else:
        headers["request-id"] = request_id
        kind, message = _ANTHROPIC_ERRORS.get(status, ("api_error", "Internal server error"))
        error: dict[str, Any] = {"type": kind, "message": fault.body or message.format(model=model)}
        if fault.code:
            error["details"] = {"error_code": fault.code}
        body = json.dumps({"type": "error", "error": error, "request_id": request_id}).encode()
        if status == 429:
            headers.update(_rate_headers(vendor, remaining=0, reset_s=wait or 1.0))
        if wait is not None:
            headers["retry-after"] = str(max(1, math.ceil(wait)))
    headers.update({k.lower(): v for k, v in fault.headers.items()})
    return status, body, headers
