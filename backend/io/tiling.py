"""Regular tile grid with overlap, blending weights, and edge padding.

Tiles sit at multiples of the stride (tile_size - overlap) from the processed window's origin;
the last row/column of tiles may reach past the raster edge, and is filled by reflecting the
image, then cropped after prediction. With a regular stride every pixel is covered by at most
two tiles per axis, which lets the engine stream with small carry buffers.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from backend.errors import InputError

__all__ = ["TileLayout", "Panel", "plan_tiles", "fitted_tile_sizes", "plan_panels", "blend_weights", "pad_to"]


@dataclass(frozen=True)
class TileLayout:
    """Tile grid over a height x width window."""

    height: int
    width: int
    tile: int
    overlap: int

    @property
    def stride(self) -> int:
        return self.tile - self.overlap

    @property
    def rows(self) -> int:
        return _count(self.height, self.tile, self.stride)

    @property
    def cols(self) -> int:
        return _count(self.width, self.tile, self.stride)

    @property
    def n_tiles(self) -> int:
        return self.rows * self.cols

    def tile_origin(self, i: int, j: int) -> tuple:
        """(row, col) of tile (i, j)'s top-left pixel, relative to the window."""
        return i * self.stride, j * self.stride

    @property
    def padded_width(self) -> int:
        return (self.cols - 1) * self.stride + self.tile


def _count(length: int, tile: int, stride: int) -> int:
    return 1 if length <= tile else 1 + math.ceil((length - tile) / stride)


def fitted_tile_sizes(tile_size: int, overlap: int, multiple: int = 32) -> list:
    """The tile sizes plan_tiles may fit a window larger than tile_size to, largest first: multiples of
    `multiple` from tile_size down to about half of it (what a model run at one fixed shape per tile size,
    OpenVINO's, is prepared for)."""
    smallest = max(multiple, 2 * overlap, (tile_size // 2) // multiple * multiple)
    return list(range(tile_size, smallest - 1, -multiple))


def plan_tiles(height: int, width: int, tile_size: int, overlap: int, multiple: int = 32,
               shrink: bool = True) -> TileLayout:
    """Checked tile layout.

    With `shrink` (the default) the tile is fitted to the window: among multiples of `multiple`
    from tile_size down to half of it, the size that covers the window with the fewest computed
    pixels (tiles x tile area) is used, so edge tiles are not mostly padding. E.g. 1024 px with
    tile 512 / overlap 64 needs 3x3 tiles of 512 (2.4 MP of compute) but only 3x3 of 384 (1.3 MP).
    A window smaller than the tile gets a single tile just large enough. shrink=False keeps
    tile_size (models exported for one fixed size)."""
    if tile_size < multiple or tile_size % multiple:
        raise InputError(f"tile_size must be a multiple of {multiple} and at least {multiple}, got {tile_size}")
    if overlap < 0 or 2 * overlap > tile_size:
        raise InputError(f"overlap must be between 0 and half the tile size ({tile_size // 2}), got {overlap}")
    if height < 1 or width < 1:
        raise InputError("nothing to process: the window is empty")
    if not shrink:
        return TileLayout(int(height), int(width), int(tile_size), int(overlap))
    fit = multiple * math.ceil(max(height, width) / multiple)
    if fit <= tile_size:
        return TileLayout(int(height), int(width), int(fit), 0)
    best = None
    for size in fitted_tile_sizes(tile_size, overlap, multiple):
        cost = _count(height, size, size - overlap) * _count(width, size, size - overlap) * size * size
        if best is None or cost < best[0]:  # ties keep the larger tile (fewer model calls)
            best = (cost, size)
    return TileLayout(int(height), int(width), int(best[1]), int(overlap))


@dataclass(frozen=True)
class Panel:
    """A column panel: owns output columns [start, stop) and computes tile columns first..last, i.e.
    every tile that touches an owned column, so owned pixels blend exactly as in one whole-width pass."""

    start: int
    stop: int
    first: int
    last: int

    @property
    def tile_columns(self) -> int:
        return self.last - self.first + 1


def _panel(L: TileLayout, start: int, stop: int) -> Panel:
    # tile j spans [j*S, j*S + T): it touches [start, stop) iff j*S < stop and j*S + T > start
    first = max(0, (start - L.tile) // L.stride + 1)
    last = min(L.cols - 1, -(-stop // L.stride) - 1)
    return Panel(start, stop, first, last)


def _shared_tiles(L: TileLayout, boundary: int) -> int:
    """Tile columns both panels beside `boundary` must compute (1, or 2 inside an overlap band)."""
    return _panel(L, 0, boundary).last - _panel(L, boundary, L.width).first + 1


def plan_panels(L: TileLayout, max_width: int, align: int = 512) -> list:
    """Split the window into column panels of at most ~max_width owned columns.

    Width-spanning buffers (the carry band, label rows, the writer's block row) then scale with the
    panel, not the raster: memory stays flat however wide the raster is. Boundaries sit on multiples
    of `align` (the output's block size, so every compressed block is written once) and, among the
    nearby multiples, where a single tile column covers them, so each boundary recomputes one tile
    column (~5 % more tiles for 8192-px panels of 512-px tiles, ~3 % for 16384-px ones). max_width <= 0: one panel."""
    if max_width <= 0 or L.width <= max_width or L.width <= 2 * align:
        return [_panel(L, 0, L.width)]
    count = math.ceil(L.width / max_width)
    bounds = [0]
    for k in range(1, count):
        ideal = k * L.width / count
        base = int(round(ideal / align)) * align
        options = [base + d * align for d in (0, -1, 1, -2, 2)]
        options = [b for b in options if bounds[-1] + align <= b <= L.width - align]
        if not options:
            continue
        bounds.append(min(options, key=lambda b: (_shared_tiles(L, b), abs(b - ideal))))
    bounds.append(L.width)
    return [_panel(L, a, b) for a, b in zip(bounds[:-1], bounds[1:])]


@lru_cache(maxsize=8)
def blend_weights(tile: int, overlap: int) -> np.ndarray:
    """float32 [tile, tile] weights: 1 in the centre, a linear ramp down to 1/(overlap+1) across the
    overlap margins. Accumulating prob*weight and dividing by the summed weight hides tile seams:
    each tile's least reliable border pixels count least. Never zero, so raster-edge pixels that
    only one tile covers are still defined."""
    profile = np.ones(tile, dtype=np.float32)
    if overlap > 0:
        ramp = (np.arange(overlap, dtype=np.float32) + 1.0) / (overlap + 1.0)
        profile[:overlap] = ramp
        profile[-overlap:] = ramp[::-1]
    weights = np.outer(profile, profile)
    weights.setflags(write=False)
    return weights


def pad_to(arr: np.ndarray, height: int, width: int) -> np.ndarray:
    """Pad [..., h, w] to [..., height, width] at the bottom/right by reflection (edge tiles).

    Reflection needs pad < size; for tiny slivers it falls back to symmetric, then edge padding."""
    h, w = arr.shape[-2:]
    if h == height and w == width:
        return arr
    pads = [(0, 0)] * (arr.ndim - 2) + [(0, height - h), (0, width - w)]
    if height - h < h and width - w < w:
        mode = "reflect"
    elif height - h <= h and width - w <= w:
        mode = "symmetric"
    else:
        mode = "edge"
    return np.pad(arr, pads, mode=mode)
