"""Training and validation chips cut from labelled scenes.

Training chips are drawn around labelled pixels (half of them class-balanced, so rare classes are
seen), which matters for sparse user polygons. Validation chips form a fixed grid over labelled areas.
All randomness comes from the generator passed in, so an epoch is reproducible from its seed.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from backend.datasets.scene import IGNORE_INDEX, LabelledScene


@dataclass(frozen=True)
class Chip:
    scene: int   # index into the scene list
    row: int     # top-left pixel
    col: int
    own_row: int = 0   # grid chips flush with an edge overlap their neighbour: rows/cols before these
    own_col: int = 0   # offsets belong to the neighbour, so no pixel is scored twice


class ChipSampler:
    """Picks chip positions for training (random, label-centred) and validation (grid)."""

    # A few hundred thousand candidate centres are plenty and keep memory small on big rasters.
    _MAX_CANDIDATES_PER_CLASS = 200_000

    def __init__(self, scenes: list[LabelledScene], chip_size: int, num_classes: int, seed: int = 0):
        self.scenes = scenes
        self.chip_size = chip_size
        self.num_classes = num_classes
        for scene in scenes:
            height, width = scene.labels.shape
            if height < chip_size or width < chip_size:
                raise ValueError(f"scene {scene.name!r} ({width}x{height}) is smaller than the {chip_size}px chip")
        rng = np.random.default_rng(seed)
        # Candidate centres per class: (scene, row, col) triples.
        self._centres: list[np.ndarray] = []
        for class_index in range(num_classes):
            found = []
            for scene_index, scene in enumerate(scenes):
                rows, cols = np.nonzero(scene.labels == class_index)
                if rows.size:
                    found.append(np.stack([np.full(rows.size, scene_index), rows, cols], axis=1))
            centres = np.concatenate(found) if found else np.zeros((0, 3), dtype=np.int64)
            if len(centres) > self._MAX_CANDIDATES_PER_CLASS:
                centres = centres[rng.choice(len(centres), self._MAX_CANDIDATES_PER_CLASS, replace=False)]
            self._centres.append(centres)
        self._present = [i for i, c in enumerate(self._centres) if len(c)]
        if not self._present:
            raise ValueError("no labelled pixels to sample chips from")
        self._all_centres = np.concatenate([self._centres[i] for i in self._present])

    def _chip_around(self, scene_index: int, row: int, col: int, rng: np.random.Generator) -> Chip:
        height, width = self.scenes[scene_index].labels.shape
        size = self.chip_size
        # Jitter so the labelled pixel is not always in the centre.
        top = int(row) - int(rng.integers(size // 8, size - size // 8))
        left = int(col) - int(rng.integers(size // 8, size - size // 8))
        return Chip(scene_index, int(np.clip(top, 0, height - size)), int(np.clip(left, 0, width - size)))

    def training_chips(self, count: int, rng: np.random.Generator, balanced_fraction: float = 0.5) -> list[Chip]:
        chips = []
        for _ in range(count):
            if rng.random() < balanced_fraction:
                centres = self._centres[self._present[int(rng.integers(len(self._present)))]]
            else:
                centres = self._all_centres
            scene_index, row, col = centres[int(rng.integers(len(centres)))]
            chips.append(self._chip_around(int(scene_index), int(row), int(col), rng))
        return chips

    def grid_chips(self) -> list[Chip]:
        """Non-overlapping grid (last row/column flush with the edge) keeping chips with labels."""
        chips = []
        size = self.chip_size
        for scene_index, scene in enumerate(self.scenes):
            height, width = scene.labels.shape
            tops = sorted(set(list(range(0, height - size + 1, size)) + [height - size]))
            lefts = sorted(set(list(range(0, width - size + 1, size)) + [width - size]))
            for i, top in enumerate(tops):
                own_row = tops[i - 1] + size - top if i else 0
                for j, left in enumerate(lefts):
                    own_col = lefts[j - 1] + size - left if j else 0
                    if (scene.labels[top + own_row:top + size, left + own_col:left + size] != IGNORE_INDEX).any():
                        chips.append(Chip(scene_index, top, left, own_row, own_col))
        return chips


def normalise(image: np.ndarray, mean, std) -> np.ndarray:
    """(image - mean) / std per band, as float32; mean/std are in the raster's own units."""
    mean = np.asarray(mean, dtype=np.float32).reshape(-1, 1, 1)
    std = np.asarray(std, dtype=np.float32).reshape(-1, 1, 1)
    return (image.astype(np.float32) - mean) / std


def stack_chips(chips: list[Chip], normalised_images: list[np.ndarray], scenes: list[LabelledScene],
                size: int) -> tuple[np.ndarray, np.ndarray]:
    """Batch arrays: images [B, C, S, S] float32 and labels [B, S, S] int64."""
    images = np.stack([normalised_images[c.scene][:, c.row:c.row + size, c.col:c.col + size] for c in chips])
    labels = np.stack([scenes[c.scene].labels[c.row:c.row + size, c.col:c.col + size] for c in chips])
    labels = labels.astype(np.int64)
    for label, chip in zip(labels, chips):
        label[:chip.own_row] = IGNORE_INDEX
        label[:, :chip.own_col] = IGNORE_INDEX
    return images, labels
