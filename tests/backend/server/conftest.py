"""Fixtures for the server tests: an in-process app (TestClient) with test-only job
kinds registered through backend.pipelines.register_pipeline."""
from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Dict, Optional

import pytest
from pydantic import Field

from backend.errors import InputError
from backend.pipelines import register_pipeline, unregister_pipeline
from backend.server.schemas import OutputParams

TOKEN = "test-token-" + "x" * 20
AUTH = {"Authorization": f"Bearer {TOKEN}"}
FINISHED = ("done", "failed", "cancelled")

# gate name -> event the "gated" test pipeline waits on; started -> set once running.
GATES: Dict[str, threading.Event] = {}
STARTED: Dict[str, threading.Event] = {}
RUN_LOG: list = []
RUN_LOCK = threading.Lock()


class GatedParams(OutputParams):
    """Test kind: writes partial outputs, then reports progress until its gate opens."""
    gate: str = Field(..., min_length=1)
    name: str = "gated"
    source: Optional[str] = None


def gated_pipeline(params: dict, progress) -> dict:
    gate = GATES.setdefault(params["gate"], threading.Event())
    with RUN_LOCK:
        RUN_LOG.append(("start", params["gate"]))
    out_dir = Path(params["output_dir"])
    # A half-written temp file and an already-renamed output: both must go on cancel.
    (out_dir / f"{params['name']}.tif.tmp").write_bytes(b"partial")
    (out_dir / f"{params['name']}.gpkg").write_bytes(b"finished part")
    STARTED.setdefault(params["gate"], threading.Event()).set()
    step = 0
    while not gate.wait(0.01):
        step += 1
        progress.update(min(0.9, step / 1000), f"working step {step}")
    progress.update(0.95, "finishing")
    final = out_dir / f"{params['name']}.tif"
    (out_dir / f"{params['name']}.tif.tmp").replace(final)
    with RUN_LOCK:
        RUN_LOG.append(("end", params["gate"]))
    return {"outputs": [{"path": str(final), "kind": "raster", "role": "classes"},
                        {"path": str(out_dir / f"{params['name']}.gpkg"), "kind": "vector", "role": "polygons"}],
            "classes": [], "metrics": {"steps": step}, "device": "cpu"}


class FailParams(OutputParams):
    """Test kind: fails in the way asked."""
    how: str
    name: str = "failing"


def failing_pipeline(params: dict, progress) -> dict:
    (Path(params["output_dir"]) / f"{params['name']}.tif.tmp").write_bytes(b"partial")
    if params["how"] == "input":
        raise InputError("band 4 does not exist in scene.tif (it has 3 bands)")
    if params["how"] == "memory":
        raise MemoryError()
    raise ZeroDivisionError("division by zero")


class ProbeParams(OutputParams):
    """Test kind: open and read a raster with backend.io.raster, as pipelines do."""
    path: str
    name: str = "probe"


def raster_probe_pipeline(params: dict, progress) -> dict:
    """Reads every 256-pixel window (of the first 2048x2048) like the tiled pipelines do."""
    from rasterio.windows import Window

    from backend.io.raster import AlignedRaster
    progress.update(0.05, "opening raster")
    with AlignedRaster(params["path"], allow_pixel_grid=True) as src:
        height, width = min(src.grid.height, 2048), min(src.grid.width, 2048)
        windows = [Window(c, r, min(256, width - c), min(256, height - r))
                   for r in range(0, height, 256) for c in range(0, width, 256)]
        for i, window in enumerate(windows):
            data, valid = src.read(window)
            progress.update((i + 1) / len(windows), f"window {i + 1}/{len(windows)}")
    return {"outputs": [], "windows": len(windows), "bands": int(data.shape[0])}


def wait_job(client, job_id: str, timeout: float = 60.0) -> dict:
    """Poll until the job has finished (the timeout only guards against a hang)."""
    end = time.monotonic() + timeout
    while True:
        info = client.get(f"/jobs/{job_id}", headers=AUTH).json()
        if info["state"] in FINISHED or time.monotonic() > end:
            return info
        time.sleep(0.02)


def wait_for(predicate, timeout: float = 30.0) -> bool:
    end = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > end:
            return False
        time.sleep(0.01)
    return True


@pytest.fixture
def test_kinds():
    register_pipeline("gated", gated_pipeline, GatedParams)
    register_pipeline("failing", failing_pipeline, FailParams)
    register_pipeline("rasterprobe", raster_probe_pipeline, ProbeParams)
    register_pipeline("brokenimport", "tests_nonexistent_module_for_skysense", GatedParams)
    yield
    for kind in ("gated", "failing", "rasterprobe", "brokenimport"):
        unregister_pipeline(kind)
    for gate in GATES.values():
        gate.set()


@pytest.fixture
def out_root(tmp_path) -> Path:
    root = tmp_path / "outputs"
    root.mkdir()
    return root


@pytest.fixture
def make_client(test_kinds, out_root, tmp_path):
    """Factory: TestClient over a fresh app + job manager; all closed at the end."""
    from fastapi.testclient import TestClient

    from backend.server.app import create_app
    from backend.server.jobs import JobManager
    from backend.server.model_index import ModelIndex

    made = []

    def make(roots=(), models: Optional[ModelIndex] = None):
        jobs = JobManager()
        app = create_app(TOKEN, jobs=jobs, output_roots=list(roots) or None,
                         models=models or ModelIndex(tmp_path / "no_project_models", tmp_path / "no_user_models"))
        client = TestClient(app)
        made.append((client, jobs))
        return client

    yield make
    for client, jobs in made:
        jobs.close(timeout=10)
        client.close()


@pytest.fixture
def client(make_client, out_root):
    return make_client(roots=[out_root])


@pytest.fixture
def auth() -> dict:
    return dict(AUTH)


@pytest.fixture
def helpers():
    """Functions and shared state the tests use (test modules cannot import conftest)."""
    class H:
        token = TOKEN
        gates = GATES
        started = STARTED
        run_log = RUN_LOG
        wait_job = staticmethod(wait_job)
        wait_for = staticmethod(wait_for)

        @staticmethod
        def gate(name):
            GATES[name] = threading.Event()
            STARTED[name] = threading.Event()
            return GATES[name]
    RUN_LOG.clear()
    return H
