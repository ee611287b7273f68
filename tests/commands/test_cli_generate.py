"""`qasynth generate` in a real subprocess against the fake model server: the accounting and pairs of
/v1/generate for the same spec, bad specs named by field, and resuming after Ctrl-C and a kill."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from litestar.testing import AsyncTestClient

from service.app import create_app
from service.commands.generate import load_job
from service.stages.spec import locale_defaults
from tests.conftest import cell_key, settings_for
from tests.fakes.llm_server import FakeLLMServer, deterministic_reply, step_of

ROOT = Path(__file__).resolve().parent.parent.parent


def env_for(server: FakeLLMServer) -> dict[str, str]:
    return {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "OPENAI_API_KEY": "sk-test",
        "OPENAI_BASE_URL": server.openai_base_url,
        "QASYNTH_OPENAI_MODEL": "fake-gpt",
        "QASYNTH_PROVIDER": "openai",
        "QASYNTH_MAX_RETRIES": "2",
        "QASYNTH_RETRY_BACKOFF_S": "0.05",
    }


def generate(server: FakeLLMServer, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "service", "generate", *args],
        env=env_for(server),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def first_two_alike(system: str, user: str) -> str:
    """Deterministic, and a question call for several questions repeats its first: one near-duplicate
    a cell, which the cell replaces (a top-up call)."""
    reply = deterministic_reply(system, user)
    if step_of(system, user) != "questions" or "### Q2" not in reply:
        return reply
    blocks = reply.split("\n\n")
    first = blocks[0].split("\n", 1)[1]
    blocks[1] = f"### Q2\n{first}"
    return "\n\n".join(blocks)


SPEC: dict[str, Any] = {
    "tasks": [{"id": "generate"}, {"id": "stats", "description": "Applied statistics in R"}],
    "themes": [{"id": "mean-variance"}, {"id": "regression"}, {"id": "power", "description": "power.t.test"}],
    "per_cell": 3,
    "model": {"provider": "openai", "questions_per_call": 3},
    "evaluation": {"enabled": False},
}


async def file_and_api(
    server: FakeLLMServer, tmp_path: Path, spec: dict[str, Any]
) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    """The same spec through `python -m service generate` (with `--summary`) and /v1/generate."""
    spec_path = tmp_path / "spec.json"
    spec_path.write_text(json.dumps(spec), encoding="utf-8")
    out = tmp_path / "pairs.jsonl"
    done = generate(server, str(spec_path), "-o", str(out), "--summary", str(tmp_path / "summary.json"))
    assert done.returncode == 0, done.stderr
    async with AsyncTestClient(create_app(settings_for(server, sandbox="none"))) as client:
        r = await client.post("/v1/generate", json=spec)
    assert r.status_code == 200, r.text
    return done, r.json()


async def test_generate_file_gives_the_accounting_and_pairs_of_the_api(tmp_path: Path) -> None:
    with FakeLLMServer(reply=first_two_alike) as server:
        done, api = await file_and_api(server, tmp_path, SPEC)
    out = tmp_path / "pairs.jsonl"
    summary = json.loads((tmp_path / "summary.json").read_text())
    pairs, dropped = read_jsonl(out), read_jsonl(tmp_path / "pairs.dropped.jsonl")
    assert read_jsonl(tmp_path / "pairs.failed.jsonl") == []
    # The same accounting, cell by cell, and the same pairs and drops (the fake is deterministic).
    assert [cell_key(c) for c in summary["counts"]["cells"]] == [cell_key(c) for c in api["counts"]["cells"]]
    assert all(
        c["returned"] == 3 and c["dropped"] == 1 and c["top_up_calls"] == 2 for c in api["counts"]["cells"]
    )
    for name in ("requested", "returned", "failed", "questions_dropped", "questions_generated"):
        assert summary["counts"][name] == api["counts"][name], name
    assert sorted(p["id"] for p in pairs) == sorted(p["id"] for p in api["pairs"])
    by_id = {p["id"]: p for p in api["pairs"]}
    assert all(
        (p["question"], p["answer"]) == (by_id[p["id"]]["question"], by_id[p["id"]]["answer"]) for p in pairs
    )
    drop = ("task", "theme", "stage", "reason", "id", "nearest_id")
    assert sorted(tuple(d[k] for k in drop) for d in dropped) == sorted(
        tuple(d[k] for k in drop) for d in api["dropped"]
    )
    assert {d["reason"] for d in dropped} == {"near_duplicate"}
    assert "18 of 18 pairs returned, 0 failed, 6 dropped and replaced" in done.stderr


async def test_generate_file_prices_its_job_as_the_api_does(tmp_path: Path) -> None:
    """The table's price, a dollar budget and the cost per pair: the same from the file command."""
    spec = {
        **SPEC,
        "tasks": [{"id": "generate"}],
        "themes": [{"id": "regression"}],
        "model": {"provider": "openai", "name": "gpt-4o-mini", "questions_per_call": 3},
        "budget": {"usd": 1.0},
    }
    with FakeLLMServer(reply=deterministic_reply) as server:
        _, body = await file_and_api(server, tmp_path, spec)
    api = body["counts"]
    counts = json.loads((tmp_path / "summary.json").read_text())["counts"]
    assert api["price_taken"] == counts["price_taken"] == "2025-11-25"
    assert counts["cost_usd"] == api["cost_usd"] > 0
    assert counts["cost_per_returned_pair_usd"] == api["cost_per_returned_pair_usd"]
    pairs = read_jsonl(tmp_path / "pairs.jsonl")
    assert len(pairs) == 3 and all(p["provenance"]["answer"]["cost_usd"] > 0 for p in pairs)


def test_failures_are_written_and_counted(tmp_path: Path) -> None:
    spec = {**SPEC, "tasks": [{"id": "generate"}], "budget": {"calls_per_cell": 3}}
    spec_path = tmp_path / "spec.json"
    spec_path.write_text(json.dumps(spec), encoding="utf-8")
    out = tmp_path / "pairs.jsonl"
    with FakeLLMServer(reply=first_two_alike) as server:
        done = generate(server, str(spec_path), "-o", str(out), "--summary", str(tmp_path / "s.json"))
    assert done.returncode == 1, done.stderr  # some requested items could not be made
    counts = json.loads((tmp_path / "s.json").read_text())["counts"]
    failed = read_jsonl(tmp_path / "pairs.failed.jsonl")
    for cell in counts["cells"]:
        assert cell["requested"] == 3 == cell["returned"] + cell["failed"]
        assert (
            cell["failed"]
            == sum((f["task"], f["theme"]) == (cell["task"], cell["theme"]) for f in failed)
            > 0
        )
    assert {f["reason"] for f in failed} == {"cell_budget_exhausted"}
    assert counts["returned"] == len(read_jsonl(out)) and counts["failed"] == len(failed)


def test_a_bad_spec_is_named_by_its_field_and_the_request_cap_does_not_apply(tmp_path: Path) -> None:
    cases = [
        ({"per_cell": 300}, "per_cell: Expected `int` <= 200"),
        ({"per_cell": 1, "model": {"temperature": "hot"}}, "model.temperature: Expected `float`"),
        (
            {"cells": [{"task": "generate", "theme": "nope", "count": 1}]},
            "cells[0].theme: unknown theme 'nope'",
        ),
        ({"per_cell": 1, "cells": []}, "per_cell: give exactly one of per_cell"),
    ]
    with FakeLLMServer() as server:
        for i, (spec, message) in enumerate(cases):
            path = tmp_path / f"bad{i}.json"
            path.write_text(json.dumps(spec), encoding="utf-8")
            done = generate(server, str(path), "-o", str(tmp_path / "out.jsonl"), timeout=60)
            assert done.returncode == 2, done.stderr
            assert f"generate: {path}: {message}" in done.stderr and "Traceback" not in done.stderr
        (tmp_path / "nojson.json").write_text("{", encoding="utf-8")
        done = generate(server, str(tmp_path / "nojson.json"), "-o", str(tmp_path / "out.jsonl"), timeout=60)
        assert done.returncode == 2 and "not JSON" in done.stderr
    assert not (tmp_path / "out.jsonl").exists()
    # 26 cells of 200: over what one request may ask for, accepted from the command line.
    big = tmp_path / "big.json"
    themes = [{"id": f"t{i}", "description": f"theme {i}"} for i in range(26)]
    big.write_text(json.dumps({"tasks": [{"id": "generate"}], "themes": themes, "per_cell": 200}))
    assert load_job(big).requested == 5200


def wait_for_lines(path: Path, n: int, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 120
    while (not path.exists() or path.read_bytes().count(b"\n") < n) and proc.poll() is None:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert proc.poll() is None, "the job ended before it could be interrupted"


@contextlib.contextmanager
def ctrl_c_reaches_children() -> Iterator[None]:
    """Children start with SIGINT as a terminal's foreground job has it, even when these tests run
    in the background (`cmd &`), where the shell ignores SIGINT and children inherit that."""
    before = signal.getsignal(signal.SIGINT)
    if before is signal.SIG_IGN:
        # A handler (unlike SIG_IGN) is reset to the default at exec.
        signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, before)


def test_generate_resumes_after_ctrl_c_and_a_kill_with_the_accounting_of_one_run(tmp_path: Path) -> None:
    spec = {
        "tasks": [{"id": "generate"}],
        "themes": [{"id": t} for t in ("mean-variance", "regression")],
        "per_cell": 12,
        "model": {"provider": "openai", "questions_per_call": 2},
        "evaluation": {"enabled": False},
    }
    spec_path = tmp_path / "spec.json"
    spec_path.write_text(json.dumps(spec), encoding="utf-8")
    out = tmp_path / "pairs.jsonl"
    cmd = [sys.executable, "-m", "service", "generate", str(spec_path), "-o", str(out)]
    with FakeLLMServer(latency_s=0.2) as server:
        # Two calls at a time: the job takes seconds, so each interruption lands in its middle.
        env = {**env_for(server), "QASYNTH_CONCURRENCY": "2", "QASYNTH_CONCURRENCY_MAX": "2"}
        # Ctrl-C: the files keep what was written, and the job says how to go on.
        with ctrl_c_reaches_children():
            proc = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE)
        wait_for_lines(out, 3, proc)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 130, err
        assert b"run the same command again to continue" in err and b"Traceback" not in err
        first = len(read_jsonl(out))
        # A kill, and a crash in the middle of a line.
        proc = subprocess.Popen(cmd, env=env, stderr=subprocess.DEVNULL)
        wait_for_lines(out, first + 3, proc)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        held = out.read_bytes()
        assert held.count(b"\n") < 24
        out.write_bytes(held + held.splitlines(keepends=True)[0][:50])
        earlier = [json.loads(line) for line in held.splitlines()]
        calls_before = len(server.calls)
        again = subprocess.run(
            [*cmd, "--summary", str(tmp_path / "s.json")],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
    assert again.returncode == 0, again.stderr
    summary = json.loads((tmp_path / "s.json").read_text())
    pairs = read_jsonl(out)
    assert summary["resumed"] == held.count(b"\n") >= first + 3
    assert f"({summary['resumed']:,} accounted for by an earlier run)" in again.stderr
    counts = summary["counts"]
    assert counts["requested"] == counts["returned"] == len(pairs) == 24 and counts["failed"] == 0
    assert [(c["theme"], c["requested"], c["returned"], c["failed"]) for c in counts["cells"]] == [
        (t["id"], 12, 12, 0) for t in spec["themes"]
    ]
    assert Counter(p["theme"] for p in pairs) == {t["id"]: 12 for t in spec["themes"]}
    assert len({p["id"] for p in pairs}) == 24  # nothing twice
    assert len({p["question"] for p in pairs}) == 24
    # The last run's first question call of a cell was told every question the cell already had.
    told = 0
    for theme in spec["themes"]:
        description = locale_defaults("en").themes[theme["id"]].description
        before = [p["question"] for p in earlier if p["theme"] == theme["id"]]
        calls = [
            c
            for c in server.calls[calls_before:]
            if step_of(c.system, c.user) == "questions" and description in c.user
        ]
        if before and calls:
            assert all(q in calls[0].user for q in before)
            told += 1
    assert told > 0


def test_files_of_another_spec_are_refused(tmp_path: Path) -> None:
    spec = {**SPEC, "tasks": [{"id": "generate"}], "per_cell": 1}
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps(spec), encoding="utf-8")
    b.write_text(json.dumps({**spec, "locale": "ja"}), encoding="utf-8")
    out = tmp_path / "pairs.jsonl"
    with FakeLLMServer() as server:
        assert generate(server, str(a), "-o", str(out)).returncode == 0
        before = out.read_bytes()
        done = generate(server, str(b), "-o", str(out))
        assert done.returncode == 2 and "another spec" in done.stderr and "--restart" in done.stderr
        assert out.read_bytes() == before
        (tmp_path / "pairs.dropped.jsonl").write_text('{"not": "a drop"}\n', encoding="utf-8")
        done = generate(server, str(a), "-o", str(out))
        assert done.returncode == 2 and "pairs.dropped.jsonl:1 is not a result of this job" in done.stderr
        again = generate(server, str(b), "-o", str(out), "--restart")
        assert again.returncode == 0, again.stderr
    assert {p["locale"] for p in read_jsonl(out)} == {"ja"}
