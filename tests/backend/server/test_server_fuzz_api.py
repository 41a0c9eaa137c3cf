"""Fuzz the HTTP API from its own OpenAPI schema (in-process ASGI, bounded examples):
whatever schemathesis sends, the server answers without a 5xx and keeps serving."""
from __future__ import annotations

import schemathesis
from hypothesis import HealthCheck, settings

from backend.server.app import create_app
from backend.server.jobs import JobManager
from backend.server.model_index import ModelIndex

TOKEN = "fuzz-token-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
JOBS = JobManager()
# No --output-root: generated output paths are only ever refused for other reasons
# (inputs that do not exist), so no job writes anywhere.
APP = create_app(TOKEN, jobs=JOBS, models=ModelIndex("/nonexistent/project", "/nonexistent/user"))
schema = schemathesis.openapi.from_asgi("/openapi.json", APP, headers=AUTH)
schema = schema.exclude(method="POST", path="/shutdown")  # no on_shutdown here, but keep it simple


@schema.parametrize()
@settings(max_examples=40, deadline=None, derandomize=True,
          suppress_health_check=list(HealthCheck))
def test_server_fuzz_no_server_errors(case):
    response = case.call(headers=AUTH)
    assert response.status_code < 500, f"{case.method} {case.path}: {response.status_code} {response.text[:500]}"


def test_server_fuzz_server_still_serves_afterwards():
    from fastapi.testclient import TestClient
    with TestClient(APP) as client:
        assert client.get("/health", headers=AUTH).status_code == 200
        # any job the fuzzer managed to queue has finished or is finishing without crashing the worker
        for job in client.get("/jobs", headers=AUTH).json():
            assert job["state"] in ("queued", "running", "done", "failed", "cancelled")
    JOBS.close(timeout=30)
