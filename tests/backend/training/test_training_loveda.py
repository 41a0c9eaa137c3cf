import numpy as np
import rasterio

from backend.datasets.loveda import LOVEDA_CRS, read_loveda_tile


def test_georeferenced_tiles_keep_pixels_and_get_distinct_origins(data_dir, loveda_tifs):
    origins = set()
    for tile_id, (image_tif, mask_tif) in loveda_tifs.items():
        image, mask = read_loveda_tile(data_dir, tile_id)
        with rasterio.open(image_tif) as src:
            assert src.crs.to_string() == LOVEDA_CRS
            assert src.res == (0.3, 0.3)
            assert src.count == 3
            np.testing.assert_array_equal(src.read(), image)
            origins.add((src.transform.c, src.transform.f))
        with rasterio.open(mask_tif) as src:
            assert src.nodata == 0
            np.testing.assert_array_equal(src.read(1), mask)
            assert src.colormap(1)[2][:3] == (255, 0, 0)   # building red, from the LoveDA palette
    assert len(origins) == len(loveda_tifs) == 3


def test_masks_hold_loveda_codes(data_dir):
    _, mask = read_loveda_tile(data_dir, "0")
    assert set(np.unique(mask)) <= set(range(8))
