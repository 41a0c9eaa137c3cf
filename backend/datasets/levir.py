"""LEVIR-CD building-change pairs (A = before, B = after, label = binary change mask).

The sample folder holds 256x256 RGB PNG pairs without CRS; pairs without a label
(e.g. the mosaic ``test_113_0256``) are skipped.  Whole pairs are held out for
testing so that no pixel of a test pair is ever seen during training.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import List, Sequence, Tuple

import numpy as np
import torch
from PIL import Image

from backend.errors import InputError

# Held-out pairs: three different LEVIR scenes (test_2's two tiles stay together in training).
HELD_OUT_PAIRS: Tuple[str, ...] = ("test_102_0512_0000", "test_7_0256_0512", "val_27_0000_0256")


@dataclass(frozen=True)
class LevirPair:
    name: str
    image_a: Path
    image_b: Path
    label: Path


def list_levir_pairs(root: str | Path) -> List[LevirPair]:
    """All labelled pairs under root/{A,B,label}, sorted by name; unlabelled pairs are skipped."""
    root = Path(root)
    if (root / "levir_cd").is_dir():
        root = root / "levir_cd"
    folder_a, folder_b, folder_label = root / "A", root / "B", root / "label"
    for folder in (folder_a, folder_b, folder_label):
        if not folder.is_dir():
            raise InputError(f"LEVIR-CD folder {folder} is missing (expected A/, B/ and label/ under {root})")
    pairs = []
    for path_a in sorted(folder_a.glob("*.png")):
        path_b, path_label = folder_b / path_a.name, folder_label / path_a.name
        if path_b.is_file() and path_label.is_file():
            pairs.append(LevirPair(path_a.stem, path_a, path_b, path_label))
    if not pairs:
        raise InputError(f"no labelled LEVIR-CD pairs found under {root}")
    return pairs


def split_levir_pairs(pairs: Sequence[LevirPair],
                      held_out: Sequence[str] = HELD_OUT_PAIRS) -> Tuple[List[LevirPair], List[LevirPair]]:
    """(train, test) with the named pairs in test."""
    test = [p for p in pairs if p.name in held_out]
    train = [p for p in pairs if p.name not in held_out]
    if not test or not train:
        raise InputError(f"held-out pairs {list(held_out)} leave an empty train or test split")
    return train, test


def load_levir_pair(pair: LevirPair) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(a uint8 [H,W,3], b uint8 [H,W,3], label uint8 [H,W] in {0,1})."""
    image_a = np.asarray(Image.open(pair.image_a).convert("RGB"))
    image_b = np.asarray(Image.open(pair.image_b).convert("RGB"))
    label = (np.asarray(Image.open(pair.label).convert("L")) > 127).astype(np.uint8)
    if image_a.shape != image_b.shape or image_a.shape[:2] != label.shape:
        raise InputError(f"LEVIR-CD pair {pair.name}: A {image_a.shape}, B {image_b.shape} and "
                         f"label {label.shape} sizes differ")
    return image_a, image_b, label


def augment_change_pair(a: np.ndarray, b: np.ndarray, label: np.ndarray,
                        rng: np.random.Generator, crop: int | None = None, identical_prob: float = 0.0):
    """Random crop, flips, rot90, A/B swap (change is symmetric), identical-date pairs with an empty
    label (probability identical_prob) and mild per-image brightness jitter.

    Arrays are [C,H,W] float32 for images and [H,W] for the label.
    """
    if crop is not None and crop < a.shape[-1]:
        top = int(rng.integers(0, a.shape[-2] - crop + 1))
        left = int(rng.integers(0, a.shape[-1] - crop + 1))
        a = a[:, top:top + crop, left:left + crop]
        b = b[:, top:top + crop, left:left + crop]
        label = label[top:top + crop, left:left + crop]
    if rng.random() < 0.5:
        a, b, label = a[..., ::-1], b[..., ::-1], label[..., ::-1]
    if rng.random() < 0.5:
        a, b, label = a[..., ::-1, :], b[..., ::-1, :], label[..., ::-1, :]
    turns = int(rng.integers(0, 4))
    if turns:
        a, b = np.rot90(a, turns, axes=(-2, -1)), np.rot90(b, turns, axes=(-2, -1))
        label = np.rot90(label, turns, axes=(-2, -1))
    if rng.random() < 0.5:
        a, b = b, a
    if rng.random() < identical_prob:
        # The same date twice (each jittered below): teaches that no difference means no change,
        # instead of "a building in the second image means change".
        b = a.copy()
        label = np.zeros_like(label)
    # Radiometric differences between dates are common: jitter each date independently.
    a = a * rng.uniform(0.9, 1.1) + rng.uniform(-0.1, 0.1)
    b = b * rng.uniform(0.9, 1.1) + rng.uniform(-0.1, 0.1)
    return (np.ascontiguousarray(a, dtype=np.float32), np.ascontiguousarray(b, dtype=np.float32),
            np.ascontiguousarray(label, dtype=np.int64))


class LevirChangeDataset(torch.utils.data.Dataset):
    """Normalised LEVIR-CD pairs held in memory; optional augmentation and random crops.

    Items: (a [3,H,W] float32, b [3,H,W] float32, label [H,W] int64).
    """

    def __init__(self, pairs: Sequence[LevirPair], mean: Sequence[float], std: Sequence[float],
                 augment: bool = False, crop: int | None = None, repeats: int = 1, seed: int = 0,
                 identical_prob: float = 0.0):
        mean_arr = np.asarray(mean, np.float32)[:, None, None]
        std_arr = np.asarray(std, np.float32)[:, None, None]
        self.samples = []
        for pair in pairs:
            a, b, label = load_levir_pair(pair)
            self.samples.append(((a.transpose(2, 0, 1) - mean_arr) / std_arr,
                                 (b.transpose(2, 0, 1) - mean_arr) / std_arr, label))
        self.names = [p.name for p in pairs]
        self.augment, self.crop, self.repeats = augment, crop, max(1, int(repeats))
        self.identical_prob = float(identical_prob)
        self.rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        return len(self.samples) * self.repeats

    def __getitem__(self, index: int):
        a, b, label = self.samples[index % len(self.samples)]
        if self.augment:
            a, b, label = augment_change_pair(a, b, label, self.rng, self.crop, self.identical_prob)
        return (torch.from_numpy(np.ascontiguousarray(a, np.float32)),
                torch.from_numpy(np.ascontiguousarray(b, np.float32)),
                torch.from_numpy(np.ascontiguousarray(label, np.int64)))
