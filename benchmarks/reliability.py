"""`make bench` section 6: reliability figures of the real backend process, driven as the plugin drives it.

The plugin's own process manager and job loop (skysense_qgis.backend_manager / job_runner: requests and the
standard library only, no QGIS) start `python -m backend.server`, submit land-cover jobs over HTTP and follow
them. Measured: start-up until the server answers, how long a cancel takes to stop a running job (and what it
leaves in the output folder), how long the job loop takes to notice a backend killed mid-job (SIGKILL, what a
crash or the OOM killer does), a restart, and two jobs submitted at once (queued, both complete, same labels)
into the killed job's folder (whose leftover temporary folder the next job removes).
"""
from __future__ import annotations

import os
import signal
import sys
import threading
import time
from pathlib import Path

import numpy as np
import rasterio

from benchmarks.synthetic import make_test_raster

ROOT = Path(__file__).resolve().parents[1]


def _params(raster: Path, out: Path, name: str) -> dict:
    """What the dock sends for a land-cover run (default model, CPU, no polygons: the figures are the raster's)."""
    return {"hr": [{"path": str(raster), "bands": [1, 2, 3]}], "output_dir": str(out), "name": name,
            "device": "cpu", "vectorize": False}


def _follow(client, params: dict, stop_when, exited=None) -> dict:
    """Run one job through the plugin's job loop in a thread; `stop_when(progress)` -> True fires the trigger
    returned in the result ('cancel' sets the cancel flag the loop polls). Returns timings and the outcome."""
    from skysense_qgis.job_runner import run_job

    cancel = threading.Event()
    seen = {"progress": 0.0, "outcome": None, "ended": None}

    def work():
        try:
            run_job(client, "landcover", params, on_progress=lambda f, m: seen.__setitem__("progress", f),
                    is_cancelled=cancel.is_set, backend_exited=exited, poll_interval=0.3)
            seen["outcome"] = "done"
        except Exception as exc:  # the outcome is the figure: JobCancelled, BackendDied...
            seen["outcome"] = type(exc).__name__
            seen["message"] = str(exc)
        seen["ended"] = time.perf_counter()

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    while seen["progress"] < 0.25 and thread.is_alive():
        time.sleep(0.05)
    triggered = time.perf_counter()
    stop_when(cancel)
    thread.join(120)
    seen["latency"] = (seen["ended"] or time.perf_counter()) - triggered
    seen["at_progress"] = seen["progress"]
    return seen


def _files(folder: Path) -> list:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def _labels(path: Path) -> np.ndarray:
    with rasterio.open(path) as src:
        return src.read(1)


def bench_reliability(tmp: Path, size: int, results: dict, table) -> str:
    from skysense_qgis.backend_manager import BackendManager
    from skysense_qgis.job_runner import run_job

    raster = make_test_raster(tmp / f"reliability_{size}.tif", size)
    # its latencies are the backend's own: no background OpenVINO preparation beside them
    os.environ["SKYSENSE_OPENVINO_WARMUP"] = "0"
    manager = BackendManager(interpreter=sys.executable, backend_root=str(ROOT), state_dir=str(tmp / "backend"))
    rows, figures = [], {}
    try:
        started = time.perf_counter()
        client = manager.ensure_running(timeout=180)
        client.health()
        figures["startup_s"] = time.perf_counter() - started
        rows.append(["backend start until GET /health answers (python -m backend.server)",
                     f"{figures['startup_s']:.1f} s", ""])

        out = tmp / "cancelled"
        seen = _follow(client, _params(raster, out, "cancelled"), lambda cancel: cancel.set())
        left = _files(out)
        figures.update(cancel_s=seen["latency"], cancel_outcome=seen["outcome"], cancel_left=left)
        rows.append([f"cancel a running job (at {100 * seen['at_progress']:.0f} %) until the job loop returns",
                     f"{seen['latency']:.2f} s", f"{seen['outcome']}; output folder: "
                     + (", ".join(left) if left else "empty")])

        out = tmp / "killed"
        seen = _follow(client, _params(raster, out, "killed"),
                       lambda cancel: os.kill(manager.process.pid, signal.SIGKILL), exited=manager.has_exited)
        left = _files(out)
        finished = [name for name in left if name.startswith("killed") and not name.startswith(".")]
        figures.update(kill_detect_s=seen["latency"], kill_outcome=seen["outcome"], kill_left=left)
        rows.append([f"backend killed (SIGKILL) mid-job (at {100 * seen['at_progress']:.0f} %) until the job "
                     "loop reports it", f"{seen['latency']:.2f} s",
                     f"{seen['outcome']}; finished outputs left: {len(finished)}"
                     + (f" ({', '.join(left)})" if left else "")])

        started = time.perf_counter()
        manager.stop()
        client = manager.ensure_running(timeout=180)
        client.health()
        figures["restart_s"] = time.perf_counter() - started
        rows.append(["restart after the kill until GET /health answers", f"{figures['restart_s']:.1f} s", ""])

        out = tmp / "killed"  # the next jobs write where the killed one did: its temporary folder must go
        first = client.submit("landcover", _params(raster, out, "first"))["id"]
        second = client.submit("landcover", _params(raster, out, "second"))["id"]
        states = set()
        while client.job(first)["state"] not in ("done", "failed", "cancelled"):
            states.add(client.job(second)["state"])
            time.sleep(0.2)
        result = run_job(client, "landcover", _params(raster, out, "third"), poll_interval=0.3)
        while client.job(second)["state"] not in ("done", "failed", "cancelled"):
            time.sleep(0.2)
        outcome = [client.job(first)["state"], client.job(second)["state"], "done" if result else "?"]
        same = all(np.array_equal(_labels(out / f"{name}.tif"), _labels(out / "first.tif"))
                   for name in ("second", "third")) if outcome == ["done"] * 3 else False
        stale = [name for name in _files(out) if name.startswith(".")]
        figures.update(queue_states=sorted(states), queue_outcome=outcome, queue_identical=same, stale_left=stale)
        rows.append(["two jobs submitted at once (+ a third while they run), into the killed job's folder",
                     "/".join(outcome), f"second job's states while the first ran: {', '.join(sorted(states))}; "
                     f"labels identical: {same}; the killed job's temporary folder "
                     + ("removed" if not stale else f"still there ({', '.join(stale)})")])
    finally:
        manager.stop()
    results["reliability"] = figures
    return table(f"6. Reliability of the real backend process, land cover on a {size}x{size} px raster (CPU), "
                 "driven by the plugin's process manager and job loop", ["what", "figure", "outcome"], rows)
