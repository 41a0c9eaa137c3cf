"""Train and evaluate the siamese SkySense change model on the real LEVIR-CD samples.

    python -m backend.trainers.change --data ../shared/data --out resources/models/change_levir_tiny.pth --minutes 10

--init-from MODEL.pth starts the encoder from a segmentation model's (see docs/api_change.md for what that did).

Whole pairs are held out (backend.datasets.levir.HELD_OUT_PAIRS); their F1 / IoU / precision /
recall of the change class are stored in the model file's metadata and recomputed by
``evaluate_levir`` (called by ``make eval``).
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from backend.datasets.levir import (HELD_OUT_PAIRS, LevirChangeDataset, list_levir_pairs,
                                    load_levir_pair, split_levir_pairs)

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_CHANGE_MODEL = ROOT / "resources" / "models" / "change_levir_tiny.pth"
# --init-from candidate: the bundled land-cover model (same encoder). Not the default: it raised held-out LEVIR
# F1 on one split and not on another, and it made the Joplin damage screening see far less change
# (docs/api_change.md, "Starting from the land-cover encoder").
DEFAULT_LANDCOVER_MODEL = ROOT / "resources" / "models" / "landcover_loveda_tiny.pth"
CHANGE_ARCH = "skysense_change_tiny"
CHANGE_CLASSES = [{"value": 0, "name": "no change", "color": "#00000000"},
                  {"value": 1, "name": "change", "color": "#ff00ff"}]


# SkySense normalises its HR (RGB, 0..255) branch with these statistics.
HR_MEAN = [123.675, 116.28, 103.53]
HR_STD = [58.395, 57.12, 57.375]


def hr_normalization() -> Dict[str, list]:
    """Mean/std of the HR RGB branch in raster units (0..255)."""
    return {"mean": list(HR_MEAN), "std": list(HR_STD)}


def _save(out_path: Path, model, meta: Dict[str, Any]) -> None:
    """Save as fp16 (half the size; load_model_file returns fp32)."""
    import copy

    from models.checkpoint import save_model_file

    half = copy.deepcopy(model).half()
    half.arch = getattr(model, "arch", {"name": CHANGE_ARCH, "kwargs": {}})
    save_model_file(out_path, half, meta)


def change_scores(tp: int, fp: int, fn: int) -> Dict[str, float]:
    """Precision, recall, F1 and IoU of the change class from pixel counts."""
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    iou = tp / (tp + fp + fn) if tp + fp + fn else 0.0
    return {"f1": f1, "iou": iou, "precision": precision, "recall": recall}


def change_loss(logits: torch.Tensor, target: torch.Tensor, change_weight: float = 2.0) -> torch.Tensor:
    """Weighted cross-entropy + soft Dice of the change class (change pixels are the minority)."""
    weight = torch.tensor([1.0, change_weight], device=logits.device)
    ce = F.cross_entropy(logits, target, weight=weight)
    prob = logits.softmax(1)[:, 1]
    tgt = target.float()
    dice = 1 - (2 * (prob * tgt).sum() + 1) / (prob.sum() + tgt.sum() + 1)
    return ce + dice


@torch.no_grad()
def predict_change_probability(model, a: torch.Tensor, b: torch.Tensor, symmetric: bool = True) -> torch.Tensor:
    """P(change) [B,H,W]; symmetric averages (a,b) and (b,a) since change has no direction."""
    prob = model(a, b).softmax(1)[:, 1]
    if symmetric:
        prob = 0.5 * (prob + model(b, a).softmax(1)[:, 1])
    return prob


@torch.no_grad()
def evaluate_pairs(model, pairs: Sequence, normalization: Dict[str, list], threshold: float = 0.5) -> Dict[str, Any]:
    """Pixel metrics of the change class pooled over pairs, plus per-pair F1."""
    model.eval()
    mean = np.asarray(normalization["mean"], np.float32)[:, None, None]
    std = np.asarray(normalization["std"], np.float32)[:, None, None]
    tp = fp = fn = false_change = identical_pixels = 0
    per_pair = {}
    for pair in pairs:
        image_a, image_b, label = load_levir_pair(pair)
        a = torch.from_numpy((image_a.transpose(2, 0, 1) - mean) / std)[None]
        b = torch.from_numpy((image_b.transpose(2, 0, 1) - mean) / std)[None]
        pred = (predict_change_probability(model, a, b)[0].numpy() >= threshold)
        truth = label.astype(bool)
        p_tp, p_fp, p_fn = int((pred & truth).sum()), int((pred & ~truth).sum()), int((~pred & truth).sum())
        tp, fp, fn = tp + p_tp, fp + p_fp, fn + p_fn
        per_pair[pair.name] = round(change_scores(p_tp, p_fp, p_fn)["f1"], 4)
        # Sanity check without labels: each date against itself must show no change.
        for image in (a, b):
            false_change += int((predict_change_probability(model, image, image)[0].numpy() >= threshold).sum())
            identical_pixels += image.shape[-2] * image.shape[-1]
    scores = {k: round(v, 4) for k, v in change_scores(tp, fp, fn).items()}
    scores.update({"pairs": [p.name for p in pairs], "per_pair_f1": per_pair, "threshold": threshold,
                   "identical_pair_false_change_rate": round(false_change / max(identical_pixels, 1), 4)})
    return scores


def copy_encoder(model: torch.nn.Module, model_file: str | Path) -> str:
    """Load the encoder (backbone.*) of a model file into `model`; every encoder weight must match by name
    and shape. Returns the source model's name."""
    from backend.errors import InputError
    from models.checkpoint import load_model_file

    source, meta = load_model_file(model_file)
    encoder = {k: v for k, v in source.state_dict().items() if k.startswith("backbone.")}
    target = model.state_dict()
    wanted = {k for k in target if k.startswith("backbone.")}
    mismatched = sorted(k for k in wanted if k not in encoder or encoder[k].shape != target[k].shape)
    if not encoder or mismatched:
        raise InputError(f"{model_file}: its encoder does not fit this change model "
                         f"({len(mismatched)} weights missing or of another shape, e.g. {mismatched[:3]})")
    model.load_state_dict(encoder, strict=False)
    return str(meta.get("name") or Path(model_file).name)


def train_change(data_dir: str | Path, out_path: str | Path = DEFAULT_CHANGE_MODEL, minutes: float = 9.0,
                 batch_size: int = 4, crop: int = 128, lr: float = 6e-4, seed: int = 0,
                 held_out: Sequence[str] = HELD_OUT_PAIRS, arch: str = CHANGE_ARCH,
                 identical_prob: float = 0.2, init_from: str | Path | None = None,
                 log: Callable[[str], None] = print) -> Dict[str, Any]:
    """Train on the non-held-out LEVIR-CD pairs within a wall-clock budget, evaluate, save the model file.
    init_from: a segmentation model file whose encoder (same architecture) starts the change model's."""
    from models.registry import create_model

    torch.manual_seed(seed)
    pairs = list_levir_pairs(data_dir)
    train_pairs, test_pairs = split_levir_pairs(pairs, held_out)
    norm = hr_normalization()
    dataset = LevirChangeDataset(train_pairs, norm["mean"], norm["std"], augment=True, crop=crop,
                                 repeats=8, seed=seed, identical_prob=identical_prob)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=True, drop_last=True)
    model = create_model(arch)
    init_note = ""
    if init_from:
        init_note = ", encoder initialised from " + copy_encoder(model, init_from)
        log(f"encoder initialised from {init_from}")
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    budget_s = minutes * 60.0
    start = time.monotonic()
    step, epoch, running = 0, 0, None
    log(f"training {arch} on {len(train_pairs)} pairs, holding out {[p.name for p in test_pairs]}, "
        f"budget {minutes:.1f} min")
    while time.monotonic() - start < budget_s:
        model.train()
        for a, b, target in loader:
            elapsed = time.monotonic() - start
            if elapsed >= budget_s:
                break
            # Cosine decay over the wall-clock budget (the number of steps is not known in advance).
            for group in optimizer.param_groups:
                group["lr"] = lr * 0.5 * (1 + np.cos(np.pi * min(elapsed / budget_s, 1.0)))
            loss = change_loss(model(a, b), target)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            running = loss.item() if running is None else 0.9 * running + 0.1 * loss.item()
            step += 1
            if step % 20 == 0:
                log(f"epoch {epoch} step {step} loss {running:.4f} ({elapsed:.0f}s)")
        epoch += 1
    train_seconds = time.monotonic() - start
    metrics = evaluate_pairs(model, test_pairs, norm)
    metrics.update({"train_pairs": [p.name for p in train_pairs], "steps": step,
                    "train_seconds": round(train_seconds, 1), "final_loss": round(running or 0.0, 4)})
    log(f"held-out metrics: {json.dumps({k: metrics[k] for k in ('f1', 'iou', 'precision', 'recall')})}")
    meta = {
        "format": "skysense-qgis/1", "task": "change",
        "classes": CHANGE_CLASSES,
        "bands": {"hr": [1, 2, 3]},
        "normalization": {"hr": norm},
        "tile_size": 256, "gsd": 0.5, "threshold": 0.5,
        "metrics": {"levir_heldout": metrics},
        "trained_on": (f"LEVIR-CD samples ({len(train_pairs)} pairs of 256x256 RGB, 0.5 m), "
                       f"{step} steps, {train_seconds / 60:.1f} min CPU, augmentation: crops, flips, rot90, "
                       f"A/B swap, identical-date pairs ({identical_prob:.0%}), brightness{init_note}"),
    }
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    _save(out_path, model, meta)
    log(f"saved {out_path}")
    return metrics


def evaluate_levir(data_dir: str | Path, model_path: str | Path | None = None,
                   held_out: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    """F1, IoU, precision, recall of the change class on the held-out LEVIR-CD pairs (committed model)."""
    from models.checkpoint import load_model_file

    model_path = Path(model_path or DEFAULT_CHANGE_MODEL)
    model, meta = load_model_file(model_path)
    stored = meta.get("metrics", {}).get("levir_heldout", {})
    held_out = held_out or stored.get("pairs") or HELD_OUT_PAIRS
    _, test_pairs = split_levir_pairs(list_levir_pairs(data_dir), held_out)
    metrics = evaluate_pairs(model, test_pairs, meta["normalization"]["hr"], float(meta.get("threshold", 0.5)))
    metrics["model"] = str(model_path)
    return metrics


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="folder holding levir_cd/ (or the levir_cd folder)")
    parser.add_argument("--out", default=str(DEFAULT_CHANGE_MODEL))
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--crop", type=int, default=128)
    parser.add_argument("--lr", type=float, default=6e-4)
    parser.add_argument("--init-from", default=None,
                        help="segmentation model file whose encoder starts the change model's (same architecture), "
                             f"e.g. {DEFAULT_LANDCOVER_MODEL.relative_to(ROOT)}; default: from scratch, as the "
                             "bundled change model was trained")
    parser.add_argument("--evaluate", action="store_true", help="only evaluate --out on the held-out pairs")
    args = parser.parse_args(argv)
    if args.evaluate:
        print(json.dumps(evaluate_levir(args.data, args.out), indent=1))
    else:
        train_change(args.data, args.out, args.minutes, args.batch_size, args.crop, args.lr, init_from=args.init_from)


if __name__ == "__main__":
    main()
