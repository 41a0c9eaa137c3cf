"""The comparison point: a plain sequential tile loop, the way typical QGIS deep-learning plugins run.

One tile at a time: read the window, normalise, pad, run the model on a batch of one (a PyTorch
module under torch.no_grad, or an ONNX Runtime predictor as Deepness does), argmax, write the
tile's centre (overlap cropped), next tile. No batching, no background reading or writing, no
blending. Same GeoTIFF output format as the engine, so the difference measured is the execution
strategy alone.
"""
from __future__ import annotations

import math

import numpy as np
import rasterio
import torch
from rasterio.windows import Window

from backend.io.tiling import pad_to


def _starts(length: int, tile: int, stride: int) -> list:
    n = 1 if length <= tile else 1 + math.ceil((length - tile) / stride)
    return [i * stride for i in range(n)]


def _scores(model, x: np.ndarray) -> np.ndarray:
    """Class scores [K, T, T] of one normalised tile [C, T, T]."""
    if isinstance(model, torch.nn.Module):
        with torch.no_grad():
            return model(torch.from_numpy(np.ascontiguousarray(x))[None])[0].numpy()
    return np.asarray(model([np.ascontiguousarray(x)[None]]))[0]  # predictor protocol (e.g. ONNX Runtime)


def plain_tile_loop(raster, out_path, model, class_values, *, tile: int = 256, overlap: int = 32,
                    mean=(128.0, 128.0, 128.0), std=(64.0, 64.0, 64.0)) -> int:
    """Classify `raster` into `out_path` with an nn.Module or a predictor; returns the number of tiles run."""
    mean = np.asarray(mean, np.float32)[:, None, None]
    std = np.asarray(std, np.float32)[:, None, None]
    lut = np.asarray(class_values, np.uint8)
    stride, half = tile - overlap, overlap // 2
    count = 0
    with rasterio.open(raster) as src:
        profile = dict(driver="GTiff", width=src.width, height=src.height, count=1, dtype="uint8", crs=src.crs,
                       transform=src.transform, nodata=0, tiled=True, blockxsize=512, blockysize=512,
                       compress="deflate")
        rows, cols = _starts(src.height, tile, stride), _starts(src.width, tile, stride)
        with rasterio.open(out_path, "w", **profile) as dst:
            for i, r in enumerate(rows):
                for j, c in enumerate(cols):
                    h, w = min(tile, src.height - r), min(tile, src.width - c)
                    x = (src.read(window=Window(c, r, w, h)).astype(np.float32) - mean) / std
                    x = pad_to(x, tile, tile)
                    labels = lut[_scores(model, x).argmax(0)]
                    # keep the tile centre; the first/last tiles keep their outer edge
                    r0 = 0 if i == 0 else half
                    c0 = 0 if j == 0 else half
                    r1 = h if i == len(rows) - 1 else min(h, stride + half)
                    c1 = w if j == len(cols) - 1 else min(w, stride + half)
                    dst.write(labels[r0:r1, c0:c1], 1, window=Window(c + c0, r + r0, c1 - c0, r1 - r0))
                    count += 1
    return count
