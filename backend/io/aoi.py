"""Area of interest: a polygon (GeoJSON + CRS) that restricts the processed window and masks outside it."""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Optional

import numpy as np
import rasterio.features
import rasterio.warp
import rasterio.windows
import shapely
import shapely.geometry
from rasterio.windows import Window

from backend.errors import InputError
from backend.io.raster import Grid, parse_crs

__all__ = ["Aoi", "parse_aoi", "aoi_window", "aoi_mask"]


@dataclass(frozen=True)
class Aoi:
    """AOI geometry already transformed into the grid's CRS (a shapely geometry)."""

    geometry: object
    source: dict

    @property
    def geojson(self) -> dict:
        return shapely.geometry.mapping(self.geometry)


def _geometry_of(obj) -> dict:
    """Accept a GeoJSON geometry, Feature or FeatureCollection (or a JSON string of one)."""
    if isinstance(obj, str):
        try:
            obj = json.loads(obj)
        except ValueError:
            raise InputError("AOI geometry is not valid GeoJSON text") from None
    if not isinstance(obj, dict) or "type" not in obj:
        raise InputError("AOI geometry must be a GeoJSON object with a 'type'")
    kind = obj["type"]
    if kind == "Feature":
        return _geometry_of(obj.get("geometry"))
    if kind == "FeatureCollection":
        parts = [_geometry_of(f) for f in obj.get("features", [])]
        if not parts:
            raise InputError("AOI feature collection is empty")
        return {"type": "GeometryCollection", "geometries": parts}
    return obj


def parse_aoi(aoi: Optional[dict], grid: Grid) -> Optional[Aoi]:
    """{"geometry": GeoJSON, "crs": "EPSG:xxxx" | WKT | None} -> Aoi in the grid's CRS (None if no AOI).

    A missing AOI CRS means "same CRS as the raster" (for pixel grids: pixel coordinates).
    """
    if not aoi:
        return None
    geom = _geometry_of(aoi.get("geometry") if "geometry" in aoi and "type" not in aoi else aoi)
    aoi_crs = parse_crs(aoi.get("crs")) if isinstance(aoi, dict) and "type" not in aoi else None
    if aoi_crs is not None and grid.crs is None:
        raise InputError("AOI has a CRS but the raster is not georeferenced; give the AOI in pixel coordinates "
                         "without a CRS")
    if aoi_crs is not None and aoi_crs != grid.crs:
        try:
            geom = rasterio.warp.transform_geom(aoi_crs, grid.crs, geom)
        except Exception as exc:
            raise InputError(f"cannot transform the AOI from {aoi_crs} to the raster CRS ({exc})") from None
    try:
        shape = shapely.geometry.shape(geom)
    except Exception as exc:
        raise InputError(f"AOI geometry is invalid ({exc})") from None
    if not shape.is_valid:
        shape = shapely.make_valid(shape)
    polygons = [g for g in getattr(shape, "geoms", [shape]) if g.geom_type in ("Polygon", "MultiPolygon")]
    if not polygons or all(p.is_empty for p in polygons):
        raise InputError("AOI must contain a polygon with a non-zero area")
    shape = shapely.union_all(polygons)
    return Aoi(shape, dict(aoi))


def aoi_window(grid: Grid, aoi: Optional[Aoi], name: str = "the raster") -> Window:
    """The smallest whole-pixel window of `grid` holding the AOI (the whole grid without AOI)."""
    full = Window(0, 0, grid.width, grid.height)
    if aoi is None:
        return full
    left, bottom, right, top = grid.bounds
    if not aoi.geometry.intersects(shapely.geometry.box(left, bottom, right, top)):
        raise InputError(f"AOI does not overlap {name} (AOI bounds {tuple(round(v, 6) for v in aoi.geometry.bounds)}, "
                         f"raster bounds {tuple(round(v, 6) for v in grid.bounds)})")
    win = rasterio.windows.from_bounds(*aoi.geometry.bounds, transform=grid.transform)
    col0, row0 = math.floor(win.col_off + 1e-9), math.floor(win.row_off + 1e-9)
    col1 = math.ceil(win.col_off + win.width - 1e-9)
    row1 = math.ceil(win.row_off + win.height - 1e-9)
    col0, row0 = max(col0, 0), max(row0, 0)
    col1, row1 = min(col1, grid.width), min(row1, grid.height)
    if col1 <= col0 or row1 <= row0:
        raise InputError(f"AOI does not overlap {name}")
    return Window(col0, row0, col1 - col0, row1 - row0)


def aoi_mask(grid: Grid, aoi: Optional[Aoi], window: Window) -> Optional[np.ndarray]:
    """bool [h, w]: True inside the AOI (pixel centres) for a window of `grid`; None without AOI."""
    if aoi is None:
        return None
    return rasterio.features.geometry_mask([aoi.geojson], out_shape=(int(window.height), int(window.width)),
                                           transform=grid.window_transform(window), invert=True)
