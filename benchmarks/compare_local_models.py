"""Compare the packaged local models on R answers: runnable share, language share, speed.

Each model answers the same fixed questions (English and Japanese) through the production path:
the project's answer template (`prompts/answer.<locale>.md`), `LocalProvider`, and the R sandbox.
An answer is *runnable* when its R code runs to the end in the sandbox and prints something (the
conventions ask for printed results; a comment-only block does not count); it is *in language* when
its prose is in the requested language, told apart by script (kana for Japanese, Han without
kana for Chinese, Latin for English). Speeds come from the same calls: prompt tokens/s from a
one-token call on an uncached prompt, decode tokens/s from output tokens over the rest of the
call's time.

    .venv/bin/python benchmarks/compare_local_models.py                 # every installed model
    .venv/bin/python benchmarks/compare_local_models.py --models qwen2.5-coder-1.5b-instruct-q4_k_m
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from service.providers import _gguf
from service.providers.base import CompletionRequest, Message
from service.providers.local import LocalProvider
from service.stages.prompts import answer_request, load_template
from service.stages.spec import resolve_spec
from service.wire.generate import ModelSettings, Spec

QUESTIONS: list[tuple[str, str, str]] = [
    # (locale, theme, question) — task is always "generate" (write R code).
    (
        "en",
        "mean-variance",
        "Compute the mean, variance and standard error of the mean of 12 simulated exam scores.",
    ),
    (
        "en",
        "hypothesis-tests",
        "Test whether two groups of 10 plant heights have different means (Welch t-test).",
    ),
    (
        "en",
        "regression",
        "Fit a linear regression of fuel use on car weight for 15 simulated cars and show R^2.",
    ),
    (
        "en",
        "distributions",
        "Find the 97.5% quantile of a t distribution with 9 df and draw 5 binomial samples.",
    ),
    (
        "en",
        "summaries",
        "Given sales by region and month in a data frame, compute the mean sales per region.",
    ),
    ("en", "hypothesis-tests", "Run a chi-squared test of independence on a 2x3 table of counts you create."),
    ("ja", "mean-variance", "10人の身長データを作り、平均・分散・標準偏差を求めるRコードを書いてください。"),
    (
        "ja",
        "hypothesis-tests",
        "薬の投与前後の血圧8組について、対応のあるt検定を行うRコードを書いてください。",
    ),
    ("ja", "regression", "広告費と売上の架空データ20件で単回帰を行い、係数と予測値を表示してください。"),
    (
        "ja",
        "distributions",
        "標準正規分布の95%点を求め、乱数100個のヒストグラム用の度数を表で示してください。",
    ),
    ("ja", "summaries", "学年とクラスごとのテスト得点の平均を aggregate で集計するRコードを書いてください。"),
    ("ja", "hypothesis-tests", "2群の小標本にウィルコクソン順位和検定を行い、p値を解釈してください。"),
]

FENCE = re.compile(r"```[ \t]*(?:\{?[rR]\}?)?[^\n]*\n(.*?)```", re.S)
INLINE_CODE = re.compile(r"`[^`\n]*`")
KANA = re.compile(r"[\u3040-\u30ff]")
HAN = re.compile(r"[\u4e00-\u9fff]")
LATIN = re.compile(r"[A-Za-z]")


def detect_language(answer: str) -> str:
    """'ja', 'zh' or 'en' from the prose outside code: kana marks Japanese, Han alone marks Chinese."""
    prose = INLINE_CODE.sub(" ", FENCE.sub(" ", answer))
    kana, han, latin = len(KANA.findall(prose)), len(HAN.findall(prose)), len(LATIN.findall(prose))
    cjk = kana + han
    if cjk == 0 or cjk < 0.1 * (cjk + latin):
        return "en"
    return "ja" if kana >= 0.1 * cjk else "zh"


def r_code(answer: str) -> str:
    return "\n".join(block.strip() for block in FENCE.findall(answer))


class _BwrapR:
    """Fallback runner: one sandboxed Rscript per snippet (no network, read-only root)."""

    def __init__(self, wall_s: float = 20.0) -> None:
        if shutil.which("Rscript") is None:
            raise SystemExit("Rscript is not installed (apt-get install r-base-core)")
        self._wall_s = wall_s
        self._bwrap = shutil.which("bwrap")
        self.kind = "bwrap + Rscript" if self._bwrap else "Rscript (no sandbox: bwrap missing)"

    def _run(self, code: str) -> tuple[bool, str]:
        with tempfile.TemporaryDirectory() as tmp:
            script = Path(tmp) / "answer.R"
            # Plots go to a null device, as in the service's evaluator.
            script.write_text("pdf(NULL)\n" + code)
            cmd = ["Rscript", "--vanilla", str(script)]
            if self._bwrap:
                cmd = [
                    self._bwrap, "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc",
                    "--tmpfs", "/tmp", "--ro-bind", str(script), "/tmp/answer.R", "--chdir", "/tmp",
                    "--unshare-all", "--die-with-parent", "Rscript", "--vanilla", "/tmp/answer.R",
                ]  # fmt: skip
            try:
                done = subprocess.run(cmd, capture_output=True, text=True, timeout=self._wall_s, check=False)
            except subprocess.TimeoutExpired:
                return False, "timeout"
            lines = done.stderr.strip().splitlines()
            errors = [line for line in lines if line.startswith("Error")]
            if done.returncode == 0 and not done.stdout.strip():
                return False, "ran, printed nothing"
            return done.returncode == 0, ((errors or lines or [""])[-1])[:200]

    async def passed(self, task: str, answer: str) -> tuple[bool, str]:
        code = r_code(answer)
        if not code:
            return False, "no code"
        return await asyncio.to_thread(self._run, code)

    async def aclose(self) -> None:
        return None


class _ProjectEvaluator:
    """The service's own evaluator, when it is installed."""

    kind = "service evaluator"

    def __init__(self, runner: Any, evaluate_answer: Any) -> None:
        self._runner = runner
        self._evaluate = evaluate_answer

    async def passed(self, task: str, answer: str) -> tuple[bool, str]:
        result = await self._evaluate(self._runner, task=task, answer=answer)
        if result.verdict == "passed" and not result.stdout.strip():
            return False, "ran, printed nothing"
        if result.verdict == "passed":
            return True, ""
        return False, f"{result.verdict}: {result.message or ''}"[:200]

    async def aclose(self) -> None:
        await self._runner.aclose()


async def _evaluator(force_bwrap: bool) -> _BwrapR | _ProjectEvaluator:
    if not force_bwrap:
        try:
            import evaluator
            from service.stages.evaluate import evaluate_answer

            runner = await evaluator.start_runner(sandbox="bwrap", workers=1, packages=("stats", "utils"))
            return _ProjectEvaluator(runner, evaluate_answer)
        except (ImportError, AttributeError):
            pass
    return _BwrapR()


@dataclass
class Row:
    model: str
    size_mb: float
    load_s: float = 0.0
    prompt_tok_s: float = 0.0
    decode_tok_s: float = 0.0
    runnable: int = 0
    in_language: int = 0
    answers: int = 0
    mean_latency_s: float = 0.0
    mean_output_tokens: float = 0.0
    details: list[dict[str, Any]] = field(default_factory=list)


async def bench_model(
    model: _gguf.PackagedModel,
    runner: Any,
    *,
    questions: list[tuple[str, str, str]],
    threads: int,
    max_tokens: int,
    temperature: float,
) -> Row:
    # One question at a time: one slot is all this comparison uses.
    provider = LocalProvider(packaged=model, slots=1, threads=threads)
    row = Row(model=model.model_id, size_mb=model.size / 1e6)
    try:
        jobs = {
            loc: resolve_spec(Spec(locale=loc, per_cell=1, model=_settings(temperature, max_tokens)))
            for loc in ("en", "ja")
        }
        templates = {loc: load_template(job, "answer") for loc, job in jobs.items()}
        probe_system = f"[{secrets.token_hex(8)}] " + answer_request(
            jobs["en"], templates["en"], jobs["en"].tasks["generate"], jobs["en"].themes["regression"],
            question="Fit a model.",
        ).system  # fmt: skip
        await provider.complete(
            CompletionRequest(system=probe_system, messages=(Message("user", "Say OK."),), max_tokens=1)
        )
        row.load_s = float(provider.describe().get("load_s", "0"))
        # Prompt speed: a fresh, never-cached prompt of several hundred tokens, one output token.
        probe = await provider.complete(
            CompletionRequest(system="[" + secrets.token_hex(8) + "]" + probe_system, messages=(
                Message("user", "Say OK."),), max_tokens=1, temperature=0.0)
        )  # fmt: skip
        row.prompt_tok_s = probe.usage.input_tokens / (probe.latency_ms / 1000)
        decode_tokens, decode_s = 0, 0.0
        for locale, theme, question in questions:
            job = jobs[locale]
            request = answer_request(
                job, templates[locale], job.tasks["generate"], job.themes[theme], question=question
            )
            completion = await provider.complete(request)
            fresh = completion.usage.input_tokens - completion.usage.cached_tokens
            gen_s = max(1e-3, completion.latency_ms / 1000 - fresh / row.prompt_tok_s)
            decode_tokens += completion.usage.output_tokens
            decode_s += gen_s
            ok, why = await runner.passed("generate", completion.text)
            language = detect_language(completion.text)
            row.answers += 1
            row.runnable += ok
            row.in_language += language == locale
            row.mean_latency_s += completion.latency_ms / 1000
            row.mean_output_tokens += completion.usage.output_tokens
            row.details.append(
                {
                    "locale": locale,
                    "theme": theme,
                    "runnable": ok,
                    "why": why,
                    "language": language,
                    "latency_s": round(completion.latency_ms / 1000, 1),
                    "usage": [completion.usage.input_tokens, completion.usage.cached_tokens,
                              completion.usage.output_tokens],
                    "finish": completion.finish_reason,
                    "answer": completion.text,
                }
            )  # fmt: skip
            print(
                f"  {model.model_id} {locale} {theme:16} runnable={ok!s:5} lang={language} "
                f"{completion.latency_ms / 1000:5.1f}s out={completion.usage.output_tokens} {why}",
                flush=True,
            )
        row.decode_tok_s = decode_tokens / decode_s if decode_s else 0.0
        row.mean_latency_s /= max(1, row.answers)
        row.mean_output_tokens /= max(1, row.answers)
    finally:
        await provider.aclose()
    return row


def _settings(temperature: float, max_tokens: int) -> ModelSettings:
    return ModelSettings(provider="local", temperature=temperature, max_tokens=max_tokens)


async def rescore(path: Path, force_bwrap: bool) -> None:
    """Re-run the R of saved answers (same answers, same speeds) under the current checks."""
    runner = await _evaluator(force_bwrap)
    print(f"R checked by: {runner.kind}; answers from {path}", flush=True)
    rows = []
    try:
        for saved in json.loads(await asyncio.to_thread(path.read_text)):
            row = Row(**saved)
            row.runnable = row.in_language = 0
            for detail in row.details:
                ok, why = await runner.passed("generate", detail["answer"])
                detail.update(runnable=ok, why=why, language=detect_language(detail["answer"]))
                row.runnable += ok
                row.in_language += detail["language"] == detail["locale"]
                print(
                    f"  {row.model} {detail['locale']} {detail['theme']:16} runnable={ok!s:5} {why}",
                    flush=True,
                )
            rows.append(row)
    finally:
        await runner.aclose()
    print()
    print(table(rows))


def table(rows: list[Row]) -> str:
    head = (
        "| model | size MB | load s | runnable | in language | prompt tok/s | decode tok/s "
        "| mean answer s | mean output tokens |\n|---|---|---|---|---|---|---|---|---|"
    )
    lines = [head]
    for r in rows:
        lines.append(
            f"| {r.model} | {r.size_mb:.0f} | {r.load_s:.1f} | {r.runnable}/{r.answers} | "
            f"{r.in_language}/{r.answers} | {r.prompt_tok_s:.1f} | {r.decode_tok_s:.1f} | "
            f"{r.mean_latency_s:.1f} | {r.mean_output_tokens:.0f} |"
        )
    return "\n".join(lines)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="*", default=None, help=f"ids among: {', '.join(_gguf.CANDIDATES)}")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--max-tokens", type=int, default=640)
    parser.add_argument("--temperature", type=float, default=0.2)
    parser.add_argument(
        "--questions",
        type=int,
        default=len(QUESTIONS),
        help="how many questions, half of them in each locale",
    )
    parser.add_argument("--bwrap", action="store_true", help="run R with bwrap + Rscript, not the evaluator")
    parser.add_argument("--json", type=Path, default=None, help="also write every answer and verdict here")
    parser.add_argument("--rescore", type=Path, default=None, help="re-check the answers saved by --json")
    args = parser.parse_args()
    if args.rescore:
        await rescore(args.rescore, args.bwrap)
        return

    per_locale = max(1, args.questions // 2)
    questions = [q for q in QUESTIONS if q[0] == "en"][:per_locale] + [q for q in QUESTIONS if q[0] == "ja"][
        :per_locale
    ]
    ids = args.models or [
        m for m, spec in _gguf.CANDIDATES.items() if _gguf.find_parts(spec) or _gguf.is_cached(spec)
    ]
    runner = await _evaluator(args.bwrap)
    print(
        f"R checked by: {runner.kind}; threads={args.threads} temperature={args.temperature} "
        f"max_tokens={args.max_tokens}; {len(questions)} questions",
        flush=True,
    )
    rows = []
    try:
        for model_id in ids:
            rows.append(
                await bench_model(
                    _gguf.CANDIDATES[model_id],
                    runner,
                    questions=questions,
                    threads=args.threads,
                    max_tokens=args.max_tokens,
                    temperature=args.temperature,
                )
            )
    finally:
        await runner.aclose()
    print()
    print(table(rows))
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in rows], ensure_ascii=False, indent=1))


if __name__ == "__main__":
    asyncio.run(main())
