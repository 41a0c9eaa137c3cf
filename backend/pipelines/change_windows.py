"""Window-by-window building blocks for the change post-processing (bounded memory).

The change pipeline post-processes the engine's class + confidence rasters one processing window
at a time (default 4096 x 4096 px): its memory is set by the window, not by the raster. This module
holds the pieces that know nothing about change models: the window layout, a GeoTIFF written
window by window in whole blocks, a GeoPackage layer written window by window, and per-component
statistics of a window's connected regions.
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import rasterio
import rasterio.features
import shapely
import shapely.geometry
from affine import Affine
from rasterio.errors import NotGeoreferencedWarning
from rasterio.windows import Window

from backend.errors import InputError, OutputError
from backend.io.atomic import close_quietly, describe_os_error
from backend.io.raster import Grid

DEFAULT_WINDOW = 4096
BLOCK = 256  # block size of the rasters written here; windows are multiples of it (whole blocks)


def window_size(value: Any) -> int:
    """A processing window size (pixels, square): a positive multiple of BLOCK, else InputError."""
    if value is None:
        return DEFAULT_WINDOW
    try:
        size = int(value)
    except (TypeError, ValueError):
        raise InputError(f"parameter 'window' must be a whole number of pixels, got {value!r}") from None
    if size < BLOCK or size % BLOCK or size != float(value):
        raise InputError(f"parameter 'window' must be a positive multiple of {BLOCK} pixels, got {value!r}")
    return size


def processing_windows(width: int, height: int, size: int) -> List[Window]:
    """Windows of size x size px (smaller at the right and bottom edges), row by row, left to right."""
    return [Window(col, row, min(size, width - col), min(size, height - row))
            for row in range(0, height, size) for col in range(0, width, size)]


class WindowRasterWriter:
    """A single-band tiled (BLOCK x BLOCK), deflate-compressed GeoTIFF written window by window.

    Windows on multiples of BLOCK cover whole blocks, so each compressed block is encoded once.
    `path` is a temporary name (AtomicOutputs); `final_name` only names the file in errors.
    """

    def __init__(self, path, grid: Grid, dtype, nodata, final_name=None):
        self.path, self.final_name = Path(path), Path(final_name or path)
        profile = dict(driver="GTiff", width=grid.width, height=grid.height, count=1, dtype=np.dtype(dtype).name,
                       crs=grid.crs, transform=grid.transform, nodata=nodata, tiled=True, blockxsize=BLOCK,
                       blockysize=BLOCK, compress="deflate")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", NotGeoreferencedWarning)
                self._ds = rasterio.open(self.path, "w", **profile)
        except Exception as exc:
            raise self._error(exc) from None

    def _error(self, exc: BaseException) -> OutputError:
        return OutputError(f"could not write {self.final_name}: {describe_os_error(exc)}")

    def write(self, array: np.ndarray, window: Window) -> None:
        try:
            self._ds.write(array, 1, window=window)
        except Exception as exc:
            raise self._error(exc) from None

    def close(self) -> None:
        if self._ds is not None:
            ds, self._ds = self._ds, None
            try:
                ds.close()
            except Exception as exc:
                raise self._error(exc) from None

    def discard(self) -> None:
        """Close ignoring errors (the temporary file itself is removed by AtomicOutputs)."""
        close_quietly(self._ds)
        self._ds = None


class PolygonSink:
    """A GeoPackage layer of MultiPolygons + attributes written a batch at a time (one per window).

    Same file as backend.pipelines.change.write_polygons would write from all records at once."""

    def __init__(self, path, layer: str, fields: Dict[str, str], crs, final_name=None):
        import fiona

        self.final_name = Path(final_name or path)
        schema = {"geometry": "MultiPolygon", "properties": dict(fields)}
        self.count = 0
        try:
            self._dst = fiona.open(path, "w", driver="GPKG", layer=layer, schema=schema,
                                   crs=crs.to_wkt() if crs is not None else None)
        except Exception as exc:
            raise self._error(exc) from None

    def _error(self, exc: BaseException) -> OutputError:
        return OutputError(f"could not write {self.final_name}: {describe_os_error(exc)}")

    def write(self, geoms: Sequence, records: Sequence[Dict[str, Any]]) -> None:
        try:
            for geom, record in zip(geoms, records):
                if geom.geom_type == "Polygon":
                    geom = shapely.geometry.MultiPolygon([geom])
                self._dst.write({"geometry": shapely.geometry.mapping(geom), "properties": record})
                self.count += 1
        except Exception as exc:
            raise self._error(exc) from None

    def close(self) -> None:
        if self._dst is not None:
            dst, self._dst = self._dst, None
            try:
                dst.close()
            except Exception as exc:
                raise self._error(exc) from None

    def discard(self) -> None:
        close_quietly(self._dst)
        self._dst = None


def component_polygons(labels: np.ndarray, n: int, transform, unit_area: float, min_area: float = 0.0,
                       tolerance: float = 0.0) -> Tuple[List[Any], np.ndarray, np.ndarray]:
    """Polygons of the connected components 1..n of a label image (0 = background).

    Returns (geometries of the kept components, kept ids, pixel count per id [n + 1], bin 0 unused);
    components smaller than min_area (unit_area per pixel) are dropped; tolerance simplifies (grid
    units, topology preserved). Memory: a few bytes per pixel of the label image, no int64 copy of it.
    """
    inside = labels > 0
    area_px = np.bincount(labels[inside], minlength=n + 1)
    keep = np.nonzero(area_px * unit_area >= float(min_area))[0]
    keep = keep[keep > 0]
    if len(keep) == 0:
        return [], keep, area_px
    if len(keep) < n:
        table = np.zeros(n + 1, bool)
        table[keep] = True
        inside = table[labels]
    parts: Dict[int, list] = {}
    for geom, value in rasterio.features.shapes(labels, mask=inside, transform=transform, connectivity=4):
        parts.setdefault(int(value), []).append(shapely.geometry.shape(geom))
    geoms = []
    for cid in keep:
        shape = shapely.union_all(parts[int(cid)]) if len(parts[int(cid)]) > 1 else parts[int(cid)][0]
        if tolerance > 0:
            shape = shape.simplify(tolerance, preserve_topology=True)
        geoms.append(shape)
    return geoms, keep, area_px


def component_means(labels: np.ndarray, n: int, values: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Mean of `values` over each component in ids: the same float64 sums, in the same pixel order,
    as scipy.ndimage.mean(values, labels, ids), but over the labelled pixels only."""
    inside = labels > 0
    lab = labels[inside]
    sums = np.bincount(lab, weights=values[inside], minlength=n + 1)
    counts = np.bincount(lab, minlength=n + 1)
    return sums[ids] / counts[ids].astype(np.float64)


def table_counts(total: Optional[np.ndarray], values: np.ndarray) -> np.ndarray:
    """Add np.bincount(values) to a running count array (either may be longer)."""
    counts = np.bincount(values.ravel())
    if total is None:
        return counts
    if len(counts) > len(total):
        counts[:len(total)] += total
        return counts
    total[:len(counts)] += counts
    return total


def pixel_to_grid(geom, transform: Affine):
    """A geometry in pixel coordinates -> grid coordinates, computed as GDAL's polygonize does
    (c + x * a + y * b): a polygon traced in pixel coordinates then equals, bit for bit, the one
    rasterio.features.shapes traces with the grid transform."""
    t = transform

    def apply(xy: np.ndarray) -> np.ndarray:
        x, y = xy[:, 0], xy[:, 1]
        return np.column_stack([t.c + x * t.a + y * t.b, t.f + x * t.d + y * t.e])

    return shapely.transform(geom, apply)


def _global_ids(edge: np.ndarray, base: int) -> np.ndarray:
    """Window labels (1..n, 0 = none) along an edge -> global ids (base + label, 0 = none)."""
    return np.where(edge > 0, edge.astype(np.int64) + base, 0)


def _edge_pairs(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Distinct (a, b) id pairs of the pixels facing each other across a window edge (both set)."""
    both = (a > 0) & (b > 0)
    if not both.any():
        return np.zeros((0, 2), np.int64)
    return np.unique(np.column_stack([a[both], b[both]]), axis=0)


def windowed_mask_polygons(read_mask: Callable[[Window], np.ndarray], grid: Grid, size: int, unit_area: float,
                           min_area: float = 0.0, progress=None) -> List[Any]:
    """Connected regions (4-connectivity) of a mask read one window at a time, as polygons in the
    grid CRS: the geometries, order and min_area filter of change.mask_polygons on the whole mask.

    Each window's components are traced in pixel coordinates (exact, integer); components facing
    each other across a window edge are merged (union-find) and their pieces unioned. Memory: one
    window, one grid row of ids, and the pieces (vectors).
    """
    from scipy import ndimage

    windows = processing_windows(grid.width, grid.height, size)
    pieces: List[Any] = []       # per window component (global id - 1): polygon in pixel coordinates
    pixels: List[int] = []       # its pixel count
    first: List[Tuple[int, int]] = []  # (row, col) of its first pixel in raster scan order
    parent: List[int] = []       # union-find over the global ids - 1

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    above = np.zeros(grid.width, np.int64)  # global ids of the row just above the current window row
    left = np.zeros(0, np.int64)            # global ids of the column just left of the current window
    for k, win in enumerate(windows):
        if progress is not None:
            progress.update(k / len(windows), f"polygons (window {k + 1} of {len(windows)})")
        row0, col0 = int(win.row_off), int(win.col_off)
        labels = None  # the previous window's, freed before labelling this one
        labels, n = ndimage.label(read_mask(win))
        labels = labels.astype(np.int32, copy=False)
        base = len(pieces)
        if n:
            geoms, _, area_px = component_polygons(labels, n, Affine.translation(col0, row0), 1.0)
            pieces.extend(geoms)
            pixels.extend(area_px[1:].tolist())
            parent.extend(range(base, base + n))
            for cid, (rows, cols) in enumerate(ndimage.find_objects(labels), 1):
                first.append((row0 + rows.start, col0 + cols.start + int(np.argmax(labels[rows.start, cols] == cid))))
        width = int(win.width)
        # 4-connectivity: only the pixels directly across an edge touch (no diagonals)
        pairs = [_edge_pairs(above[col0:col0 + width], _global_ids(labels[0], base))]
        if col0 > 0:
            pairs.append(_edge_pairs(left, _global_ids(labels[:, 0], base)))
        for a, b in np.concatenate(pairs).tolist():
            ra, rb = find(a - 1), find(b - 1)
            if ra != rb:
                parent[max(ra, rb)] = min(ra, rb)
        above[col0:col0 + width] = _global_ids(labels[-1], base)
        left = _global_ids(labels[:, -1], base)

    groups: Dict[int, List[int]] = {}
    for i in range(len(pieces)):
        groups.setdefault(find(i), []).append(i)
    kept = [g for g in groups.values() if sum(pixels[i] for i in g) * unit_area >= float(min_area)]
    # ndimage.label on the whole mask numbers the regions in raster scan order of their first pixel
    kept.sort(key=lambda g: min(first[i] for i in g))
    return [pixel_to_grid(pieces[g[0]] if len(g) == 1 else shapely.union_all([pieces[i] for i in g]),
                          grid.transform) for g in kept]
