"""Sentinel-2 / Sentinel-1 time series read onto a common grid, with per-frame validity.

Conventions (documented in docs/api_change.md):

* Sentinel-2: 10 bands in the order B2, B3, B4, B5, B6, B7, B8, B8A, B11, B12 (L2A surface
  reflectance, either scaled by 10000 as delivered or as 0..1 floats).  An optional 11th band
  is read as the L2A scene classification (SCL): classes 3 (cloud shadow), 8, 9 (cloud medium /
  high probability) and 10 (thin cirrus) are cloudy, classes 0 and 1 (no data, saturated) are
  no-data.  An entry may instead name a separate ``"scl"`` raster.  Without an SCL band a
  brightness test is used: a pixel is cloudy when blue (B2) and the mean of B2, B3, B4 are all
  above 0.3 reflectance (thick cloud is bright and white; bright soil is not bright in blue).
* Sentinel-1: 2 bands VV, VH in dB (backscatter in dB lies roughly within -50..+30; rasters
  that look linear are rejected with a clear message rather than silently converted).
* No-data: the raster's nodata value, NaN, or all bands zero.
* A frame is skipped (valid = False, reported) when more than ``max_invalid_fraction`` of its
  pixels over the grid are cloudy or no-data.
"""
from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
from rasterio.enums import Resampling
from rasterio.windows import Window

from backend.errors import InputError
from backend.io.raster import AlignedRaster, Grid, open_raster

S2_BAND_NAMES: Tuple[str, ...] = ("B2", "B3", "B4", "B5", "B6", "B7", "B8", "B8A", "B11", "B12")
S1_BAND_NAMES: Tuple[str, ...] = ("VV", "VH")
SCL_CLOUD_CLASSES = (3, 8, 9, 10)
SCL_NODATA_CLASSES = (0, 1)
CLOUD_REFLECTANCE = 0.3
SENSOR_BANDS = {"s2": S2_BAND_NAMES, "s1": S1_BAND_NAMES}


@dataclass
class SentinelStack:
    """Frames sorted by date. data [T,C,h,w] float32 (invalid pixels set to 0 before normalising),
    pixel_valid [T,h,w] bool, frame_valid [T] bool, doy [T] int (1..366)."""
    sensor: str
    data: np.ndarray
    pixel_valid: np.ndarray
    frame_valid: np.ndarray
    doy: np.ndarray
    dates: List[_dt.date]
    paths: List[str]
    skipped: List[Dict[str, Any]] = field(default_factory=list)

    @property
    def n_valid(self) -> int:
        return int(self.frame_valid.sum())

    def report(self) -> Dict[str, Any]:
        return {"sensor": self.sensor, "frames": len(self.dates), "used": self.n_valid,
                "dates": [d.isoformat() for d in self.dates], "skipped": self.skipped}


def parse_acquisition_date(value: Any, path: str) -> _dt.date:
    """'YYYY-MM-DD' (or a full ISO timestamp) -> date; a clear error names the raster otherwise."""
    if value is None or (isinstance(value, str) and not value.strip()):
        raise InputError(f"time-series raster {path} has no acquisition date: give \"date\": \"YYYY-MM-DD\"")
    if isinstance(value, _dt.datetime):
        return value.date()
    if isinstance(value, _dt.date):
        return value
    text = str(value).strip()
    try:
        return _dt.date.fromisoformat(text[:10])
    except ValueError:
        raise InputError(f"acquisition date {text!r} of {path} is not a date (expected YYYY-MM-DD)") from None


def day_of_year(date: _dt.date) -> int:
    return int(date.timetuple().tm_yday)


def _entry_path_and_date(entry: Any) -> Tuple[str, Any, Optional[str]]:
    if not isinstance(entry, dict) or "path" not in entry:
        raise InputError(f"time-series entry {entry!r} must be an object with \"path\" and \"date\"")
    return str(entry["path"]), entry.get("date"), entry.get("scl")


def _read_on_grid(path: str, grid: Grid, bands: Sequence[int], resampling: Resampling,
                  label: str) -> Tuple[np.ndarray, np.ndarray]:
    """(data float32 [C,h,w], valid bool [h,w]) of bands of path on grid; outside the raster -> invalid."""
    with AlignedRaster(path, grid=grid, bands=bands, resampling=resampling) as src:
        data, valid = src.read(Window(0, 0, grid.width, grid.height))
    data = data.astype(np.float32)
    finite = np.all(np.isfinite(data), axis=0)
    # All-zero pixels are the usual fill value of Sentinel products delivered without a nodata tag.
    valid = valid & finite & ~np.all(data == 0, axis=0)
    return np.where(np.isfinite(data), data, 0).astype(np.float32), valid


def _s2_cloud_free(data: np.ndarray, scl: Optional[np.ndarray]) -> np.ndarray:
    """True where the pixel is not cloud / cloud shadow (SCL) or not bright-white (brightness test)."""
    if scl is not None:
        scl = np.rint(scl).astype(np.int64)
        return ~np.isin(scl, SCL_CLOUD_CLASSES + SCL_NODATA_CLASSES)
    scale = 10000.0 if np.nanmax(data[:3]) > 2.0 else 1.0
    blue, visible = data[0] / scale, data[:3].mean(axis=0) / scale
    return ~((blue > CLOUD_REFLECTANCE) & (visible > CLOUD_REFLECTANCE))


def read_sentinel_stack(entries: Sequence[Any], sensor: str, grid: Grid,
                        max_invalid_fraction: float = 0.5) -> SentinelStack:
    """Read every dated raster of one sensor onto grid; frames sorted by date; invalid frames reported."""
    if sensor not in SENSOR_BANDS:
        raise InputError(f"unknown time-series sensor {sensor!r} (expected 's2' or 's1')")
    names = SENSOR_BANDS[sensor]
    n_bands = len(names)
    label = "Sentinel-2" if sensor == "s2" else "Sentinel-1"
    frames = []
    for entry in entries:
        path, raw_date, scl_path = _entry_path_and_date(entry)
        date = parse_acquisition_date(raw_date, path)
        with open_raster(path) as src:
            count = src.count
        allowed = (n_bands, n_bands + 1) if sensor == "s2" else (n_bands,)
        if count not in allowed:
            expect = " or ".join(str(n) for n in allowed)
            raise InputError(f"wrong band count in {label} raster {path}: it has {count} band(s), expected "
                             f"{expect} ({', '.join(names)}{' [+ SCL]' if sensor == 's2' else ''})")
        data, valid = _read_on_grid(path, grid, range(1, n_bands + 1), Resampling.bilinear, label)
        scl = None
        if sensor == "s2" and count == n_bands + 1:
            scl = _read_on_grid(path, grid, [n_bands + 1], Resampling.nearest, label)[0][0]
        if scl_path:
            scl = _read_on_grid(str(scl_path), grid, [1], Resampling.nearest, label)[0][0]
        if sensor == "s2":
            if valid.any() and float(data[:, valid].max()) <= 2.0:
                data = data * 10000.0  # 0..1 reflectance -> the L2A digital numbers the statistics use
            valid &= _s2_cloud_free(data, scl)
        elif valid.any() and float(np.median(data[:, valid])) > 0 and data[:, valid].min() >= 0:
            raise InputError(f"Sentinel-1 raster {path} looks like linear backscatter (all values >= 0); "
                             "convert VV, VH to dB (10*log10) first")
        frames.append((date, path, data * valid, valid))
    frames.sort(key=lambda f: f[0])
    dates = [f[0] for f in frames]
    if len(set(dates)) != len(dates):
        seen = sorted({d for d in dates if dates.count(d) > 1})
        raise InputError(f"{label} series has several rasters for the same date {seen[0].isoformat()}")
    skipped, frame_valid = [], []
    for date, path, _, valid in frames:
        invalid = 1.0 - float(valid.mean()) if valid.size else 1.0
        ok = invalid <= max_invalid_fraction
        frame_valid.append(ok)
        if not ok:
            skipped.append({"path": path, "date": date.isoformat(),
                            "reason": f"{invalid:.0%} cloudy or no-data (limit {max_invalid_fraction:.0%})"})
    shape = (0, n_bands, grid.height, grid.width)
    return SentinelStack(
        sensor=sensor,
        data=np.stack([f[2] for f in frames]).astype(np.float32) if frames else np.zeros(shape, np.float32),
        pixel_valid=np.stack([f[3] for f in frames]) if frames else np.zeros((0, grid.height, grid.width), bool),
        frame_valid=np.asarray(frame_valid, bool),
        doy=np.asarray([day_of_year(d) for d in dates], np.int64),
        dates=dates, paths=[f[1] for f in frames], skipped=skipped)
