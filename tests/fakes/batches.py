"""The batch protocols of the fake model server: OpenAI's Files + Batch API and Anthropic's Message Batches.

Mounted on `FakeLLMServer` (its handler asks `FakeBatches.route` first). Each request of a batch
is answered by POSTing it to the same server's own chat completions or messages endpoint, so a
batch line gets exactly the reply, usage, caching and faults (`server.fail_next`) a direct call
would, and it is recorded in `server.calls` like one.

Time is counted in polls: a batch reports itself in progress for `polls` retrievals (counted
per batch), then runs its requests and ends (an OpenAI batch is `finalizing` for one retrieval
before it is `completed`). `expire_next(after=k)` makes the next batch created
expire having run only its first `k` requests. The shapes follow the vendors' documentation:

OpenAI: `POST /v1/files` (multipart, purpose `batch`) → a file object; `POST /v1/batches`
(`input_file_id`, `endpoint`, `completion_window`) → a batch `validating`, then `in_progress`,
`finalizing` and `completed` (or `failed` when the input does not validate, `expired`,
`cancelled`), with `request_counts` {total, completed, failed}, `output_file_id` (the lines that
got a 200) and `error_file_id` (the others, and `batch_expired` errors for requests never run);
`GET /v1/files/{id}/content` → the JSONL.

Anthropic: `POST /v1/messages/batches` (`requests` of `{custom_id, params}`) → a message batch
`in_progress` with `request_counts` {processing, succeeded, errored, canceled, expired}, then
`ended` with a `results_url`; `GET …/results` → JSONL of `{custom_id, result}` where `result.type`
is `succeeded` (with the message), `errored` (with the error body), `canceled` or `expired`.
"""

from __future__ import annotations

import json
import re
import secrets
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.parser import BytesParser
from email.policy import HTTP
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from tests.fakes.llm_server import FakeLLMServer, _Handler

__all__ = ["FakeBatches", "StoredBatch"]

CUSTOM_ID = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
OPENAI_ENDPOINTS = ("/v1/chat/completions",)


@dataclass
class StoredBatch:
    vendor: Literal["openai", "anthropic"]
    id: str
    # (custom_id, body) in input order.
    requests: list[tuple[str, dict[str, Any]]]
    created_at: float
    input_file_id: str | None = None
    polls: int = 0
    # Run only the first `expire_after` requests, then expire (None: run them all).
    expire_after: int | None = None
    status: str = "validating"
    # custom_id -> (HTTP status, body) of each request run.
    answers: dict[str, tuple[int, dict[str, Any]]] = field(default_factory=dict)
    errors: list[dict[str, Any]] = field(default_factory=list)
    output_file_id: str | None = None
    error_file_id: str | None = None
    ended_at: float | None = None


def _iso(t: float | None) -> str | None:
    return None if t is None else datetime.fromtimestamp(t, UTC).isoformat().replace("+00:00", "Z")


class FakeBatches:
    """The batch state of one fake server; `polls` is how many retrievals a batch stays in progress."""

    def __init__(self, server: FakeLLMServer, *, polls: int = 1) -> None:
        self.server = server
        self.polls = polls
        self.batches: dict[str, StoredBatch] = {}
        self.files: dict[str, tuple[str, bytes]] = {}  # id -> (purpose, content)
        self._expire: list[int] = []
        self._lock = threading.RLock()

    def expire_next(self, *, after: int = 0) -> None:
        """The next batch created expires after running its first `after` requests."""
        with self._lock:
            self._expire.append(after)

    # ---- routing

    def route(self, handler: _Handler, method: str) -> bool:
        """Serve the request if it is a batch or file route; False leaves it to the chat routes."""
        path = handler.path.split("?", 1)[0].rstrip("/")
        routes: list[tuple[str, str, Any]] = [
            ("POST", r"/v1/files", self._upload),
            ("GET", r"/v1/files/(?P<id>[^/]+)/content", self._file_content),
            ("GET", r"/v1/files/(?P<id>[^/]+)", self._file_object),
            ("POST", r"/v1/batches", self._openai_create),
            ("GET", r"/v1/batches/(?P<id>[^/]+)", self._openai_retrieve),
            ("POST", r"/v1/batches/(?P<id>[^/]+)/cancel", self._openai_cancel),
            ("POST", r"/v1/messages/batches", self._anthropic_create),
            ("GET", r"/v1/messages/batches/(?P<id>[^/]+)", self._anthropic_retrieve),
            ("GET", r"/v1/messages/batches/(?P<id>[^/]+)/results", self._anthropic_results),
            ("POST", r"/v1/messages/batches/(?P<id>[^/]+)/cancel", self._anthropic_cancel),
        ]
        for verb, pattern, serve in routes:
            m = re.fullmatch(pattern, path)
            if m and verb == method:
                length = int(handler.headers.get("Content-Length", "0"))
                raw = handler.rfile.read(length) if length else b""
                with self._lock:
                    status, payload, headers = serve(handler, raw, **m.groupdict())
                handler._send(status, payload, headers)
                return True
        return False

    # ---- errors in each vendor's shape

    @staticmethod
    def _openai_error(status: int, message: str, *, param: str | None = None, code: str | None = None) -> Any:
        kind = "invalid_request_error"
        return status, {"error": {"message": message, "type": kind, "param": param, "code": code}}, None

    @staticmethod
    def _anthropic_error(status: int, kind: str, message: str) -> Any:
        rid = "req_" + secrets.token_hex(12)
        return status, {"type": "error", "error": {"type": kind, "message": message}, "request_id": rid}, None

    # ---- OpenAI: files

    def _upload(self, handler: _Handler, raw: bytes) -> Any:
        ctype = handler.headers.get("Content-Type", "")
        if not ctype.startswith("multipart/form-data"):
            return self._openai_error(400, "Expected a multipart/form-data body.")
        message = BytesParser(policy=HTTP).parsebytes(f"Content-Type: {ctype}\r\n\r\n".encode() + raw)
        purpose, content, filename = None, None, "upload"
        for part in message.iter_parts():
            name = part.get_param("name", header="content-disposition")
            if name == "purpose":
                purpose = part.get_content().strip() if isinstance(part.get_content(), str) else None
            elif name == "file":
                content = part.get_payload(decode=True)
                filename = part.get_filename() or filename
        if purpose is None:
            return self._openai_error(400, "Missing required parameter: 'purpose'.", param="purpose")
        if content is None:
            return self._openai_error(400, "Missing required parameter: 'file'.", param="file")
        file_id = "file-" + secrets.token_hex(12)
        self.files[file_id] = (purpose, content)
        return 200, self._file(file_id, filename), None

    def _file(self, file_id: str, filename: str) -> dict[str, Any]:
        purpose, content = self.files[file_id]
        return {
            "id": file_id,
            "object": "file",
            "bytes": len(content),
            "created_at": int(time.time()),
            "filename": filename,
            "purpose": purpose,
            "status": "processed",
            "status_details": None,
        }

    def _file_object(self, handler: _Handler, raw: bytes, id: str) -> Any:
        if id not in self.files:
            return self._openai_error(404, f"No such File object: {id}", param="id")
        return 200, self._file(id, f"{id}.jsonl"), None

    def _file_content(self, handler: _Handler, raw: bytes, id: str) -> Any:
        if id not in self.files:
            return self._openai_error(404, f"No such File object: {id}", param="id")
        return 200, self.files[id][1], {"content-type": "application/octet-stream"}

    # ---- OpenAI: batches

    def _openai_create(self, handler: _Handler, raw: bytes) -> Any:
        body = json.loads(raw or b"{}")
        file_id, endpoint = body.get("input_file_id"), body.get("endpoint")
        if body.get("completion_window") != "24h":
            return self._openai_error(400, "completion_window must be '24h'.", param="completion_window")
        if endpoint not in (*OPENAI_ENDPOINTS, "/v1/embeddings", "/v1/completions", "/v1/responses"):
            return self._openai_error(400, f"Invalid endpoint: {endpoint}.", param="endpoint")
        if file_id not in self.files:
            return self._openai_error(404, f"No such File object: {file_id}", param="input_file_id")
        purpose, content = self.files[file_id]
        if purpose != "batch":
            return self._openai_error(400, "The input file must be uploaded with purpose 'batch'.")
        batch = StoredBatch(
            vendor="openai",
            id="batch_" + secrets.token_hex(12),
            requests=[],
            created_at=time.time(),
            input_file_id=file_id,
            expire_after=self._expire.pop(0) if self._expire else None,
        )
        seen: set[str] = set()
        for number, text in enumerate(content.decode().splitlines(), 1):
            if not text.strip():
                continue
            try:
                line = json.loads(text)
            except json.JSONDecodeError:
                batch.errors.append(
                    self._line_error("invalid_json_line", "This line is not valid JSON.", number)
                )
                continue
            custom_id = line.get("custom_id")
            if not isinstance(custom_id, str):
                batch.errors.append(self._line_error("missing_custom_id", "custom_id is required.", number))
            elif custom_id in seen:
                message = f"The custom_id '{custom_id}' is not unique within the file."
                batch.errors.append(self._line_error("duplicate_custom_id", message, number))
            elif line.get("url") != endpoint or line.get("method") != "POST":
                message = f"The url must match the batch's endpoint ({endpoint}) and the method must be POST."
                batch.errors.append(self._line_error("invalid_url", message, number))
            else:
                seen.add(custom_id)
                batch.requests.append((custom_id, line.get("body") or {}))
        models = {b.get("model") for _, b in batch.requests}
        if len(models) > 1:
            batch.errors.append(
                self._line_error("mixed_model", "All requests must use the same model.", None)
            )
        self.batches[batch.id] = batch
        return 200, self._openai_batch(batch), None

    @staticmethod
    def _line_error(code: str, message: str, line: int | None) -> dict[str, Any]:
        return {"code": code, "message": message, "param": None, "line": line}

    def _openai_retrieve(self, handler: _Handler, raw: bytes, id: str) -> Any:
        batch = self.batches.get(id)
        if batch is None or batch.vendor != "openai":
            return self._openai_error(404, f"No batch found with id '{id}'.", param="batch_id")
        self._advance(batch)
        return 200, self._openai_batch(batch), None

    def _openai_cancel(self, handler: _Handler, raw: bytes, id: str) -> Any:
        batch = self.batches.get(id)
        if batch is None or batch.vendor != "openai":
            return self._openai_error(404, f"No batch found with id '{id}'.", param="batch_id")
        if batch.ended_at is None:
            batch.status, batch.ended_at = "cancelled", time.time()
            self._write_openai_files(batch, unrun=("batch_cancelled", "This request was cancelled."))
        return 200, self._openai_batch(batch), None

    def _openai_batch(self, batch: StoredBatch) -> dict[str, Any]:
        # The requests that ran; the total less these expired or were cancelled.
        done = sum(1 for s, _ in batch.answers.values() if s == 200)
        failed = len(batch.answers) - done
        ended = batch.ended_at
        return {
            "id": batch.id,
            "object": "batch",
            "endpoint": OPENAI_ENDPOINTS[0],
            "errors": {"object": "list", "data": batch.errors} if batch.errors else None,
            "input_file_id": batch.input_file_id,
            "completion_window": "24h",
            "status": batch.status,
            "output_file_id": batch.output_file_id,
            "error_file_id": batch.error_file_id,
            "created_at": int(batch.created_at),
            "in_progress_at": int(batch.created_at) if batch.status != "validating" else None,
            "expires_at": int(batch.created_at + 86400),
            "finalizing_at": int(batch.created_at) if batch.status in ("finalizing", "completed") else None,
            "completed_at": int(ended) if ended and batch.status == "completed" else None,
            "failed_at": int(ended) if ended and batch.status == "failed" else None,
            "expired_at": int(ended) if ended and batch.status == "expired" else None,
            "cancelling_at": None,
            "cancelled_at": int(ended) if ended and batch.status == "cancelled" else None,
            "request_counts": {
                "total": 0 if batch.status == "failed" else len(batch.requests),
                "completed": done,
                "failed": failed,
            },
            "metadata": None,
        }

    def _write_openai_files(self, batch: StoredBatch, *, unrun: tuple[str, str]) -> None:
        out, err = [], []
        for custom_id, _ in batch.requests:
            rid = "batch_req_" + secrets.token_hex(12)
            if custom_id in batch.answers:
                status, body = batch.answers[custom_id]
                line = {
                    "id": rid,
                    "custom_id": custom_id,
                    "response": {"status_code": status, "request_id": secrets.token_hex(16), "body": body},
                    "error": None,
                }
                (out if status == 200 else err).append(line)
            else:
                code, message = unrun
                err.append(
                    {
                        "id": rid,
                        "custom_id": custom_id,
                        "response": None,
                        "error": {"code": code, "message": message},
                    }
                )
        for lines, attr in ((out, "output_file_id"), (err, "error_file_id")):
            if lines:
                file_id = "file-" + secrets.token_hex(12)
                self.files[file_id] = (
                    "batch_output",
                    b"".join(json.dumps(x).encode() + b"\n" for x in lines),
                )
                setattr(batch, attr, file_id)

    # ---- Anthropic

    def _anthropic_create(self, handler: _Handler, raw: bytes) -> Any:
        try:
            body = json.loads(raw or b"{}")
        except json.JSONDecodeError:
            return self._anthropic_error(400, "invalid_request_error", "The request body is not valid JSON.")
        requests = body.get("requests")
        if not isinstance(requests, list) or not requests:
            return self._anthropic_error(400, "invalid_request_error", "requests: Field required")
        seen: set[str] = set()
        batch = StoredBatch(
            vendor="anthropic",
            id="msgbatch_" + secrets.token_hex(12),
            requests=[],
            created_at=time.time(),
            status="in_progress",
            expire_after=self._expire.pop(0) if self._expire else None,
        )
        for i, item in enumerate(requests):
            custom_id = item.get("custom_id") if isinstance(item, dict) else None
            if not isinstance(custom_id, str) or not CUSTOM_ID.fullmatch(custom_id):
                message = f"requests.{i}.custom_id: String should match pattern '^[a-zA-Z0-9_-]{{1,64}}$'"
                return self._anthropic_error(400, "invalid_request_error", message)
            if custom_id in seen:
                return self._anthropic_error(
                    400, "invalid_request_error", f"Duplicate custom_id found in requests: {custom_id}"
                )
            params = item.get("params")
            if not isinstance(params, dict) or "model" not in params or "max_tokens" not in params:
                return self._anthropic_error(400, "invalid_request_error", f"requests.{i}.params: invalid")
            seen.add(custom_id)
            batch.requests.append((custom_id, params))
        self.batches[batch.id] = batch
        return 200, self._anthropic_batch(batch, handler), None

    def _anthropic_retrieve(self, handler: _Handler, raw: bytes, id: str) -> Any:
        batch = self.batches.get(id)
        if batch is None or batch.vendor != "anthropic":
            return self._anthropic_error(404, "not_found_error", f"Message batch {id} not found.")
        self._advance(batch)
        return 200, self._anthropic_batch(batch, handler), None

    def _anthropic_cancel(self, handler: _Handler, raw: bytes, id: str) -> Any:
        batch = self.batches.get(id)
        if batch is None or batch.vendor != "anthropic":
            return self._anthropic_error(404, "not_found_error", f"Message batch {id} not found.")
        if batch.ended_at is None:
            batch.status, batch.ended_at = "ended", time.time()
            batch.expire_after = -1  # the requests not run are canceled
        return 200, self._anthropic_batch(batch, handler), None

    def _anthropic_batch(self, batch: StoredBatch, handler: _Handler) -> dict[str, Any]:
        counts = {"processing": 0, "succeeded": 0, "errored": 0, "canceled": 0, "expired": 0}
        if batch.ended_at is None:
            counts["processing"] = len(batch.requests)
        else:
            for kind in self._anthropic_kinds(batch).values():
                counts[kind] += 1
        host = handler.headers.get("Host", f"127.0.0.1:{self.server.port}")
        return {
            "id": batch.id,
            "type": "message_batch",
            "processing_status": batch.status,
            "request_counts": counts,
            "ended_at": _iso(batch.ended_at),
            "created_at": _iso(batch.created_at),
            "expires_at": _iso(batch.created_at + timedelta(hours=24).total_seconds()),
            "archived_at": None,
            "cancel_initiated_at": None,
            "results_url": f"http://{host}/v1/messages/batches/{batch.id}/results"
            if batch.ended_at
            else None,
        }

    def _anthropic_kinds(self, batch: StoredBatch) -> dict[str, str]:
        unrun = "canceled" if batch.expire_after == -1 else "expired"
        return {
            cid: ("succeeded" if batch.answers[cid][0] == 200 else "errored")
            if cid in batch.answers
            else unrun
            for cid, _ in batch.requests
        }

    def _anthropic_results(self, handler: _Handler, raw: bytes, id: str) -> Any:
        batch = self.batches.get(id)
        if batch is None or batch.vendor != "anthropic":
            return self._anthropic_error(404, "not_found_error", f"Message batch {id} not found.")
        if batch.ended_at is None:
            return self._anthropic_error(
                400, "invalid_request_error", f"Message batch {id} is still in progress."
            )
        lines = []
        for custom_id, kind in self._anthropic_kinds(batch).items():
            result: dict[str, Any] = {"type": kind}
            if kind == "succeeded":
                result["message"] = batch.answers[custom_id][1]
            elif kind == "errored":
                body = batch.answers[custom_id][1]
                result["error"] = {"type": "error", "error": body.get("error", body)}
            lines.append(json.dumps({"custom_id": custom_id, "result": result}).encode() + b"\n")
        return 200, b"".join(lines), {"content-type": "application/binary"}

    # ---- running a batch

    def _advance(self, batch: StoredBatch) -> None:
        """One retrieval: in progress for `polls` of them, then the requests run and the batch ends
        (OpenAI's shows `finalizing` for one retrieval first, unless it expired)."""
        if batch.ended_at is not None:
            return
        if batch.vendor == "openai" and batch.errors:
            batch.status, batch.ended_at = "failed", time.time()
            return
        if batch.status == "finalizing":
            batch.status, batch.ended_at = "completed", time.time()
            self._write_openai_files(batch, unrun=("batch_failed", "This request was not run."))
            return
        batch.polls += 1
        if batch.polls <= self.polls:
            batch.status = "in_progress"
            return
        limit = len(batch.requests) if batch.expire_after is None else batch.expire_after
        for custom_id, body in batch.requests[:limit]:
            batch.answers[custom_id] = self._run(batch.vendor, body)
        if batch.vendor == "anthropic":
            batch.status, batch.ended_at = "ended", time.time()
        elif batch.expire_after is None:
            batch.status = "finalizing"
        else:
            batch.status, batch.ended_at = "expired", time.time()
            self._write_openai_files(
                batch,
                unrun=(
                    "batch_expired",
                    "This request could not be executed before the completion window expired.",
                ),
            )

    def _run(self, vendor: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        """One request, answered by this server's own endpoint for it."""
        path = "/v1/chat/completions" if vendor == "openai" else "/v1/messages"
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.server.port}{path}",
            data=json.dumps(body).encode(),
            headers={"content-type": "application/json"},
            method="POST",
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as exc:
            text = exc.read()
            try:
                return exc.code, json.loads(text)
            except json.JSONDecodeError:
                return exc.code, {
                    "error": {"message": text.decode(errors="replace")[:200], "type": "api_error"}
                }
        except (OSError, json.JSONDecodeError) as exc:
            # A reset or cut-off reply inside the batch: the line is an internal error.
            return 500, {
                "error": {"message": f"Internal server error ({type(exc).__name__})", "type": "api_error"}
            }
