"""The one tiled, batched, streaming inference engine (land cover, change, damage, temporal).

Three stages overlap: a reader thread reads the window of each batch of tiles from every aligned
input (one GDAL call per input per batch), cuts it into reflect-padded, normalised tiles and queues
the batches; the calling thread runs the predictor and blends probabilities; a writer thread encodes
finished rows into the output GeoTIFF. Probabilities are only held for the tiles in flight plus two
carry bands (the overlap below the current tile row, the overlap right of the current batch). Memory
therefore does not depend on the raster height; rasters wider than `panel_width` are processed in
column panels (each recomputing the one tile column it shares with its neighbour), so the buffers that
span a tile row (carry band, label rows, the writer's block row) do not grow with the width either.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import math
import os
import queue
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import torch
from rasterio.windows import Window

from backend.errors import CancelledError, InputError, OutputError
from backend.io.aoi import aoi_mask, aoi_window, parse_aoi
from backend.io.atomic import AtomicOutputs
from backend.io.raster import Grid, open_aligned
from backend.io.tiling import Panel, TileLayout, blend_weights, pad_to, plan_panels, plan_tiles
from backend.io.writer import StripWriter, class_colormap
from backend.progress import Progress

__all__ = ["EngineInput", "EngineResult", "run_inference", "output_nodata", "normalise_classes", "auto_batch_size",
           "column_batches"]


@dataclass
class EngineInput:
    """One aligned input: its raster, 1-based bands, and normalisation in the raster's units."""

    path: str
    bands: Optional[Sequence[int]] = None
    mean: Optional[Sequence[float]] = None
    std: Optional[Sequence[float]] = None
    expected_bands: Optional[int] = None


@dataclass
class EngineResult:
    path: Path                          # final path of the class raster
    written_path: Path                  # where it is now (a temporary path until the caller commits)
    confidence_path: Optional[Path]
    confidence_written_path: Optional[Path]
    grid: Grid                          # output grid (the processed window of the reference grid)
    window: Window                      # processed window in the reference raster's grid
    device: str
    tiles: int
    seconds: float
    skipped_tiles: int = 0              # tiles without a valid pixel, not computed
    class_counts: dict = field(default_factory=dict)   # class value -> pixel count
    valid_pixels: int = 0
    nodata: int = 0

    @property
    def megapixels(self) -> float:
        return self.grid.width * self.grid.height / 1e6


def normalise_classes(classes) -> list:
    """Accept [{"value", "name", "color"}, ...] or plain values; return the dict form."""
    out = []
    for k, c in enumerate(classes):
        if isinstance(c, dict):
            out.append({"value": int(c["value"]), "name": str(c.get("name", f"class {c['value']}")),
                        "color": c.get("color", "#808080")})
        else:
            out.append({"value": int(c), "name": f"class {int(c)}", "color": "#808080"})
    values = [c["value"] for c in out]
    if not out or len(set(values)) != len(values) or min(values) < 0 or max(values) > 254:
        raise InputError(f"class values must be distinct integers 0..254, got {values}")
    return out


def auto_batch_size(device: str) -> int:
    """Tiles per batch for batch_size 0: 8 on CUDA (keeps the GPU busy), 2 on CPU, where `make bench`
    measured no speed gain from larger batches, only more memory."""
    return 8 if str(device).startswith("cuda") else 2


def output_nodata(classes: Sequence[dict]) -> int:
    """0 unless a class uses it, then 255."""
    return 0 if all(c["value"] != 0 for c in classes) else 255


# Widest output column panel (px). Each panel boundary recomputes one tile column: at 8192 a
# 10240-px-wide raster ran 342 tiles of 640 instead of 324, 4.6 % slower; at 16384 its width-spanning
# buffers (carry band, label rows, writer block row) hold ~60 MB at tile 640, and still stop growing there.
PANEL_WIDTH = 16384


class _Stop(Exception):
    pass


def _put(q: queue.Queue, item, stop: threading.Event) -> None:
    while True:
        if stop.is_set():
            raise _Stop()
        try:
            q.put(item, timeout=0.1)
            return
        except queue.Full:
            continue


class _Reader(threading.Thread):
    """Per panel and tile row, queues ("row", panel, i) then, per batch of that tile row,
    ("batch", i, cols, arrays, with_data, valid) items: arrays hold only the tiles with a valid pixel,
    cols[b] for b in with_data.

    Each batch reads only its own window (its tiles' columns, one GDAL call per input), so the
    reader's buffers do not grow with the raster width; neighbouring batches share `overlap`
    columns, which GDAL's block cache serves without decoding them again."""

    def __init__(self, sources, specs, layout: TileLayout, panels: list, window: Window, grid: Grid, aoi,
                 batch_size: int, out: queue.Queue, stop: threading.Event):
        super().__init__(name="skysense-reader", daemon=True)
        self.sources, self.layout, self.window, self.grid, self.aoi = sources, layout, window, grid, aoi
        self.panels = panels
        self.batch_size, self.out, self.stop = batch_size, out, stop
        self.norm = []
        for src, spec in zip(sources, specs):
            mean = np.zeros(src.count, np.float32) if spec.mean is None else np.asarray(spec.mean, np.float32)
            std = np.ones(src.count, np.float32) if spec.std is None else np.asarray(spec.std, np.float32)
            if mean.shape != (src.count,) or std.shape != (src.count,) or (std <= 0).any():
                raise InputError(f"normalisation for {src.path} must give {src.count} means and positive stds")
            self.norm.append((mean[:, None, None], (1.0 / std)[:, None, None]))

    def _read_batch(self, row0: int, h: int, cols: list) -> tuple:
        """(normalised float32 tiles [B', C, T, T] per input of the B' tiles with data, their indices
        into `cols`, valid [h, w] of the batch window)."""
        L = self.layout
        x0 = cols[0] * L.stride
        x1 = min(cols[-1] * L.stride + L.tile, L.width)
        window = Window(self.window.col_off + x0, self.window.row_off + row0, x1 - x0, h)
        datas, valid = [], np.ones((h, x1 - x0), bool)
        for src in self.sources:
            data, ok = src.read(window)
            datas.append(data)
            valid &= ok
        inside = aoi_mask(self.grid, self.aoi, window)
        if inside is not None:
            valid &= inside
        spans = [(j * L.stride - x0, min(j * L.stride - x0 + L.tile, x1 - x0)) for j in cols]
        with_data = _tiles_with_data(valid, spans)
        arrays = []
        for data, (mean, inv_std) in zip(datas, self.norm):
            batch = np.empty((len(with_data), data.shape[0], L.tile, L.tile), np.float32)
            for k, b in enumerate(with_data):
                c0, c1 = spans[b]
                tile = data[:, :, c0:c1].astype(np.float32)
                tile -= mean
                tile *= inv_std
                tile_valid = valid[:, c0:c1]
                if not tile_valid.all():
                    tile[:, ~tile_valid] = 0.0  # nodata pixels look like the mean
                batch[k] = tile if tile.shape[1:] == (L.tile, L.tile) else pad_to(tile, L.tile, L.tile)
            arrays.append(batch)
        return arrays, with_data, valid

    def run(self) -> None:
        try:
            L = self.layout
            for panel in self.panels:
                col_batches = [[panel.first + j for j in cols] for cols in column_batches(panel.tile_columns, self.batch_size)]
                for i in range(L.rows):
                    row0 = i * L.stride
                    h = min(L.tile, L.height - row0)
                    _put(self.out, ("row", panel, i), self.stop)
                    for cols in col_batches:
                        arrays, with_data, valid = self._read_batch(row0, h, cols)
                        _put(self.out, ("batch", i, cols, arrays, with_data, valid), self.stop)
            _put(self.out, ("end",), self.stop)
        except _Stop:
            pass
        except BaseException as exc:  # handed to the main thread, which re-raises it
            try:
                _put(self.out, ("error", exc), self.stop)
            except _Stop:
                pass


def _tiles_with_data(valid: np.ndarray, spans: list) -> list:
    """Indices of the batch's tiles (column spans of the batch window) with a valid pixel. The others
    (all nodata, or outside the AOI polygon) are not computed: each of their pixels is written as
    nodata whatever the model would say."""
    return [b for b, (c0, c1) in enumerate(spans) if valid[:, c0:c1].any()]


class _Writer(threading.Thread):
    """Writes finished row strips (col_off, labels[, confidence]); keeps the first error for the main thread."""

    def __init__(self, writers: list, stop: threading.Event, nodata: int):
        super().__init__(name="skysense-writer", daemon=True)
        self.writers, self.stop, self.nodata = writers, stop, nodata
        self.q: queue.Queue = queue.Queue(maxsize=2)
        self.error: Optional[BaseException] = None
        self.counts = np.zeros(256, np.int64)

    def run(self) -> None:
        while True:
            item = self.q.get()
            if item is None:
                return
            if self.error is not None or self.stop.is_set():
                continue  # failed or cancelled: drain the queue without writing
            try:
                col_off, strips = item[0], item[1:]
                self.counts += _class_counts(strips[0])
                for writer, rows in zip(self.writers, strips):
                    writer.write(rows, col_off)
            except BaseException as exc:
                self.error = exc
                self.stop.set()

    def submit(self, item) -> None:
        if self.error is not None:
            raise self.error
        self.q.put(item)


def _class_counts(labels: np.ndarray, chunk: int = 1 << 16) -> np.ndarray:
    """Pixel count per uint8 value. In chunks: bincount widens to int64, 8x the strip otherwise."""
    flat = labels.ravel()
    counts = np.zeros(256, np.int64)
    for start in range(0, flat.size, chunk):
        counts += np.bincount(flat[start:start + chunk], minlength=256)
    return counts


def _load_malloc_trim():
    """glibc's malloc_trim, or None off glibc (macOS, Windows, musl: nothing to do there).

    The mmap threshold is deliberately left to glibc: pinning it low (so that every tile-sized block
    comes from mmap) kept the footprint ~25 % smaller but made every large torch activation a fresh
    page-faulted mapping, which slowed the model itself 1.6-1.8x (see `make bench`)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc.malloc_trim
    except (OSError, AttributeError):
        return None


_MALLOC_TRIM = _load_malloc_trim()


_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def _resident_bytes() -> Optional[int]:
    """The process's resident memory (Linux /proc), or None where it cannot be read."""
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * _PAGE_SIZE
    except (OSError, ValueError, IndexError):
        return None


class _HeapTrimmer:
    """Hands freed heap pages back to the OS (malloc_trim) at the end of a tile row, once the process has
    grown by `slack` bytes since the last trim (or since the first row). Tile-sized buffers are allocated and
    freed by several threads; glibc keeps such memory in per-thread arenas, and unchecked the footprint could
    creep with the number of tiles, defeating the flat-memory design. Trimming after every row, as the
    engine did before, cost 3-5 % of a 2048² job (the pages it returned were faulted in again by the next
    row's buffers), and without it peaks were the same within noise (3072² real model, 10k² and 20k² dummy)."""

    def __init__(self, slack: int = 64 << 20):
        self.slack = slack
        self.floor: Optional[int] = None
        self.trims = 0

    def row_done(self) -> None:
        if _MALLOC_TRIM is None:
            return
        resident = _resident_bytes()
        if resident is None:  # cannot tell: trim, as before
            _MALLOC_TRIM(0)
            self.trims += 1
            return
        if self.floor is None:
            self.floor = resident
        elif resident > self.floor + self.slack:
            _MALLOC_TRIM(0)
            self.trims += 1
            self.floor = _resident_bytes() or resident  # memory really in use raises the floor


def column_batches(n: int, size: int) -> list:
    """The engine's batches of a tile row: range(n) (tile columns) in ceil(n/size) consecutive, nearly equal chunks."""
    parts = max(1, math.ceil(n / max(1, size)))
    bounds = np.linspace(0, n, parts + 1).round().astype(int)
    return [list(range(a, b)) for a, b in zip(bounds[:-1], bounds[1:]) if b > a]


def run_inference(inputs: Sequence[EngineInput], predictor: Callable, output_path, classes, *,
                  tile_size: int = 512, overlap: int = 64, batch_size: int = 0, aoi: Optional[dict] = None,
                  grid: Optional[Grid] = None, allow_pixel_grid: bool = False,
                  confidence_path=None, progress: Optional[Progress] = None,
                  outputs: Optional[AtomicOutputs] = None, size_multiple: int = 32, prefetch: int = 3,
                  tags: Optional[dict] = None, panel_width: int = PANEL_WIDTH) -> EngineResult:
    """Predict a class raster from N aligned inputs, tile by tile, streaming over row strips.

    inputs: EngineInput per model input (1 for land cover, 2 for change/damage); all are read on
      `grid` or, when None, on the first input's grid (others are reprojected on the fly).
    predictor: callable(list of float32 [B, C_i, T, T]) -> float32 probabilities [B, K, T, T]
      (see backend.inference.predictors; wrap an nn.Module with TorchPredictor / as_predictor).
    classes: K class dicts {"value", "name", "color"}; probability channel k is written as value k.
    batch_size: tiles per predictor call; 0 = the predictor's `preferred_batch_size` if it has one, else
      auto_batch_size(predictor.device).
    aoi: {"geometry": GeoJSON, "crs": ...}; the output covers the AOI's bounding window, pixels outside
      the polygon are nodata. Input nodata (masks, nodata value, alpha) becomes output nodata.
    confidence_path: also write max probability as uint8 percent (0..100, nodata 255).
    outputs: an AtomicOutputs to write into (the caller commits it together with other files);
      without it the engine commits its own files at the end.
    panel_width: wider outputs are processed in column panels of about this width (flat memory,
      identical labels; one extra tile column per panel boundary); 0 = one panel.
    Raises InputError (bad inputs), OutputError (write failure: previous files untouched),
    CancelledError (progress cancelled: no output left behind).
    """
    progress = progress or Progress()
    classes = normalise_classes(classes)
    nodata = output_nodata(classes)
    lut = np.array([c["value"] for c in classes], np.uint8)
    if not batch_size:
        # a predictor may know its best batch (OpenVINO: 1, see openvino_predictor); else by device
        batch_size = getattr(predictor, "preferred_batch_size", None) or auto_batch_size(getattr(predictor, "device", "cpu"))
    if batch_size < 1:
        raise InputError(f"batch_size must be at least 1 (or 0 for automatic), got {batch_size}")
    output_path = Path(output_path)
    own_outputs = outputs is None
    started = time.perf_counter()

    specs = [{"path": s.path, "bands": s.bands, "expected_bands": s.expected_bands} for s in inputs]
    sources = open_aligned(specs, grid=grid, allow_pixel_grid=allow_pixel_grid)
    stop = threading.Event()
    reader = writer_thread = None
    writers: list = []
    try:
        ref = sources[0].grid
        aoi_geom = parse_aoi(aoi, ref)
        window = aoi_window(ref, aoi_geom, name=str(sources[0].path))
        out_grid = ref.subgrid(window)
        fixed = getattr(predictor, "fixed_tile_size", None)  # e.g. ONNX graphs exported at one size
        if fixed:
            tile_size, overlap = int(fixed), min(overlap, int(fixed) // 2)
        layout = plan_tiles(out_grid.height, out_grid.width, tile_size, overlap, size_multiple,
                            shrink=not fixed)
        panels = plan_panels(layout, panel_width)
        n_tiles = layout.rows * sum(p.tile_columns for p in panels)
        if outputs is None:
            outputs = AtomicOutputs(output_path.parent)
        class_tags = {"skysense_classes": str([(c["value"], c["name"]) for c in classes])}
        class_tags.update(tags or {})
        writers.append(StripWriter(outputs.path_for(output_path), out_grid, nodata=nodata,
                                   colormap=class_colormap(classes, nodata), descriptions=["class"],
                                   tags=class_tags, final_name=output_path))
        conf_tmp = None
        if confidence_path is not None:
            confidence_path = Path(confidence_path)
            conf_tmp = outputs.path_for(confidence_path)
            writers.append(StripWriter(conf_tmp, out_grid, nodata=255, descriptions=["confidence_percent"],
                                       final_name=confidence_path))
        read_q: queue.Queue = queue.Queue(maxsize=max(1, prefetch))
        reader = _Reader(sources, inputs, layout, panels, window, ref, aoi_geom, batch_size, read_q, stop)
        writer_thread = _Writer(writers, stop, nodata)
        reader.start()
        writer_thread.start()
        device = getattr(predictor, "device", "cpu")
        precision = getattr(predictor, "precision", None)
        note = getattr(predictor, "startup_note", None)
        progress.update(0.0, f"predicting {n_tiles} tiles of {layout.tile} px on {device}"
                             + (f" ({precision})" if precision else "") + (f"; {note}" if note else ""))

        skipped = _stream(layout, n_tiles, predictor, lut, nodata, len(classes), read_q, reader, writer_thread,
                          progress, with_confidence=confidence_path is not None)

        writer_thread.q.put(None)
        writer_thread.join()
        if writer_thread.error is not None:
            raise writer_thread.error
        for w in writers:
            w.close()
        if own_outputs:
            outputs.commit()
        counts = writer_thread.counts
        return EngineResult(
            path=output_path, written_path=output_path if own_outputs else outputs.path_for(output_path),
            confidence_path=confidence_path,
            confidence_written_path=(confidence_path if own_outputs else conf_tmp) if confidence_path else None,
            grid=out_grid, window=window, device=device, tiles=n_tiles, skipped_tiles=skipped,
            seconds=time.perf_counter() - started,
            class_counts={int(c["value"]): int(counts[c["value"]]) for c in classes},
            valid_pixels=int(counts.sum() - counts[nodata]), nodata=nodata)
    except BaseException as exc:
        stop.set()
        if writer_thread is not None and writer_thread.is_alive():
            writer_thread.q.put(None)
            writer_thread.join(timeout=30)
        for w in writers:
            w.discard()
        if own_outputs and outputs is not None:
            outputs.abort()
        if isinstance(exc, (InputError, OutputError, CancelledError)):
            raise
        if isinstance(exc, MemoryError):
            raise InputError("out of memory: lower tile_size or batch_size") from None
        if type(exc).__name__ == "OutOfMemoryError":  # torch.cuda.OutOfMemoryError
            raise InputError(f"GPU out of memory with tile_size {tile_size} and batch_size {batch_size}: "
                             "lower batch_size (or tile_size), or use device 'cpu'") from None
        raise
    finally:
        stop.set()
        if reader is not None:
            reader.join(timeout=30)
        for src in sources:
            src.close()


def _as_probs(out) -> torch.Tensor:
    """Predictor output -> float32 tensor, kept on the predictor's device when it is a tensor."""
    if isinstance(out, torch.Tensor):
        return out.float()
    arr = np.asarray(out, dtype=np.float32)
    if not arr.flags.writeable or not arr.flags.c_contiguous:
        arr = np.ascontiguousarray(arr).copy()
    return torch.from_numpy(arr)


def _blending_device(predictor) -> torch.device:
    """Where blending runs when a job's first batch had no tile to compute: the predictor's CUDA
    device, else the CPU."""
    name = str(getattr(predictor, "device", "cpu"))
    return torch.device(name) if name.startswith("cuda") and torch.cuda.is_available() else torch.device("cpu")


def _first_max(scores: torch.Tensor) -> tuple:
    """(max over dim 0, index of its first occurrence as uint8) of [K, h, w] scores: what
    scores.max(dim=0) gives, 3x faster on the CPU (torch's index-returning reduction over a short leading
    dimension is slow; amax and element-wise passes are not). An all-NaN pixel gets the last index."""
    best = scores.amax(dim=0)
    index = torch.full(best.shape, scores.shape[0] - 1, dtype=torch.uint8, device=scores.device)
    hit = torch.empty(best.shape, dtype=torch.bool, device=scores.device)
    for k in range(scores.shape[0] - 2, -1, -1):  # downwards: the first maximum is written last
        torch.eq(scores[k], best, out=hit)
        index -= hit.view(torch.uint8) * (index - k)
    return best, index


def _stream(L: TileLayout, n_tiles: int, predictor, lut: np.ndarray, nodata: int, K: int, read_q: queue.Queue,
            reader: threading.Thread, writer: _Writer, progress: Progress, with_confidence: bool) -> int:
    """Consume batches in order, blend with carries, hand each panel's finished row strips to the writer;
    returns the number of tiles not computed for want of a valid pixel.

    Blending runs in torch on the device the predictor answered on (the GPU for CUDA models), so
    only uint8 labels travel back to the host, and CPU runs use torch's threads. Carries: `top`
    (the overlap rows below the current tile row, updated in place column range by column range,
    as each range is read before it is overwritten; it spans the panel's tiles, not the raster) and
    `left` (the overlap right of the batch). Column indices are the layout's; `base` is where the
    current panel's first tile starts. Only the panel's own columns are labelled: pixels left of it
    lack the previous panel's tiles, pixels right of it the next panel's."""
    T, O, S, W = L.tile, L.overlap, L.stride, L.width
    device = weights = top = scratch = None
    trimmer = _HeapTrimmer()
    done = skipped = 0
    left = None
    panel: Optional[Panel] = None
    labels = conf = None
    base = 0
    last_row = False
    while True:
        try:
            item = read_q.get(timeout=0.25)
        except queue.Empty:
            # The writer may have failed (it stops the reader), or the reader died: never wait forever.
            if writer.error is not None:
                raise writer.error
            if not reader.is_alive() and read_q.empty():
                raise RuntimeError("the raster reader stopped unexpectedly")
            progress.check_cancelled()
            continue
        kind = item[0]
        if kind == "error":
            raise item[1]
        if kind == "end":
            return skipped
        if kind == "row":
            _, panel, row_i = item
            base = panel.first * S
            last_row = row_i == L.rows - 1
            rows_out = min(T if last_row else S, L.height - row_i * S)
            labels = np.full((rows_out, panel.stop - panel.start), nodata, np.uint8)
            conf = np.full(labels.shape, 255, np.uint8) if with_confidence else None
            left = None
            continue
        _, i, cols, arrays, with_data, valid = item
        probs = None
        if with_data:
            probs = _as_probs(predictor(arrays))
            if probs.ndim != 4 or probs.shape[0] != len(with_data) or tuple(probs.shape[2:]) != (T, T):
                raise InputError(f"the model returned shape {tuple(probs.shape)}, "
                                 f"expected ({len(with_data)}, K, {T}, {T})")
            if probs.shape[1] != K:
                raise InputError(f"the model predicts {probs.shape[1]} classes but {K} class names were given")
        skipped += len(cols) - len(with_data)
        if device is None:  # first batch: put the blending buffers where the probabilities are
            device = probs.device if probs is not None else _blending_device(predictor)
            weights = torch.from_numpy(blend_weights(T, O).copy()).to(device)
        if probs is not None and probs.device != device:
            probs = probs.to(device)
        if O and (top is None or top.shape[2] < (panel.tile_columns - 1) * S + T):
            top = None  # free the narrower band before allocating the wider one
            top = torch.zeros((K + 1, O, (panel.tile_columns - 1) * S + T), dtype=torch.float32, device=device)
        ja, jb = cols[0], cols[-1]
        x0, x1 = ja * S, jb * S + T
        if scratch is None or scratch.shape[2] < x1 - x0:
            scratch = None  # free the narrower buffer before allocating the wider one
            scratch = torch.empty((K + 1, T, x1 - x0), dtype=torch.float32, device=device)
        # Reused for every batch and never zeroed: a fresh buffer per tile was page-faulted in again
        # each time (malloc_trim hands freed pages back). The batch's tiles cover all its columns
        # (stride <= tile), so each column is first assigned, and only overlaps are added.
        local = scratch[:, :, :x1 - x0]
        computed = {b: k for k, b in enumerate(with_data)}
        for b, j in enumerate(cols):
            off = (j - ja) * S
            fresh = 0 if b == 0 else O  # columns [off, off + O) already hold the previous tile's share
            if b not in computed:  # a tile without data adds nothing (no weight either)
                local[:, :, off + fresh:off + T] = 0.0
                continue
            tile_probs = probs[computed[b]]
            torch.mul(tile_probs[:, :, fresh:], weights[:, fresh:], out=local[:K, :, off + fresh:off + T])
            local[K, :, off + fresh:off + T] = weights[:, fresh:]
            if fresh:
                local[:K, :, off:off + O] += tile_probs[:, :, :O] * weights[:, :O]
                local[K, :, off:off + O] += weights[:, :O]
        if left is not None:
            local[:, :, :O] += left
        last_col = jb == panel.last
        fc1 = x1 if jb == L.cols - 1 else (jb + 1) * S
        block = local[:, :, :fc1 - x0]
        if top is not None:
            if i > 0:
                block[:, :O] += top[:, :, x0 - base:fc1 - base]
            if not last_row:
                top[:, :, x0 - base:fc1 - base] = block[:, S:S + O]
        left = None if last_col or not O else local[:, :, fc1 - x0:fc1 - x0 + O].clone()
        c0, c1 = max(x0, panel.start), min(fc1, W, panel.stop)
        if c1 > c0:
            rows_out = labels.shape[0]
            region = block[:, :rows_out, c0 - x0:c1 - x0]
            # The summed weight is the same for every class of a pixel: the argmax needs no division.
            best, index = _first_max(region[:K])
            out_labels = lut[index.cpu().numpy()]
            invalid = ~valid[:rows_out, c0 - x0:c1 - x0]
            if skipped:
                # Only tiles without data cover it: nodata too. (A pixel can read as valid in one window
                # and not in a neighbouring one, e.g. on an AOI edge through pixel centres.)
                invalid |= (region[K] == 0).cpu().numpy()
            out_labels[invalid] = nodata
            labels[:, c0 - panel.start:c1 - panel.start] = out_labels
            if conf is not None:
                out_conf = torch.round(best / region[K].clamp_min(1e-12) * 100).to(torch.uint8).cpu().numpy()
                out_conf[invalid] = 255
                conf[:, c0 - panel.start:c1 - panel.start] = out_conf
        done += len(cols)
        if last_col:
            strips = (labels, conf) if conf is not None else (labels,)
            writer.submit((panel.start,) + strips)
            trimmer.row_done()
        progress.update(done / n_tiles, f"tile {done}/{n_tiles}")
