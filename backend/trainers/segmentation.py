"""Segmentation training loop: label-centred chips, augmentation, AdamW + cosine/poly schedule, optional frozen
encoder, per-epoch validation (IoU, mIoU, OA, confusion matrix), atomic per-epoch checkpoints with exact
resume, and early stopping on validation mIoU.

For fine-tuning a pretrained model (see backend/trainers/finetune.py) three settings matter: `freeze_bn`
keeps every BatchNorm layer in eval mode (its running statistics stay the pretrained ones instead of being
re-estimated from batches of a few chips around sparse polygons), `decoder_lr_scale`/`encoder_lr_scale` give
the pretrained parts a smaller learning rate than the classifier, and `eval_initial` scores the starting
weights first, so that they are returned unchanged (best epoch 0) when no epoch beats them on validation.

Every epoch draws its chips and augmentations from seed + epoch, so a run resumed from a checkpoint
follows the same trajectory as an uninterrupted one.
"""
from __future__ import annotations

import dataclasses
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
import torch.nn.functional as F

from backend.datasets.augment import augment_batch
from backend.datasets.chips import ChipSampler, normalise, stack_chips
from backend.datasets.scene import IGNORE_INDEX, LabelledScene, class_histogram
from backend.errors import InputError
from backend.progress import Progress
from backend.trainers.metrics import ConfusionAccumulator, format_scores

CHECKPOINT_FORMAT = "skysense-qgis-train/1"
CLASSIFIER_KEY = "conv_seg"   # parameter names of the final 1x1 classifier convolution contain this


@dataclass
class TrainConfig:
    """Everything that defines a training run (stored in checkpoints)."""
    epochs: int = 10
    chip_size: int = 256
    chips_per_epoch: int = 64
    batch_size: int = 4
    lr: float = 3e-4                  # learning rate of the classifier (the decode head's final 1x1 conv)
    encoder_lr_scale: float = 0.1     # encoder learns slower than the new head when unfrozen
    decoder_lr_scale: float = 1.0     # rest of the decode head (below 1 when it is pretrained)
    weight_decay: float = 0.01
    schedule: str = "cosine"          # "cosine" or "poly"
    warmup_steps: int = 0
    freeze_encoder: bool = False
    freeze_bn: bool = False           # BatchNorm layers in eval mode: pretrained running statistics kept
    eval_initial: bool = False        # validate the starting weights; keep them (best epoch 0) unless beaten
    patience: int = 5                 # epochs without mIoU gain before stopping; 0 = never stop early
    min_delta: float = 1e-4
    class_balance: bool = True        # inverse-sqrt-frequency loss weights
    augment: bool = True
    color_jitter: float = 0.1         # brightness/contrast range of the augmentation
    channel_jitter: float = 0.0       # per-band gain range (colour shifts between images)
    balanced_sampling: float = 0.5    # share of chips centred on a uniformly drawn class (rare classes seen)
    seed: int = 0
    num_threads: Optional[int] = None  # None: keep torch's setting (which follows OMP_NUM_THREADS)
    val_chip_size: Optional[int] = None
    device: str = "cpu"

    def __post_init__(self):
        if self.schedule not in ("cosine", "poly"):
            raise InputError(f"unknown learning-rate schedule {self.schedule!r}; use 'cosine' or 'poly'")
        if self.epochs < 1:
            raise InputError(f"epochs must be at least 1, got {self.epochs}")
        if self.chip_size % 32:
            raise InputError(f"chip size must be a multiple of 32, got {self.chip_size}")


@dataclass
class TrainOutcome:
    model: torch.nn.Module              # weights of the best validation epoch
    history: list                       # one dict per epoch: epoch, train_loss, val_loss, miou, oa, lr, seconds
    best_epoch: int
    best_scores: dict
    stopped_early: bool
    resumed_from: int                   # epochs already done when this call started (0 = fresh)
    checkpoint: Optional[str] = None
    class_weights: list = field(default_factory=list)
    initial_scores: Optional[dict] = None   # validation scores of the starting weights (eval_initial)


# ---------------------------------------------------------------- model parts

def parameter_groups(model: torch.nn.Module) -> dict[str, list]:
    """{"classifier", "decoder", "encoder": parameters}: the final classifier convolution (CLASSIFIER_KEY), the
    encoder (`backbone`/`encoder` submodule) and everything else. Models without those names put all their
    parameters under "classifier"."""
    encoder = _encoder_module(model)
    encoder_ids = {id(p) for p in encoder.parameters()} if encoder is not None else set()
    groups = {"classifier": [], "decoder": [], "encoder": list(encoder.parameters()) if encoder is not None else []}
    named = [(name, p) for name, p in model.named_parameters() if id(p) not in encoder_ids]
    has_classifier = any(CLASSIFIER_KEY in name for name, _ in named)
    for name, p in named:
        groups["classifier" if (CLASSIFIER_KEY in name or not has_classifier) else "decoder"].append(p)
    return groups


def encoder_and_head_parameters(model: torch.nn.Module) -> tuple[list, list]:
    """(encoder params, everything else). The encoder is the `backbone`/`encoder` submodule when present."""
    encoder = None
    for name in ("backbone", "encoder"):
        if isinstance(getattr(model, name, None), torch.nn.Module):
            encoder = getattr(model, name)
            break
    if encoder is None:
        return [], list(model.parameters())
    encoder_ids = {id(p) for p in encoder.parameters()}
    return list(encoder.parameters()), [p for p in model.parameters() if id(p) not in encoder_ids]


def _encoder_module(model: torch.nn.Module) -> Optional[torch.nn.Module]:
    for name in ("backbone", "encoder"):
        if isinstance(getattr(model, name, None), torch.nn.Module):
            return getattr(model, name)
    return None


def _set_train_mode(model: torch.nn.Module, freeze_encoder: bool, freeze_bn: bool = False) -> None:
    model.train()
    encoder = _encoder_module(model)
    if freeze_encoder and encoder is not None:
        encoder.eval()  # frozen encoder keeps its normalisation statistics and no dropout
    if freeze_bn:
        # Batch statistics of 2-4 chips (and of the 1x1 pooled PPM features) are noise, and the running
        # averages would drift towards the few polygons' windows: keep the pretrained statistics. The
        # affine weights still learn.
        for module in model.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                module.eval()


def _build_optimizer(model, config: TrainConfig) -> torch.optim.Optimizer:
    """AdamW with up to three groups, in this order: classifier (lr), decoder (lr * decoder_lr_scale; merged
    into the classifier group when the scale is 1), encoder (lr * encoder_lr_scale; absent when frozen)."""
    parts = parameter_groups(model)
    for p in parts["encoder"]:
        p.requires_grad_(not config.freeze_encoder)
    if config.decoder_lr_scale == 1.0:
        head_ids = {id(p) for p in parts["classifier"] + parts["decoder"]}
        groups = [{"params": [p for p in model.parameters() if id(p) in head_ids and p.requires_grad],
                   "lr": config.lr, "name": "head"}]   # model order, as checkpoints of earlier versions hold
    else:
        groups = [{"params": [p for p in parts["classifier"] if p.requires_grad], "lr": config.lr,
                   "name": "classifier"},
                  {"params": [p for p in parts["decoder"] if p.requires_grad],
                   "lr": config.lr * config.decoder_lr_scale, "name": "decoder"}]
    if parts["encoder"] and not config.freeze_encoder:
        groups.append({"params": parts["encoder"], "lr": config.lr * config.encoder_lr_scale, "name": "encoder"})
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=config.lr, weight_decay=config.weight_decay)


def _lr_factor(step: int, total: int, config: TrainConfig) -> float:
    if config.warmup_steps and step < config.warmup_steps:
        return (step + 1) / config.warmup_steps
    progress = min(max(step - config.warmup_steps, 0) / max(total - config.warmup_steps, 1), 1.0)
    if config.schedule == "poly":
        return (1 - progress) ** 0.9 + 1e-3
    return 0.5 * (1 + math.cos(math.pi * progress)) + 1e-3


def class_weights(scenes: list[LabelledScene], num_classes: int) -> np.ndarray:
    """Inverse square-root frequency, normalised to mean 1 over present classes, clipped to [0.2, 5]."""
    counts = class_histogram(scenes, num_classes).astype(np.float64)
    weights = np.ones(num_classes)
    present = counts > 0
    weights[present] = 1.0 / np.sqrt(counts[present] / counts[present].sum())
    weights[present] /= weights[present].mean()
    return np.clip(weights, 0.2, 5.0)


# ---------------------------------------------------------------- checkpoints

def save_checkpoint(path: Path, state: dict) -> None:
    """torch.save to a temp name then rename: a crash never leaves a half-written checkpoint."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        torch.save(state, tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def load_checkpoint(path: Path) -> dict:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for foreign/corrupt files
        raise InputError(f"cannot read training checkpoint {path}: {exc}") from exc
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise InputError(f"{path} is not a SkySense training checkpoint")
    return state


# ---------------------------------------------------------------- evaluation

@torch.no_grad()
def evaluate_chips(model, sampler: ChipSampler, normalised: list, num_classes: int, batch_size: int,
                   weights: Optional[torch.Tensor], device: str = "cpu",
                   progress: Optional[Progress] = None) -> tuple[float, ConfusionAccumulator]:
    """Mean loss and confusion matrix over the validation grid chips."""
    model.eval()
    chips = sampler.grid_chips()
    accumulator = ConfusionAccumulator(num_classes, IGNORE_INDEX)
    loss_sum, pixel_sum = 0.0, 0
    for start in range(0, len(chips), batch_size):
        if progress is not None:
            progress.check_cancelled()
        images, labels = stack_chips(chips[start:start + batch_size], normalised, sampler.scenes, sampler.chip_size)
        images_t = torch.from_numpy(images).to(device)
        labels_t = torch.from_numpy(labels).to(device)
        logits = model(images_t).float()
        valid = int((labels_t != IGNORE_INDEX).sum())
        if valid:
            loss = F.cross_entropy(logits, labels_t, weight=weights, ignore_index=IGNORE_INDEX, reduction="sum")
            loss_sum += loss.item()
            pixel_sum += valid
        accumulator.update(labels_t, logits.argmax(1))
    return (loss_sum / pixel_sum if pixel_sum else float("nan")), accumulator


# ---------------------------------------------------------------- training

def train_segmentation(model: torch.nn.Module, train_scenes: list[LabelledScene], val_scenes: list[LabelledScene],
                       class_names: list[str], normalization: dict, config: TrainConfig,
                       checkpoint_path: Optional[Path] = None, resume: bool = False,
                       progress: Optional[Progress] = None,
                       log: Optional[Callable[[str], None]] = None) -> TrainOutcome:
    """Train `model` in place; return it loaded with the best-validation-epoch weights.

    normalization: {"mean": [...], "std": [...]} in raster units. With `resume` and an existing
    checkpoint, training continues after its last completed epoch (same chips, same schedule).
    """
    progress = progress or Progress()
    log = log or (lambda message: None)
    if config.num_threads:
        torch.set_num_threads(int(config.num_threads))
    num_classes = len(class_names)
    device = config.device
    model.to(device)

    sampler = ChipSampler(train_scenes, config.chip_size, num_classes, seed=config.seed)
    val_sampler = ChipSampler(val_scenes, config.val_chip_size or config.chip_size, num_classes, seed=config.seed)
    train_norm = [normalise(s.image, normalization["mean"], normalization["std"]) for s in train_scenes]
    val_norm = [normalise(s.image, normalization["mean"], normalization["std"]) for s in val_scenes]
    weights_np = class_weights(train_scenes, num_classes) if config.class_balance else np.ones(num_classes)
    weights = torch.tensor(weights_np, dtype=torch.float32, device=device)

    optimizer = _build_optimizer(model, config)
    steps_per_epoch = max(1, math.ceil(config.chips_per_epoch / config.batch_size))
    total_steps = steps_per_epoch * config.epochs
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: _lr_factor(step, total_steps, config))

    history: list = []
    best = {"miou": -1.0, "epoch": 0, "scores": {}, "state": None}
    initial_scores = None
    stale_epochs = 0
    start_epoch = 0
    if resume and checkpoint_path is not None and Path(checkpoint_path).exists():
        state = load_checkpoint(Path(checkpoint_path))
        if list(state.get("class_names", [])) != list(class_names):
            raise InputError(f"checkpoint {checkpoint_path} was trained for classes {state.get('class_names')}, "
                             f"not {list(class_names)}; start without resume")
        saved_freeze = (state.get("config") or {}).get("freeze_encoder")
        if saved_freeze is not None and bool(saved_freeze) != bool(config.freeze_encoder):
            raise InputError(f"checkpoint {checkpoint_path} was trained with the encoder "
                             f"{'frozen' if saved_freeze else 'trainable'}; resume with the same freeze_encoder "
                             "setting, or start without resume")
        try:
            model.load_state_dict(state["model"])
        except RuntimeError as exc:
            raise InputError(f"checkpoint {checkpoint_path} does not fit this model/classes: {exc}") from exc
        try:
            optimizer.load_state_dict(state["optimizer"])
        except (ValueError, KeyError) as exc:   # other parameter groups (older version, other settings)
            raise InputError(f"checkpoint {checkpoint_path} was written with other optimizer settings ({exc}); "
                             "start without resume") from exc
        scheduler.load_state_dict(state["scheduler"])
        history = list(state["history"])
        best = {"miou": state["best_miou"], "epoch": state["best_epoch"], "scores": state["best_scores"],
                "state": state["best_state"]}
        stale_epochs = state["stale_epochs"]
        start_epoch = state["epoch"]
        initial_scores = state.get("initial_scores")
        log(f"resuming after epoch {start_epoch} from {checkpoint_path}")
    stopped_early = bool(history) and config.patience > 0 and stale_epochs >= config.patience

    if config.eval_initial and start_epoch == 0:
        # Epoch 0 = the starting (pretrained) weights: an epoch must beat them to replace them.
        val_loss, accumulator = evaluate_chips(model, val_sampler, val_norm, num_classes, config.batch_size,
                                               weights, device, progress)
        scores = accumulator.scores(class_names)
        initial_scores = {**scores, "val_loss": val_loss}
        best = {"miou": scores["miou"], "epoch": 0, "scores": scores,
                "state": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}}
        log(f"starting weights: val loss {val_loss:.4f}, val mIoU {scores['miou']:.3f}, "
            f"OA {scores['overall_accuracy']:.3f}")

    for epoch in range(start_epoch, config.epochs):
        if stopped_early:
            break
        started = time.perf_counter()
        rng = np.random.default_rng([config.seed, epoch])
        generator = torch.Generator().manual_seed(config.seed * 100_003 + epoch)
        torch.manual_seed(config.seed * 100_003 + epoch)  # dropout / drop-path inside the model
        chips = sampler.training_chips(config.chips_per_epoch, rng, config.balanced_sampling)
        _set_train_mode(model, config.freeze_encoder, config.freeze_bn)
        loss_sum, loss_count = 0.0, 0
        for step in range(steps_per_epoch):
            batch_chips = chips[step * config.batch_size:(step + 1) * config.batch_size]
            if not batch_chips:
                break
            images, labels = stack_chips(batch_chips, train_norm, train_scenes, config.chip_size)
            images_t, labels_t = torch.from_numpy(images), torch.from_numpy(labels)
            if config.augment:
                images_t, labels_t = augment_batch(images_t, labels_t, generator, config.color_jitter,
                                                   config.color_jitter, config.channel_jitter)
            images_t, labels_t = images_t.to(device), labels_t.to(device)
            logits = model(images_t)
            loss = F.cross_entropy(logits.float(), labels_t, weight=weights, ignore_index=IGNORE_INDEX)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
            optimizer.step()
            scheduler.step()
            loss_sum += loss.item()
            loss_count += 1
            done = (epoch + (step + 1) / steps_per_epoch) / config.epochs
            progress.update(0.95 * done, f"epoch {epoch + 1}/{config.epochs}: loss {loss_sum / loss_count:.4f}")

        val_loss, accumulator = evaluate_chips(model, val_sampler, val_norm, num_classes, config.batch_size,
                                               weights, device, progress)
        scores = accumulator.scores(class_names)
        record = {"epoch": epoch + 1, "train_loss": loss_sum / max(loss_count, 1), "val_loss": val_loss,
                  "miou": scores["miou"], "overall_accuracy": scores["overall_accuracy"],
                  "iou": scores["iou"], "lr": optimizer.param_groups[0]["lr"],
                  "seconds": round(time.perf_counter() - started, 2)}
        history.append(record)
        improved = best["state"] is None or scores["miou"] > best["miou"] + config.min_delta
        if improved:
            best = {"miou": scores["miou"], "epoch": epoch + 1, "scores": scores,
                    "state": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}}
            stale_epochs = 0
        else:
            stale_epochs += 1
        stopped_early = config.patience > 0 and stale_epochs >= config.patience and epoch + 1 < config.epochs
        log(f"epoch {epoch + 1}/{config.epochs}: train loss {record['train_loss']:.4f}, val loss {val_loss:.4f}, "
            f"val mIoU {scores['miou']:.3f}, OA {scores['overall_accuracy']:.3f}"
            + (" (best)" if improved else "") + (" - stopping early" if stopped_early else ""))
        if checkpoint_path is not None:
            save_checkpoint(Path(checkpoint_path), {
                "format": CHECKPOINT_FORMAT, "epoch": epoch + 1, "config": dataclasses.asdict(config),
                "class_names": list(class_names),
                "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
                "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "history": history, "best_miou": best["miou"], "best_epoch": best["epoch"],
                "best_scores": best["scores"], "best_state": best["state"], "stale_epochs": stale_epochs,
                "initial_scores": initial_scores,
            })
        progress.update(0.95 * (epoch + 1) / config.epochs,
                        f"epoch {epoch + 1}/{config.epochs}: val mIoU {scores['miou']:.3f}")

    if best["state"] is not None:
        model.load_state_dict(best["state"])
    model.eval()
    if best["scores"]:
        log(format_scores(best["scores"], f"best epoch {best['epoch']} (validation)" if best["epoch"] else
                          "no epoch beat the starting weights, which are kept (validation)"))
    return TrainOutcome(model=model, history=history, best_epoch=best["epoch"], best_scores=best["scores"],
                        stopped_early=stopped_early, resumed_from=start_epoch,
                        checkpoint=str(checkpoint_path) if checkpoint_path else None,
                        class_weights=[float(w) for w in weights_np], initial_scores=initial_scores)
