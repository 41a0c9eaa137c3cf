"""Building localisation window by window: the polygons (and their order) of mask_polygons on the
whole grid, regions across window edges merged into one, memory set by the window, not the raster.
"""
from pathlib import Path

import fiona
import numpy as np
import pytest
import rasterio
import shapely
import shapely.geometry
from affine import Affine
from rasterio.transform import from_origin
from rasterio.windows import Window
from scipy import ndimage

import backend.pipelines.change as change_module
import backend.pipelines.damage as damage_module
from backend.inference.engine import EngineResult
from backend.io.raster import Grid
from backend.io.writer import StripWriter
from backend.pipelines.change import mask_polygons, pixel_area, predict_landcover
from backend.pipelines.change_windows import windowed_mask_polygons
from backend.pipelines.damage import run_damage

from .conftest import outcome_metrics
from .test_change_pipeline import JOPLIN_AOI
from .test_change_windows import fake_engine, make_pair, rect_change, traced_peak

# Joplin-like grid: 0.6 m pixels whose coordinates are not exact in binary
JOPLIN_TRANSFORM = Affine(0.6000000000000227, 0.0, 366642.6000000001, 0.0, -0.5999999999999779, 4104511.2)


def grid_of(mask, crs="EPSG:26915", transform=JOPLIN_TRANSFORM):
    return Grid(rasterio.crs.CRS.from_string(crs) if crs else None, transform, mask.shape[1], mask.shape[0])


def windowed(mask, grid, window, min_area=0.0):
    unit_area, _ = pixel_area(grid)
    return windowed_mask_polygons(lambda win: mask[win.toslices()], grid, window, unit_area, min_area)


def crosses_an_edge(geom, grid, window):
    """Whether a polygon's pixels lie in more than one window."""
    left, bottom, right, top = geom.bounds
    inverse = ~grid.transform
    (c0, r0), (c1, r1) = inverse @ (left, top), inverse @ (right, bottom)
    c0, c1, r0, r1 = round(min(c0, c1)), round(max(c0, c1)), round(min(r0, r1)), round(max(r0, r1))
    return c0 // window != (c1 - 1) // window or r0 // window != (r1 - 1) // window


def assert_same_polygons(mask, grid, window, min_area=0.0):
    """Windowed vs whole grid: same count and order, equal polygons and areas; regions inside one
    window are the very same geometries. Returns (polygons, how many cross window edges)."""
    expected, _, _ = mask_polygons(mask, grid, min_area=min_area)
    got = windowed(mask, grid, window, min_area)
    assert len(got) == len(expected)
    crossing = 0
    for k, (a, b) in enumerate(zip(expected, got)):
        assert b.geom_type == "Polygon" and b.is_valid, k
        assert a.equals(b), k
        if crosses_an_edge(a, grid, window):
            crossing += 1
            assert b.area == pytest.approx(a.area, rel=1e-12, abs=0), k  # vertices listed differently
        else:
            assert a.equals_exact(b, 0) and b.area == a.area, k
    return got, crossing


def blobs(shape, seed, level):
    rng = np.random.default_rng(seed)
    return ndimage.gaussian_filter(rng.random(shape), 3) > level


@pytest.mark.parametrize("seed, level", [(0, 0.5), (1, 0.505), (2, 0.495)])
def test_random_blobs_give_the_whole_grid_polygons(seed, level):
    mask = blobs((700, 900), seed, level)  # not a multiple of 256: narrower windows right and below
    grid = grid_of(mask)
    polygons, crossing = assert_same_polygons(mask, grid, 256)
    assert len(polygons) > 100 and crossing >= 5  # 0.495: one region over most windows
    # min_area on the merged region (pixels summed over its pieces), not on each piece
    areas = np.array([g.area for g in polygons])
    min_area = float(np.median(areas))
    kept, crossing_kept = assert_same_polygons(mask, grid, 256, min_area=min_area)
    assert 0 < len(kept) < len(polygons) and crossing_kept >= 5


def test_handmade_shapes_across_window_edges_and_corners():
    mask = np.zeros((700, 900), bool)

    def put(r0, r1, c0, c1):
        mask[r0:r1, c0:c1] = True

    put(240, 270, 240, 275)           # a box across the corner (256, 256): 4 pieces
    put(20, 30, 600, 610)             # first pixel in window (0, 2) ...
    put(20, 400, 600, 603)            # ... down into window (1, 2): one region
    put(100, 110, 400, 522)           # a U opening to the left: its arms are 2 pieces in window (0, 1),
    put(150, 160, 400, 522)           # the base with the arm ends 1 piece in window (0, 2)
    put(100, 160, 512, 522)
    put(200, 300, 100, 110)           # a U opening upwards whose arms (2 pieces in window (0, 0))
    put(200, 300, 150, 160)           # meet only in window (1, 0)
    put(290, 300, 100, 160)
    put(480, 560, 480, 560)           # a square ring around the corner (512, 512): its hole in 4 windows
    mask[490:550, 490:550] = False
    put(255, 257, 700, 701)           # two single pixels across the row edge 256
    put(100, 101, 767, 769)           # two single pixels across the column edge 768
    # diagonal neighbours only, both ways, across a row edge, a column edge, a corner: 2 regions each
    mask[255, 400] = mask[256, 401] = mask[255, 451] = mask[256, 450] = True
    mask[50, 255] = mask[51, 256] = mask[60, 256] = mask[61, 255] = True
    mask[511, 255] = mask[512, 256] = mask[255, 512] = mask[256, 511] = True
    put(690, 700, 880, 900)           # in the last, partial window
    put(600, 700, 767, 769)           # across the column edge 768, down to the last row
    grid = grid_of(mask)
    polygons, crossing = assert_same_polygons(mask, grid, 256)
    assert len(polygons) == ndimage.label(mask)[1] == 21 and crossing == 8
    assert sum(len(g.interiors) for g in polygons) == 1  # the ring keeps its hole
    pixel = abs(JOPLIN_TRANSFORM.a * JOPLIN_TRANSFORM.e)
    sizes = [round(g.area / pixel) for g in polygons]
    assert sizes.count(1) == 12 and sizes.count(2) == 2  # pixel pairs across edges merged, diagonals not
    # min_area on whole regions: every piece of the two U's is < 2000 px, the U's are 2840 and 2400 px
    kept, _ = assert_same_polygons(mask, grid, 256, min_area=2000 * pixel)
    assert sorted(round(g.area / pixel) for g in kept) == [2400, 2800, 2840]
    # windows on a grid without CRS (pixel units), and a window larger than the grid
    assert_same_polygons(mask, grid_of(mask, crs=None, transform=Affine.identity()), 256, min_area=20)
    one, crossing = assert_same_polygons(mask, grid, 1024)
    assert crossing == 0 and all(a.equals_exact(b, 0) for a, b in zip(one, windowed(mask, grid, 4096)))


def test_order_follows_the_first_pixel_not_the_window():
    """A region whose first pixel lies in a later window than its other pieces comes first."""
    mask = np.zeros((600, 600), bool)
    mask[10:20, 300:310] = True     # first pixel (10, 300) in window (0, 1) ...
    mask[10:300, 300:302] = True
    mask[280:290, 100:302] = True   # ... reaching back into window (0, 0) and down to (1, 0)
    mask[50:60, 50:60] = True       # first pixel (50, 50) in window (0, 0)
    mask[260:270, 20:30] = True     # first pixel (260, 20) in window (1, 0)
    grid = grid_of(mask)
    polygons, crossing = assert_same_polygons(mask, grid, 256)
    assert len(polygons) == 3 and crossing == 1
    assert polygons[0].area > 10 * polygons[1].area  # the long region, then the two squares


def test_merging_is_needed():
    """Guard for the tests above: without the merging across edges the counts would differ."""
    mask = blobs((700, 900), 0, 0.5)
    grid = grid_of(mask)
    pieces = 0
    for r in range(0, 700, 256):
        for c in range(0, 900, 256):
            pieces += ndimage.label(mask[r:r + 256, c:c + 256])[1]
    assert pieces > len(windowed(mask, grid, 256)) + 10


# ----------------------------------------------------------------------------- run_damage

def building_blocks(rows, cols):
    """Blocks of 'building' every 80 x 60 px (those at rows 240 and 480, columns 240 and 480 across
    256-px window edges), pairs of them joined by a 1-px bridge."""
    inside = (rows % 80 < 36) & (cols % 60 < 40)
    return inside | ((rows % 80 == 10) & (cols % 120 < 100))


def fake_buildings(monkeypatch, building_fn):
    """The fake engine of test_change_windows, with 'building' (2) where building_fn, else background (1),
    as the pre land-cover map."""
    fake_engine(monkeypatch, rect_change)
    inner = change_module.run_inference

    def fake_run_inference(inputs, predictor, output_path, classes, *, grid, outputs, **kw):
        if len(inputs) == 2 or Path(inputs[0].path).stem != "pre":
            return inner(inputs, predictor, output_path, classes, grid=grid, outputs=outputs, **kw)
        written = outputs.path_for(output_path)
        writer = StripWriter(written, grid, nodata=0, final_name=output_path)
        cols = np.arange(grid.width)[None, :]
        for r0 in range(0, grid.height, 64):
            rows = np.arange(r0, min(r0 + 64, grid.height))[:, None]
            writer.write(np.where(building_fn(rows, cols), 2, 1).astype(np.uint8))
        writer.close()
        return EngineResult(Path(output_path), written, None, None, grid, Window(0, 0, grid.width, grid.height),
                            "cpu", 0, 0.0, nodata=0)

    monkeypatch.setattr(change_module, "run_inference", fake_run_inference)


def run_localised(pre, post, out, **params):
    return run_damage(dict({"pre": pre, "post": post, "output_dir": str(out), "landcover_model": "fake",
                            "min_coverage": 0.0, "min_building_area": 30}, **params))


def layer(path):
    with fiona.open(path) as src:
        return [(shapely.geometry.shape(f.geometry), dict(f.properties)) for f in src]


def read(path):
    with rasterio.open(path) as src:
        return src.read(1)


def assert_same_outputs(a, b, folder_a, folder_b, name):
    assert outcome_metrics(a) == outcome_metrics(b)
    one, many = layer(folder_a / f"{name}.gpkg"), layer(folder_b / f"{name}.gpkg")
    assert len(one) == len(many) == a["metrics"]["buildings_assessed"] > 0
    for (g1, p1), (g2, p2) in zip(one, many):
        assert p1 == p2
        assert g1.equals(g2) and g2.area == pytest.approx(g1.area, rel=1e-12, abs=0)
    for suffix in (".tif", "_change_probability.tif", "_pixels.tif", "_localised_buildings_classes.tif"):
        assert np.array_equal(read(folder_a / f"{name}{suffix}"), read(folder_b / f"{name}{suffix}")), suffix
    return one


def test_run_damage_localised_buildings_do_not_depend_on_the_window(tmp_path, monkeypatch):
    fake_buildings(monkeypatch, building_blocks)
    pre, post = make_pair(tmp_path / "in", 600, 700)
    one = run_localised(pre, post, tmp_path / "one")                 # one 4096-px window
    many = run_localised(pre, post, tmp_path / "many", window=256)   # 3 x 3 windows
    buildings = assert_same_outputs(one, many, tmp_path / "one", tmp_path / "many", "damage")
    grid = Grid(rasterio.crs.CRS.from_epsg(32615), from_origin(500000, 4100000, 0.5, 0.5), 700, 600)  # make_pair's
    assert sum(crosses_an_edge(g, grid, 256) for g, _ in buildings) > 10
    assert len(set(p["damage"] for _, p in buildings)) > 1
    # the same polygons as mask_polygons on the whole grid
    mask = building_blocks(*np.mgrid[0:600, 0:700])
    expected, _, _ = mask_polygons(mask, grid, min_area=30)
    assert len(expected) == len(buildings)
    assert all(a.equals(g) for a, (g, _) in zip(expected, buildings))


def old_localize_buildings(pre, grid, outputs, path, landcover_model, *, aoi, tile_size, overlap, batch_size,
                           device, min_area, progress, window=0):
    """The former whole-grid localisation (whole class raster + mask_polygons), as reference."""
    classes, meta, _ = predict_landcover(pre, grid, outputs, path, landcover_model, aoi=aoi, tile_size=tile_size,
                                         overlap=overlap, batch_size=batch_size, device=device,
                                         progress=progress, what="pre")
    geoms, _, _ = mask_polygons(classes == 2, grid, min_area=min_area)
    return geoms, meta


def test_localisation_memory_is_set_by_the_window_not_the_raster(tmp_path, monkeypatch):
    fake_buildings(monkeypatch, building_blocks)

    def peak(height, name):
        pre, post = make_pair(tmp_path / name, height, 512)
        return traced_peak(lambda: run_localised(pre, post, tmp_path / f"out_{name}", window=256))

    peak(256, "warm-up")  # one-time allocations (lazy imports, GDAL / fiona drivers) out of the way
    peak_short, short = peak(512, "short")
    peak_tall, tall = peak(2048, "tall")
    assert tall["metrics"]["buildings_assessed"] > 3.5 * short["metrics"]["buildings_assessed"] > 0
    # 4x the pixels (0.8 M more): the whole-grid class raster, mask and int32 labels (and their
    # temporaries) add about 10 bytes a pixel (measured: 2.9 -> 11.3 MB; windowed: 2.6 -> 2.7 MB)
    assert peak_tall < 1.3 * peak_short + 1_000_000, (peak_short, peak_tall)

    monkeypatch.setattr(damage_module, "localize_buildings", old_localize_buildings)
    old_short, old_result = peak(512, "old-short")
    old_tall, _ = peak(2048, "old-tall")
    assert outcome_metrics(old_result) == outcome_metrics(short)
    assert old_tall > 1.3 * old_short + 1_000_000, (old_short, old_tall)  # the bound would catch it


@pytest.fixture(scope="module")
def patchy_building_model(building_model_factory):
    """Nudged towards 'building' just enough that on the Joplin AOI it finds a few dozen building
    patches (about a quarter of the pixels), not one everywhere."""
    return building_model_factory(0.15, "building_patches")


def test_joplin_localised_buildings_do_not_depend_on_the_window(data_dir, tmp_path, patchy_building_model):
    joplin = data_dir / "joplin"
    params = {"pre": str(joplin / "pre" / "tile_337-9136.tif"), "post": str(joplin / "post" / "tile_31500-5137.tif"),
              "aoi": JOPLIN_AOI, "landcover_model": str(patchy_building_model), "min_coverage": 0.0}
    one = run_damage(dict(params, output_dir=str(tmp_path / "one"), window=4096))  # larger than the grid
    many = run_damage(dict(params, output_dir=str(tmp_path / "many"), window=256))
    size = one["metrics"]["grid"]
    assert 256 < size["width"] < 4096 and 256 < size["height"] < 4096  # 2 x 2 windows of 256 px
    buildings = assert_same_outputs(one, many, tmp_path / "one", tmp_path / "many", "damage")
    assert one["metrics"]["buildings_source"] == "landcover model" and len(buildings) > 10
    assert len(set(p["damage"] for _, p in buildings)) > 1
    with rasterio.open(tmp_path / "one" / "damage.tif") as src:
        grid = Grid(src.crs, src.transform, src.width, src.height)
    assert sum(crosses_an_edge(g, grid, 256) for g, _ in buildings) > 0  # the merging was exercised
