"""`make bench` section 1e: a batch of default land-cover jobs on same-sized rasters too small to repay
OpenVINO's start-up in one job (2048², 1024²), run one after the other through the backend's job queue as
a Processing batch run sends them.

Printed per job: the time from submitting it to its end (waiting for the worker, loading the model file,
the engine, writing the styles and preview), the engine's own seconds, the runtime it ran, and the ratio
to the plain loop on the same raster (its best run, before and after the jobs). Two rounds:
- a new install, the jobs submitted right after the backend's first start: nothing is cached, and the
  background process that prepares OpenVINO for the bundled model (openvino_warmup, at the lowest CPU
  priority) has just begun. The first two jobs run PyTorch; the second, with the same model and tile as the
  first, tells the backend that a batch is running, so its idle worker prepares OpenVINO itself (the third
  job waits for that) and the later jobs run OpenVINO. How long the background preparation took in all
  is printed once the round is over;
- a restarted backend: the IRs are cached on disk, and its start has the idle worker compile the one the
  last job of the round before ran (runtime.want_last_sessions_job), as the server's start does; the jobs
  are submitted once that is done. Jobs at another tile would compile it first (2048²: +0.2 s).
"""
from __future__ import annotations

import os
import time
from pathlib import Path

from benchmarks.baseline_loop import plain_tile_loop
from benchmarks.environment import environment
from benchmarks.models import DEFAULT_MODEL, build_model
from benchmarks.synthetic import make_test_raster
from benchmarks.timing import best_of_each

CLASSES = list(range(1, 8))
NORM = dict(mean=[128.0] * 3, std=[64.0] * 3)


def _job_params(raster: Path, out: Path, name: str) -> dict:
    """What the dock sends for a land-cover run with everything left at its default (CPU, no polygons)."""
    return {"hr": [{"path": str(raster)}], "model": str(DEFAULT_MODEL), "output_dir": str(out), "name": name,
            "device": "cpu", "vectorize": False}


def raster_and_loop(tmp: Path, name: str, size: int) -> tuple:
    """(synthetic size² raster tmp/<name>_<size>.tif, made if missing; {"loop": the plain tile loop on it} for
    best_of_each): what sections 1e and 1h compare jobs with."""
    raster = tmp / f"{name}_{size}.tif"
    if not raster.exists():
        make_test_raster(raster, size)
    loop_model = build_model("tiny")
    return raster, {"loop": lambda: plain_tile_loop(raster, tmp / f"{name}_loop.tif", loop_model, CLASSES, tile=256,
                                                    overlap=32, **NORM)}


def _run_batch(manager, raster: Path, out: Path, jobs: int, label: str) -> list:
    rows = []
    for k in range(jobs):
        start = time.perf_counter()
        job = manager.submit("landcover", _job_params(raster, out / f"{label}{k}", f"{label}{k}"))
        info = manager.wait(job.id, 1800)
        wall = time.perf_counter() - start
        if info["state"] != "done":
            raise RuntimeError(f"batch job {k} {info['state']}: {info['error'] or info['message']}")
        metrics = info["result"]["metrics"]
        rows.append({"wall": wall, "waited": info["started"] - info["created"], "engine": metrics["seconds"],
                     "runtime": metrics["precision"] or metrics["runtime"]})
    return rows


def bench_job_batch(tmp: Path, size: int, results: dict, jobs: int = 5, repeat: int = 2) -> str:
    from backend.inference import openvino_warmup, runtime
    from backend.server.jobs import JobManager
    from benchmarks.run_all import table

    raster, loop_runs = raster_and_loop(tmp, "batch", size)
    # the machine's speed drifts over a minute: the loop's best before and after the batches counts
    loop = best_of_each(loop_runs, repeat)["loop"]
    rounds, background, queued, ahead = {}, None, False, None
    # a new install's empty cache, not the user's, nor the one the other size's rounds filled
    with environment(SKYSENSE_CACHE=str(tmp / f"batch_cache_{size}")):
        for label, what in (("new", "new install (nothing cached)"),
                            ("restarted", "restarted backend (IR cached)")):
            runtime._LAST_OPENVINO.clear()  # a new backend process holds no compiled model...
            runtime._PREVIOUS_CPU_JOB.clear()  # ...and remembers no earlier job
            manager = JobManager()
            warmer = openvino_warmup.BackgroundWarmer()
            held_warmers = openvino_warmup._WARMER[:]
            openvino_warmup._WARMER[:] = [warmer]  # the jobs' requests go to this round's process too
            started = time.perf_counter()
            if label == "new":  # what the server's first start begins (unless SKYSENSE_OPENVINO_WARMUP=0)
                queued = bool(openvino_warmup.warm_bundled_models(warmer))
            elif runtime.want_last_sessions_job():  # what a later start asks of its idle worker
                manager.prepare_while_idle()
                while manager.preparing():
                    time.sleep(0.01)
                ahead = time.perf_counter() - started
            try:
                rounds[what] = _run_batch(manager, raster, tmp / "batch_out", jobs, label)
                if warmer.busy() or warmer.finished:
                    warmer.wait(1800)  # the next round is a later start, with all of it done
                    background = (time.perf_counter() - started, warmer.finished)
            finally:
                warmer.close()
                openvino_warmup._WARMER[:] = held_warmers
                manager.close(timeout=120)
    loop = min(loop, best_of_each(loop_runs, repeat)["loop"])
    mp = size * size / 1e6
    rows = [["plain loop, PyTorch fp32, tile 256/32", "", "", f"{loop:.2f}", "", f"{mp / loop:.3f}", "1.00x"]]
    for what, batch in rounds.items():
        for k, job in enumerate(batch):
            rows.append([f"{what}, job {k + 1}: {job['runtime']}", f"{job['waited']:.2f}", f"{job['engine']:.2f}",
                         f"{job['wall']:.2f}", f"{loop / job['engine']:.2f}x", f"{mp / job['wall']:.3f}",
                         f"{loop / job['wall']:.2f}x"])
    later = [job for batch in rounds.values() for job in batch[3:]]  # past the preparation
    results[f"job_batch_{size}"] = {"size": size, "loop_s": loop,
                            "rounds": {what: batch for what, batch in rounds.items()},
                            "later_jobs_speedup": loop / min(job["wall"] for job in later) if later else None,
                            "background_s": background[0] if background else None,
                            "compiled_at_start_s": ahead}
    if ahead is not None:
        rows.append([f"(the restarted backend's start compiled OpenVINO for the last job's model and tile in "
                     f"{ahead:.2f} s, before its first job)", "", "", "", "", "", ""])
    if background:
        tiles = ",".join(str(t) for _, done, _ in background[1] for t in done)
        statuses = sorted({status for _, _, status in background[1]})
        rows.append([f"(the first start's background preparation, tiles {tiles}, ended {background[0]:.0f} s after "
                     f"it began, exit status {statuses})", "", "", "", "", "", ""])
    else:
        why = ("SKYSENSE_OPENVINO_WARMUP=0" if os.environ.get(openvino_warmup.SWITCH) == "0"
               else "nothing to prepare or openvino missing" if not queued else "it ended at once")
        rows.append([f"(no background preparation: {why})", "", "", "", "", "", ""])
    return table(f"1e. A batch of {jobs} default land-cover jobs on {size}x{size} px through the job queue "
                 f"(one after the other; loop best of {2 * repeat}, before and after)",
                 ["run", "waited for the worker s", "engine s", "submit to done s", "engine vs loop", "MP/s",
                  "job vs loop"], rows)
