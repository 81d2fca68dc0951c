"""The OpenAPI schema: committed, served without auth, and fuzzed by schemathesis without a server error."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

from cgthub.api import create_app
from tests import api_server
from tests.factories import happy_path

api = api_server.api

COMMITTED = Path(__file__).resolve().parent.parent / "docs" / "openapi.json"
REGENERATE = "regenerate it with `cgthub api openapi -o docs/openapi.json`"


def test_committed_schema_is_the_generated_one():
    generated = json.loads(json.dumps(create_app("sqlite://").openapi()))
    assert json.loads(COMMITTED.read_text()) == generated, f"docs/openapi.json is stale: {REGENERATE}"


def test_schema_is_served_without_auth_and_every_data_route_declares_bearer_auth(api):
    served = api.client().get("/openapi.json").json()
    assert served == json.loads(COMMITTED.read_text())
    for path, operations in served["paths"].items():
        for method, operation in operations.items():
            if path != "/health":
                assert operation.get("security") == [{"HTTPBearer": []}], (method, path)
                assert "401" in operation["responses"], (method, path)


def test_schemathesis_finds_no_server_error(api, tmp_path):
    api_server.build_orders(api.database_url, [happy_path(1), happy_path(2)[:6]])
    token = api.key("admin")
    command = [
        sys.executable,
        "-m",
        "schemathesis.cli",
        "run",
        f"{api.base_url}/openapi.json",
        "--checks",
        "not_a_server_error",
        "--max-examples",
        "25",
        "--seed",
        "7",
        "--workers",
        "1",
        "--phases",
        "examples,coverage,fuzzing",
        "--generation-database",
        "none",
        "--request-timeout",
        "10",
        "--no-color",
        "--warnings",
        "missing_auth,validation_mismatch",
        "-H",
        f"Authorization: Bearer {token}",
    ]
    env = {**os.environ, "SCHEMATHESIS_HOOKS": "", "NO_COLOR": "1"}
    run = subprocess.run(command, capture_output=True, text=True, timeout=180, cwd=tmp_path, env=env)
    output = run.stdout + run.stderr
    assert run.returncode == 0, output[-4000:]
    counts = re.search(r"(\d+) generated, (\d+) passed", output)
    assert counts and int(counts[1]) == int(counts[2]) >= 200, output[-2000:]
    assert "No issues found" in output, output[-2000:]
