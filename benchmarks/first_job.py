"""`make bench` section 1h: a single default land-cover job on a freshly started backend process.

The real server (`python -m backend.server`, started and followed with the plugin's own process manager and
HTTP client) is started twice on the same cache, where the bundled model's OpenVINO IR for the raster's
fitted tile is already made (what the first start's background preparation leaves): the first start has
no note of an earlier job, so its first job compiles OpenVINO itself; the second finds the note the first
start's jobs left (`<cache>/last_cpu_job.json`), so its idle worker compiles that model and tile before any
job. Each start waits a few seconds before its first job, as a user pressing Run after starting the backend
would. Printed: each job from submit to done (the server's own clock, so the client's polling does not
count), its engine seconds and runtime, and the ratio to the plain loop on the same raster (best run,
before and after).
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

from benchmarks.environment import environment
from benchmarks.job_batch import _job_params, raster_and_loop
from benchmarks.models import DEFAULT_MODEL
from benchmarks.timing import best_of_each

ROOT = Path(__file__).resolve().parents[1]
STARTS = (("no earlier job noted: the first job compiles OpenVINO", "unnoted"),
          ("the last job noted: compiled at the start, before any job", "noted"))


def _jobs_on_a_new_backend(state_dir: Path, raster: Path, out: Path, jobs: int, wait: float) -> list:
    from skysense_qgis.backend_manager import BackendManager

    manager = BackendManager(interpreter=sys.executable, backend_root=str(ROOT), state_dir=str(state_dir))
    rows = []
    try:
        client = manager.ensure_running(timeout=180)
        client.health()
        time.sleep(wait)
        for k in range(jobs):
            job_id = client.submit("landcover", _job_params(raster, out, f"{out.name}{k}"))["id"]
            while (info := client.job(job_id))["state"] not in ("done", "failed", "cancelled"):
                time.sleep(0.25)
            if info["state"] != "done":
                raise RuntimeError(f"job {k} {info['state']}: {info['error'] or info['message']}")
            metrics = info["result"]["metrics"]
            rows.append({"wall": info["finished"] - info["created"], "engine": metrics["seconds"],
                         "runtime": metrics["precision"] or metrics["runtime"]})
            time.sleep(1.0)
    finally:
        manager.stop()
    return rows


def bench_first_job(tmp: Path, size: int, results: dict, jobs: int = 2, repeat: int = 2,
                    wait: float = 5.0) -> str:
    from backend.inference import openvino_warmup
    from backend.io.tiling import plan_tiles
    from benchmarks.run_all import table

    raster, loop_runs = raster_and_loop(tmp, "first", size)
    loop = best_of_each(loop_runs, repeat)["loop"]
    tile = plan_tiles(size, size, 640, 64).tile  # the bundled model's tile (640/64), fitted to the raster
    starts = {}
    # the IR is made here, in a cache of the section's own; no background process beside the jobs
    with environment(SKYSENSE_CACHE=str(tmp / f"first_cache_{size}"), **{openvino_warmup.SWITCH: "0"}):
        openvino_warmup.prepare_tiles(DEFAULT_MODEL, [tile], report=lambda line: None)
        for what, label in STARTS:
            starts[what] = _jobs_on_a_new_backend(tmp / f"first_state_{size}", raster, tmp / f"first_{label}",
                                                  jobs, wait)
    loop = min(loop, best_of_each(loop_runs, repeat)["loop"])
    mp = size * size / 1e6
    rows = [["plain loop, PyTorch fp32, tile 256/32", "", f"{loop:.2f}", f"{mp / loop:.3f}", "1.00x"]]
    for what, batch in starts.items():
        for k, job in enumerate(batch):
            rows.append([f"{what}; job {k + 1}: {job['runtime']}", f"{job['engine']:.2f}", f"{job['wall']:.2f}",
                         f"{mp / job['wall']:.3f}", f"{loop / job['wall']:.2f}x"])
    results[f"first_job_{size}"] = {"size": size, "tile": tile, "loop_s": loop, "starts": starts,
                                    "first_job_speedup": {what: loop / batch[0]["wall"]
                                                          for what, batch in starts.items()}}
    return table(f"1h. A single default land-cover job on a freshly started backend, {size}x{size} px (the real "
                 f"server; OpenVINO IR cached at tile {tile}; first job {wait:.0f} s after the start; loop best "
                 f"of {2 * repeat}, before and after)",
                 ["run", "engine s", "submit to done s", "MP/s", "job vs loop"], rows)
