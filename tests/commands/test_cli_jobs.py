"""`qasynth dedup|evaluate|report` on real files in a real subprocess, against the HTTP API's answers."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from litestar.testing import AsyncTestClient

from service.app import create_app
from service.settings import Settings

ROOT = Path(__file__).resolve().parent.parent.parent
CORPUS = ROOT / "tests" / "data" / "r_help_corpus.jsonl"
CASES = ROOT / "tests" / "data" / "evaluator_cases.jsonl"


def qasynth(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "service", *args], env=env, capture_output=True, text=True, timeout=timeout
    )


def corpus(n: int) -> list[dict[str, str]]:
    with CORPUS.open(encoding="utf-8") as f:
        return [
            {"id": f"r{i}", "text": json.loads(line)["text"]} for i, line in zip(range(n), f, strict=False)
        ]


def write_jsonl(path: Path, rows: list[Any]) -> Path:
    path.write_text(
        "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8"
    )
    return path


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


async def test_dedup_file_gives_the_decisions_of_the_api(tmp_path: Path) -> None:
    rows = corpus(2400)
    history, items = rows[:300], rows[300:]
    # Near-duplicates of earlier items, so both kinds of decision occur.
    items += [{"id": f"v{i}", "text": r["text"] + " Show an example."} for i, r in enumerate(rows[::7])]
    src, hist = write_jsonl(tmp_path / "in.jsonl", items), write_jsonl(tmp_path / "history.jsonl", history)
    done = qasynth(
        "dedup", str(src), "-o", str(tmp_path / "out.jsonl"), "--existing", str(hist),
        "--kept", str(tmp_path / "kept.jsonl"), "--summary", str(tmp_path / "summary.json"),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    async with AsyncTestClient(app=create_app(Settings(sandbox="none"))) as client:
        r = await client.post("/v1/dedup", json={"items": items, "existing": history})
    assert r.status_code == 200, r.text
    expected = r.json()["results"]
    assert read_jsonl(tmp_path / "out.jsonl") == expected
    kept_ids = [x["id"] for x in expected if x["kept"]]
    assert [x["id"] for x in read_jsonl(tmp_path / "kept.jsonl")] == kept_ids
    dropped = len(expected) - len(kept_ids)
    assert dropped > 300
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["counts"] == {
        "items": len(items), "kept": len(kept_ids), "dropped": dropped, "resumed": 0, "bad_lines": 0
    }  # fmt: skip
    assert f"{len(items):,} items, {len(kept_ids):,} kept" in done.stderr


def test_bad_lines_are_reported_with_their_numbers_and_nothing_else_is_lost(tmp_path: Path) -> None:
    good = corpus(5)
    lines: list[Any] = [
        good[0], "not json", {"id": "x"}, good[1], {"id": "r0", "text": "again"}, {"id": "bad id!", "text": "t"},
        {"id": "b", "text": "   "}, [1, 2], good[2], {"id": "t", "text": "x" * 20_001}, good[3],
    ]  # fmt: skip
    src = write_jsonl(tmp_path / "in.jsonl", lines)
    done = qasynth(
        "dedup", str(src), "-o", str(tmp_path / "out.jsonl"), "--errors", str(tmp_path / "errors.jsonl")
    )
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    for n, reason in [
        (2, "not JSON"), (3, "no 'text' field"), (5, "duplicate id 'r0': an earlier item has it"), (6, "id"),
        (7, "text is blank"), (8, "not a JSON object"), (10, "length <= 20000"),
    ]:  # fmt: skip
        assert (
            f"{src}:{n}: " in done.stderr and reason in done.stderr.split(f"{src}:{n}: ")[1].splitlines()[0]
        )
    assert [x["id"] for x in read_jsonl(tmp_path / "out.jsonl")] == ["r0", "r1", "r2", "r3"]
    errors = read_jsonl(tmp_path / "errors.jsonl")
    assert [e["line"] for e in errors] == [2, 3, 5, 6, 7, 8, 10]
    assert "7 bad lines" in done.stderr


def test_dedup_resumes_after_being_killed_with_the_same_output(tmp_path: Path) -> None:
    rows = corpus(9000) + [{"id": f"v{i}", "text": "In R, " + r["text"]} for i, r in enumerate(corpus(9000))]
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    full = qasynth(
        "dedup", str(src), "-o", str(tmp_path / "full.jsonl"), "--kept", str(tmp_path / "full-kept.jsonl")
    )
    assert full.returncode == 0, full.stderr

    out, kept = tmp_path / "out.jsonl", tmp_path / "kept.jsonl"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "service", "dedup", str(src), "-o", str(out), "--kept", str(kept)]
    proc = subprocess.Popen(cmd, env=env, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while (not out.exists() or out.stat().st_size < 100_000) and proc.poll() is None:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    partial = out.read_bytes()
    assert 0 < partial.count(b"\n") < len(rows)

    again = qasynth("dedup", str(src), "-o", str(out), "--kept", str(kept))
    assert again.returncode == 0, again.stderr
    assert "decided by an earlier run" in again.stderr
    assert out.read_bytes() == (tmp_path / "full.jsonl").read_bytes()
    assert kept.read_bytes() == (tmp_path / "full-kept.jsonl").read_bytes()


def test_parquet_input_gives_the_same_decisions_and_names_bad_rows(tmp_path: Path) -> None:
    rows = corpus(1500) + [{"id": f"v{i}", "text": r["text"] + " Why?"} for i, r in enumerate(corpus(300))]
    write_jsonl(tmp_path / "in.jsonl", rows)
    table = pa.table({"id": [r["id"] for r in rows] + ["nul"], "text": [r["text"] for r in rows] + [None]})
    pq.write_table(table, tmp_path / "in.parquet", row_group_size=500)
    a = qasynth("dedup", str(tmp_path / "in.jsonl"), "-o", str(tmp_path / "a.jsonl"))
    b = qasynth("dedup", str(tmp_path / "in.parquet"), "-o", str(tmp_path / "b.jsonl"))
    assert a.returncode == 0 and b.returncode == 1
    assert f"{tmp_path / 'in.parquet'} row {len(rows) + 1}: " in b.stderr
    assert (tmp_path / "a.jsonl").read_bytes() == (tmp_path / "b.jsonl").read_bytes()


def test_output_of_other_input_is_refused_not_overwritten(tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "in.jsonl", corpus(50))
    other = write_jsonl(tmp_path / "other.jsonl", corpus(60)[10:])
    assert qasynth("dedup", str(other), "-o", str(tmp_path / "out.jsonl")).returncode == 0
    before = (tmp_path / "out.jsonl").read_bytes()
    done = qasynth("dedup", str(src), "-o", str(tmp_path / "out.jsonl"))
    assert done.returncode == 2
    assert (
        "does not continue" in done.stderr and "--restart" in done.stderr and "Traceback" not in done.stderr
    )
    assert (tmp_path / "out.jsonl").read_bytes() == before
    assert qasynth("dedup", str(src), "-o", str(tmp_path / "out.jsonl"), "--restart").returncode == 0
    missing = qasynth("dedup", str(tmp_path / "nope.jsonl"), "-o", str(tmp_path / "x.jsonl"))
    assert missing.returncode == 2 and "no such file" in missing.stderr


def test_help_lists_the_file_jobs() -> None:
    done = qasynth("--help", timeout=60)
    for command in ("dedup", "evaluate", "report"):
        assert command in done.stdout
    assert "--ray" in qasynth("dedup", "--help", timeout=60).stdout


def eval_inputs() -> list[dict[str, Any]]:
    with CASES.open(encoding="utf-8") as f:
        cases = [json.loads(line) for line in f]
    fast = [
        c for c in cases if c["expected_verdict"] in ("passed", "runtime_error", "parse_error", "no_code")
    ]
    pairs = [{k: c[k] for k in ("id", "task", "theme", "question", "answer")} for c in fast]
    snippets = [
        {"id": f"s{i}", "code": f"x <- {i}:10\ncat(sum(x))" if i % 4 else "log(-1)\nstop('no')"}
        for i in range(12)
    ]
    return [x for pair in zip(pairs, snippets, strict=False) for x in pair] + pairs[len(snippets) :]


@pytest.mark.sandbox
async def test_evaluate_file_gives_the_results_of_the_api_and_resumes(tmp_path: Path) -> None:
    inputs = eval_inputs()
    src = write_jsonl(tmp_path / "in.jsonl", [*inputs[:5], "{", *inputs[5:]])
    out = tmp_path / "out.jsonl"
    done = qasynth("evaluate", str(src), "-o", str(out))
    assert done.returncode == 1 and f"{src}:6: not JSON" in done.stderr
    got = read_jsonl(out)
    assert [x["id"] for x in got] == [x["id"] for x in inputs]

    async with AsyncTestClient(app=create_app(Settings())) as client:
        body = {"pairs": [x for x in inputs if "answer" in x], "snippets": [x for x in inputs if "code" in x]}
        r = await client.post("/v1/evaluate", json=body)
    assert r.status_code == 200, r.text
    api = {x["id"]: x["evaluation"] for x in [*r.json()["pairs"], *r.json()["snippets"]]}

    def key(e: dict[str, Any]) -> tuple[Any, ...]:
        return (e["verdict"], e["flagged"], e["message"], e["line"], e["stdout"], e["code"])

    assert [key(x["evaluation"]) for x in got] == [key(api[x["id"]]) for x in got]
    assert {x["evaluation"]["verdict"] for x in got} >= {"passed", "runtime_error", "parse_error", "no_code"}
    snippet = next(x for x in got if x["id"] == "s1")
    assert set(snippet) == {"id", "evaluation"} and snippet["evaluation"]["stdout"] == "55"

    lines = out.read_bytes().splitlines(keepends=True)
    out.write_bytes(b"".join(lines[:7]) + lines[7][:20])  # a crash in the middle of line 8
    again = qasynth("evaluate", str(src), "-o", str(out))
    assert "(7 done by an earlier run)" in again.stderr
    assert [key(x["evaluation"]) for x in read_jsonl(out)] == [key(x["evaluation"]) for x in got]


@pytest.mark.sandbox
def test_report_evaluates_what_is_missing_and_writes_the_page(tmp_path: Path) -> None:
    inputs = [x for x in eval_inputs() if "answer" in x]
    src = write_jsonl(tmp_path / "pairs.jsonl", [*inputs, {"id": "s1", "code": "1"}])
    html, data, out = tmp_path / "report.html", tmp_path / "report.json", tmp_path / "evaluated.jsonl"
    done = qasynth("report", str(src), "--html", str(html), "--json", str(data), "-o", str(out))
    assert done.returncode == 1, done.stderr  # the snippet line is a bad line for a report
    assert "a report takes pairs" in done.stderr
    report = json.loads(data.read_text())
    assert report["total"] == len(inputs)
    assert report["flagged"] == sum(1 for x in read_jsonl(out) if x["evaluation"]["flagged"]) > 0
    page = html.read_text()
    assert "<!DOCTYPE html>" in page and f"Flagged answers ({report['flagged']})" in page
    # The evaluated pairs already carry their evaluations: a report over them runs nothing.
    again = qasynth(
        "report", str(out), "--html", str(tmp_path / "again.html"), "--json", str(tmp_path / "again.json")
    )
    assert again.returncode == 2 and "none needed" in again.stderr
    assert json.loads((tmp_path / "again.json").read_text())["verdicts"] == report["verdicts"]
