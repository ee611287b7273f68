"""The validation report: its numbers, its HTML (checked in headless Chromium), and the CLI."""

from __future__ import annotations

import datetime as dt
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from evaluator import Check, ReportEntry, build_report, render_html
from tests.evaluator.conftest import needs_sandbox

NOW = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC)

ENTRIES = [
    ReportEntry(id="a", task="generate", theme="tests", question="Paired t-test?", answer="...",
                check=Check(verdict="passed", code="print(1)", blocks=1, stdout="[1] 1\n")),
    ReportEntry(id="b", task="fix", theme="tests", question="Why <script>alert(1)</script>?", answer="...",
                check=Check(verdict="runtime_error", code="x <- 1\nmean(y)", blocks=1, message="object 'y' not found",
                            failing_call="mean(y)", line=2, answer_line=9, warnings=("In f(): careful",))),
    ReportEntry(id="c", task="explain", theme="basics", answer="prose", check=Check(verdict="no_code")),
    ReportEntry(id="d", task="generate", theme="basics", answer="prose", check=Check(verdict="no_code")),
    ReportEntry(id="e", task="generate", theme="basics", answer="```r\n1\n```"),
]  # fmt: skip


def test_numbers_and_order() -> None:
    report = build_report(ENTRIES, title="T", now=NOW)
    assert report.total == 5 and report.passed == 1 and report.unevaluated == 1
    assert report.flagged == 2  # b (error) and d (no code for a code task); c is an explain task
    assert report.verdicts == {"passed": 1, "no_code": 2, "runtime_error": 1, "unevaluated": 1}
    assert [e.id for e in report.entries] == ["d", "b", "a", "c", "e"]
    assert report.pass_rate == pytest.approx(1 / 4)
    assert report.generated_at == "2026-01-02T03:04:05+00:00"
    assert {(g.task, g.theme): g.flagged for g in report.groups} == {
        ("explain", "basics"): 0, ("fix", "tests"): 1, ("generate", "basics"): 1, ("generate", "tests"): 0,
    }  # fmt: skip


def test_html_is_self_contained_escaped_and_marks_the_line() -> None:
    page = render_html(build_report(ENTRIES, title="Report <1>", now=NOW))
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    assert (
        "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'\">"
        in page
    )
    assert not re.search(r"<script|<link|<img|<iframe|@import|url\(|src=|https?://", page)
    assert "Why &lt;script&gt;alert(1)&lt;/script&gt;?" in page
    assert "<title>Report &lt;1&gt;</title>" in page
    assert '<span class="ln hit" data-n="2">mean(y)</span>' in page
    assert "at code line 2 (answer line 9)" in page
    assert page.count("<details") == 5


def test_empty_report() -> None:
    page = render_html(build_report([], now=NOW))
    assert "0 answers" in page and "None: every evaluated answer" in page


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="needs Chromium (apt-get install chromium)")
def test_chromium_renders_it(tmp_path: Path) -> None:
    page = tmp_path / "report.html"
    page.write_text(render_html(build_report(ENTRIES, title="Rendered report", now=NOW)), encoding="utf-8")
    shot = tmp_path / "shot.png"
    base = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
            "--user-data-dir=" + str(tmp_path / "profile")]  # fmt: skip
    subprocess.run(
        [*base, "--hide-scrollbars", "--window-size=1200,1400", f"--screenshot={shot}", page.as_uri()],
        check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    png = shot.read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")
    assert (width, height) == (1200, 1400)
    assert len(png) > 30_000  # a blank page compresses to a few kB
    dom = subprocess.run(
        [*base, "--dump-dom", page.as_uri()], check=True, capture_output=True, text=True, timeout=120
    ).stdout
    assert "Rendered report" in dom and "Flagged answers (2)" in dom
    assert "object 'y' not found" in dom


@needs_sandbox
@pytest.mark.sandbox
def test_cli_report(tmp_path: Path) -> None:
    rows = [
        {"id": "ok", "task": "generate", "theme": "t", "question": "q", "answer": "```r\ncat(mean(c(1, 3)))\n```"},
        {"id": "err", "task": "generate", "theme": "t", "question": "q",
         "answer": "```r\nx <- 1\nlog(-x)\nstop('no')\n```"},
        {"id": "old", "task": "explain", "theme": "t", "answer": "prose",
         "evaluation": {"verdict": "passed", "flagged": False, "code": "1", "warnings": []}},
    ]  # fmt: skip
    src = tmp_path / "pairs.jsonl"
    src.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    out, js = tmp_path / "r.html", tmp_path / "r.json"
    proc = subprocess.run(
        [sys.executable, "-m", "evaluator", "--wall-s", "5", "report", str(src), "--html", str(out), "--json", str(js),
         "--workers", "1"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr  # something is flagged
    assert "3 answers: passed 2, runtime_error 1; 1 flagged" in proc.stdout
    data = json.loads(js.read_text())
    err = next(e for e in data["entries"] if e["id"] == "err")
    assert err["check"]["line"] == 3 and err["check"]["warnings"] == ["In log(-x): NaNs produced"]
    assert "mode" in data["environment"] and data["environment"]["mode"] == "bwrap"
    assert out.read_text().startswith("<!DOCTYPE html>")


@needs_sandbox
@pytest.mark.sandbox
def test_cli_run_and_check(tmp_path: Path) -> None:
    (tmp_path / "a.R").write_text("print(sum(1:4))\n")
    (tmp_path / "b.md").write_text("Text\n\n```r\nstop('x')\n```\n")
    run = subprocess.run(
        [sys.executable, "-m", "evaluator", "run", str(tmp_path / "a.R"), str(tmp_path / "b.md")],
        capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    a, b = (json.loads(line) for line in run.stdout.splitlines())
    assert a["verdict"] == "passed" and a["stdout"] == "[1] 10\n"
    assert b["verdict"] == "runtime_error" and b["answer_line"] == 4
    check = subprocess.run(
        [sys.executable, "-m", "evaluator", "check"], capture_output=True, text=True, timeout=120
    )
    assert check.returncode == 0 and json.loads(check.stdout)["probe"] == "passed"


def test_expected_verdicts_are_counted() -> None:
    entries = [
        ReportEntry(id="x", task="generate", check=Check(verdict="passed"), expected="passed"),
        ReportEntry(
            id="y", task="generate", check=Check(verdict="timeout", message="slow"), expected="passed"
        ),
        ReportEntry(id="z", task="generate", check=Check(verdict="passed")),
    ]
    report = build_report(entries, now=NOW)
    assert (report.expected_total, report.expected_agree, report.disagreements) == (2, 1, ["y"])
    page = render_html(report)
    assert "<b>1 of 2</b> labelled answers" in page and "expected passed" in page


CASES = Path(__file__).resolve().parents[1] / "data" / "evaluator_cases.jsonl"


@needs_sandbox
@pytest.mark.sandbox
def test_the_labelled_cases_all_get_their_expected_verdict(tmp_path: Path) -> None:
    """33 answers, each labelled with the verdict it must get: every verdict, several ways each."""
    js = tmp_path / "cases.json"
    proc = subprocess.run(
        [sys.executable, "-m", "evaluator", "--wall-s", "5", "report", str(CASES),
         "--html", str(tmp_path / "cases.html"), "--json", str(js)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    data = json.loads(js.read_text())
    assert data["expected_total"] == 33
    assert data["disagreements"] == [], proc.stdout
    assert set(data["verdicts"]) == {
        "passed", "no_code", "parse_error", "runtime_error", "timeout", "memory_limit", "output_limit", "killed",
    }  # fmt: skip
