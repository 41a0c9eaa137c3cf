"""Synthetic raster factory for the raster I/O tests."""
import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin


@pytest.fixture
def make_raster(tmp_path):
    """make_raster(data[C,H,W], name=..., crs=..., transform=..., nodata=..., **profile) -> path."""
    def _make(data, name="r.tif", crs="EPSG:32633", transform=None, nodata=None, **profile):
        data = np.asarray(data)
        if data.ndim == 2:
            data = data[None]
        path = tmp_path / name
        transform = transform or from_origin(500000.0, 4000000.0, 2.0, 2.0)
        with rasterio.open(path, "w", driver="GTiff", width=data.shape[2], height=data.shape[1],
                           count=data.shape[0], dtype=data.dtype, crs=crs, transform=transform,
                           nodata=nodata, **profile) as ds:
            ds.write(data)
        return path
    return _make
