"""`make bench` section 1g: a raster with no data around its footprint, as a tilted scene warped north-up or a
drone orthomosaic is, run as a default CPU land-cover job in a backend whose start has prepared OpenVINO
(its background preparation covers the bundled model at this tile).

The engine computes only tiles with a valid pixel (backend.inference.engine._tiles_with_data); the plain loop,
like typical plugins, computes every tile of the bounding box. Printed: the tiles each computes, seconds,
MP/s of the raster, and the ratio to the loop; the engine is also run computing every tile, so what skipping
the empty tiles adds shows apart from the rest (its labels are compared, and must be identical).
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np
import rasterio

from benchmarks.environment import environment
from benchmarks.synthetic import make_test_raster, rotated_square


def bench_collar_job(tmp: Path, size: int, results: dict, repeat: int = 2, degrees: float = 20.0,
                     tile: Optional[int] = None) -> str:
    from backend.inference import engine, openvino_warmup
    from backend.inference.engine import EngineInput, run_inference
    from backend.inference.openvino_predictor import openvino_available
    from backend.inference.runtime import make_predictor
    from backend.io.tiling import plan_tiles
    from benchmarks.baseline_loop import _starts, plain_tile_loop
    from benchmarks.models import DEFAULT_MODEL, build_model
    from benchmarks.run_all import CLASSES, NORM, _default_tile, table
    from benchmarks.timing import best_of_each

    raster = tmp / f"collar_{size}.tif"
    if not raster.exists():
        make_test_raster(raster, size, footprint=rotated_square(size, degrees))
    tile = tile or _default_tile()
    layout = plan_tiles(size, size, tile, 64)
    with environment(SKYSENSE_CACHE=str(tmp / "collar_cache")):  # the bench leaves no export in the user's cache
        # what the server's start prepares in the background for the bundled model (640 is among its tiles)
        if openvino_available() and DEFAULT_MODEL.exists():
            openvino_warmup.prepare_tiles(DEFAULT_MODEL, [layout.tile], report=lambda line: None)
        predictor = make_predictor(build_model("tiny"), device="cpu", runtime="auto", model_path=DEFAULT_MODEL,
                                   tile_size=layout.tile, expected_tiles=layout.n_tiles)
        predictor([np.zeros((1, 3, layout.tile, layout.tile), np.float32)])  # export/compile: once per job, not timed
    every_tile = engine._tiles_with_data

    def engine_run(out: Path, skip: bool):
        def run():
            engine._tiles_with_data = every_tile if skip else (lambda valid, spans: list(range(len(spans))))
            try:
                return run_inference([EngineInput(raster, **NORM)], predictor, out, CLASSES, tile_size=tile,
                                     overlap=64, batch_size=0)
            finally:
                engine._tiles_with_data = every_tile
        return run

    loop_model = build_model("tiny")
    skipped = engine_run(tmp / "collar_engine.tif", True)()
    every = engine_run(tmp / "collar_every.tif", False)()
    with rasterio.open(skipped.path) as a, rasterio.open(every.path) as b:
        identical = bool((a.read(1) == b.read(1)).all())
    runs = best_of_each({
        "loop": lambda: plain_tile_loop(raster, tmp / "collar_loop.tif", loop_model, CLASSES, tile=256, overlap=32,
                                        **NORM),
        "engine": engine_run(tmp / "collar_engine.tif", True),
        "every": engine_run(tmp / "collar_every.tif", False)}, repeat)
    mp = size * size / 1e6
    loop_tiles = len(_starts(size, 256, 224)) ** 2
    computed = skipped.tiles - skipped.skipped_tiles
    runtime = predictor.precision or type(predictor).__name__
    rows = [["plain loop, PyTorch fp32, tile 256/32, batch 1 (every tile)", loop_tiles, f"{runs['loop']:.1f}",
             f"{mp / runs['loop']:.3f}", "1.00x"],
            [f"engine as a default job: {runtime}, tile {tile}/64 (fitted {layout.tile}), tiles with data only",
             f"{computed} of {skipped.tiles}", f"{runs['engine']:.1f}", f"{mp / runs['engine']:.3f}",
             f"{runs['loop'] / runs['engine']:.2f}x"],
            ["  the same, computing every tile", every.tiles, f"{runs['every']:.1f}", f"{mp / runs['every']:.3f}",
             f"{runs['loop'] / runs['every']:.2f}x"],
            [f"(valid pixels: {skipped.valid_pixels / size ** 2:.0%} of the raster; labels with and without "
             f"skipping {'identical' if identical else 'DIFFERENT'})", "", "", "", ""]]
    results[f"collar_{size}"] = {"size": size, "valid_fraction": skipped.valid_pixels / size ** 2,
                                 "tiles": skipped.tiles, "tiles_computed": computed,
                                 "speedup": runs["loop"] / runs["engine"],
                                 "speedup_every_tile": runs["loop"] / runs["every"], "identical": identical}
    return table(f"1g. A {size}x{size} px raster with no data around a footprint turned by {degrees:g} degrees, as "
                 f"a default CPU land-cover job (best of {repeat}, round-robin)",
                 ["run", "tiles computed", "seconds", "MP/s", "vs loop"], rows)
