"""Fine-tuning a segmentation model on user-digitised polygons, with a random-forest baseline on the same labels.

A transfer, not a retraining: classes the base model knows (same name) keep their classifier weights, the
pretrained decoder and encoder learn at 1e-4 and 1e-5, BatchNorm layers keep the base model's running
statistics (batches of a few chips around sparse polygons would re-estimate them from noise), and the base
model is scored on the held-out polygons first: an epoch has to beat it, otherwise the base weights are kept.
The loss is plain cross-entropy on the labelled pixels (no inverse-frequency class weights, which pushed the
base model towards the rarer classes everywhere).

    python -m backend.trainers.finetune --raster scene.tif --labels polygons.gpkg --class-field class \
        --output-dir out/ [--base-model model.pth] [--epochs 10] [--freeze-encoder] [--resume]
"""
from __future__ import annotations

import argparse
import copy
import re
import sys
from pathlib import Path
from typing import Callable, Optional

import rasterio
import torch

from backend.datasets.polygons import build_polygon_dataset
from backend.errors import InputError, OutputError
from backend.progress import Progress
from backend.trainers.metrics import format_scores
from backend.trainers.model_file import save_segmentation_model, segmentation_meta
from backend.trainers.random_forest import train_random_forest
from backend.trainers.segmentation import TrainConfig, train_segmentation

REPO = Path(__file__).resolve().parents[2]
DEFAULT_BASE_MODEL = REPO / "resources" / "models" / "landcover_loveda_tiny.pth"
CLASSIFIER_KEY = "conv_seg"   # the final 1x1 convolution of the decode head (replaced when classes change)
PRETRAINED_LR = 1e-4          # decoder (and classifier rows taken from the base model); encoder at a tenth
NEW_CLASSIFIER_LR = 1e-3      # classifier when some class is new to the base model (its row starts random)


def load_base_model(path) -> tuple[torch.nn.Module, dict]:
    """A segmentation model file -> (model, meta); InputError when it is missing, corrupt or another task."""
    from models.checkpoint import CheckpointError, load_model_file

    path = Path(path)
    if not path.exists():
        raise InputError(f"base model {path} does not exist")
    try:
        model, meta = load_model_file(path)
    except CheckpointError as exc:
        raise InputError(str(exc)) from exc
    if meta.get("task") != "segmentation":
        raise InputError(f"base model {path.name} is a {meta.get('task')!r} model; fine-tuning needs a "
                         "segmentation (land-cover) model")
    return model, meta


def base_class_rows(base_meta: dict, classes: list[dict]) -> list[Optional[int]]:
    """For each class, the index of the base model's class of the same name (case-insensitive), or None."""
    lookup = {}
    for index, cls in enumerate(base_meta.get("classes", [])):
        lookup.setdefault(str(cls["name"]).strip().lower(), index)
    return [lookup.get(str(cls["name"]).strip().lower()) for cls in classes]


def adapt_head(base: torch.nn.Module, base_meta: dict, classes: list[dict]) -> tuple[torch.nn.Module, bool]:
    """The base model, or a copy with a new classifier when the class list differs. Returns (model, replaced).

    Backbone and decoder are reused; in the new classifier, each class the base model knows by name starts
    from the base model's weights for that class (so an untrained copy already maps those classes as the
    base model does), and only classes new to it start random."""
    from models.registry import create_model

    base_names = [c["name"] for c in base_meta.get("classes", [])]
    if base_names == [c["name"] for c in classes]:
        return base, False
    arch = copy.deepcopy(base_meta["arch"])
    kwargs = dict(arch.get("kwargs") or {})
    kwargs["num_classes"] = len(classes)
    model = create_model(arch["name"], **kwargs)
    own = model.state_dict()
    reused = {k: v for k, v in base.state_dict().items()
              if CLASSIFIER_KEY not in k and k in own and own[k].shape == v.shape}
    model.load_state_dict(reused, strict=False)
    rows = base_class_rows(base_meta, classes)
    base_state = base.state_dict()
    with torch.no_grad():
        for key, value in model.state_dict().items():
            source = base_state.get(key)
            if CLASSIFIER_KEY not in key or source is None or source.shape[1:] != value.shape[1:]:
                continue
            for index, row in enumerate(rows):
                if row is not None and row < source.shape[0]:
                    value[index] = source[row]   # state_dict tensors share storage with the parameters
    return model, True


def _safe_name(name: str) -> str:
    cleaned = re.sub(r"[^A-Za-z0-9_.-]+", "_", str(name)).strip("._")
    if not cleaned:
        raise InputError(f"output name {name!r} has no usable characters")
    return cleaned


def finetune_on_polygons(raster, labels, class_field: str, output_dir, *, name: str = "finetuned",
                         base_model=None, epochs: int = 10, freeze_encoder: bool = False, resume: bool = False,
                         layer: Optional[str] = None, chip_size: int = 256, chips_per_epoch: int = 32,
                         batch_size: int = 4, lr: Optional[float] = None, patience: int = 5,
                         freeze_bn: bool = True,
                         val_fraction: float = 0.25, seed: int = 0, device: str = "cpu",
                         compare_random_forest: bool = True, rf_trees: int = 60,
                         progress: Optional[Progress] = None,
                         log: Optional[Callable[[str], None]] = None) -> dict:
    """Train on the polygons and return the pipeline result dict (model path, metrics, loss curve, RF baseline)."""
    progress = progress or Progress()
    log = log or (lambda message: None)
    name = _safe_name(name)
    output_dir = Path(output_dir)
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create output folder {output_dir}: {exc}") from exc

    progress.update(0.01, "loading base model")
    base_path = Path(base_model) if base_model else DEFAULT_BASE_MODEL
    base, base_meta = load_base_model(base_path)
    bands = list(base_meta.get("bands", {}).get("hr") or range(1, int(getattr(base, "in_chans", 3)) + 1))
    normalization = base_meta["normalization"]["hr"]

    progress.update(0.03, "rasterising polygons")
    dataset = build_polygon_dataset(raster, labels, class_field, bands=bands, layer=layer,
                                    palette_classes=base_meta.get("classes"), chip_size=chip_size,
                                    val_fraction=val_fraction, seed=seed)
    with rasterio.open(raster) as source:
        gsd = float(abs(source.transform.a))
        dtype = source.dtypes[bands[0] - 1]
    if dtype != "uint8" and max(normalization["mean"]) > 1.0:
        # The base model's statistics are in 8-bit units; other ranges shift every input value.
        dataset.notes.append(f"the raster holds {dtype} values but the base model was normalised for 8-bit "
                             "imagery; rescale the raster to 0-255 for best results")
    for note in dataset.notes:
        log(note)
    smallest = min(min(s.labels.shape) for s in dataset.train + dataset.val)
    chip = min(chip_size, (smallest // 32) * 32)
    if chip < 64:
        raise InputError(f"the raster around the polygons is only {smallest} pixels wide; at least 64 are needed")
    class_names = [c["name"] for c in dataset.classes]
    log(f"{len(dataset.classes)} classes, {len(dataset.train_polygons)} training / {len(dataset.val_polygons)} "
        f"validation polygons, pixels per class train {dataset.pixel_counts['train']} val {dataset.pixel_counts['val']}")

    model, replaced = adapt_head(base, base_meta, dataset.classes)
    rows = [0] * len(dataset.classes) if not replaced else base_class_rows(base_meta, dataset.classes)
    new_classes = [c["name"] for c, row in zip(dataset.classes, rows) if row is None]
    if new_classes:
        log(f"class(es) new to the base model, learnt from scratch: {', '.join(new_classes)}")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    # Learning rates: lr is the classifier's; the pretrained decoder and encoder always learn at PRETRAINED_LR
    # and a tenth of it with the default lr. A classifier with a random row needs the larger rate (and a warmup
    # while its gradients are large); one made of the base model's rows is as pretrained as the decoder.
    classifier_lr = float(lr) if lr else (NEW_CLASSIFIER_LR if new_classes else PRETRAINED_LR)
    decoder_scale = PRETRAINED_LR / (NEW_CLASSIFIER_LR if new_classes else PRETRAINED_LR)
    steps_per_epoch = -(-int(chips_per_epoch) // int(batch_size))
    config = TrainConfig(epochs=int(epochs), chip_size=chip, chips_per_epoch=chips_per_epoch, batch_size=batch_size,
                         lr=classifier_lr, decoder_lr_scale=decoder_scale, encoder_lr_scale=0.1 * decoder_scale,
                         freeze_encoder=freeze_encoder, freeze_bn=freeze_bn, eval_initial=True,
                         # Unweighted loss: inverse-frequency weights from a few polygons (whose areas say
                         # nothing about the scene's class shares) override the base model's learnt priors and
                         # make it over-predict the rarer classes everywhere; class-balanced chip sampling
                         # still shows it every class.
                         class_balance=False,
                         patience=patience, seed=seed, device=device,
                         warmup_steps=steps_per_epoch if new_classes else 0)
    checkpoint = output_dir / f"{name}_checkpoint.pth"
    if not resume and checkpoint.exists():
        checkpoint.unlink()   # a new run must not continue an old one
    outcome = train_segmentation(model, dataset.train, dataset.val, class_names, normalization, config,
                                 checkpoint_path=checkpoint, resume=resume,
                                 progress=progress.sub(0.05, 0.85), log=log)
    scores = outcome.best_scores

    initial = outcome.initial_scores
    base_scores = None if initial is None else {
        "miou": initial["miou"], "overall_accuracy": initial["overall_accuracy"], "kappa": initial["kappa"],
        "confusion_matrix": initial["confusion_matrix"], "iou": initial["iou"]}

    rf_scores = None
    if compare_random_forest:
        progress.update(0.87, "training the random-forest baseline")
        rf = train_random_forest(dataset.train, dataset.val, class_names, n_estimators=rf_trees, seed=seed)
        rf_scores = {**rf.scores, "train_pixels": rf.train_pixels, "seconds": rf.seconds}
        log(format_scores(rf_scores, "random forest (same validation polygons)"))

    progress.update(0.95, "writing the model file")
    loss_curve = [{"epoch": h["epoch"], "train_loss": h["train_loss"], "val_loss": h["val_loss"],
                   "miou": h["miou"], "overall_accuracy": h["overall_accuracy"]} for h in outcome.history]
    metrics = {
        "validation": {"dataset": f"{len(dataset.val_polygons)} held-out polygons", "best_epoch": outcome.best_epoch,
                       **scores},
        "random_forest": rf_scores,
        "base_model": base_scores,
        "history": loss_curve,
    }
    model_path = output_dir / f"{name}.pth"
    meta = segmentation_meta(outcome.model, dataset.classes, normalization, bands=bands,
                             tile_size=int(base_meta.get("tile_size", 512)), gsd=gsd, metrics=metrics,
                             trained_on=f"fine-tuned from {base_path.name} on {Path(labels).name} "
                                        f"(field {class_field!r}) over {Path(raster).name}",
                             name=name, nodata=0, base_model=str(base_path))
    save_segmentation_model(model_path, outcome.model, meta)
    progress.update(1.0, f"done: validation mIoU {scores['miou']:.3f}")

    per_class = []
    for index, cls in enumerate(dataset.classes):
        per_class.append({
            "value": cls["value"], "name": cls["name"], "color": cls["color"],
            "train_pixels": dataset.pixel_counts["train"][index], "val_pixels": dataset.pixel_counts["val"][index],
            "iou": scores["iou"][index], "accuracy": scores["producers_accuracy"][index],
            "rf_iou": rf_scores["iou"][index] if rf_scores else None,
            "rf_accuracy": rf_scores["producers_accuracy"][index] if rf_scores else None,
        })
    return {
        "outputs": [{"path": str(model_path.resolve()), "kind": "model", "role": "model"}],
        "model": str(model_path.resolve()),
        "checkpoint": str(checkpoint.resolve()),
        "classes": dataset.classes,
        "metrics": {
            "miou": scores["miou"], "overall_accuracy": scores["overall_accuracy"], "kappa": scores["kappa"],
            "confusion_matrix": scores["confusion_matrix"], "class_names": class_names,
            "best_epoch": outcome.best_epoch, "epochs_run": len(outcome.history),
            "stopped_early": outcome.stopped_early, "resumed_from_epoch": outcome.resumed_from,
            "head_replaced": replaced, "new_classes": new_classes, "freeze_encoder": freeze_encoder,
            "freeze_bn": freeze_bn,
            "base_model": base_scores,
            "random_forest": None if rf_scores is None else {
                "miou": rf_scores["miou"], "overall_accuracy": rf_scores["overall_accuracy"],
                "kappa": rf_scores["kappa"], "confusion_matrix": rf_scores["confusion_matrix"]},
        },
        "loss_curve": loss_curve,
        "per_class": per_class,
        "train_polygons": dataset.train_polygons, "val_polygons": dataset.val_polygons,
        "notes": dataset.notes,
        "device": device,
    }


def _cell(value, width: int, digits: int) -> str:
    """A right-aligned number, or n/a where the JSON form of a result holds null (NaN)."""
    return f"{'n/a':>{width}}" if value is None else f"{value:>{width}.{digits}f}"


def format_finetune_result(result: dict) -> str:
    """Plain-text summary for the CLI: loss curve (best epoch marked *), then fine-tuned vs random forest vs the
    untrained base model (its weights for the same classes) on the validation polygons, per class.

    Accepts the trainer's result and its JSON form (NaN there is null)."""
    metrics = result["metrics"]
    lines = [f"model: {result['model']}"]
    if metrics.get("resumed_from_epoch"):
        lines.append(f"resumed after epoch {metrics['resumed_from_epoch']} from {result.get('checkpoint')}")
    if metrics.get("best_epoch") == 0:
        lines.append("no epoch beat the base model on the validation polygons: the base model's weights are kept")
    lines.append("epoch  train_loss  val_loss  val_mIoU")
    for point in result["loss_curve"]:
        lines.append(f"{point['epoch']:>5}  {_cell(point['train_loss'], 10, 4)}  {_cell(point['val_loss'], 8, 4)}  "
                     f"{_cell(point['miou'], 8, 3)}" + (" *" if point["epoch"] == metrics.get("best_epoch") else ""))
    rf = metrics.get("random_forest") or {}
    base = metrics.get("base_model") or {}
    base_iou = base.get("iou") or [None] * len(result["per_class"])
    lines.append(f"{'':<16}{'fine-tuned':>12}{'random forest':>15}{'base model':>12}")
    for label, key in (("OA", "overall_accuracy"), ("mIoU", "miou")):
        lines.append(f"{label:<16}{_cell(metrics[key], 12, 3)}{_cell(rf.get(key), 15, 3)}{_cell(base.get(key), 12, 3)}")
    for row, iou in zip(result["per_class"], base_iou):
        lines.append(f"{'IoU ' + row['name'][:12]:<16}{_cell(row['iou'], 12, 3)}{_cell(row.get('rf_iou'), 15, 3)}"
                     f"{_cell(iou, 12, 3)}")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Fine-tune a land-cover model on labelled polygons.")
    parser.add_argument("--raster", required=True)
    parser.add_argument("--labels", required=True)
    parser.add_argument("--class-field", required=True)
    parser.add_argument("--output-dir", required=True)
    parser.add_argument("--name", default="finetuned")
    parser.add_argument("--base-model", default=None)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--freeze-encoder", action="store_true")
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--layer", default=None)
    args = parser.parse_args(argv)
    result = finetune_on_polygons(args.raster, args.labels, args.class_field, args.output_dir, name=args.name,
                                  base_model=args.base_model, epochs=args.epochs,
                                  freeze_encoder=args.freeze_encoder, resume=args.resume, layer=args.layer,
                                  log=lambda message: print(message, flush=True))
    print(format_finetune_result(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
