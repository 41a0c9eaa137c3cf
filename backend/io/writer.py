"""Streaming GeoTIFF writer for class rasters: tiled (512), compressed, written row strip by row strip
(in column panels for wide rasters) in whole block rows, each compressed block written once, with colour
table and overviews."""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import rasterio
from rasterio.enums import Resampling
from rasterio.errors import NotGeoreferencedWarning

from backend.errors import OutputError
from backend.io.atomic import close_quietly, describe_os_error, write_failure_reason
from backend.io.raster import Grid
from backend.io.readback import raster_read_back_problem

__all__ = ["StripWriter", "hex_to_rgba", "class_colormap"]

BLOCK = 512


def hex_to_rgba(color: str, alpha: int = 255) -> tuple:
    text = str(color).lstrip("#")
    if len(text) not in (6, 8):
        raise ValueError(f"not a #rrggbb colour: {color!r}")
    r, g, b = (int(text[k:k + 2], 16) for k in (0, 2, 4))
    a = int(text[6:8], 16) if len(text) == 8 else alpha
    return r, g, b, a


def class_colormap(classes: Sequence[dict], nodata: Optional[int]) -> dict:
    cmap = {int(c["value"]): hex_to_rgba(c.get("color", "#808080")) for c in classes}
    if nodata is not None and nodata not in cmap:
        cmap[int(nodata)] = (0, 0, 0, 0)
    return cmap


class StripWriter:
    """Write an image top to bottom, in one or more column panels left to right:
    `write(rows[count, h, panel_width], col_off)` appends h rows to the panel starting at col_off.

    A panel is written completely (all rows) before the next one starts at the column where it ended.
    Rows are copied into a one-block-row buffer of the panel's width (512 rows) and written when it is
    full, so every compressed tile is encoded once when panels start on multiples of 512. `path`
    should be a temporary name (see AtomicOutputs); `final_name` is only used in error messages. Any
    GDAL/OS failure becomes OutputError naming the file.
    """

    def __init__(self, path, grid: Grid, count: int = 1, dtype="uint8", nodata=None,
                 compress: str = "deflate", colormap: Optional[dict] = None,
                 descriptions: Optional[Sequence[str]] = None, tags: Optional[dict] = None,
                 final_name=None, overviews: bool = True):
        self.path = Path(path)
        self.final_name = Path(final_name or path)
        self.grid, self.count, self.dtype = grid, count, np.dtype(dtype)
        self.nodata, self.colormap, self.overviews = nodata, colormap, overviews
        self.rows_written = 0          # rows finished in the current panel
        self.columns_done = 0          # columns of all finished panels
        self._panel = None             # (col_off, width) of the panel being written
        self._buffer = None
        self._filled = 0
        profile = dict(driver="GTiff", width=grid.width, height=grid.height, count=count, dtype=self.dtype.name,
                       crs=grid.crs, transform=grid.transform, nodata=nodata, tiled=True,
                       blockxsize=BLOCK, blockysize=BLOCK, compress=compress, BIGTIFF="IF_SAFER")
        if compress.lower() in ("deflate", "lzw"):
            profile["predictor"] = 1 if self.dtype.kind in "ui" else 3
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", NotGeoreferencedWarning)
                self._ds = rasterio.open(self.path, "w", **profile)
            if descriptions:
                for band, text in enumerate(descriptions, start=1):
                    self._ds.set_band_description(band, text)
            if tags:
                self._ds.update_tags(**{k: str(v) for k, v in tags.items()})
            if colormap and count == 1:
                self._ds.write_colormap(1, colormap)
        except Exception as exc:
            raise self._error(exc) from None

    def _error(self, exc: BaseException) -> OutputError:
        return OutputError(f"could not write {self.final_name}: {describe_os_error(exc, self.path)}")

    def _start_panel(self, col_off: int, width: int) -> None:
        if self._panel is not None:
            if self.rows_written + self._filled != self.grid.height:
                raise ValueError(f"{self.final_name}: panel at column {self._panel[0]} left unfinished "
                                 f"({self.rows_written + self._filled} of {self.grid.height} rows)")
            self.columns_done += self._panel[1]
        if col_off != self.columns_done or width < 1 or col_off + width > self.grid.width:
            raise ValueError(f"{self.final_name}: panel of {width} columns at {col_off} does not continue "
                             f"at column {self.columns_done} within the width {self.grid.width}")
        self._panel = (col_off, width)
        self.rows_written = 0
        # One block row of buffer, filled in place: whole compressed blocks are encoded once, and
        # memory stays at BLOCK rows of the panel width whatever the strip heights are.
        if self._buffer is None or self._buffer.shape[2] != width:
            self._buffer = None  # free the old panel's buffer before allocating the new one
            self._buffer = np.empty((self.count, min(BLOCK, self.grid.height), width), self.dtype)

    def write(self, rows: np.ndarray, col_off: int = 0) -> None:
        if rows.ndim == 2:
            rows = rows[None]
        if rows.shape[0] != self.count:
            raise ValueError(f"expected rows of shape ({self.count}, h, w), got {rows.shape}")
        if self._panel is None or self._panel != (col_off, rows.shape[2]):
            self._start_panel(col_off, rows.shape[2])
        if self.rows_written + self._filled + rows.shape[1] > self.grid.height:
            raise ValueError(f"{self.final_name}: more rows than the raster's {self.grid.height}")
        done = 0
        while done < rows.shape[1]:
            take = min(rows.shape[1] - done, self._buffer.shape[1] - self._filled)
            self._buffer[:, self._filled:self._filled + take] = rows[:, done:done + take]
            self._filled += take
            done += take
            if self._filled == self._buffer.shape[1] or self.rows_written + self._filled == self.grid.height:
                self._flush()

    def _flush(self) -> None:
        if self._filled <= 0:
            return
        try:
            col_off, width = self._panel
            window = rasterio.windows.Window(col_off, self.rows_written, width, self._filled)
            self._ds.write(self._buffer[:, :self._filled], window=window)
        except Exception as exc:
            raise self._error(exc) from None
        self.rows_written += self._filled
        self._filled = 0

    def close(self) -> None:
        """Flush, close, and add nearest-neighbour overviews (fast display of large outputs in QGIS)."""
        if self._ds is None:
            return
        try:
            self._flush()
            panel_width = self._panel[1] if self._panel else 0
            if self.rows_written != self.grid.height or self.columns_done + panel_width != self.grid.width:
                raise OutputError(f"internal error: wrote {self.rows_written} of {self.grid.height} rows and "
                                  f"{self.columns_done + panel_width} of {self.grid.width} columns "
                                  f"to {self.final_name}")
            self._ds.close()
            self._ds = None
            if self.overviews and max(self.grid.width, self.grid.height) > 2 * BLOCK:
                levels, size = [], max(self.grid.width, self.grid.height)
                while size / (2 ** (len(levels) + 1)) >= 256:
                    levels.append(2 ** (len(levels) + 1))
                with rasterio.open(self.path, "r+") as ds:
                    ds.build_overviews(levels, Resampling.nearest)
            problem = raster_read_back_problem(self.path)
            if problem is not None:
                raise OutputError(f"could not write {self.final_name}: the finished file does not read back "
                                  f"({problem}); {write_failure_reason(self.path)}")
        except OutputError:
            raise
        except Exception as exc:
            raise self._error(exc) from None

    def discard(self) -> None:
        """Close without caring about errors (the temporary file is removed by AtomicOutputs)."""
        close_quietly(self._ds)
        self._ds = None
