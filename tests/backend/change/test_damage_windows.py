"""Building damage statistics window by window: same results as one window (and as the former
whole-grid computation), memory set by the window, not by the raster.

run_damage goes through the fake engine of test_change_windows (synthetic class / confidence rasters
written strip by strip), so these tests exercise its own post-processing in seconds.
"""

import fiona
import numpy as np
import pytest
import rasterio
import rasterio.features
import shapely
import shapely.geometry
from rasterio.transform import from_origin

from backend.io.raster import Grid
from backend.pipelines.change import metres_to_grid_units
from backend.pipelines.damage import building_change_stats, run_damage

from .conftest import outcome_metrics
from .test_change_windows import NODATA_ROWS, fake_engine, make_pair, rect_change, traced_peak

X0, Y0, RES = 500000, 4100000, 0.5  # make_pair's grid: EPSG:32615, 0.5 m pixels


def box_px(c0, r0, c1, r1):
    """A footprint from pixel coordinates (column, row) of make_pair's grid."""
    return shapely.geometry.box(X0 + c0 * RES, Y0 - r1 * RES, X0 + c1 * RES, Y0 - r0 * RES)


# Footprints on a 600 x 700 grid, against 256-px windows (edges at 256 and 512):
FOOTPRINTS = [
    box_px(240.3, 100.3, 270.6, 130.7),     # across the column edge 256
    box_px(272.1, 100.3, 290.4, 128.2),     # its neighbour: each one's 2 m ring reaches the other
    box_px(245.2, 245.4, 268.7, 266.1),     # across the corner (256, 256)
    box_px(300.55, 300.6, 300.9, 300.95),   # sub-pixel: no pixel centre, gets the pixel it touches
    box_px(511.7, 40.2, 512.3, 40.4),       # sub-pixel across the column edge 512: 2 touched pixels
    box_px(400.3, 400.3, 410.2, 410.2),     # covered by the next one (later wins): no pixel of its own
    box_px(395.1, 395.1, 420.4, 420.4),
    shapely.geometry.MultiPolygon([box_px(100.4, 500.2, 130.8, 530.9), box_px(131.2, 505.3, 140.6, 515.2)]),
    box_px(141.0, 509.6, 141.3, 509.9),     # sub-pixel next to the previous one, across its ring
    box_px(690.3, 10.2, 720.0, 30.5),       # partly outside the grid
    box_px(600.2, 592.3, 620.1, 599.6),     # in the no-data rows
    box_px(505.6, 250.3, 520.2, 262.7),     # across the corner (512, 256)
]


def grid_600x700():
    return Grid(rasterio.crs.CRS.from_epsg(32615), from_origin(X0, Y0, RES, RES), 700, 600)


def percent_probability(shape, seed=0):
    """P(change) as the engine gives it: a whole percent in float32 (change_probability)."""
    rng = np.random.default_rng(seed)
    prob = (rng.integers(0, 101, shape).astype(np.float32) / np.float32(100.0)).astype(np.float32)
    valid = np.ones(shape, bool)
    valid[-NODATA_ROWS:] = False
    prob[~valid] = 0.0
    return prob, valid


def whole_grid_stats(probability, valid, grid, footprints, ring_m=2.0):
    """The former whole-grid computation (label images of the whole grid), as reference."""
    def label_image(geoms, all_touched=False):
        shapes = [(shapely.geometry.mapping(g), i + 1) for i, g in enumerate(geoms) if not g.is_empty]
        return rasterio.features.rasterize(shapes, out_shape=(grid.height, grid.width), transform=grid.transform,
                                           fill=0, dtype="int32", all_touched=all_touched)

    n = len(footprints)
    ids = label_image(footprints)
    missing = np.setdiff1d(np.arange(1, n + 1), np.unique(ids))
    if missing.size:
        touched = label_image([footprints[i - 1] for i in missing], all_touched=True)
        fill = (ids == 0) & (touched > 0)
        ids[fill] = missing[touched[fill] - 1]
    width = metres_to_grid_units(grid, ring_m)
    ring_ids = label_image([g.buffer(width).difference(g) for g in footprints])
    ring_ids[ids > 0] = 0
    changed = (probability >= 0.5) & valid
    certainty = np.maximum(probability, 1 - probability)

    def sums(labels, values):
        return np.bincount(labels.ravel(), weights=values.ravel(), minlength=n + 1)[1:]

    valid_fp = sums(ids, valid.astype(np.float64))
    with np.errstate(invalid="ignore", divide="ignore"):
        return {"pixels": np.bincount(ids.ravel(), minlength=n + 1)[1:].astype(np.float64), "valid_pixels": valid_fp,
                "footprint_fraction": sums(ids, changed.astype(np.float64)) / valid_fp,
                "ring_fraction": sums(ring_ids, changed.astype(np.float64)) / sums(ring_ids, valid.astype(np.float64)),
                "mean_probability": sums(ids, np.where(valid, probability, 0.0)) / valid_fp,
                "certainty": sums(ids, np.where(valid, certainty, 0.0)) / valid_fp}


def test_small_windows_give_the_whole_grid_statistics():
    grid = grid_600x700()
    prob, valid = percent_probability((600, 700))
    reference = whole_grid_stats(prob, valid, grid, FOOTPRINTS)
    one = building_change_stats(prob, valid, grid, FOOTPRINTS)               # default 4096: one window
    many = building_change_stats(prob, valid, grid, FOOTPRINTS, window=256)  # 3 x 3 windows
    for key, expected in reference.items():
        assert np.array_equal(getattr(one, key), expected, equal_nan=True), key
        assert np.array_equal(getattr(many, key), expected, equal_nan=True), key
    assert np.array_equal(one.coverage, many.coverage)
    pixels = reference["pixels"]
    assert pixels[3] == 1 and pixels[4] == 2      # sub-pixel footprints: the pixels they touch
    assert pixels[5] == 0 and pixels[6] > 600     # covered footprint: nothing (the later one wins)
    assert pixels[8] == 1 and pixels[10] > 0 and reference["valid_pixels"][10] == 0
    assert np.isnan(reference["footprint_fraction"][10])
    assert np.isfinite(reference["ring_fraction"][:3]).all()


def write_footprints(path, geoms):
    schema = {"geometry": "MultiPolygon", "properties": {"name": "str"}}
    with fiona.open(path, "w", driver="GPKG", schema=schema, crs="EPSG:32615") as dst:
        for k, g in enumerate(geoms):
            if g.geom_type == "Polygon":
                g = shapely.geometry.MultiPolygon([g])
            dst.write({"geometry": shapely.geometry.mapping(g), "properties": {"name": f"b{k}"}})
    return str(path)


def run(pre, post, buildings, out, **params):
    return run_damage(dict({"pre": pre, "post": post, "buildings": buildings, "output_dir": str(out),
                            "min_coverage": 0.0}, **params))


def read(path):
    with rasterio.open(path) as src:
        try:
            colormap = src.colormap(1)
        except ValueError:  # no colour table
            colormap = None
        return src.read(1), src.profile, colormap


def records(path):
    with fiona.open(path) as layer:
        return [(shapely.geometry.shape(f.geometry).wkb, dict(f.properties)) for f in layer]


def test_run_damage_windows_give_the_one_window_outputs(tmp_path, monkeypatch):
    fake_engine(monkeypatch, rect_change)
    pre, post = make_pair(tmp_path / "in", 600, 700)
    buildings = write_footprints(tmp_path / "buildings.gpkg", FOOTPRINTS)
    one = run(pre, post, buildings, tmp_path / "one")
    many = run(pre, post, buildings, tmp_path / "many", window=256)
    assert outcome_metrics(one) == outcome_metrics(many)
    assert one["metrics"]["buildings_assessed"] >= 8 and len(set(one["metrics"]["damage_counts"].values())) > 1
    a, b = records(tmp_path / "one" / "damage.gpkg"), records(tmp_path / "many" / "damage.gpkg")
    assert a == b and len(a) == one["metrics"]["buildings_assessed"]
    for suffix in (".tif", "_change_probability.tif", "_pixels.tif"):
        (x, px, cx), (y, py, cy) = read(tmp_path / "one" / f"damage{suffix}"), read(tmp_path / "many" / f"damage{suffix}")
        assert np.array_equal(x, y), suffix
        assert px == py and cx == cy, suffix
    damage, profile, colormap = read(tmp_path / "many" / "damage.tif")
    assert profile["tiled"] and profile["blockxsize"] == 256 and profile["compress"] == "deflate"
    assert colormap[4][:3] != colormap[1][:3]
    assert set(np.unique(damage)) - {0} == {r["damage"] for _, r in a}
    # the damage raster is the assessed footprints burnt with their class on the whole grid
    by_name = {r["source_id"]: r["damage"] for _, r in a}
    with fiona.open(buildings) as layer:
        ids = [str(f.id) for f in layer]
    shapes = [(shapely.geometry.mapping(g), by_name[i]) for g, i in zip(FOOTPRINTS, ids) if i in by_name]
    expected = rasterio.features.rasterize(shapes, out_shape=(600, 700), transform=from_origin(X0, Y0, RES, RES),
                                           fill=0, dtype="uint8")
    assert np.array_equal(damage, expected)


def test_damage_memory_is_set_by_the_window_not_the_raster(tmp_path, monkeypatch):
    fake_engine(monkeypatch, rect_change)

    def footprints(height):  # one building every 64 x 64 px, each across a 256-px window edge or not
        return [box_px(c + 10.3, r + 12.4, c + 40.6, r + 37.8) for r in range(0, height - 64, 64)
                for c in range(0, 512, 64)] + [box_px(250.2, r + 250.3, 262.7, r + 261.1) for r in range(0, height - 256, 256)]

    def peak(height, name):
        pre, post = make_pair(tmp_path / name, height, 512)
        buildings = write_footprints(tmp_path / name / "buildings.gpkg", footprints(height))
        return traced_peak(lambda: run(pre, post, buildings, tmp_path / f"out_{name}", window=256))

    peak(256, "warm-up")  # one-time allocations (lazy imports, GDAL / fiona drivers) out of the way
    peak_short, short = peak(512, "short")
    peak_tall, tall = peak(2048, "tall")
    assert tall["metrics"]["buildings_assessed"] > 3.5 * short["metrics"]["buildings_assessed"] > 0
    # 4x the pixels (0.8 M more): whole-grid arrays (P, change, valid, 2 int32 label images and
    # their temporaries) would add 20+ bytes a pixel (> 15 MB); the buildings themselves add little
    assert peak_tall < 1.3 * peak_short + 2_000_000, (peak_short, peak_tall)
