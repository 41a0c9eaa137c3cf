"""Raster opening checks, windowed reads, band selection, nodata masks, common-grid alignment."""
import numpy as np
import pytest
import rasterio
from rasterio.enums import ColorInterp, Resampling
from rasterio.warp import reproject
from rasterio.windows import Window

from backend.errors import InputError
from backend.io.raster import AlignedRaster, Grid, make_grid, open_aligned, open_raster, select_bands


def test_missing_file_names_it(tmp_path):
    with pytest.raises(InputError, match="not found.*nope.tif"):
        open_raster(tmp_path / "nope.tif")


def test_text_file_is_not_a_raster(tmp_path):
    bad = tmp_path / "notes.tif"
    bad.write_text("hello, I am not an image")
    with pytest.raises(InputError, match="not a readable raster.*notes.tif"):
        open_raster(bad)


def test_truncated_geotiff_is_reported_corrupt(make_raster, tmp_path):
    rng = np.random.default_rng(1)
    path = make_raster(rng.integers(0, 255, (3, 300, 300), dtype=np.uint8), compress="deflate")
    cut = tmp_path / "cut.tif"
    blob = path.read_bytes()
    cut.write_bytes(blob[: len(blob) // 3])
    with pytest.raises(InputError, match="cut.tif"):
        with AlignedRaster(cut) as src:
            src.read(Window(0, 0, 300, 300))


def test_missing_crs_rejected_unless_pixel_grid_allowed(make_raster):
    path = make_raster(np.zeros((3, 40, 40), np.uint8), crs=None)
    with pytest.raises(InputError, match="no CRS"):
        open_raster(path)
    with open_raster(path, allow_pixel_grid=True) as ds:
        assert ds.width == 40


def test_real_loveda_png_opens_on_pixel_grid(data_dir):
    with AlignedRaster(data_dir / "loveda" / "img_dir" / "0.png", allow_pixel_grid=True, expected_bands=3) as src:
        data, valid = src.read(Window(100, 200, 64, 32))
        assert data.shape == (3, 32, 64) and valid.all()
        assert src.grid.crs is None


def test_band_count_mismatch_names_needed_and_found(make_raster):
    path = make_raster(np.zeros((1, 20, 20), np.uint8))
    with rasterio.open(path) as ds:
        with pytest.raises(InputError, match="needs 3 band.*found 1"):
            select_bands(ds, None, expected=3)
        with pytest.raises(InputError, match=r"band\(s\) \[4\] do not exist"):
            select_bands(ds, [4])


def test_band_selection_is_one_based_and_extra_bands_dropped(make_raster):
    data = np.stack([np.full((10, 10), v, np.uint16) for v in (10, 20, 30, 40)])
    path = make_raster(data)
    with AlignedRaster(path, bands=[4, 2]) as src:
        got, _ = src.read(Window(0, 0, 10, 10))
        assert got[0, 0, 0] == 40 and got[1, 0, 0] == 20
    with AlignedRaster(path, expected_bands=3) as src:  # RGBN for an RGB model: first three
        assert src.bands == [1, 2, 3]


def test_windowed_read_matches_full_read(make_raster):
    rng = np.random.default_rng(0)
    data = rng.integers(0, 255, (3, 700, 900), dtype=np.uint8)
    path = make_raster(data, tiled=True, blockxsize=256, blockysize=256)
    with AlignedRaster(path) as src:
        for win in (Window(0, 0, 900, 700), Window(123, 456, 300, 200), Window(899, 699, 1, 1)):
            got, valid = src.read(win)
            r, c = int(win.row_off), int(win.col_off)
            np.testing.assert_array_equal(got, data[:, r:r + int(win.height), c:c + int(win.width)])
            assert valid.all()


def test_nodata_value_mask(make_raster):
    data = np.full((3, 50, 60), 7, np.int16)
    data[:, 10:20, 30:40] = -9999
    data[1, 0, 0] = -9999  # one band's nodata invalidates the pixel
    with AlignedRaster(make_raster(data, nodata=-9999)) as src:
        _, valid = src.read(Window(0, 0, 60, 50))
    assert not valid[10:20, 30:40].any() and not valid[0, 0]
    assert valid.sum() == 50 * 60 - 100 - 1


def test_nan_nodata_mask(make_raster):
    data = np.ones((1, 20, 20), np.float32)
    data[0, 5, 5] = np.nan
    with AlignedRaster(make_raster(data, nodata=float("nan"))) as src:
        _, valid = src.read(Window(0, 0, 20, 20))
    assert not valid[5, 5] and valid.sum() == 399


def test_alpha_band_mask(make_raster):
    data = np.full((4, 30, 30), 100, np.uint8)
    data[3] = 255
    data[3, :, :10] = 0
    path = make_raster(data, photometric="RGB")
    with rasterio.open(path, "r+") as ds:
        ds.colorinterp = [ColorInterp.red, ColorInterp.green, ColorInterp.blue, ColorInterp.alpha]
    with AlignedRaster(path) as src:
        assert src.bands == [1, 2, 3]
        data_read, valid = src.read(Window(0, 0, 30, 30))
    assert data_read.shape[0] == 3
    assert not valid[:, :10].any() and valid[:, 10:].all()


def test_internal_dataset_mask(make_raster):
    path = make_raster(np.full((3, 32, 32), 9, np.uint8))
    with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True):
        with rasterio.open(path, "r+") as ds:
            mask = np.full((32, 32), 255, np.uint8)
            mask[:16] = 0
            ds.write_mask(mask)
    with AlignedRaster(path) as src:
        _, valid = src.read(Window(0, 0, 32, 32))
    assert not valid[:16].any() and valid[16:].all()


def test_reprojection_matches_an_independent_warp(data_dir):
    """Joplin post (EPSG:4326) read on the pre grid (EPSG:26915) equals a full-raster reproject."""
    pre = data_dir / "joplin" / "pre" / "tile_337-9136.tif"
    post = data_dir / "joplin" / "post" / "tile_31500-5137.tif"
    srcs = open_aligned([{"path": pre}, {"path": post}])
    try:
        grid = srcs[0].grid
        assert srcs[1].grid == grid and srcs[1]._vrt is not None
        win = Window(0, 0, grid.width, grid.height)
        pre_data, pre_valid = srcs[0].read(win)
        post_data, post_valid = srcs[1].read(win)
        assert pre_data.shape == post_data.shape == (3, grid.height, grid.width)
        with rasterio.open(post) as ds:
            expected = np.zeros((3, grid.height, grid.width), np.uint8)
            reproject(ds.read(), expected, src_transform=ds.transform, src_crs=ds.crs,
                      dst_transform=grid.transform, dst_crs=grid.crs, resampling=Resampling.bilinear)
        # Drop a 2-pixel rim of the footprint: the two warpers treat partial edge pixels differently.
        inner = post_valid.copy()
        for axis in (0, 1):
            for shift in (-2, 2):
                inner &= np.roll(post_valid, shift, axis=axis)
        assert inner.sum() > 10_000
        diff = np.abs(post_data.astype(int) - expected.astype(int))[:, inner]
        assert diff.mean() < 1.0 and np.percentile(diff, 99) <= 3
    finally:
        for s in srcs:
            s.close()


def test_joplin_overlap_region_is_valid_and_outside_is_masked(data_dir):
    pre = data_dir / "joplin" / "pre" / "tile_337-9136.tif"
    post = data_dir / "joplin" / "post" / "tile_31500-5137.tif"
    srcs = open_aligned([{"path": pre}, {"path": post}])
    try:
        grid = srcs[0].grid
        _, valid = srcs[1].read(Window(0, 0, grid.width, grid.height))
        with rasterio.open(post) as ds:
            l, b, r, t = rasterio.warp.transform_bounds(ds.crs, grid.crs, *ds.bounds)
        gl, gb, gr, gt = grid.bounds
        expected = max(0, min(r, gr) - max(l, gl)) * max(0, min(t, gt) - max(b, gb)) / ((gr - gl) * (gt - gb))
        assert 0.05 < valid.mean() < 0.999
        assert valid.mean() == pytest.approx(expected, abs=0.05)
    finally:
        for s in srcs:
            s.close()


def test_synthetic_pattern_survives_a_round_trip_through_another_crs(make_raster, tmp_path):
    """A raster warped to EPSG:4326 and read back on the original UTM grid lines up pixel for pixel."""
    yy, xx = np.mgrid[0:256, 0:256]
    pattern = ((xx // 16 + yy // 16) % 2 * 200 + 20).astype(np.uint8)
    utm = make_raster(pattern[None], name="utm.tif")
    with rasterio.open(utm) as ds:
        dst_transform, w, h = rasterio.warp.calculate_default_transform(ds.crs, "EPSG:4326", ds.width, ds.height,
                                                                         *ds.bounds)
        geo = np.zeros((1, h, w), np.uint8)
        reproject(ds.read(), geo, src_transform=ds.transform, src_crs=ds.crs, dst_transform=dst_transform,
                  dst_crs="EPSG:4326", resampling=Resampling.nearest)
    geo_path = make_raster(geo, name="geo.tif", crs="EPSG:4326", transform=dst_transform)
    with rasterio.open(utm) as ds:
        grid = Grid.of(ds)
    with AlignedRaster(geo_path, grid=grid) as src:
        back, valid = src.read(Window(16, 16, 224, 224))
    inner = pattern[16:240, 16:240]
    # Away from the square edges (where resampling blends), values must match exactly: any shift of
    # 3+ pixels would put square interiors on the wrong colour.
    away = ((xx % 16 >= 3) & (xx % 16 <= 12) & (yy % 16 >= 3) & (yy % 16 <= 12))[16:240, 16:240]
    assert valid.all()
    assert (back[0] == inner)[away].mean() > 0.995


def test_given_grid_resamples_to_requested_resolution(make_raster):
    path = make_raster(np.full((1, 100, 100), 50, np.uint8))  # 2 m pixels, 200 m square
    with rasterio.open(path) as ds:
        bounds = ds.bounds
    grid = make_grid("EPSG:32633", 4.0, bounds)
    assert (grid.width, grid.height) == (50, 50)
    with AlignedRaster(path, grid=grid) as src:
        data, valid = src.read(Window(0, 0, 50, 50))
    assert valid.all() and (data == 50).all()


def test_non_overlapping_raster_is_rejected(make_raster):
    a = make_raster(np.zeros((1, 10, 10), np.uint8), name="a.tif")
    b = make_raster(np.zeros((1, 10, 10), np.uint8), name="b.tif",
                    transform=rasterio.transform.from_origin(900000.0, 4000000.0, 2.0, 2.0))
    with pytest.raises(InputError, match="does not overlap.*b.tif"):
        open_aligned([{"path": a}, {"path": b}])
