"""Sliding-window prediction of a whole in-memory scene, used for validation and accuracy tables.

(Mapping rasters on disk for users goes through backend/inference; this helper only serves training.)
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def _window_starts(length: int, tile: int, stride: int) -> list[int]:
    if length <= tile:
        return [0]
    starts = list(range(0, length - tile + 1, stride))
    if starts[-1] != length - tile:
        starts.append(length - tile)
    return starts


@torch.no_grad()
def predict_logits(model: torch.nn.Module, image: np.ndarray, tile: int = 256, overlap: int = 32,
                   batch_size: int = 4, device: str = "cpu") -> np.ndarray:
    """Average of overlapping window logits for a normalised [C, H, W] image -> float32 [K, H, W]."""
    model.eval()
    channels, height, width = image.shape
    # Pad so every window is full-size and a multiple of 32 (the model's stride).
    tile = max(32, (tile // 32) * 32)
    padded_h, padded_w = max(height, tile), max(width, tile)
    padded_h, padded_w = -(-padded_h // 32) * 32, -(-padded_w // 32) * 32
    tensor = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))
    tensor = F.pad(tensor, (0, padded_w - width, 0, padded_h - height), mode="reflect"
                   if padded_h - height < height and padded_w - width < width else "constant")
    window_h, window_w = min(tile, padded_h), min(tile, padded_w)
    stride = max(window_h - overlap, 32)
    positions = [(top, left) for top in _window_starts(padded_h, window_h, stride)
                 for left in _window_starts(padded_w, window_w, max(window_w - overlap, 32))]
    logits_sum = None
    counts = torch.zeros(padded_h, padded_w)
    for start in range(0, len(positions), batch_size):
        batch_positions = positions[start:start + batch_size]
        batch = torch.stack([tensor[:, t:t + window_h, l:l + window_w] for t, l in batch_positions]).to(device)
        out = model(batch).float().cpu()
        if logits_sum is None:
            logits_sum = torch.zeros(out.shape[1], padded_h, padded_w)
        for (t, l), window_logits in zip(batch_positions, out):
            logits_sum[:, t:t + window_h, l:l + window_w] += window_logits
            counts[t:t + window_h, l:l + window_w] += 1
    logits = logits_sum / counts.clamp(min=1)
    return logits[:, :height, :width].numpy()


def predict_classes(model: torch.nn.Module, image: np.ndarray, **kwargs) -> np.ndarray:
    """Class index per pixel (int64 [H, W]) for a normalised [C, H, W] image."""
    return predict_logits(model, image, **kwargs).argmax(axis=0)
