"""Quick-look PNG of a class raster: paletted with the class colours, downsampled, nodata transparent."""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
import rasterio
from PIL import Image
from rasterio.enums import Resampling
from rasterio.errors import NotGeoreferencedWarning

from backend.errors import OutputError
from backend.io.atomic import describe_os_error
from backend.io.writer import hex_to_rgba

__all__ = ["write_preview"]


def write_preview(raster_path, png_path, classes: Sequence[dict], max_size: int = 1024, final_name=None) -> Path:
    """Nearest-neighbour downsample (reads overviews when present) so the PNG's longest side <= max_size."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        src = rasterio.open(raster_path)
    with src:
        scale = max(1.0, max(src.width, src.height) / max_size)
        shape = (max(1, round(src.height / scale)), max(1, round(src.width / scale)))
        data = src.read(1, out_shape=shape, resampling=Resampling.nearest)
    palette = np.zeros((256, 4), np.uint8)
    for c in classes:
        palette[int(c["value"])] = hex_to_rgba(c["color"])
    # Paletted, fast zlib level: 6 ms for a 1024² preview against 50-80 ms as RGBA at the default level,
    # and a smaller file (the class values index the palette; alpha comes from the tRNS chunk)
    image = Image.fromarray(np.ascontiguousarray(data, np.uint8), mode="P")
    image.putpalette(palette[:, :3].ravel().tolist())
    try:
        image.save(png_path, format="PNG", transparency=bytes(palette[:, 3]), compress_level=1)
    except OSError as exc:
        raise OutputError(f"could not write {final_name or png_path}: {describe_os_error(exc)}") from None
    return Path(png_path)
