"""Polygonize class rasters into GeoPackage / ESRI shapefile (class_id, class_name, area_m2).

Large rasters are polygonized window by window (`window` rows x columns at a time), so memory stays
bounded; polygons are cut at window edges (4096 px by default, so this only affects large scenes).
"""
from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Sequence

import fiona
import numpy as np
import rasterio
import rasterio.features
import rasterio.warp
import shapely
import shapely.geometry
from fiona.crs import CRS as FionaCRS
from rasterio.errors import NotGeoreferencedWarning
from rasterio.windows import Window

from backend.errors import CancelledError, InputError, OutputError
from backend.io.atomic import describe_os_error
from backend.io.raster import Grid

__all__ = ["polygonize", "SHAPEFILE_SIDECARS", "DRIVERS"]

SHAPEFILE_SIDECARS = (".shx", ".dbf", ".prj", ".cpg")
DRIVERS = {"gpkg": "GPKG", "shp": "ESRI Shapefile"}
_EQUAL_AREA = "EPSG:6933"  # world cylindrical equal-area: areas in m² for geographic rasters


def _area_function(grid: Grid):
    """geometry (raster CRS) -> area in m², or None for pixel grids."""
    if grid.crs is None:
        return None
    if grid.crs.is_geographic:
        def area(geom):
            projected = rasterio.warp.transform_geom(grid.crs, _EQUAL_AREA, shapely.geometry.mapping(geom))
            return shapely.geometry.shape(projected).area
        return area
    factor = grid.crs.linear_units_factor[1] if grid.crs.linear_units_factor else 1.0
    return lambda geom: geom.area * factor * factor


def _metres_per_unit(grid: Grid) -> float:
    if grid.crs is None:
        return 1.0
    if grid.crs.is_geographic:
        lat = (grid.bounds[1] + grid.bounds[3]) / 2.0
        return 111_320.0 * max(0.1, math.cos(math.radians(lat)))
    return grid.crs.linear_units_factor[1] if grid.crs.linear_units_factor else 1.0


def polygonize(raster_path, out_path, classes: Sequence[dict], *, layer: str = "classes",
               driver: str = "GPKG", min_area: float = 0.0, simplify: float = 0.0,
               window: int = 4096, connectivity: int = 4, progress=None, final_name=None) -> dict:
    """Vectorise a class raster: one polygon per connected region of a class (nodata skipped).

    min_area: drop polygons smaller than this many m² (pixel units for ungeoreferenced rasters).
    simplify: Douglas-Peucker tolerance in metres (pixels for ungeoreferenced rasters); topology of
      each polygon is preserved.
    Returns {"features": n, "dropped": n_small}. Write to a temporary path (AtomicOutputs).
    """
    if driver not in DRIVERS.values():
        raise InputError(f"unsupported vector format {driver!r}: use 'GPKG' or 'ESRI Shapefile'")
    names = {int(c["value"]): str(c["name"]) for c in classes}
    out_path = Path(out_path)
    final_name = final_name or out_path
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        src = rasterio.open(raster_path)
    with src:
        grid = Grid.of(src)
        area_of = _area_function(grid)
        tolerance = simplify / _metres_per_unit(grid) if simplify > 0 else 0.0
        pixel_area = grid.pixel_area_m2() or 1.0
        schema = {"geometry": "Polygon", "properties": {"class_id": "int", "class_name": "str:64", "area_m2": "float"}}
        crs = FionaCRS.from_wkt(grid.crs.to_wkt()) if grid.crs is not None else None
        n_written = n_dropped = 0
        windows = [Window(c, r, min(window, grid.width - c), min(window, grid.height - r))
                   for r in range(0, grid.height, window) for c in range(0, grid.width, window)]
        try:
            with fiona.open(out_path, "w", driver=driver, schema=schema, crs=crs, layer=layer) as sink:
                for k, win in enumerate(windows):
                    data = src.read(1, window=win)
                    mask = np.isin(data, list(names))
                    transform = src.window_transform(win)
                    batch = []
                    for geom, value in rasterio.features.shapes(data, mask=mask, connectivity=connectivity,
                                                                transform=transform):
                        value = int(value)
                        shape = shapely.geometry.shape(geom)
                        # Quick reject on the pixel-count area before the exact (maybe reprojected) area.
                        if min_area > 0 and shape.area / abs(transform.a * transform.e) * pixel_area < 0.5 * min_area:
                            n_dropped += 1
                            continue
                        if tolerance > 0:
                            shape = shape.simplify(tolerance, preserve_topology=True)
                            if shape.is_empty:
                                n_dropped += 1
                                continue
                        area = area_of(shape) if area_of else None
                        measured = area if area is not None else shape.area
                        if min_area > 0 and measured < min_area:
                            n_dropped += 1
                            continue
                        # Simplifying a polygon with preserve_topology keeps it a single Polygon.
                        batch.append({"geometry": shapely.geometry.mapping(shape),
                                      "properties": {"class_id": value, "class_name": names[value],
                                                     "area_m2": None if area is None else float(area)}})
                    sink.writerecords(batch)
                    n_written += len(batch)
                    if progress is not None:
                        progress.update((k + 1) / len(windows), "vectorising")
        except (InputError, OutputError):
            raise
        except CancelledError:
            raise
        except Exception as exc:
            raise OutputError(f"could not write {final_name}: {describe_os_error(exc, final_name)}") from None
    return {"features": n_written, "dropped": n_dropped}
