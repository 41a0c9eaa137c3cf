"""xBD-format building damage data (xView2): pre/post PNG/TIF pairs + post-disaster label JSON.

Layout (as distributed by xview2.org): ``<root>/images/<name>_pre_disaster.png``,
``<root>/images/<name>_post_disaster.png`` and ``<root>/labels/<name>_post_disaster.json`` whose
``features.xy`` hold building polygons in pixel coordinates (WKT) with a ``subtype`` of
no-damage / minor-damage / major-damage / destroyed / un-classified.
Masks: 0 background, 1..4 the xBD classes, 255 ignored (un-classified buildings).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import List, Sequence, Tuple

import numpy as np
import rasterio.features
import shapely.wkt
import torch
from PIL import Image

from backend.errors import InputError

SUBTYPES = {"no-damage": 1, "minor-damage": 2, "major-damage": 3, "destroyed": 4}
IGNORE = 255


@dataclass(frozen=True)
class XbdSample:
    name: str
    pre: Path
    post: Path
    label: Path


def list_xbd_samples(root: str | Path) -> List[XbdSample]:
    """All complete (pre, post, post label) triplets under root/images and root/labels."""
    root = Path(root)
    images, labels = root / "images", root / "labels"
    if not images.is_dir() or not labels.is_dir():
        raise InputError(f"xBD folder {root} must hold images/ and labels/")
    samples = []
    for label in sorted(labels.glob("*_post_disaster.json")):
        name = label.name[: -len("_post_disaster.json")]
        pre = next(iter(sorted(images.glob(f"{name}_pre_disaster.*"))), None)
        post = next(iter(sorted(images.glob(f"{name}_post_disaster.*"))), None)
        if pre is not None and post is not None:
            samples.append(XbdSample(name, pre, post, label))
    if not samples:
        raise InputError(f"no complete xBD samples (pre image, post image, post label) under {root}")
    return samples


def rasterize_xbd_label(path: Path, shape: Tuple[int, int]) -> np.ndarray:
    """uint8 [H,W] damage mask from an xBD label JSON (pixel-coordinate WKT polygons)."""
    try:
        doc = json.loads(Path(path).read_text())
        features = doc["features"]["xy"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise InputError(f"{path} is not an xBD label file ({exc})") from None
    shapes = []
    for feature in features:
        props = feature.get("properties", {})
        if props.get("feature_type", "building") != "building":
            continue
        value = SUBTYPES.get(props.get("subtype", "no-damage"), IGNORE)
        try:
            geom = shapely.wkt.loads(feature["wkt"])
        except Exception as exc:
            raise InputError(f"{path}: a building has invalid WKT ({exc})") from None
        if not geom.is_empty:
            shapes.append((geom, value))
    if not shapes:
        return np.zeros(shape, np.uint8)
    # Identity transform: WKT x = column, y = row. Worse classes are drawn last so they win overlaps.
    shapes.sort(key=lambda s: s[1] if s[1] != IGNORE else 0)
    return rasterio.features.rasterize(shapes, out_shape=shape, fill=0, dtype="uint8")


def load_xbd_sample(sample: XbdSample) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    pre = np.asarray(Image.open(sample.pre).convert("RGB"))
    post = np.asarray(Image.open(sample.post).convert("RGB"))
    if pre.shape != post.shape:
        raise InputError(f"xBD sample {sample.name}: pre {pre.shape} and post {post.shape} sizes differ")
    return pre, post, rasterize_xbd_label(sample.label, pre.shape[:2])


class XbdDamageDataset(torch.utils.data.Dataset):
    """Normalised (pre, post, mask) crops with flips / rot90 (no pre/post swap: damage is directed)."""

    def __init__(self, samples: Sequence[XbdSample], mean, std, crop: int | None = None, augment: bool = True,
                 repeats: int = 1, seed: int = 0):
        m = np.asarray(mean, np.float32)[:, None, None]
        s = np.asarray(std, np.float32)[:, None, None]
        self.items = []
        for sample in samples:
            pre, post, mask = load_xbd_sample(sample)
            self.items.append(((pre.transpose(2, 0, 1) - m) / s, (post.transpose(2, 0, 1) - m) / s, mask))
        self.crop, self.augment, self.repeats = crop, augment, max(1, repeats)
        self.rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        return len(self.items) * self.repeats

    def __getitem__(self, index: int):
        pre, post, mask = self.items[index % len(self.items)]
        if self.crop and self.crop < pre.shape[-1]:
            top = int(self.rng.integers(0, pre.shape[-2] - self.crop + 1))
            left = int(self.rng.integers(0, pre.shape[-1] - self.crop + 1))
            sl = (slice(top, top + self.crop), slice(left, left + self.crop))
            pre, post, mask = pre[(slice(None),) + sl], post[(slice(None),) + sl], mask[sl]
        if self.augment:
            if self.rng.random() < 0.5:
                pre, post, mask = pre[..., ::-1], post[..., ::-1], mask[..., ::-1]
            turns = int(self.rng.integers(0, 4))
            pre, post = np.rot90(pre, turns, axes=(-2, -1)), np.rot90(post, turns, axes=(-2, -1))
            mask = np.rot90(mask, turns, axes=(-2, -1))
        return (torch.from_numpy(np.ascontiguousarray(pre, np.float32)),
                torch.from_numpy(np.ascontiguousarray(post, np.float32)),
                torch.from_numpy(np.ascontiguousarray(mask, np.int64)))
