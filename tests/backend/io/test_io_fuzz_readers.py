"""Mutation fuzzing of the raster readers: valid GeoTIFFs with bytes flipped, ranges zeroed or the file cut,
read the way a job reads them (checked open, band selection, every window, and once more warped onto another
grid). Every case must either read or fail with an InputError that names the file, and nothing may crash
the process: the cases run in a child process, so a crash inside GDAL shows up as its exit status."""
from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import rasterio
from rasterio.transform import from_origin

from ...conftest import repo_env

REPO = Path(__file__).resolve().parents[3]
CASES_PER_BASE = 200

READER = r"""
import json, signal, sys
from pathlib import Path
from rasterio.windows import Window
from backend.errors import InputError
from backend.io.raster import make_grid, open_aligned

def read_all(path, grid=None):
    (src,) = open_aligned([{"path": path, "bands": [1, 2, 3]}], grid=grid)
    try:
        height, width = src.grid.height, src.grid.width
        if height * width > 4096 * 4096:  # a cut header may declare a huge raster: sample it, do not scan it
            starts = [(0, 0), (max(0, height - 128), max(0, width - 128))]
        else:
            starts = [(r, c) for r in range(0, height, 128) for c in range(0, width, 128)]
        for r, c in starts:
            src.read(Window(c, r, min(128, width - c), min(128, height - r)))
        return src.grid
    finally:
        src.close()

def on_alarm(*_):
    raise TimeoutError("no answer within 20 s")

signal.signal(signal.SIGALRM, on_alarm)
for path in sys.argv[1:]:
    signal.alarm(20)
    try:
        grid = read_all(path)
        if grid.crs is not None and min(grid.width, grid.height) >= 4:  # the warped path: half the resolution, shifted by a third of a pixel
            left, bottom, right, top = grid.bounds
            res = abs(grid.transform.a) * 2
            try:  # a mutated transform can leave no room for the shifted grid: that is the test's, not a reader's
                target = make_grid(grid.crs, res, (left + res / 3, bottom, right, top - res / 3))
            except InputError:
                target = None
            if target is not None:
                read_all(path, target)
        outcome = {"path": path, "result": "read"}
    except InputError as exc:
        outcome = {"path": path, "result": "InputError", "message": str(exc)}
    except BaseException as exc:
        outcome = {"path": path, "result": type(exc).__name__, "message": str(exc)[:300]}
    signal.alarm(0)
    print(json.dumps(outcome), flush=True)
"""


def _base_rasters(folder: Path) -> list:
    rng = np.random.default_rng(0)
    data = rng.integers(0, 255, (3, 300, 420), dtype=np.uint8)
    tiled = folder / "tiled.tif"
    with rasterio.open(tiled, "w", driver="GTiff", width=420, height=300, count=3, dtype="uint8", tiled=True,
                       blockxsize=128, blockysize=128, compress="deflate", crs="EPSG:32633",
                       transform=from_origin(500000, 4000000, 0.5, 0.5)) as dst:
        dst.write(data)
    striped = folder / "striped.tif"
    with rasterio.open(striped, "w", driver="GTiff", width=420, height=300, count=3, dtype="uint16",
                       nodata=0, crs="EPSG:4326", transform=from_origin(10.0, 50.0, 1e-5, 1e-5)) as dst:
        dst.write(data.astype(np.uint16) * 7)
    return [tiled, striped]


def _mutations(base: Path, folder: Path, count: int, seed: int) -> list:
    blob = base.read_bytes()
    rnd = random.Random(seed)
    out = []
    for k in range(count):
        data = bytearray(blob)
        how = k % 4
        if how == 0:  # header and first directory entries: tags, offsets, sizes
            for _ in range(rnd.randint(1, 8)):
                data[rnd.randrange(min(512, len(data)))] = rnd.randrange(256)
        elif how == 1:  # anywhere: compressed tiles, tag values, trailing directories
            for _ in range(rnd.randint(1, 32)):
                data[rnd.randrange(len(data))] = rnd.randrange(256)
        elif how == 2:  # cut short
            data = data[:rnd.randrange(8, len(data))]
        else:  # a zeroed range
            start = rnd.randrange(len(data))
            data[start:start + rnd.randint(16, 4096)] = bytes(min(len(data) - start, 4096))[:len(data[start:start + 4096])]
        path = folder / f"{base.stem}_{k:03d}.tif"
        path.write_bytes(bytes(data))
        out.append(path)
    return out


def test_fuzz_readers_mutated_geotiffs_read_or_fail_with_input_error(tmp_path):
    cases = []
    for n, base in enumerate(_base_rasters(tmp_path)):
        cases += _mutations(base, tmp_path, CASES_PER_BASE, seed=n)
    run = subprocess.run([sys.executable, "-c", READER, *map(str, cases)], cwd=REPO, capture_output=True,
                         text=True, timeout=900, env=repo_env(GDAL_PAM_ENABLED="NO"))
    outcomes = [json.loads(line) for line in run.stdout.splitlines() if line.startswith("{")]
    crashed_at = cases[len(outcomes)] if len(outcomes) < len(cases) else None
    assert run.returncode == 0 and crashed_at is None, (
        f"reader process died (exit {run.returncode}) on {crashed_at}: {run.stderr[-1500:]}")
    bad = [o for o in outcomes if o["result"] not in ("read", "InputError")]
    assert not bad, f"{len(bad)} of {len(cases)} malformed rasters raised something else: {bad[:5]}"
    unnamed = [o for o in outcomes if o["result"] == "InputError" and Path(o["path"]).name not in o["message"]]
    assert not unnamed, f"errors that do not name the file: {unnamed[:5]}"
    refused = sum(o["result"] == "InputError" for o in outcomes)
    assert refused >= len(cases) // 4, f"only {refused} of {len(cases)} mutations were refused: not a fuzz"
