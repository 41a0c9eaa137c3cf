"""A labelled scene held in memory: image bands, a per-pixel class-index label grid, and the grid's georeference.

Labels are class *indexes* 0..K-1 (positions in the model's class list), with IGNORE_INDEX where a pixel
is unlabelled or must not be used (no-data, the other split of a whole-polygon hold-out).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np

IGNORE_INDEX = -1


@dataclass
class LabelledScene:
    image: np.ndarray            # [C, H, W] raw raster values (uint8 / uint16 / float)
    labels: np.ndarray           # [H, W] int16 class indexes, IGNORE_INDEX where unlabelled
    name: str = ""
    transform: Optional[object] = None   # rasterio Affine of the grid, when known
    crs: Optional[object] = None
    valid: Optional[np.ndarray] = field(default=None)  # [H, W] bool: image has data here

    def __post_init__(self):
        if self.image.ndim != 3:
            raise ValueError(f"scene image must be [C, H, W], got shape {self.image.shape}")
        if self.labels.shape != self.image.shape[1:]:
            raise ValueError(f"labels {self.labels.shape} do not match image {self.image.shape[1:]}")
        self.labels = self.labels.astype(np.int16, copy=False)

    @property
    def labelled_pixels(self) -> int:
        return int((self.labels != IGNORE_INDEX).sum())

    def restricted(self, keep: np.ndarray, name_suffix: str = "") -> "LabelledScene":
        """The same scene with labels outside `keep` (bool [H, W]) set to IGNORE_INDEX."""
        labels = np.where(keep, self.labels, IGNORE_INDEX).astype(np.int16)
        return LabelledScene(self.image, labels, self.name + name_suffix, self.transform, self.crs, self.valid)


def values_to_indexes(mask: np.ndarray, class_values, nodata=None) -> np.ndarray:
    """Map pixel class values (e.g. LoveDA 1..7) to indexes 0..K-1; unknown values and nodata -> IGNORE_INDEX."""
    lookup = {int(v): i for i, v in enumerate(class_values)}
    out = np.full(mask.shape, IGNORE_INDEX, dtype=np.int16)
    for value, index in lookup.items():
        out[mask == value] = index
    if nodata is not None:
        out[mask == nodata] = IGNORE_INDEX
    return out


def class_histogram(scenes, num_classes: int) -> np.ndarray:
    """Labelled pixel count per class index over several scenes."""
    counts = np.zeros(num_classes, dtype=np.int64)
    for scene in scenes:
        labels = scene.labels[scene.labels != IGNORE_INDEX].astype(np.int64)
        counts += np.bincount(labels, minlength=num_classes)[:num_classes]
    return counts
