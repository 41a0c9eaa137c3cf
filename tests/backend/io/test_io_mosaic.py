"""Virtual mosaics of raster tiles (real Joplin tiles and synthetic ones with a gap)."""
import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin
from rasterio.windows import Window, from_bounds

from backend.errors import InputError
from backend.io.mosaic import build_mosaic_vrt
from backend.io.raster import AlignedRaster


def test_joplin_tiles_mosaic_pixel_exact(data_dir, tmp_path):
    tiles = sorted((data_dir / "joplin" / "pre").glob("*.tif"))
    vrt = build_mosaic_vrt(tiles, tmp_path / "m.vrt")
    with rasterio.open(vrt) as mosaic:
        assert (mosaic.width, mosaic.height) == (2048, 2048)
        for tile in tiles:
            with rasterio.open(tile) as t:
                win = from_bounds(*t.bounds, transform=mosaic.transform).round_offsets().round_lengths()
                np.testing.assert_array_equal(mosaic.read(window=win), t.read())
                assert mosaic.crs == t.crs


def test_gap_between_tiles_is_masked(make_raster, tmp_path):
    a = make_raster(np.full((3, 10, 10), 5, np.uint8), name="a.tif", transform=from_origin(0, 100, 1, 1))
    b = make_raster(np.full((3, 10, 10), 0, np.uint8), name="b.tif", transform=from_origin(20, 100, 1, 1))
    vrt = build_mosaic_vrt([a, b], tmp_path / "m.vrt")
    with AlignedRaster(vrt) as src:
        data, valid = src.read(Window(0, 0, 30, 10))
    assert valid[:, :10].all() and not valid[:, 10:20].any() and valid[:, 20:].all()  # black pixels stay valid
    assert (data[:, :, :10] == 5).all()


def test_tiles_in_different_crs_are_refused(data_dir, tmp_path):
    pre = next((data_dir / "joplin" / "pre").glob("*.tif"))
    post = next((data_dir / "joplin" / "post").glob("*.tif"))
    with pytest.raises(InputError, match="CRS differs"):
        build_mosaic_vrt([pre, post], tmp_path / "m.vrt")
