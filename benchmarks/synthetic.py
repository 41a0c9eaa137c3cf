"""Synthetic test rasters generated on the fly (row strip by row strip: flat memory even at 20k x 20k)."""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional

import numpy as np
import rasterio
from rasterio.transform import from_origin


def make_test_raster(path, size: int, bands: int = 3, seed: int = 0, height: int | None = None,
                     footprint: Optional[Callable[[np.ndarray, np.ndarray], np.ndarray]] = None) -> Path:
    """A size (wide) x height (default: size) uint8 GeoTIFF (EPSG:32633, 0.5 m, 512 tiles, deflate) with an
    image-like texture: blocky fields plus noise, so it compresses and decodes like real imagery rather than pure noise.
    footprint(rows, cols) -> bool: where the image has data; elsewhere 0, the file's nodata value."""
    path = Path(path)
    width, height = size, height or size
    rng = np.random.default_rng(seed)
    fields = rng.integers(30, 220, (bands, 64, 64), dtype=np.uint8)
    noise = rng.integers(0, 24, (bands, 512, 512), dtype=np.uint8)
    with rasterio.open(path, "w", driver="GTiff", width=width, height=height, count=bands, dtype="uint8",
                       crs="EPSG:32633", transform=from_origin(400000.0, 5000000.0, 0.5, 0.5), tiled=True,
                       blockxsize=512, blockysize=512, compress="deflate", zlevel=1, BIGTIFF="IF_SAFER",
                       nodata=0 if footprint else None) as ds:
        for row in range(0, height, 512):
            h = min(512, height - row)
            # 8-pixel blocks of field colours, shifted per strip so strips differ
            field_strip = np.repeat(np.repeat(np.roll(fields, row // 512, axis=2), 8, axis=1), 8, axis=2)
            strip = np.tile(field_strip, (1, 1, -(-width // 512)))[:, :h, :width]
            strip = strip + np.tile(noise, (1, 1, -(-width // 512)))[:, :h, :width]
            if footprint is not None:
                rows, cols = np.mgrid[row:row + h, 0:width]
                strip[:, ~footprint(rows, cols)] = 0
            ds.write(strip, window=rasterio.windows.Window(0, row, width, h))
    return path


def rotated_square(size: int, degrees: float) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    """footprint for make_test_raster: the largest square turned by `degrees` that fits a size x size
    raster, as a tilted scene looks once warped north-up (at 20 degrees, 61 % of the raster)."""
    a = np.radians(degrees)
    half = size / (np.cos(a) + np.sin(a)) / 2
    centre = size / 2

    def inside(rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        y, x = rows + 0.5 - centre, cols + 0.5 - centre
        return (np.abs(x * np.cos(a) + y * np.sin(a)) <= half) & (np.abs(-x * np.sin(a) + y * np.cos(a)) <= half)

    return inside
