"""`make train-default`: train the default land-cover model (skysense_seg_tiny) on the real LoveDA sample tiles.

Split: tiles 0 and 1 train on their top 3/4 and validate (model selection, early stopping) on their
bottom 1/4; tile 2 is never seen and gives the held-out accuracy stored in the model file.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

from backend.datasets.loveda import LOVEDA_GSD, loveda_palette, read_loveda_tile
from backend.datasets.scene import LabelledScene, values_to_indexes
from backend.progress import Progress
from backend.trainers.metrics import ConfusionAccumulator, format_scores
from backend.trainers.model_file import save_segmentation_model, segmentation_meta
from backend.trainers.predict import predict_classes
from backend.trainers.segmentation import TrainConfig, train_segmentation

REPO = Path(__file__).resolve().parents[2]
DEFAULT_MODEL_PATH = REPO / "resources" / "models" / "landcover_loveda_tiny.pth"
# HR imagery: ImageNet statistics in 0-255 units (the convention of the SkySense HR branch).
IMAGENET_NORMALIZATION = {"mean": [123.675, 116.28, 103.53], "std": [58.395, 57.12, 57.375]}
TRAIN_TILES = ("0", "1")
HELDOUT_TILE = "2"
VAL_ROWS = 256   # bottom rows of each training tile used for validation


def loveda_split(data_dir) -> tuple[list[LabelledScene], list[LabelledScene], LabelledScene]:
    """(train scenes, validation scenes, held-out scene) as class-index labels 0..6."""
    values = [c["value"] for c in loveda_palette()["classes"]]
    train, val = [], []
    for tile_id in TRAIN_TILES:
        image, mask = read_loveda_tile(data_dir, tile_id)
        labels = values_to_indexes(mask, values, nodata=0)
        cut = image.shape[1] - VAL_ROWS
        train.append(LabelledScene(image[:, :cut], labels[:cut], f"loveda_{tile_id}_train"))
        val.append(LabelledScene(image[:, cut:], labels[cut:], f"loveda_{tile_id}_val"))
    image, mask = read_loveda_tile(data_dir, HELDOUT_TILE)
    heldout = LabelledScene(image, values_to_indexes(mask, values, nodata=0), f"loveda_{HELDOUT_TILE}")
    return train, val, heldout


def evaluate_scene(model, scene: LabelledScene, normalization: dict, class_names, tile: int = 512,
                   overlap: int = 64) -> dict:
    """Whole-scene sliding-window accuracy against the scene's labels."""
    from backend.datasets.chips import normalise

    prediction = predict_classes(model, normalise(scene.image, normalization["mean"], normalization["std"]),
                                 tile=tile, overlap=overlap)
    accumulator = ConfusionAccumulator(len(class_names))
    accumulator.update(scene.labels, prediction)
    return accumulator.scores(class_names)


def train_default_model(data_dir, out_path=DEFAULT_MODEL_PATH, config: TrainConfig | None = None,
                        checkpoint_path=None, resume: bool = False, progress: Progress | None = None,
                        log=print) -> dict:
    """Train, evaluate on the held-out tile, write the model file; returns its metrics."""
    from models.registry import create_model

    palette = loveda_palette()
    classes = palette["classes"]
    class_names = [c["name"] for c in classes]
    config = config or TrainConfig()
    train, val, heldout = loveda_split(data_dir)
    torch.manual_seed(config.seed)
    model = create_model("skysense_seg_tiny", num_classes=len(classes), in_chans=3)
    started = time.perf_counter()
    outcome = train_segmentation(model, train, val, class_names, IMAGENET_NORMALIZATION, config,
                                 checkpoint_path=checkpoint_path, resume=resume, progress=progress, log=log)
    train_seconds = time.perf_counter() - started
    heldout_scores = evaluate_scene(outcome.model, heldout, IMAGENET_NORMALIZATION, class_names)
    log(format_scores(heldout_scores, f"held-out LoveDA tile {HELDOUT_TILE} (never seen in training)"))
    metrics = {
        "heldout": {"dataset": f"LoveDA sample tile {HELDOUT_TILE} (1024x1024, never used in training)",
                    **heldout_scores},
        "validation": {"dataset": f"LoveDA tiles {', '.join(TRAIN_TILES)}, bottom {VAL_ROWS} rows",
                       "best_epoch": outcome.best_epoch, **outcome.best_scores},
        "history": [{k: v for k, v in h.items() if k != "iou"} for h in outcome.history],
        "train_seconds": round(train_seconds, 1),
        "threads": torch.get_num_threads(),
    }
    meta = segmentation_meta(
        outcome.model, classes, IMAGENET_NORMALIZATION, bands=[1, 2, 3], tile_size=512, gsd=LOVEDA_GSD,
        metrics=metrics, name="LoveDA land cover (SkySense tiny)",
        trained_on=(f"LoveDA sample tiles {', '.join(TRAIN_TILES)} (top {1024 - VAL_ROWS} rows; bottom {VAL_ROWS} "
                    f"rows for validation), {len(outcome.history)} epochs x {config.chips_per_epoch} chips of "
                    f"{config.chip_size}px, from random initialisation"),
        nodata=0, train_config={k: v for k, v in vars(config).items()})
    save_segmentation_model(out_path, outcome.model, meta, half=True)
    log(f"wrote {out_path} ({os.path.getsize(out_path) / 1e6:.1f} MB); held-out OA "
        f"{heldout_scores['overall_accuracy']:.3f}, mIoU {heldout_scores['miou']:.3f}")
    return metrics


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", default=os.environ.get("SKYSENSE_DATA", str(REPO.parent / "shared" / "data")))
    parser.add_argument("--out", default=str(DEFAULT_MODEL_PATH))
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--chips-per-epoch", type=int, default=32)
    parser.add_argument("--chip-size", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--patience", type=int, default=15)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--color-jitter", type=float, default=0.3, help="brightness/contrast augmentation range")
    parser.add_argument("--channel-jitter", type=float, default=0.1, help="per-band gain augmentation range")
    parser.add_argument("--balanced-sampling", type=float, default=0.75, help="share of class-balanced chips")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: OMP_NUM_THREADS)")
    parser.add_argument("--checkpoint", default=str(REPO / "build" / "train_default" / "checkpoint.pth"))
    parser.add_argument("--resume", action="store_true", help="continue from --checkpoint")
    args = parser.parse_args(argv)
    config = TrainConfig(epochs=args.epochs, chip_size=args.chip_size, chips_per_epoch=args.chips_per_epoch,
                         batch_size=args.batch_size, lr=args.lr, encoder_lr_scale=1.0, weight_decay=0.05,
                         schedule="cosine", warmup_steps=20, patience=args.patience, seed=args.seed,
                         balanced_sampling=args.balanced_sampling, color_jitter=args.color_jitter,
                         channel_jitter=args.channel_jitter,
                         num_threads=args.threads)
    if not args.resume and Path(args.checkpoint).exists():
        Path(args.checkpoint).unlink()   # a fresh run must not pick up an old trajectory
    train_default_model(args.data, args.out, config, checkpoint_path=args.checkpoint, resume=args.resume,
                        log=lambda message: print(message, flush=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
