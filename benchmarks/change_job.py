"""`make bench` section 1f: a default CPU change-detection job (the bundled change model, both orders,
polygons off) on a pair of same-sized rasters, before and after OpenVINO is prepared for it.

A new install runs it with PyTorch (bf16 where the CPU does bf16 in hardware): the job's tiles (a 2048² pair:
81 tiles of 256, twice) are far under the 40 MP that repay an export inside the job. The server's first
start prepares the bundled change model in the background (openvino_warmup, tiles 256 and 224); from then on
the same job finds the IR cached (2+ MP: OpenVINO) and, after one job, the compiled model held.
Printed: each job's seconds from call to return (model loading, engine, P(change) raster, styles), its
runtime, and its speed against the best PyTorch job.
"""
from __future__ import annotations

import time
from pathlib import Path

from benchmarks.environment import environment
from benchmarks.synthetic import make_test_raster


def _change_job(pre: Path, post: Path, out: Path, name: str) -> dict:
    from backend.pipelines.change import run_change

    start = time.perf_counter()
    result = run_change({"pre": str(pre), "post": str(post), "output_dir": str(out), "name": name,
                         "device": "cpu", "vectorize": False})
    return {"wall": time.perf_counter() - start, "runtime": result["metrics"].get("precision") or "?"}


def bench_change_job(tmp: Path, size: int, results: dict, jobs: int = 2, sizes_ahead: int = 2) -> str:
    from backend.inference import openvino_warmup, runtime
    from backend.io.tiling import fitted_tile_sizes
    from backend.pipelines.change import DEFAULT_CHANGE_MODEL
    from benchmarks.run_all import table

    pre, post = tmp / f"change_pre_{size}.tif", tmp / f"change_post_{size}.tif"
    if not pre.exists():
        make_test_raster(pre, size, seed=0)
        make_test_raster(post, size, seed=1)
    runs, out = [], tmp / "change_out"
    # a new install's cache, not the user's
    with environment(SKYSENSE_CACHE=str(tmp / f"change_cache_{size}")):
        runtime._LAST_OPENVINO.clear()
        runtime._PREVIOUS_CPU_JOB.clear()
        for k in range(jobs):
            runs.append(("new install (nothing prepared)", k + 1, _change_job(pre, post, out, f"new{k}")))
            runtime._WANTED.clear()  # no job worker here: what it would prepare is the next round's
        tiles = fitted_tile_sizes(256, 32)[:sizes_ahead]  # what the server's start prepares
        start = time.perf_counter()
        prepared = openvino_warmup.prepare_tiles(DEFAULT_CHANGE_MODEL, tiles, report=lambda line: None)
        preparation = time.perf_counter() - start
        runtime._LAST_OPENVINO.clear()  # a backend started after the preparation: nothing compiled yet
        runtime._PREVIOUS_CPU_JOB.clear()
        for k in range(jobs):
            runs.append(("after the start's background preparation", k + 1, _change_job(pre, post, out, f"ready{k}")))
    pytorch = min((job["wall"] for what, _, job in runs if "OpenVINO" not in job["runtime"]), default=None)
    mp = size * size / 1e6
    rows = []
    for what, k, job in runs:
        versus = f"{pytorch / job['wall']:.2f}x" if pytorch else ""
        rows.append([f"{what}, job {k}: {job['runtime']}", f"{job['wall']:.2f}", f"{mp / job['wall']:.3f}", versus])
    rows.append([f"(the background preparation of {DEFAULT_CHANGE_MODEL.name}, tiles "
                 f"{', '.join(str(t) for t, _, _ in prepared)}: {preparation:.1f} s)", "", "", ""])
    results[f"change_job_{size}"] = {"size": size, "preparation_s": preparation,
                                     "jobs": [{"round": what, "job": k, **job} for what, k, job in runs]}
    return table(f"1f. A default CPU change-detection job on a {size}x{size} px pair (bundled change model, both "
                 "orders, no polygons)", ["run", "seconds", "MP/s", "vs the best PyTorch job"], rows)
