"""Opening rasters with checks, and reading several rasters window by window on one common grid.

The grid of a run is the reference raster's grid (first input) unless the caller gives a CRS,
resolution and bounds. Inputs on other grids (another CRS, resolution or extent) are reprojected on
the fly with a WarpedVRT, so only the requested window is ever read and warped: memory stays flat.
"""
from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import rasterio
import rasterio.transform
import rasterio.warp
import rasterio.windows
from affine import Affine
from rasterio.crs import CRS
from rasterio.enums import ColorInterp, MaskFlags, Resampling
from rasterio.errors import NotGeoreferencedWarning, RasterioIOError
from rasterio.vrt import WarpedVRT
from rasterio.windows import Window

from backend.errors import InputError

__all__ = ["Grid", "open_raster", "select_bands", "parse_crs", "make_grid", "AlignedRaster",
           "open_aligned"]


@dataclass(frozen=True)
class Grid:
    """A pixel grid: CRS (None for an ungeoreferenced pixel grid), affine transform and size."""

    crs: Optional[CRS]
    transform: Affine
    width: int
    height: int

    @classmethod
    def of(cls, dataset) -> "Grid":
        return cls(dataset.crs if dataset.crs else None, dataset.transform, dataset.width, dataset.height)

    @property
    def bounds(self) -> tuple:
        """(left, bottom, right, top) in CRS units."""
        return rasterio.transform.array_bounds(self.height, self.width, self.transform)

    @property
    def res(self) -> tuple:
        return (math.hypot(self.transform.a, self.transform.d), math.hypot(self.transform.b, self.transform.e))

    def window_transform(self, window: Window) -> Affine:
        return rasterio.windows.transform(window, self.transform)

    def subgrid(self, window: Window) -> "Grid":
        """The grid of a window of this grid (same CRS and pixel size)."""
        return Grid(self.crs, self.window_transform(window), int(window.width), int(window.height))

    def same_as(self, other: "Grid", tol: float = 1e-9) -> bool:
        if (self.width, self.height) != (other.width, other.height):
            return False
        if (self.crs is None) != (other.crs is None) or (self.crs is not None and self.crs != other.crs):
            return False
        return self.transform.almost_equals(other.transform, precision=tol * max(1.0, *map(abs, self.res)))

    def pixel_area_m2(self) -> Optional[float]:
        """Area of one pixel in square metres (None when it cannot be known: pixel grids)."""
        if self.crs is None:
            return None
        rx, ry = self.res
        if self.crs.is_geographic:
            lat = (self.bounds[1] + self.bounds[3]) / 2.0
            metres_per_degree = 111_320.0
            return rx * metres_per_degree * math.cos(math.radians(lat)) * ry * metres_per_degree
        factor = self.crs.linear_units_factor[1] if self.crs.linear_units_factor else 1.0
        return rx * ry * factor * factor


def parse_crs(value) -> Optional[CRS]:
    """CRS from an authority string ('EPSG:4326'), WKT, PROJ string or CRS; None stays None."""
    if value is None or value == "":
        return None
    if isinstance(value, CRS):
        return value
    try:
        return CRS.from_user_input(value)
    except Exception as exc:  # rasterio raises CRSError; any failure means the same thing to users
        raise InputError(f"not a valid CRS: {value!r} ({exc})") from None


def open_raster(path, *, allow_pixel_grid: bool = False):
    """Open a raster for reading, turning every failure into an InputError naming the file.

    Checks: the file exists, GDAL can read it as a raster with at least one band, it has a CRS
    (unless allow_pixel_grid: then ungeoreferenced images such as PNG samples are accepted and
    handled on their pixel grid), and its first block decodes (catches truncated/corrupt files early).
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"raster not found: {path}")
    if path.is_dir():
        raise InputError(f"expected a raster file but got a folder: {path}")
    if not os.access(path, os.R_OK):
        raise InputError(f"raster is not readable (permission denied): {path}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            dataset = rasterio.open(path)
    except RasterioIOError as exc:
        raise InputError(f"not a readable raster: {path} ({_first_line(exc)})") from None
    try:
        if dataset.count < 1 or dataset.width < 1 or dataset.height < 1:
            raise InputError(f"raster has no pixels or no bands: {path}")
        if dataset.crs is None or not dataset.crs:
            if not allow_pixel_grid:
                raise InputError(f"raster has no CRS (not georeferenced): {path}; assign a CRS first "
                                 "or allow processing on the pixel grid")
        try:  # decode one small window: a truncated or corrupt file fails here, not mid-run
            dataset.read(1, window=Window(0, 0, min(64, dataset.width), min(64, dataset.height)))
        except Exception as exc:
            raise InputError(f"raster is corrupt or truncated: {path} ({_first_line(exc)})") from None
    except BaseException:
        dataset.close()
        raise
    return dataset


def data_band_indexes(dataset) -> list:
    """1-based indexes of the bands holding data (alpha bands excluded)."""
    bands = [i + 1 for i, ci in enumerate(dataset.colorinterp) if ci != ColorInterp.alpha]
    return bands or list(range(1, dataset.count + 1))


def alpha_band_index(dataset) -> Optional[int]:
    for i, ci in enumerate(dataset.colorinterp):
        if ci == ColorInterp.alpha:
            return i + 1
    return None


def select_bands(dataset, bands: Optional[Sequence[int]] = None, expected: Optional[int] = None,
                 name: str = "") -> list:
    """Validate a 1-based band selection (default: all data bands) against the raster and the model.

    expected: number of bands the model needs; a mismatch raises InputError naming needed vs found.
    """
    label = name or dataset.name
    if bands is None or len(bands) == 0:
        bands = data_band_indexes(dataset)
        if expected is not None and len(bands) > expected:
            bands = bands[:expected]  # e.g. RGBN imagery for an RGB model: take the first bands
    bands = [int(b) for b in bands]
    bad = [b for b in bands if b < 1 or b > dataset.count]
    if bad:
        raise InputError(f"band(s) {bad} do not exist in {label}: it has {dataset.count} band(s) (1-based)")
    if expected is not None and len(bands) != expected:
        raise InputError(f"wrong band count for the model in {label}: the model needs {expected} band(s), "
                         f"found {len(bands)} (selected bands {bands})")
    return bands


def make_grid(crs, resolution, bounds) -> Grid:
    """A north-up grid in `crs` covering `bounds` (left, bottom, right, top) at `resolution` (x[, y])."""
    crs = parse_crs(crs)
    if isinstance(resolution, (int, float)):
        resolution = (resolution, resolution)
    rx, ry = float(resolution[0]), float(resolution[1])
    if rx <= 0 or ry <= 0:
        raise InputError(f"resolution must be positive, got {resolution}")
    left, bottom, right, top = map(float, bounds)
    if right <= left or top <= bottom:
        raise InputError(f"empty bounds: {bounds}")
    width, height = max(1, round((right - left) / rx)), max(1, round((top - bottom) / ry))
    return Grid(crs, Affine(rx, 0.0, left, 0.0, -ry, top), int(width), int(height))


class AlignedRaster:
    """One input raster read on a target grid: directly when it already is on that grid,
    through a WarpedVRT (bilinear, alpha marks pixels outside the source) otherwise."""

    def __init__(self, path, grid: Optional[Grid] = None, bands: Optional[Sequence[int]] = None,
                 expected_bands: Optional[int] = None, allow_pixel_grid: bool = False,
                 resampling: Resampling = Resampling.bilinear):
        self.path = Path(path)
        self.dataset = open_raster(self.path, allow_pixel_grid=allow_pixel_grid)
        try:
            self.bands = select_bands(self.dataset, bands, expected_bands, name=str(self.path))
            own = Grid.of(self.dataset)
            self.grid = grid or own
            self.nodata = self.dataset.nodata
            self.dtype = np.dtype(self.dataset.dtypes[self.bands[0] - 1])
            self._vrt = None
            if not own.same_as(self.grid):
                self._vrt = self._warped(own, resampling)
            self._mask_mode = self._choose_mask_mode()
        except BaseException:
            self.dataset.close()
            raise

    def _warped(self, own: Grid, resampling: Resampling) -> WarpedVRT:
        if (own.crs is None) != (self.grid.crs is None):
            raise InputError(f"cannot align {self.path}: one raster has a CRS and the other has none")
        if own.crs is None:
            raise InputError(f"cannot align ungeoreferenced rasters of different size: {self.path} is "
                             f"{own.width}x{own.height}, the reference is {self.grid.width}x{self.grid.height}")
        kwargs = dict(crs=self.grid.crs, transform=self.grid.transform, width=self.grid.width,
                      height=self.grid.height, resampling=resampling, add_alpha=True)
        src_alpha = alpha_band_index(self.dataset)
        if src_alpha:
            kwargs["src_alpha"] = src_alpha
        try:
            vrt = WarpedVRT(self.dataset, **kwargs)
        except Exception as exc:
            raise InputError(f"cannot reproject {self.path} onto the common grid ({_first_line(exc)})") from None
        # The grids must overlap, or every pixel would be nodata.
        l1, b1, r1, t1 = self.grid.bounds
        l2, b2, r2, t2 = rasterio.warp.transform_bounds(own.crs, self.grid.crs, *own.bounds)
        if r2 <= l1 or r1 <= l2 or t2 <= b1 or t1 <= b2:
            vrt.close()
            raise InputError(f"raster does not overlap the reference raster: {self.path}")
        return vrt

    def _choose_mask_mode(self) -> str:
        if self._vrt is not None:
            return "alpha"
        flags = [self.dataset.mask_flag_enums[b - 1] for b in self.bands]
        if all(f == [MaskFlags.all_valid] for f in flags):
            return "all_valid"
        if all(f == [MaskFlags.nodata] for f in flags) and self.nodata is not None:
            return "nodata"  # derived from the data itself: no second read
        return "masks"  # alpha band, internal/external mask: let GDAL read it

    @property
    def count(self) -> int:
        return len(self.bands)

    def read(self, window: Window) -> tuple:
        """(data [C, h, w] in the raster's dtype, valid [h, w] bool) for a window of the target grid."""
        try:
            if self._vrt is not None:
                arr = self._vrt.read(indexes=[*self.bands, self._vrt.count], window=window)
                return arr[:-1], arr[-1] > 0
            data = self.dataset.read(indexes=self.bands, window=window)
            if self._mask_mode == "all_valid":
                valid = np.ones(data.shape[1:], dtype=bool)
            elif self._mask_mode == "nodata":
                if isinstance(self.nodata, float) and math.isnan(self.nodata):
                    valid = ~np.isnan(data).any(axis=0)
                else:
                    valid = (data != np.asarray(self.nodata, dtype=data.dtype)).all(axis=0)
            else:
                valid = (self.dataset.read_masks(indexes=self.bands, window=window) > 0).all(axis=0)
            if np.issubdtype(data.dtype, np.floating):
                valid &= np.isfinite(data).all(axis=0)
            return data, valid
        except InputError:
            raise
        except Exception as exc:
            raise InputError(f"failed to read {self.path} at window {window} ({_first_line(exc)}); "
                             "the file may be corrupt") from None

    def close(self) -> None:
        if self._vrt is not None:
            self._vrt.close()
        self.dataset.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def open_aligned(specs: Sequence[dict], grid: Optional[Grid] = None, allow_pixel_grid: bool = False) -> list:
    """Open several rasters on one grid: `grid` if given, else the first raster's own grid.

    specs: [{"path": ..., "bands": [..] | None, "expected_bands": int | None}, ...]
    """
    if not specs:
        raise InputError("no input raster given")
    opened = []
    try:
        for spec in specs:
            src = AlignedRaster(spec["path"], grid=grid, bands=spec.get("bands"),
                                expected_bands=spec.get("expected_bands"), allow_pixel_grid=allow_pixel_grid)
            opened.append(src)
            grid = grid or src.grid
    except BaseException:
        for src in opened:
            src.close()
        raise
    return opened


def _first_line(exc: BaseException) -> str:
    """The first line of an error, preferring GDAL's own message (rasterio chains it as the cause
    of a generic "Read failed. See previous exception" error)."""
    cause = exc.__cause__ or exc.__context__
    if cause is not None and "previous exception" in str(exc):
        exc = cause
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
