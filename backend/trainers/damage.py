"""Train a SkySense DamageModel on xBD-format data (see backend.trainers.damage_data).

    python -m backend.trainers.damage --data /path/to/xbd/tier1 --out damage_xbd_tiny.pth --minutes 60 \
        --init-from resources/models/change_levir_tiny.pth

No xBD data ships with the project; the resulting file (task "damage") is what
``backend.pipelines.damage.run_damage(model=...)`` uses instead of the change-model rule.
Validation: every 5th sample (by name) is held out; xView2 scores are stored in the metadata.
"""
from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from backend.errors import InputError
from backend.trainers.damage_data import IGNORE, XbdDamageDataset, list_xbd_samples, load_xbd_sample

DAMAGE_ARCH = "skysense_damage_tiny"
# Pixel class weights (background, no, minor, major, destroyed): minor/major are rare and hard.
CLASS_WEIGHTS = (0.5, 1.0, 3.0, 2.0, 2.0)


def _f1(tp: float, fp: float, fn: float) -> float:
    return 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0


def xview2_scores(pred: np.ndarray, target: np.ndarray) -> Dict[str, float]:
    """xView2 metric: localisation F1 (building vs background), damage F1 = harmonic mean of the
    per-class F1 on ground-truth building pixels, score = 0.3 * loc + 0.7 * damage."""
    keep = target != IGNORE
    pred, target = pred[keep], target[keep]
    loc = _f1(float(((pred > 0) & (target > 0)).sum()), float(((pred > 0) & (target == 0)).sum()),
              float(((pred == 0) & (target > 0)).sum()))
    on_building = target > 0
    per_class = []
    for k in range(1, 5):
        p, t = pred[on_building] == k, target[on_building] == k
        per_class.append(_f1(float((p & t).sum()), float((p & ~t).sum()), float((~p & t).sum())))
    damage = len(per_class) / sum(1.0 / max(f, 1e-6) for f in per_class)
    return {"localization_f1": round(loc, 4), "damage_f1": round(damage, 4),
            "score": round(0.3 * loc + 0.7 * damage, 4),
            "per_class_f1": {name: round(f, 4) for name, f in
                             zip(("no damage", "minor damage", "major damage", "destroyed"), per_class)}}


def init_backbone(model: torch.nn.Module, path: str | Path) -> int:
    """Copy the HR encoder weights of another project model file (change or segmentation)."""
    from models.checkpoint import load_model_file

    source, _ = load_model_file(path)
    state = {k: v for k, v in source.backbone.state_dict().items()}
    target = model.backbone.state_dict()
    fitting = {k: v for k, v in state.items() if k in target and target[k].shape == v.shape}
    if not fitting:
        raise InputError(f"{path} has no encoder weights that fit {DAMAGE_ARCH}")
    model.backbone.load_state_dict(fitting, strict=False)
    return len(fitting)


@torch.no_grad()
def evaluate_xbd(model, samples, normalization: Dict[str, list]) -> Dict[str, Any]:
    model.eval()
    mean = np.asarray(normalization["mean"], np.float32)[:, None, None]
    std = np.asarray(normalization["std"], np.float32)[:, None, None]
    preds, targets = [], []
    for sample in samples:
        pre, post, mask = load_xbd_sample(sample)
        a = torch.from_numpy((pre.transpose(2, 0, 1) - mean) / std)[None]
        b = torch.from_numpy((post.transpose(2, 0, 1) - mean) / std)[None]
        preds.append(model(a, b).argmax(1)[0].numpy().ravel())
        targets.append(mask.ravel())
    return xview2_scores(np.concatenate(preds), np.concatenate(targets))


def train_damage(data_dir: str | Path, out_path: str | Path, minutes: float = 10.0, init_from: Optional[str] = None,
                 batch_size: int = 4, crop: int = 256, lr: float = 3e-4, seed: int = 0, arch: str = DAMAGE_ARCH,
                 max_steps: Optional[int] = None, log: Callable[[str], None] = print) -> Dict[str, Any]:
    """Train within a wall-clock budget (or max_steps), validate on every 5th sample, save the model file."""
    from models.checkpoint import save_model_file
    from models.normalization import get_normalization
    from models.registry import create_model
    from backend.pipelines.damage import damage_classes

    torch.manual_seed(seed)
    samples = list_xbd_samples(data_dir)
    val = samples[::5] if len(samples) >= 2 else []
    train = [s for s in samples if s not in val]
    if not train:
        raise InputError(f"not enough xBD samples under {data_dir} to train ({len(samples)} found)")
    norm = get_normalization("hr")
    dataset = XbdDamageDataset(train, norm["mean"], norm["std"], crop=crop, repeats=4, seed=seed)
    loader = torch.utils.data.DataLoader(dataset, batch_size=min(batch_size, len(dataset)), shuffle=True,
                                         drop_last=True)
    model = create_model(arch)
    if init_from:
        log(f"encoder initialised from {init_from} ({init_backbone(model, init_from)} tensors)")
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    weights = torch.tensor(CLASS_WEIGHTS)
    budget, start, step = minutes * 60.0, time.monotonic(), 0
    done = False
    while not done:
        model.train()
        for pre, post, mask in loader:
            elapsed = time.monotonic() - start
            if elapsed >= budget or (max_steps is not None and step >= max_steps):
                done = True
                break
            for group in optimizer.param_groups:
                group["lr"] = lr * 0.5 * (1 + np.cos(np.pi * min(elapsed / budget, 1.0)))
            loss = F.cross_entropy(model(pre, post), mask, weight=weights, ignore_index=IGNORE)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            step += 1
            if step % 20 == 0:
                log(f"step {step} loss {loss.item():.4f} ({elapsed:.0f}s)")
    metrics: Dict[str, Any] = {"steps": step, "train_samples": len(train), "val_samples": len(val),
                               "train_seconds": round(time.monotonic() - start, 1)}
    if val:
        metrics["xbd_val"] = evaluate_xbd(model, val, norm)
        log(f"validation: {json.dumps(metrics['xbd_val'])}")
    classes = [{"value": 0, "name": "background", "color": "#00000000"}] + damage_classes()
    meta = {"task": "damage", "classes": classes, "bands": {"hr": [1, 2, 3]}, "normalization": {"hr": norm},
            "tile_size": 512, "metrics": metrics,
            "trained_on": f"xBD-format data at {data_dir} ({len(train)} samples, {step} steps)"
                          + (f", encoder from {init_from}" if init_from else "")}
    half = copy.deepcopy(model).half()
    half.arch = model.arch
    save_model_file(out_path, half, meta)
    log(f"saved {out_path}")
    return metrics


def evaluate_joplin(data_dir: str | Path, model_path: Optional[str] = None) -> Dict[str, Any]:
    """`make eval` row for damage on the real Joplin tiles (no damage labels exist: this reports what
    can be checked): buildings assessed, class counts, mean confidence, and the false change rate of
    the change model on an identical pair (pre against itself; should be ~0)."""
    import tempfile

    import rasterio

    from backend.pipelines.change import run_change
    from backend.pipelines.damage import run_damage

    from backend.datasets.joplin import joplin_sample

    sample = joplin_sample(data_dir)
    pre, post = sample.pre, sample.post
    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="skysense-eval-damage-") as tmp:
        result = run_damage({"pre": pre, "post": post, "buildings": sample.buildings,
                             "model": model_path, "output_dir": tmp})
        seconds = time.monotonic() - start
        same = run_change({"pre": pre[0], "post": pre[0], "model": None, "output_dir": tmp, "name": "same",
                           "vectorize": False})
        with rasterio.open(next(o["path"] for o in same["outputs"] if o["role"] == "change")) as src:
            mask = src.read(1)
    m = result["metrics"]
    row = {"buildings_assessed": m["buildings_assessed"], "mean_confidence": m["mean_confidence"],
           "identical_pair_false_change_rate": round(float((mask == 1).sum()) / max(int((mask != 255).sum()), 1), 5),
           "seconds": round(seconds, 1)}
    row.update({name.replace(" ", "_"): count for name, count in m["damage_counts"].items()})
    row["method"] = m["method"]
    row["labels"] = "none for Joplin: the class counts are a distribution, not an accuracy"
    return row


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="xBD folder with images/ and labels/")
    parser.add_argument("--out", required=True)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--init-from", default=None, help="change or land-cover model file to take the encoder from")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--crop", type=int, default=256)
    parser.add_argument("--lr", type=float, default=3e-4)
    args = parser.parse_args(argv)
    train_damage(args.data, args.out, args.minutes, args.init_from, args.batch_size, args.crop, args.lr)


if __name__ == "__main__":
    main()
