"""Virtual mosaics: several raster tiles of one scene read as one raster through a GDAL VRT file.

Nothing is copied: the VRT only lists where each tile sits. Pixels not covered by any tile are
masked (a dataset mask built from the tile footprints), so gaps become nodata, not black.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence
from xml.sax.saxutils import escape, quoteattr

from backend.errors import InputError
from backend.io.raster import open_raster

__all__ = ["build_mosaic_vrt"]

_GDAL_TYPES = {"uint8": "Byte", "int8": "Int8", "uint16": "UInt16", "int16": "Int16", "uint32": "UInt32",
               "int32": "Int32", "float32": "Float32", "float64": "Float64"}


def _source(tag: str, path: str, band: int, size: tuple, offset: tuple, extra: str = "") -> str:
    w, h = size
    x, y = offset
    return (f"<{tag}><SourceFilename relativeToVRT=\"0\">{escape(path)}</SourceFilename>"
            f"<SourceBand>{band}</SourceBand><SrcRect xOff=\"0\" yOff=\"0\" xSize=\"{w}\" ySize=\"{h}\"/>"
            f"<DstRect xOff=\"{x}\" yOff=\"{y}\" xSize=\"{w}\" ySize=\"{h}\"/>{extra}</{tag}>")


def build_mosaic_vrt(paths: Sequence, dest, allow_pixel_grid: bool = False) -> Path:
    """Write a VRT at `dest` mosaicking `paths` (same CRS, band count, data type and pixel size,
    north-up, on one pixel lattice). Returns `dest`. Mismatches raise InputError naming the file."""
    if not paths:
        raise InputError("no raster tiles to mosaic")
    tiles = []
    for path in paths:
        with open_raster(path, allow_pixel_grid=allow_pixel_grid) as ds:
            tiles.append({"path": str(Path(path).resolve()), "crs": ds.crs, "t": ds.transform, "w": ds.width,
                          "h": ds.height, "count": ds.count, "dtype": ds.dtypes[0], "nodata": ds.nodata,
                          "colorinterp": [ci.name for ci in ds.colorinterp]})
    first = tiles[0]
    rx, ry = first["t"].a, first["t"].e
    for tile in tiles:
        t = tile["t"]
        if tile["crs"] != first["crs"]:
            raise InputError(f"cannot mosaic {tile['path']}: its CRS differs from {first['path']}")
        if (tile["count"], tile["dtype"]) != (first["count"], first["dtype"]):
            raise InputError(f"cannot mosaic {tile['path']}: {tile['count']} band(s) of {tile['dtype']}, but "
                             f"{first['path']} has {first['count']} of {first['dtype']}")
        if t.b or t.d or abs(t.a - rx) > 1e-9 * abs(rx) or abs(t.e - ry) > 1e-9 * abs(ry):
            raise InputError(f"cannot mosaic {tile['path']}: pixel size or rotation differs from {first['path']}")
    left = min(tile["t"].c for tile in tiles)
    top = max(tile["t"].f for tile in tiles) if ry < 0 else min(tile["t"].f for tile in tiles)
    for tile in tiles:
        col, row = (tile["t"].c - left) / rx, (tile["t"].f - top) / ry
        if abs(col - round(col)) > 0.01 or abs(row - round(row)) > 0.01:
            raise InputError(f"cannot mosaic {tile['path']}: it is not on the same pixel lattice as {first['path']}")
        tile["off"] = (int(round(col)), int(round(row)))
    width = max(tile["off"][0] + tile["w"] for tile in tiles)
    height = max(tile["off"][1] + tile["h"] for tile in tiles)
    gdal_type = _GDAL_TYPES.get(first["dtype"])
    if gdal_type is None:
        raise InputError(f"cannot mosaic rasters of data type {first['dtype']}")

    bands = []
    for band in range(1, first["count"] + 1):
        nodata = f"<NoDataValue>{first['nodata']}</NoDataValue>" if first["nodata"] is not None else ""
        interp = first["colorinterp"][band - 1].capitalize()
        sources = "".join(_source("SimpleSource", t["path"], band, (t["w"], t["h"]), t["off"]) for t in tiles)
        bands.append(f"<VRTRasterBand dataType={quoteattr(gdal_type)} band=\"{band}\">{nodata}"
                     f"<ColorInterp>{interp}</ColorInterp>{sources}</VRTRasterBand>")
    mask = ""
    if first["nodata"] is None:
        # Covered pixels -> 255 (any source value * 0 + 255); uncovered stay 0 = masked.
        covered = "".join(_source("ComplexSource", t["path"], 1, (t["w"], t["h"]), t["off"],
                                  "<ScaleOffset>255</ScaleOffset><ScaleRatio>0</ScaleRatio>") for t in tiles)
        mask = f"<MaskBand><VRTRasterBand dataType=\"Byte\">{covered}</VRTRasterBand></MaskBand>"
    srs = f"<SRS>{escape(first['crs'].to_wkt())}</SRS>" if first["crs"] else ""
    geotransform = f"<GeoTransform>{left!r}, {rx!r}, 0, {top!r}, 0, {ry!r}</GeoTransform>"
    dest = Path(dest)
    dest.write_text(f"<VRTDataset rasterXSize=\"{width}\" rasterYSize=\"{height}\">{srs}{geotransform}{mask}"
                    f"{''.join(bands)}</VRTDataset>\n")
    return dest
