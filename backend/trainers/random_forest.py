"""Random-forest pixel classifier: the baseline most QGIS users know (Semi-Automatic Classification Plugin).

Features per pixel: the band values plus their local means over 5x5 and 15x15 windows (a little spatial
context, as SCP users get from smoothing). Trained and scored on exactly the same labels and whole-polygon
split as the deep model, so the two numbers compare like for like.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.ndimage import uniform_filter
from sklearn.ensemble import RandomForestClassifier

from backend.datasets.scene import IGNORE_INDEX, LabelledScene
from backend.trainers.metrics import ConfusionAccumulator

WINDOW_SIZES = (5, 15)


def pixel_features(image: np.ndarray) -> np.ndarray:
    """[C, H, W] raster values -> [H, W, C * (1 + len(WINDOW_SIZES))] float32 features."""
    bands = image.astype(np.float32)
    layers = [bands]
    for size in WINDOW_SIZES:
        layers.append(uniform_filter(bands, size=(1, size, size), mode="reflect"))
    return np.concatenate(layers, axis=0).transpose(1, 2, 0)


def _labelled_samples(scenes: list[LabelledScene], max_per_class: int, rng: np.random.Generator,
                      num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    features, targets = [], []
    for scene in scenes:
        mask = scene.labels != IGNORE_INDEX
        if not mask.any():
            continue
        scene_features = pixel_features(scene.image)
        features.append(scene_features[mask])
        targets.append(scene.labels[mask].astype(np.int64))
    x, y = np.concatenate(features), np.concatenate(targets)
    # Cap each class so a huge polygon does not swamp the forest (and training stays quick).
    keep = []
    for class_index in range(num_classes):
        members = np.flatnonzero(y == class_index)
        if len(members) > max_per_class:
            members = rng.choice(members, max_per_class, replace=False)
        keep.append(members)
    keep = np.concatenate(keep)
    return x[keep], y[keep]


@dataclass
class RandomForestResult:
    classifier: RandomForestClassifier
    scores: dict              # metrics.scores_from_confusion on the validation pixels
    train_pixels: int
    seconds: float


def train_random_forest(train_scenes: list[LabelledScene], val_scenes: list[LabelledScene], class_names: list[str],
                        n_estimators: int = 60, max_per_class: int = 8_000, seed: int = 0,
                        n_jobs: int = 1) -> RandomForestResult:
    """Fit on training pixels, score on every validation pixel."""
    import time

    started = time.perf_counter()
    rng = np.random.default_rng(seed)
    num_classes = len(class_names)
    x, y = _labelled_samples(train_scenes, max_per_class, rng, num_classes)
    classifier = RandomForestClassifier(n_estimators=n_estimators, min_samples_leaf=2, max_depth=18, n_jobs=n_jobs,
                                        random_state=seed, class_weight="balanced_subsample")
    classifier.fit(x, y)
    accumulator = ConfusionAccumulator(num_classes, IGNORE_INDEX)
    for scene in val_scenes:
        mask = scene.labels != IGNORE_INDEX
        if mask.any():
            accumulator.update(scene.labels[mask], classifier.predict(pixel_features(scene.image)[mask]))
    return RandomForestResult(classifier, accumulator.scores(class_names), int(len(y)),
                              round(time.perf_counter() - started, 2))


def predict_scene(classifier: RandomForestClassifier, image: np.ndarray) -> np.ndarray:
    """Class index per pixel [H, W] for a raw [C, H, W] image."""
    features = pixel_features(image)
    height, width, depth = features.shape
    return classifier.predict(features.reshape(-1, depth)).reshape(height, width)
