"""Change post-processing window by window: same results as one window, memory set by the window.

The engine and the models are replaced by a fake that streams synthetic class / confidence /
land-cover rasters (row strips, like the engine), so these tests exercise run_change's own
post-processing in seconds.
"""
import json
import threading
import tracemalloc
from pathlib import Path

import fiona
import numpy as np
import pytest
import rasterio
import shapely
import shapely.geometry
from rasterio.transform import from_origin
from rasterio.windows import Window

import backend.pipelines.change as change_module
from backend.errors import CancelledError, InputError
from backend.inference.engine import EngineResult
from backend.io.writer import StripWriter
from backend.pipelines.change import run_change
from backend.progress import Progress

ROOT = Path(__file__).resolve().parents[3]
LOVEDA = json.loads((ROOT / "resources" / "palettes" / "loveda.json").read_text())["classes"]
NODATA_ROWS = 8  # the last rows are no data in the fake change map

# Change regions (row0, row1, col0, col1) on a 600 x 700 raster, with 256-px windows:
RECTS = [(20, 60, 20, 80),        # inside window (0, 0): 1 part
         (100, 140, 230, 290),    # across the column edge 256: 2 parts
         (230, 290, 480, 540),    # across the corner (256, 512): 4 parts
         (400, 450, 100, 130),    # inside window (1, 0): 1 part
         # a U opening to the left across the column edge 512: its arms are 2 parts left of the
         # edge, the base with the arm ends 1 part right of it
         (300, 360, 520, 530), (300, 310, 490, 530), (350, 360, 490, 530)]
REGIONS, PARTS = 5, 1 + 2 + 4 + 1 + 3


def rect_change(rows, cols):
    inside = np.zeros(np.broadcast(rows, cols).shape, bool)
    for r0, r1, c0, c1 in RECTS:
        inside |= (rows >= r0) & (rows < r1) & (cols >= c0) & (cols < c1)
    return inside


def striped_change(rows, cols):
    """Change regions everywhere (the memory test needs polygons in every window)."""
    return ((rows // 20) % 3 == 0) & ((cols // 30) % 2 == 0) & (rows % 20 > 2)


def fake_engine(monkeypatch, change_fn):
    """Replace the models and the engine by synthetic rasters written strip by strip."""
    def fake_load(path, tasks, what, device="auto"):
        if "change" in tasks:
            return object(), {"task": "change", "tile_size": 256}
        return object(), {"task": "segmentation", "classes": LOVEDA, "tile_size": 256}

    def fake_run_inference(inputs, predictor, output_path, classes, *, grid, outputs, confidence_path=None,
                           progress=None, **kw):
        kind = "change" if len(inputs) == 2 else Path(inputs[0].path).stem
        written = outputs.path_for(output_path)
        writers = [StripWriter(written, grid, nodata=255 if kind == "change" else 0, final_name=output_path)]
        conf_written = None
        if confidence_path is not None:
            conf_written = outputs.path_for(confidence_path)
            writers.append(StripWriter(conf_written, grid, nodata=255, final_name=confidence_path))
        cols = np.arange(grid.width)[None, :]
        for r0 in range(0, grid.height, 64):
            rows = np.arange(r0, min(r0 + 64, grid.height))[:, None]
            if kind == "change":
                nodata = np.broadcast_to(rows >= grid.height - NODATA_ROWS, (len(rows), grid.width))
                classes_ = np.where(change_fn(rows, cols), 1, 0).astype(np.uint8)
                confidence = ((rows * 7 + cols * 3) % 51 + 50).astype(np.uint8)
                classes_[nodata], confidence[nodata] = 255, 255
                writers[0].write(classes_)
                writers[1].write(confidence)
            elif kind == "pre":
                writers[0].write(np.broadcast_to(1 + (cols // 40) % 7, (len(rows), grid.width)).astype(np.uint8))
            else:
                writers[0].write((1 + (rows // 30 + cols // 50) % 7).astype(np.uint8))
        for writer in writers:
            writer.close()
        return EngineResult(Path(output_path), written, confidence_path, conf_written, grid,
                            Window(0, 0, grid.width, grid.height), "cpu", 0, 0.0, nodata=255 if kind == "change" else 0)

    monkeypatch.setattr(change_module, "load_task_model", fake_load)
    monkeypatch.setattr(change_module, "run_inference", fake_run_inference)


def make_pair(folder, height, width):
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name in ("pre", "post"):
        path = folder / f"{name}.tif"
        with rasterio.open(path, "w", driver="GTiff", width=width, height=height, count=3, dtype="uint8",
                           crs="EPSG:32615", transform=from_origin(500000, 4100000, 0.5, 0.5), tiled=True,
                           compress="deflate") as dst:
            pass  # contents are never read: the fake engine makes the maps
        paths.append(str(path))
    return paths


def run(pre, post, out, **params):
    return run_change(dict({"pre": pre, "post": post, "output_dir": str(out), "landcover_model": "fake"}, **params))


def read(path):
    with rasterio.open(path) as src:
        return src.read(1), src.profile


def polygons(path):
    with fiona.open(path) as layer:
        return [(shapely.geometry.shape(f.geometry), dict(f.properties)) for f in layer]


def test_windows_give_the_one_window_results(tmp_path, monkeypatch):
    fake_engine(monkeypatch, rect_change)
    pre, post = make_pair(tmp_path / "in", 600, 700)
    one = run(pre, post, tmp_path / "one")                 # default 4096: one window
    many = run(pre, post, tmp_path / "many", window=256)   # 3 x 3 windows
    m1, m2 = one["metrics"], many["metrics"]
    expected_changed = int(sum((r1 - r0) * (c1 - c0) for r0, r1, c0, c1 in RECTS[:4])) + 60 * 10 + 2 * 10 * 30
    assert m1["changed_pixels"] == m2["changed_pixels"] == expected_changed
    assert m1["valid_pixels"] == m2["valid_pixels"] == (600 - NODATA_ROWS) * 700
    assert m1["from_to"] == m2["from_to"] and sum(r["pixels"] for r in m1["from_to"]) == expected_changed
    for suffix in ("_probability.tif", "_from_to.tif", ".tif"):
        a, profile_a = read(tmp_path / "one" / f"change{suffix}")
        b, profile_b = read(tmp_path / "many" / f"change{suffix}")
        assert np.array_equal(a, b), suffix
        if suffix != ".tif":
            assert profile_b["tiled"] and profile_b["blockxsize"] == 256 and profile_b["compress"] == "deflate"
    percent, _ = read(tmp_path / "one" / "change_probability.tif")
    changed = rect_change(*np.mgrid[0:600, 0:700])
    assert percent[-1].tolist() == [255] * 700 and percent[:-NODATA_ROWS].max() <= 100
    assert percent[changed].min() >= 50 and percent[:-NODATA_ROWS][~changed[:-NODATA_ROWS]].max() <= 50
    assert (open(tmp_path / "many" / "change_from_to.csv").read()
            == open(tmp_path / "one" / "change_from_to.csv").read())

    whole, parts = polygons(tmp_path / "one" / "change.gpkg"), polygons(tmp_path / "many" / "change.gpkg")
    assert m1["polygons"] == len(whole) == REGIONS
    assert m2["polygons"] == len(parts) == PARTS  # regions crossing window edges: one polygon per window
    assert [p["id"] for _, p in parts] == list(range(1, PARTS + 1))
    assert list(parts[0][1]) == list(whole[0][1])  # same fields, same order
    union_whole = shapely.union_all([g for g, _ in whole])
    union_parts = shapely.union_all([g for g, _ in parts])
    assert union_parts.area == pytest.approx(union_whole.area) == pytest.approx(expected_changed * 0.25)
    assert union_parts.symmetric_difference(union_whole).area == pytest.approx(0.0, abs=1e-6)
    assert sum(p["area_m2"] for _, p in parts) == pytest.approx(sum(p["area_m2"] for _, p in whole))
    # every part lies inside one window
    for geom, _ in parts:
        left, bottom, right, top = geom.bounds
        c0, c1 = (left - 500000) / 0.5, (right - 500000) / 0.5
        r0, r1 = (4100000 - top) / 0.5, (4100000 - bottom) / 0.5
        assert c0 // 256 == (c1 - 1) // 256 and r0 // 256 == (r1 - 1) // 256, geom.bounds
    # per part: P and from / to classes of its own pixels; area-weighted they give the region's mean
    for geom, props in whole:
        inside = [(g, p) for g, p in parts if g.intersection(geom).area > 0]
        weighted = sum(p["mean_probability"] * p["area_m2"] for _, p in inside) / sum(p["area_m2"] for _, p in inside)
        assert weighted == pytest.approx(props["mean_probability"], abs=1e-3)
        assert all(p["from_to"] == f"{p['from_class']} -> {p['to_class']}" for _, p in inside)


def test_one_window_polygons_and_statistics(tmp_path, monkeypatch):
    """Mean probability and from / to majority per region, against a direct computation."""
    fake_engine(monkeypatch, rect_change)
    pre, post = make_pair(tmp_path / "in", 600, 700)
    result = run(pre, post, tmp_path / "out")
    percent, _ = read(tmp_path / "out" / "change_probability.tif")
    names = {c["value"]: c["name"] for c in LOVEDA}
    rows, cols = np.mgrid[0:600, 0:700]
    pre_classes, post_classes = 1 + (cols // 40) % 7, 1 + (rows // 30 + cols // 50) % 7
    found = polygons(tmp_path / "out" / "change.gpkg")
    assert len(found) == REGIONS == result["metrics"]["polygons"]
    for (r0, r1, c0, c1), (geom, props) in zip(RECTS[:2], found[:2]):
        sl = np.s_[r0:r1, c0:c1]
        assert props["area_m2"] == pytest.approx((r1 - r0) * (c1 - c0) * 0.25)
        assert props["mean_probability"] == pytest.approx(percent[sl].mean() / 100, abs=0.006)
        assert props["from_class"] == names[int(np.bincount(pre_classes[sl].ravel()).argmax())]
        assert props["to_class"] == names[int(np.bincount(post_classes[sl].ravel()).argmax())]
    # min_area applies to each part: with 256-px windows the U's 22 x 10 px arms (55 m²) go
    small = run(pre, post, tmp_path / "small", window=256, min_area=60)
    assert small["metrics"]["polygons"] == PARTS - 2


def traced_peak(call):
    """(peak bytes traced by tracemalloc while call() ran (numpy arrays included), its result)."""
    tracemalloc.start()
    try:
        result = call()
        return tracemalloc.get_traced_memory()[1], result
    finally:
        tracemalloc.stop()


def test_memory_is_set_by_the_window_not_the_raster(tmp_path, monkeypatch):
    fake_engine(monkeypatch, striped_change)

    def peak(height, name):
        pre, post = make_pair(tmp_path / name, height, 512)
        return traced_peak(lambda: run(pre, post, tmp_path / f"out_{name}", window=256))

    peak(256, "warm-up")  # one-time allocations (lazy imports, GDAL / fiona drivers) out of the way
    peak_short, short = peak(512, "short")
    peak_tall, tall = peak(2048, "tall")
    assert tall["metrics"]["polygons"] > 3.5 * short["metrics"]["polygons"] > 0
    assert tall["metrics"]["changed_pixels"] > 3.5 * short["metrics"]["changed_pixels"]
    # 4x the pixels (1 M more): whole-raster arrays would add 17+ bytes a pixel (> 12 MB)
    assert peak_tall < 1.3 * peak_short + 1_000_000, (peak_short, peak_tall)


def test_cancel_or_failure_during_post_processing_leaves_no_output(tmp_path, monkeypatch):
    fake_engine(monkeypatch, rect_change)
    pre, post = make_pair(tmp_path / "in", 600, 700)
    cancel = threading.Event()

    def cancel_in_the_third_window(fraction, message):
        if "window 3 of" in message:
            cancel.set()

    with pytest.raises(CancelledError):
        run_change({"pre": pre, "post": post, "output_dir": str(tmp_path / "out"), "window": 256,
                    "landcover_model": "fake"}, Progress(cancel_in_the_third_window, cancel))
    assert not list((tmp_path / "out").iterdir())

    from backend.errors import OutputError
    from backend.pipelines import change_windows

    def broken_write(self, geoms, records):
        raise OutputError("could not write change.gpkg: disk full")

    monkeypatch.setattr(change_windows.PolygonSink, "write", broken_write)
    with pytest.raises(OutputError, match="disk full"):
        run(pre, post, tmp_path / "out2", window=256)
    assert not list((tmp_path / "out2").iterdir())


def test_window_must_be_a_multiple_of_the_block_size(tmp_path):
    for bad in (100, 0, -256, "big", 300.5):
        with pytest.raises(InputError, match="window"):
            run_change({"pre": "a.tif", "post": "b.tif", "output_dir": str(tmp_path), "window": bad})
