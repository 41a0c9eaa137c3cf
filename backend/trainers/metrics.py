"""Segmentation accuracy from a confusion matrix: OA, per-class IoU, mIoU, producer's/user's accuracy, kappa.

Rows of the confusion matrix are reference (true) classes, columns are predictions; both are indexes
0..K-1 into the model's class list. Pixels carrying the ignore value never enter the matrix.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch


def confusion_matrix(target, prediction, num_classes: int, ignore_index: int = -1) -> np.ndarray:
    """Counts of (true, predicted) index pairs as an int64 [K, K] array; accepts numpy arrays or tensors."""
    if isinstance(target, torch.Tensor):
        target = target.detach().cpu().numpy()
    if isinstance(prediction, torch.Tensor):
        prediction = prediction.detach().cpu().numpy()
    target = np.asarray(target).reshape(-1).astype(np.int64)
    prediction = np.asarray(prediction).reshape(-1).astype(np.int64)
    if target.shape != prediction.shape:
        raise ValueError(f"target has {target.size} pixels but prediction has {prediction.size}")
    keep = (target != ignore_index) & (target >= 0) & (target < num_classes)
    pairs = target[keep] * num_classes + np.clip(prediction[keep], 0, num_classes - 1)
    return np.bincount(pairs, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def _safe_ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """numerator / denominator with NaN where the denominator is zero (class absent: undefined, not 0)."""
    out = np.full(numerator.shape, np.nan, dtype=np.float64)
    nonzero = denominator > 0
    out[nonzero] = numerator[nonzero] / denominator[nonzero]
    return out


def _as_list(values: np.ndarray) -> list:
    """JSON-friendly floats with None for undefined entries."""
    return [None if np.isnan(v) else float(v) for v in values]


def scores_from_confusion(matrix: np.ndarray, class_names: Sequence[str] | None = None) -> dict:
    """All summary figures for one confusion matrix (JSON-serialisable).

    mIoU averages only over classes present in the reference or the prediction, so a class that
    never occurs in a small validation set does not drag the mean to zero.
    """
    matrix = np.asarray(matrix, dtype=np.float64)
    num_classes = matrix.shape[0]
    names = list(class_names) if class_names is not None else [str(i) for i in range(num_classes)]
    true_positive = np.diag(matrix)
    reference_total = matrix.sum(axis=1)
    predicted_total = matrix.sum(axis=0)
    total = matrix.sum()
    iou = _safe_ratio(true_positive, reference_total + predicted_total - true_positive)
    producers = _safe_ratio(true_positive, reference_total)   # recall per class
    users = _safe_ratio(true_positive, predicted_total)       # precision per class
    f1 = _safe_ratio(2 * true_positive, reference_total + predicted_total)
    overall = float(true_positive.sum() / total) if total > 0 else float("nan")
    expected = float((reference_total * predicted_total).sum() / total ** 2) if total > 0 else float("nan")
    kappa = (overall - expected) / (1 - expected) if total > 0 and expected < 1 else float("nan")
    present = ~np.isnan(iou)
    return {
        "overall_accuracy": overall,
        "miou": float(np.mean(iou[present])) if present.any() else float("nan"),
        "mean_f1": float(np.nanmean(f1)) if present.any() else float("nan"),
        "kappa": float(kappa),
        "pixels": int(total),
        "class_names": names,
        "iou": _as_list(iou),
        "producers_accuracy": _as_list(producers),
        "users_accuracy": _as_list(users),
        "f1": _as_list(f1),
        "support": [int(v) for v in reference_total],
        "confusion_matrix": matrix.astype(np.int64).tolist(),
    }


class ConfusionAccumulator:
    """Adds batches of predictions into one running confusion matrix."""

    def __init__(self, num_classes: int, ignore_index: int = -1):
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.matrix = np.zeros((num_classes, num_classes), dtype=np.int64)

    def update(self, target, prediction) -> None:
        self.matrix += confusion_matrix(target, prediction, self.num_classes, self.ignore_index)

    def scores(self, class_names: Sequence[str] | None = None) -> dict:
        return scores_from_confusion(self.matrix, class_names)


def format_scores(scores: dict, title: str = "") -> str:
    """A short plain-text table (per-class IoU and producer's accuracy) for logs and the CLI."""
    lines = [title] if title else []
    lines.append(f"  OA {scores['overall_accuracy']:.3f}  mIoU {scores['miou']:.3f}  kappa {scores['kappa']:.3f}"
                 f"  ({scores['pixels']} px)")
    for name, iou, acc, support in zip(scores["class_names"], scores["iou"],
                                       scores["producers_accuracy"], scores["support"]):
        iou_text = "  n/a" if iou is None else f"{iou:.3f}"
        acc_text = "  n/a" if acc is None else f"{acc:.3f}"
        lines.append(f"    {name:<14} IoU {iou_text}  acc {acc_text}  n={support}")
    return "\n".join(lines)
