"""Read a freshly written GeoTIFF back before it is published.

GDAL writes a GeoTIFF's directory (tile offsets) and some blocks only when the dataset is closed, and a
write error at that moment (disk full, file size limit, failing drive) is printed by libtiff but not
raised by rasterio's close. The file then looks finished and is not. Decoding every block of every band
and overview level is the one check that catches it; it costs seconds per hundreds of megapixels, next to
minutes of inference.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import rasterio
from rasterio.windows import Window

__all__ = ["raster_read_back_problem", "GEOTIFF_SUFFIXES"]

# path -> (size, mtime_ns) of files that read back whole: a writer checks its file when it closes it
# (before a pipeline reads it again), and the publishing step need not decode it a second time.
_verified: dict = {}

GEOTIFF_SUFFIXES = (".tif", ".tiff")
_STRIP_ROWS = 512  # one block row of the writers' 512 px tiles: memory stays at a strip per band


def _decode_all(path: Path, overview_level: Optional[int] = None) -> None:
    kwargs = {} if overview_level is None else {"overview_level": overview_level}
    with rasterio.open(path, **kwargs) as src:
        for band in range(1, src.count + 1):
            for row in range(0, src.height, _STRIP_ROWS):
                src.read(band, window=Window(0, row, src.width, min(_STRIP_ROWS, src.height - row)))


def raster_read_back_problem(path) -> Optional[str]:
    """None when every block of the GeoTIFF at `path` (all bands, all overview levels) decodes; else what failed."""
    path = Path(path)
    try:
        stat = path.stat()
        if _verified.get(str(path)) == (stat.st_size, stat.st_mtime_ns):
            return None
        _decode_all(path)
        with rasterio.open(path) as src:
            levels = len(src.overviews(1)) if src.count else 0
        for level in range(levels):
            _decode_all(path, level)
    except Exception as exc:  # any failure to decode means the file is not what was written
        text = " ".join(str(exc).split())
        cause = exc.__cause__ or exc.__context__
        if cause is not None and "see previous exception" in text.lower():
            text = " ".join(str(cause).split())
        return text or type(exc).__name__
    _verified[str(path)] = (stat.st_size, stat.st_mtime_ns)
    if len(_verified) > 4096:  # a long-lived server: forget the oldest
        _verified.pop(next(iter(_verified)))
    return None
