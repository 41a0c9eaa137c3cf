"""AOI windows and masks; tile layout, blending weights and edge padding."""
import numpy as np
import pytest
from rasterio.transform import from_origin
from rasterio.windows import Window

from backend.errors import InputError
from backend.io.aoi import aoi_mask, aoi_window, parse_aoi
from backend.io.raster import Grid, parse_crs
from backend.io.tiling import TileLayout, blend_weights, pad_to, plan_panels, plan_tiles

GRID = Grid(parse_crs("EPSG:32633"), from_origin(500000.0, 4000000.0, 2.0, 2.0), 300, 200)


def _square(x0, y0, x1, y1):
    return {"type": "Polygon", "coordinates": [[[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]]}


def test_aoi_restricts_window_and_masks_outside_polygon():
    # A triangle over columns 50..150 and rows 20..120 of the grid.
    tri = {"type": "Polygon", "coordinates": [[[500100.0, 3999960.0], [500300.0, 3999960.0],
                                               [500100.0, 3999760.0], [500100.0, 3999960.0]]]}
    aoi = parse_aoi({"geometry": tri, "crs": "EPSG:32633"}, GRID)
    win = aoi_window(GRID, aoi)
    assert (win.col_off, win.row_off, win.width, win.height) == (50, 20, 100, 100)
    mask = aoi_mask(GRID, aoi, win)
    assert mask.shape == (100, 100)
    assert mask[2, 2] and not mask[98, 98]  # inside near the right angle, outside past the hypotenuse
    assert mask.mean() == pytest.approx(0.5, abs=0.02)


def test_aoi_in_another_crs_is_transformed():
    from rasterio.warp import transform_geom
    geom = transform_geom("EPSG:32633", "EPSG:4326", _square(500100.0, 3999800.0, 500200.0, 3999900.0))
    aoi = parse_aoi({"geometry": {"type": "Feature", "geometry": geom, "properties": {}}, "crs": "EPSG:4326"}, GRID)
    win = aoi_window(GRID, aoi)
    assert abs(win.col_off - 50) <= 1 and abs(win.row_off - 50) <= 1
    assert abs(win.width - 50) <= 2 and abs(win.height - 50) <= 2


def test_aoi_outside_raster_is_an_error():
    aoi = parse_aoi({"geometry": _square(0, 0, 10, 10), "crs": "EPSG:32633"}, GRID)
    with pytest.raises(InputError, match="AOI does not overlap"):
        aoi_window(GRID, aoi)


def test_aoi_partly_outside_is_clipped_to_the_raster():
    aoi = parse_aoi({"geometry": _square(499000.0, 3999000.0, 500020.0, 4000010.0), "crs": "EPSG:32633"}, GRID)
    win = aoi_window(GRID, aoi)
    assert (win.col_off, win.row_off, win.width, win.height) == (0, 0, 10, 200)


@pytest.mark.parametrize("geometry", [{"type": "Point", "coordinates": [500100.0, 3999900.0]},
                                      {"type": "Nonsense"}, "not json"])
def test_aoi_without_area_is_rejected(geometry):
    with pytest.raises(InputError, match="AOI"):
        parse_aoi({"geometry": geometry, "crs": "EPSG:32633"}, GRID)


def test_no_aoi_means_whole_grid():
    assert parse_aoi(None, GRID) is None
    assert aoi_window(GRID, None) == Window(0, 0, 300, 200)
    assert aoi_mask(GRID, None, Window(0, 0, 5, 5)) is None


@pytest.mark.parametrize("h,w,tile,overlap", [(1000, 1300, 256, 32), (512, 512, 512, 64), (513, 77, 128, 64),
                                              (20000, 20000, 512, 64)])
def test_tiles_cover_the_window_with_a_regular_stride(h, w, tile, overlap):
    L = plan_tiles(h, w, tile, overlap)
    last_r, last_c = L.tile_origin(L.rows - 1, L.cols - 1)
    assert last_r + L.tile >= h and last_c + L.tile >= w  # fully covered
    assert last_r < h and last_c < w  # no tile lies entirely outside
    if L.rows > 1:
        assert L.tile_origin(1, 0)[0] - L.tile_origin(0, 0)[0] == L.tile - L.overlap


def test_small_window_gets_one_shrunk_tile():
    L = plan_tiles(100, 60, 512, 64)
    assert (L.tile, L.rows, L.cols, L.overlap) == (128, 1, 1, 0)


@pytest.mark.parametrize("tile,overlap", [(100, 0), (16, 0), (256, 200), (256, -1)])
def test_bad_tile_parameters_are_rejected(tile, overlap):
    with pytest.raises(InputError):
        plan_tiles(1000, 1000, tile, overlap)


def test_blend_weights_taper_in_the_overlap_and_never_vanish():
    w = blend_weights(64, 16)
    assert w.shape == (64, 64) and w.dtype == np.float32
    assert w.min() > 0 and w[32, 32] == 1.0
    assert np.allclose(w, w.T) and np.allclose(w, w[::-1, ::-1])
    assert w[0, 32] < w[8, 32] < w[16, 32]
    # Two overlapping tiles' ramps always sum to a constant across the overlap (no seam bump).
    profile = w[32]
    # tile A's right margin (positions 48..63) lies over tile B's left margin (0..15)
    assert np.allclose(profile[48:] + profile[:16], 1.0)
    assert np.allclose(blend_weights(64, 0), 1.0)


def test_pad_to_reflects_edge_tiles():
    a = np.arange(12, dtype=np.float32).reshape(1, 3, 4)
    p = pad_to(a, 5, 6)
    assert p.shape == (1, 5, 6)
    np.testing.assert_array_equal(p[:, :3, :4], a)
    np.testing.assert_array_equal(p[0, 3, :4], a[0, 1])  # reflect, not repeat
    np.testing.assert_array_equal(p[0, :3, 4], a[0, :, 2])
    tiny = np.ones((2, 1, 1), np.float32)
    assert pad_to(tiny, 32, 32).shape == (2, 32, 32)


def test_tile_is_fitted_to_the_window_to_save_compute():
    fitted = plan_tiles(1024, 1024, 512, 64)
    fixed = plan_tiles(1024, 1024, 512, 64, shrink=False)
    assert (fixed.tile, fixed.n_tiles) == (512, 9)  # the last row/column of tiles would be mostly padding
    assert fitted.tile % 32 == 0 and 256 <= fitted.tile < 512 and fitted.overlap == 64
    assert fitted.n_tiles * fitted.tile ** 2 < 0.6 * fixed.n_tiles * fixed.tile ** 2
    last = fitted.tile_origin(fitted.rows - 1, fitted.cols - 1)
    assert last[0] + fitted.tile >= 1024 and last[1] + fitted.tile >= 1024


@pytest.mark.parametrize("width,tile,overlap", [(20480, 512, 64), (9000, 384, 64), (12345, 256, 50), (8193, 512, 0)])
def test_column_panels_cover_the_width_with_every_touching_tile(width, tile, overlap):
    L = TileLayout(1000, width, tile, overlap)
    panels = plan_panels(L, 4096)
    assert panels[0].start == 0 and panels[-1].stop == width
    assert all(a.stop == b.start for a, b in zip(panels, panels[1:]))
    assert all(p.start % 512 == 0 for p in panels) and all(p.stop - p.start <= 4096 + 2 * 512 for p in panels)
    for p in panels:
        touching = [j for j in range(L.cols) if j * L.stride < p.stop and j * L.stride + tile > p.start]
        assert (p.first, p.last) == (touching[0], touching[-1])
    extra = sum(p.tile_columns for p in panels) - L.cols
    assert extra <= 2 * (len(panels) - 1)
    if overlap == 64 and tile == 512:  # boundaries found where one tile column covers them
        assert extra == len(panels) - 1


def test_narrow_rasters_or_panel_width_zero_give_one_panel():
    L = TileLayout(1000, 20480, 512, 64)
    assert len(plan_panels(L, 0)) == 1 and plan_panels(L, 0)[0].tile_columns == L.cols
    assert len(plan_panels(TileLayout(1000, 8000, 512, 64), 8192)) == 1
    assert len(plan_panels(L, 8192)) == 3
