"""Schemathesis against the app's own OpenAPI document, every default check on.

The real app serves over real HTTP on loopback, behind a test API key, with the fake model servers
and the real R sandbox. Every phase runs (examples, coverage, fuzzing, stateful). A failure prints
the request as a curl command to reproduce it, with the seed.
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from service.app import create_app
from service.settings import ApiKey
from tests.conftest import serve, settings_for
from tests.fakes.llm_server import FakeLLMServer

ROOT = Path(__file__).resolve().parents[2]
KEY = "qsk_schemathesis-0000000000000000000000000000"
SEED = os.environ.get("QASYNTH_SCHEMATHESIS_SEED", "20261201")
# Every phase for every route but /v1/generate, /v1/estimate, /v1/batches and /v1/dedup: their bodies have rules
# between fields that JSON Schema cannot state (unique ids across two lists; a spec's cells naming
# its own grid; see tests/api/schemathesis_hooks.py). The coverage phase builds bodies without hooks,
# so those run the example, fuzzing and stateful phases, with the hooks.
BETWEEN_FIELDS = r"^/v1/(generate|estimate|dedup|batches(/\{handle\})?)$"
RUNS = (
    ("--exclude-path-regex", BETWEEN_FIELDS),
    ("--include-path-regex", BETWEEN_FIELDS, "--phases", "examples,fuzzing,stateful"),
)


@pytest.mark.sandbox
def test_the_service_keeps_to_its_openapi_document(llm_server: FakeLLMServer) -> None:
    settings = settings_for(
        llm_server,
        api_keys=(ApiKey(name="schemathesis", sha256=hashlib.sha256(KEY.encode()).hexdigest()),),
        quota_requests_per_minute=0,  # quotas have their own tests; here they would only answer 429
        quota_jobs=0,
        quota_snippets=4,
    )
    st = Path(sys.executable).with_name("st")
    env = {
        **os.environ,
        "SCHEMATHESIS_HOOKS": "tests.api.schemathesis_hooks",
        "PYTHONPATH": str(ROOT),
        "NO_COLOR": "1",
    }
    generated = 0
    with serve(create_app(settings)) as url:
        for selection in RUNS:
            result = subprocess.run(
                [
                    str(st), "run", f"{url}/schema/openapi.json", *selection,
                    "--header", f"Authorization: Bearer {KEY}",
                    "--max-examples", "25",
                    "--seed", SEED,
                    "--workers", "2",
                    "--request-timeout", "60",
                ],
                env=env,
                capture_output=True,
                text=True,
                timeout=600,
            )  # fmt: skip
            out = result.stdout + result.stderr
            summary = re.search(r"(\d+) generated, ([^\n]*)", out)
            print(" ".join(selection), "->", summary.group(0) if summary else out[-2000:])
            assert result.returncode == 0, out[-30_000:]
            assert summary is not None and "failure" not in summary.group(2), out[-3000:]
            generated += int(summary.group(1))
    print(f"schemathesis: {generated} cases, 0 failures (seed {SEED})")
    assert generated > 1000
