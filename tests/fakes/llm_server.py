"""A language-model server on loopback that speaks the real OpenAI and Anthropic wire protocols.

The official SDKs talk to it over real HTTP, so their request building, timeouts and
response parsing all run for real. What it answers is scripted: a usable reply for each step
of the pipeline by default (varied questions under `### Qn` headings, runnable R scripts,
bugs, answers with a runnable ```r block), chosen misbehaviours through `Scripted`. Like the
real APIs it stops at `max_tokens` (the text really cut there, with `finish_reason: "length"`
/ `stop_reason: "max_tokens"`), and it caches prompts by each vendor's documented rules
(`PromptCache`), counting tokens with a real tokenizer (o200k_base), so tests can assert exact
numbers. Faults in each vendor's own shape (`faults.py`) are queued
with `fail_next` or added as standing rules with `faults.add`. It records every request, and
the status it answered, so tests can check what reached the provider. The batch APIs of both
vendors live in `batches.py`, mounted on the same server.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Literal

import bpe_openai

from tests.fakes.batches import FakeBatches
from tests.fakes.faults import Fault, FaultInjector, error_response, success_headers

__all__ = [
    "ANTHROPIC_MESSAGE_OVERHEAD",
    "OPENAI_MESSAGE_OVERHEAD",
    "FakeLLMServer",
    "Fault",
    "PromptCache",
    "RecordedCall",
    "Scripted",
    "answer_in_chinese",
    "answer_that_fails",
    "answer_with_invented_output",
    "anthropic_cache_minimum",
    "anthropic_prompt",
    "bug_that_does_not_bite",
    "copy_of",
    "default_reply",
    "deterministic_reply",
    "openai_prompt",
    "step_of",
    "tokens_of",
    "without_code",
]

WORDS = (
    "sample mean variance median quantile residual estimate interval model predictor response factor level "
    "group treatment control trial outcome dose weight height income score rate count proportion survey "
    "patient student plant batch sensor city store region season week month year experiment replicate "
    "baseline effect slope intercept deviance likelihood prior skew kurtosis outlier trimmed robust paired "
    "independent pooled welch exact approximate continuity correction bootstrap permutation simulation seed "
    "vector matrix frame column row subset merge order rank table tally bin histogram density curve"
).split()
JA_WORDS = (
    "標本 平均 分散 中央値 分位点 残差 推定 区間 モデル 説明変数 目的変数 因子 水準 群 処置 対照 試行 結果 用量 "
    "体重 身長 収入 得点 割合 件数 調査 患者 学生 植物 センサー 都市 店舗 地域 季節 週 月 年 実験 反復 基準 効果 "
    "傾き 切片 尤度 外れ値 頑健 対応 独立 並べ替え 乱数 行列 列 行 集計 度数 密度 曲線"
).split()


@dataclass(eq=False)
class RecordedCall:
    protocol: str
    system: str
    user: str
    body: dict[str, Any]
    # What the server answered: 200 for a reply, the error status, or 0 for a reset connection.
    status: int = 0
    # When it arrived (time.monotonic).
    at: float = field(default_factory=time.monotonic)
    # The `usage` object of a 200 reply, as sent.
    usage: dict[str, Any] = field(default_factory=dict)


@cache
def _encoding() -> Any:
    return bpe_openai.get_encoding("o200k_base")


def _encode(text: str) -> list[int]:
    return list(_encoding().encode(text))


def tokens_of(text: str) -> int:
    """Tokens of a text, by o200k_base (the tokenizer of gpt-4o, gpt-4.1, o-series and gpt-5)."""
    return len(_encode(text))


# OpenAI's chat format: each message costs 3 framing tokens, its role and its content; the reply
# is primed with 3 more (the count OpenAI documents for its chat models).
OPENAI_MESSAGE_OVERHEAD = 3
OPENAI_REPLY_PRIMING = 3
# Anthropic's framing, as this fake counts it: 3 tokens for each message turn, none for the system.
ANTHROPIC_MESSAGE_OVERHEAD = 3
_FRAME = -1  # a framing token: part of the sequence, never text


def openai_prompt(messages: list[dict[str, Any]]) -> list[int]:
    """The prompt's token sequence as OpenAI counts it: its length is `usage.prompt_tokens`."""
    tokens: list[int] = []
    for m in messages:
        tokens += [_FRAME] * OPENAI_MESSAGE_OVERHEAD + _encode(m["role"]) + _encode(_text_of(m["content"]))
    return tokens + [_FRAME] * OPENAI_REPLY_PRIMING


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    return "".join(b.get("text", "") for b in content if isinstance(b, dict))


def _blocks(content: Any) -> list[dict[str, Any]]:
    return [{"type": "text", "text": content}] if isinstance(content, str) else list(content)


def anthropic_prompt(body: dict[str, Any]) -> tuple[list[int], list[int]]:
    """The prompt's token sequence in Anthropic's order (system, then the messages), and where each
    `cache_control` breakpoint ends (the prefix lengths it marks)."""
    tokens: list[int] = []
    breakpoints: list[int] = []
    for block in _blocks(body.get("system") or []):
        tokens += _encode(block.get("text", ""))
        if block.get("cache_control"):
            breakpoints.append(len(tokens))
    for m in body.get("messages", []):
        tokens += [_FRAME] * ANTHROPIC_MESSAGE_OVERHEAD
        for block in _blocks(m["content"]):
            tokens += _encode(block.get("text", ""))
            if block.get("cache_control"):
                breakpoints.append(len(tokens))
    return tokens, breakpoints


# OpenAI caches automatically: prompts of 1,024 tokens and more, the cached part in 128-token steps.
OPENAI_CACHE_MIN = 1024
OPENAI_CACHE_STEP = 128
# Anthropic's cache entries live 5 minutes, refreshed by each hit.
ANTHROPIC_CACHE_TTL_S = 300.0


def anthropic_cache_minimum(model: str) -> int:
    """The shortest prefix Anthropic caches for a model: 2,048 tokens for the Haiku 3 and 3.5 models,
    4,096 for Haiku 4.5 and Opus 4.5, 1,024 for the others."""
    if model.startswith(("claude-haiku-4", "claude-opus-4-5")):
        return 4096
    if "haiku" in model:
        return 2048
    return 1024


def _key(model: str, tokens: list[int]) -> bytes:
    return hashlib.sha256(model.encode() + b"\0" + struct.pack(f"{len(tokens)}i", *tokens)).digest()


class PromptCache:
    """Each vendor's prompt cache, by its documented rules.

    OpenAI: every prompt of at least 1,024 tokens leaves its prefixes of 1,024, 1,152, … tokens in the
    cache; a later prompt is served the longest of them it starts with (`cached_tokens`).
    Anthropic: only the prefixes that end at a `cache_control` breakpoint and are at least the model's
    minimum are cached. The longest such prefix already in the cache is read
    (`cache_read_input_tokens`); a longer breakpoint's prefix is written (`cache_creation_input_tokens`,
    the tokens past what was read); `input_tokens` is the rest.
    """

    def __init__(self) -> None:
        self._openai: set[bytes] = set()
        self._anthropic: dict[bytes, float] = {}
        self._lock = threading.Lock()

    def openai(self, model: str, tokens: list[int]) -> int:
        """Cached tokens of this prompt; the prompt's own prefixes are cached from now on."""
        lengths = range(OPENAI_CACHE_MIN, len(tokens) + 1, OPENAI_CACHE_STEP)
        keys = [(n, _key(model, tokens[:n])) for n in lengths]
        with self._lock:
            cached = max((n for n, k in keys if k in self._openai), default=0)
            self._openai.update(k for _, k in keys)
        return cached

    def anthropic(self, model: str, tokens: list[int], breakpoints: list[int]) -> tuple[int, int]:
        """(cache read, cache write) tokens of this prompt."""
        minimum = anthropic_cache_minimum(model)
        usable = sorted({n for n in breakpoints if n >= minimum})
        if not usable:
            return 0, 0
        now = time.monotonic()
        keys = [(n, _key(model, tokens[:n])) for n in usable]
        with self._lock:
            live = {k for k, expiry in self._anthropic.items() if expiry > now}
            read = max((n for n, k in keys if k in live), default=0)
            longest = usable[-1]
            for n, k in keys:
                if n >= read:
                    self._anthropic[k] = now + ANTHROPIC_CACHE_TTL_S
        return read, longest - read

    def clear(self) -> None:
        with self._lock:
            self._openai.clear()
            self._anthropic.clear()


def _rng(*parts: str) -> random.Random:
    return random.Random(hashlib.sha256("\x1f".join(parts).encode()).digest())


def default_reply(system: str, user: str) -> str:
    """A usable reply for whichever step asked: see `step_of` and the scripted replies below."""
    return _DEFAULTS[step_of(system, user)](system, user)


def deterministic_reply(system: str, user: str) -> str:
    """As `default_reply`, but the same prompt always gets the same reply (questions and scripts
    too), so two runs that send the same prompts get the same pairs."""
    step = step_of(system, user)
    if step == "questions":
        return _questions(system, user, fixed=True)
    if step == "snippet":
        return _snippet(system, user, fixed=True)
    return _DEFAULTS[step](system, user)


# ---- Scripted replies for the pipeline's steps ---------------------------------------------------
# Each step of the pipeline is recognised by its prompt (`step_of`) and gets a usable reply by
# default: questions under `### Qn` headings; for explain/fix, a runnable script, a bug that makes it
# fail, and a question around the code; answers with a runnable ```r block that differs from the
# question's code; repairs likewise. `Scripted` replaces the reply of chosen steps, and the helpers
# after it build the misbehaviours the quality checks exist for.

Step = Literal["questions", "snippet", "bug", "code_question", "answer", "repair"]
Reply = Callable[[str, str], str]


def step_of(system: str, user: str) -> Step:
    if "### Q1" in system:
        return "questions"
    if "The working script:" in user or "動作するスクリプト:" in user:
        return "bug"
    if "Write the question now." in user or "質問を書いてください。" in user:
        return "code_question"
    if "Write the whole answer again" in user or "解答全体を日本語で書き直してください" in user:
        return "repair"
    if "holding the whole script" in system or "スクリプト全体を 1 つの" in system:
        return "snippet"
    return "answer"


def _japanese(text: str) -> bool:
    return bool(re.search(r"[\u3040-\u30ff]", text))


# English glue between the random words. A bare run of statistics terms (correction permutation
# simulation variance…) reads to a language identifier as French now and then, as it would in a
# real reply, so the fake writes the sentence-shaped English a model writes.
_LINKS = (
    "with the",
    "through the",
    "that shows the",
    "which has the",
    "and then the",
    "for each",
    "without the",
    "whether the",
)


def _english(rng: random.Random, n: int) -> str:
    out: list[str] = []
    for i in range(n):
        if i and i % 4 == 0:
            out.append(rng.choice(_LINKS))
        out.append(rng.choice(WORDS))
    return " ".join(out)


def _prose(rng: random.Random, japanese: bool, n: int = 40) -> str:
    if japanese:
        return "".join(rng.choice(JA_WORDS) for _ in range(n)) + "を計算します。"
    return f"The {_english(rng, n)}."


def _code_in(text: str) -> str:
    m = re.search(r"```r\n(.*?)\n```", text, re.S)
    return m.group(1) if m else ""


def _questions(system: str, user: str, *, fixed: bool = False) -> str:
    m = re.search(r"Write (\d+) new", user) or re.search(r"新しい問題を (\d+) 個", user)
    count = int(m.group(1)) if m else 1
    rng = _rng(user) if fixed else _rng(user, str(time.perf_counter_ns()))
    japanese = _japanese(user)
    blocks = []
    for i in range(1, count + 1):
        if japanese:
            text = "".join(rng.choice(JA_WORDS) for _ in range(18))
            blocks.append(f"### Q{i}\n{text}を R でどう求めますか?")
        else:
            blocks.append(f"### Q{i}\nHow would I get the {_english(rng, 18)} in R?")
    return "\n\n".join(blocks)


def _snippet(system: str, user: str, *, fixed: bool = False) -> str:
    """A runnable script: random names, numbers and a comment, so scripts of a cell differ."""
    rng = _rng(user) if fixed else _rng(user, str(time.perf_counter_ns()))
    n, mean, sd = rng.randint(6, 30), rng.randint(10, 90), rng.randint(1, 9)
    name = rng.choice(["scores", "weights", "times", "doses", "yields", "heights", "counts", "ranks"])
    name += "_" + rng.choice(WORDS)
    comment = " ".join(rng.choice(WORDS) for _ in range(8))
    summary = rng.choice(["median", "max", "min", "length", "sum", "range"])
    return (
        "```r\n"
        f"# {comment}\n"
        f"set.seed({rng.randint(1, 9999)})\n"
        f"{name} <- round(rnorm({n}, mean = {mean}, sd = {sd}), 1)\n"
        f"{name}_mean <- mean({name})\n"
        f"print({name}_mean)\n"
        f"print({summary}({name}))\n"
        "```"
    )


def _bug(system: str, user: str) -> str:
    """The working script with the first `print(name_mean)` misspelt: R stops with 'not found'."""
    code = _code_in(user)
    broken = re.sub(r"print\((\w+)_mean\)", r"print(\1_maen)", code, count=1)
    return f"```r\n{broken}\n```"


def _code_question(system: str, user: str) -> str:
    rng = _rng(user)
    japanese = _japanese(user)
    code = _code_in(user)
    context = _prose(rng, japanese, 12)
    if "Kind of exercise: fix" in user or "問題の種類: fix" in user:
        ask = (
            "どこが間違っていて、どう直せばよいですか?" if japanese else "What is wrong, and how do I fix it?"
        )
    else:
        ask = (
            "このコードは何をしていて、出力はどう読めばよいですか?"
            if japanese
            else "What does this code do, and how do I read its output?"
        )
    return f"{context}\n\n```r\n{code}\n```\n\n{ask}"


def _answer(system: str, user: str) -> str:
    rng = _rng(user)
    japanese = _japanese(user)
    values = ", ".join(str(rng.randint(1, 99)) for _ in range(6))
    return (
        f"{_prose(rng, japanese)}\n\n```r\nx <- c({values})\nprint(mean(x))\nprint(var(x))\n```\n\n"
        f"{_prose(rng, japanese)}"
    )


_DEFAULTS: dict[Step, Reply] = {
    "questions": _questions,
    "snippet": _snippet,
    "bug": _bug,
    "code_question": _code_question,
    "answer": _answer,
    "repair": _answer,
}


class Scripted:
    """A reply function: the given steps answer as scripted (a text or a function of the prompt,
    or a list of them used in turn, the last one repeated), the others as by default. `seen` counts
    the calls of each step."""

    def __init__(self, **steps: str | Reply | list[str | Reply]) -> None:
        self.steps = {k: (v if isinstance(v, list) else [v]) for k, v in steps.items()}
        self.seen: dict[str, int] = {}
        self._lock = threading.Lock()

    def __call__(self, system: str, user: str) -> str:
        step = step_of(system, user)
        with self._lock:
            n = self.seen.get(step, 0)
            self.seen[step] = n + 1
        replies = self.steps.get(step)
        if not replies:
            return default_reply(system, user)
        reply = replies[min(n, len(replies) - 1)]
        return reply(system, user) if callable(reply) else reply


def without_code(system: str, user: str) -> str:
    """A snippet or question that shows no code at all."""
    rng = _rng(user, str(time.perf_counter_ns()))
    return _prose(rng, _japanese(user), 20).replace(".", "?")


def bug_that_does_not_bite(system: str, user: str) -> str:
    """The working script back, with only a comment added: it runs and prints the same."""
    return f"```r\n# the same script\n{_code_in(user)}\n```"


def answer_that_fails(system: str, user: str) -> str:
    """An answer whose R code stops with an error on its third line."""
    rng = _rng(user)
    japanese = _japanese(user)
    return (
        f"{_prose(rng, japanese)}\n\n```r\nx <- c(1, 2, 3)\nprint(mean(x))\nprint(mean(y_missing))\n```\n\n"
        f"{_prose(rng, japanese)}"
    )


def answer_in_chinese(system: str, user: str) -> str:
    """What the small model does in Japanese: the prose drifts into Chinese."""
    return (
        "这段代码计算样本的平均值和标准偏差。然后我们输出结果。\n\n```r\nx <- c(4, 8, 15, 16)\n"
        "print(mean(x))\n```\n\n我们使用 mean() 函数来计算平均值,结果打印出来。"
    )


def answer_with_invented_output(system: str, user: str) -> str:
    """An answer whose "Output:" block shows numbers its code never printed."""
    return (
        "Compute the mean and the variance of the values with base R functions.\n\n```r\n"
        "x <- c(2, 4, 6)\nprint(mean(x))\nprint(var(x))\n```\n\nOutput:\n\n```\n[1] 5.25\n[1] 9.1\n```\n\n"
        "The first value is the sample mean and the second one is the sample variance of the vector."
    )


def copy_of(question: str) -> Reply:
    """Questions that copy a few-shot example word for word."""

    def reply(system: str, user: str) -> str:
        return f"### Q1\n{question}"

    return reply


def _first_stop(text: str, stops: object) -> tuple[int, str] | None:
    """Where the earliest stop sequence begins, and which: OpenAI takes a string or a list."""
    if isinstance(stops, str):
        stops = [stops]
    if not isinstance(stops, list):
        return None
    hits = [(text.find(s), s) for s in stops if isinstance(s, str) and s and s in text]
    return min(hits) if hits else None


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def setup(self) -> None:
        super().setup()
        # Headers and body go out in two writes; without this, Nagle's algorithm and delayed ACKs
        # add about 40 ms to every reply on loopback.
        self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _send(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
        body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        headers = {"content-type": "application/json", **(headers or {})}
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(body)

    def _reset_midway(self, payload: bytes) -> None:
        """Headers and half the body, then a TCP reset: what a dropped connection looks like."""
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload[: len(payload) // 2])
        self.wfile.flush()
        self.request.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.request.close()
        self.close_connection = True

    def do_GET(self) -> None:
        if not self.server.owner.batches.route(self, "GET"):
            self._send(404, {"error": {"message": f"no route {self.path}", "type": "not_found"}})

    def do_POST(self) -> None:
        if self.server.owner.batches.route(self, "POST"):
            return
        length = int(self.headers.get("Content-Length", "0"))
        body = json.loads(self.rfile.read(length) or b"{}")
        owner = self.server.owner
        if self.path.rstrip("/").endswith("/v1/messages/count_tokens"):
            tokens, _ = anthropic_prompt(body)
            self._send(200, {"input_tokens": len(tokens)}, success_headers("anthropic"))
            return
        if self.path.rstrip("/").endswith("/chat/completions"):
            protocol = "openai"
            system = "\n".join(m["content"] for m in body["messages"] if m["role"] == "system")
            user = "\n".join(m["content"] for m in body["messages"] if m["role"] == "user")
        elif self.path.rstrip("/").endswith("/v1/messages"):
            protocol = "anthropic"
            raw = body.get("system", "")
            system = _text_of(raw)
            user = "\n".join(_text_of(m["content"]) for m in body["messages"] if m["role"] == "user")
        else:
            self._send(404, {"error": {"message": f"no route {self.path}", "type": "not_found"}})
            return
        call = RecordedCall(protocol=protocol, system=system, user=user, body=body)
        owner._record(call)
        with owner.faults.serving(call) as outcome:
            self._answer(call, outcome.fault)
            outcome.status = call.status

    def _answer(self, call: RecordedCall, fault: Fault | None) -> None:
        """Answer, noting the status in `call` before the client can see the answer."""
        owner = self.server.owner
        protocol, system, user, body = call.protocol, call.system, call.user, call.body
        model = body.get("model", "fake-model")
        if fault and fault.kind == "status":
            # Errors come back at once, as the real APIs' do.
            time.sleep(fault.delay_s)
            status, payload, headers = error_response(protocol, fault, model=model)  # type: ignore[arg-type]
            call.status = status
            self._send(status, payload, headers)
            return
        time.sleep(owner.latency_s + (fault.delay_s if fault and fault.kind == "slow" else 0.0))
        if fault and fault.kind == "malformed":
            text = fault.body or "Sorry, I cannot help with that."
        elif fault and fault.kind == "empty":
            text = ""
        else:
            text = owner.reply(system, user)
        # A stop sequence ends the reply where it first appears, and is not part of the text.
        stop_at = _first_stop(text, body.get("stop" if protocol == "openai" else "stop_sequences"))
        if stop_at is not None:
            text = text[: stop_at[0]]
        # The real APIs stop at max_tokens: the text is cut there, whatever it looked like.
        limit = body.get("max_tokens") or body.get("max_completion_tokens")
        reply = _encode(text)
        truncated = isinstance(limit, int) and len(reply) > limit
        if truncated:
            reply = reply[:limit]
            text = _encoding().decode_bytes(reply).decode("utf-8", errors="ignore")
            stop_at = None
        out_tokens = len(reply)
        # A prompt is cached only once it is answered, as the real APIs do.
        if protocol == "openai":
            prompt = openai_prompt(body["messages"])
            cached_tokens = owner.cache.openai(model, prompt)
            prompt_tokens = len(prompt)
            payload = {
                "id": "chatcmpl-fake",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": model,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": text},
                        "finish_reason": "length" if truncated else "stop",
                    }
                ],
                "usage": {
                    "prompt_tokens": prompt_tokens,
                    "completion_tokens": out_tokens,
                    "total_tokens": prompt_tokens + out_tokens,
                    "prompt_tokens_details": {"cached_tokens": cached_tokens},
                },
            }
        else:
            prompt, breakpoints = anthropic_prompt(body)
            read, written = owner.cache.anthropic(model, prompt, breakpoints)
            payload = {
                "id": "msg_fake",
                "type": "message",
                "role": "assistant",
                "model": model,
                "content": [{"type": "text", "text": text}],
                "stop_reason": "max_tokens" if truncated else "stop_sequence" if stop_at else "end_turn",
                "stop_sequence": stop_at[1] if stop_at else None,
                "usage": {
                    "input_tokens": len(prompt) - read - written,
                    "output_tokens": out_tokens,
                    "cache_read_input_tokens": read,
                    "cache_creation_input_tokens": written,
                },
            }
        call.usage = payload["usage"]
        encoded = json.dumps(payload).encode()
        if fault and fault.kind == "reset":
            self._reset_midway(encoded)
            return
        if fault and fault.kind == "bad_json":
            encoded = encoded[: len(encoded) // 2]
        call.status = 200
        self._send(200, encoded, success_headers(protocol))  # type: ignore[arg-type]


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128
    owner: FakeLLMServer


class FakeLLMServer:
    """Start with `with FakeLLMServer() as server:`; `openai_base_url` / `anthropic_base_url` point SDKs at it."""

    def __init__(self, *, latency_s: float = 0.0, reply: Callable[[str, str], str] = default_reply) -> None:
        self.latency_s = latency_s
        self.reply = reply
        self.calls: list[RecordedCall] = []
        self.faults = FaultInjector()
        self.cache = PromptCache()
        # The Files, Batch and Message Batches APIs (`batches.py`), answered by the routes below.
        self.batches = FakeBatches(self)
        self._lock = threading.Lock()
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.owner = self
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    @property
    def openai_base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def anthropic_base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def fail_next(self, *faults: Fault) -> None:
        self.faults.fail_next(*faults)

    def _record(self, call: RecordedCall) -> None:
        with self._lock:
            self.calls.append(call)

    def __enter__(self) -> FakeLLMServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()


def main() -> None:
    """Serve from a process of its own (benchmarks: keeps the server's threads off the client's GIL).

    Prints its port, then serves until SIGTERM, when it prints a JSON line: how many requests got
    each status, and the most it had in flight at once.
    """
    import argparse
    import collections
    import signal
    import sys

    from tests.fakes.faults import ConcurrencyLimit

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--latency", type=float, default=0.0)
    parser.add_argument(
        "--max-in-flight",
        type=int,
        default=0,
        help="answer 429 above this many requests in flight (0: no limit)",
    )
    args = parser.parse_args()
    server = FakeLLMServer(latency_s=args.latency)
    limit = None
    if args.max_in_flight:
        limit = server.faults.add(ConcurrencyLimit(args.max_in_flight, service_s=args.latency))

    def stop(*_: object) -> None:
        statuses = collections.Counter(str(c.status) for c in server.calls)
        peak = limit.peak if isinstance(limit, ConcurrencyLimit) else None
        print(json.dumps({"statuses": statuses, "peak_in_flight": peak}), flush=True)
        sys.exit(0)

    signal.signal(signal.SIGTERM, stop)
    print(server.port, flush=True)
    server._server.serve_forever()


if __name__ == "__main__":
    main()
