"""Fine-tune job: `run(params, progress)` with params as in docs/ARCHITECTURE.md (kind "finetune").

Required: raster, labels, class_field, output_dir. Optional: base_model (null = default land-cover model),
epochs (10), freeze_encoder (false), name ("finetuned"), resume (false), layer, chip_size (256),
chips_per_epoch (32), batch_size (4), lr, patience (5), val_fraction (0.25), seed (0), device ("auto"),
compare_random_forest (true), rf_trees (60).
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from backend.errors import InputError
from backend.progress import Progress
from backend.trainers.finetune import finetune_on_polygons

_REQUIRED = ("raster", "labels", "class_field", "output_dir")
_INT_LIMITS = {"epochs": (1, 1000), "chip_size": (64, 2048), "chips_per_epoch": (1, 100_000),
               "batch_size": (1, 256), "patience": (0, 1000), "seed": (0, 2 ** 31 - 1), "rf_trees": (1, 1000)}


def _check_params(params: dict) -> dict:
    if not isinstance(params, dict):
        raise InputError("finetune parameters must be a JSON object")
    missing = [key for key in _REQUIRED if not params.get(key)]
    if missing:
        raise InputError(f"finetune parameters missing: {', '.join(missing)}")
    for key in ("raster", "labels"):
        if not Path(params[key]).exists():
            raise InputError(f"{key} file {params[key]} does not exist")
    options = {}
    for key, (low, high) in _INT_LIMITS.items():
        if params.get(key) is not None:
            value = params[key]
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                raise InputError(f"{key} must be an integer from {low} to {high}, got {value!r}")
            options[key] = value
    if params.get("chip_size") is not None and params["chip_size"] % 32:
        raise InputError(f"chip_size must be a multiple of 32, got {params['chip_size']}")
    for key in ("freeze_encoder", "resume", "compare_random_forest"):
        if params.get(key) is not None:
            if not isinstance(params[key], bool):
                raise InputError(f"{key} must be true or false, got {params[key]!r}")
            options[key] = params[key]
    if params.get("lr") is not None:
        lr = params["lr"]
        if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not 0 < lr < 1:
            raise InputError(f"lr must be a number between 0 and 1, got {lr!r}")
        options["lr"] = float(lr)
    if params.get("val_fraction") is not None:
        fraction = params["val_fraction"]
        if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0.05 <= fraction <= 0.5:
            raise InputError(f"val_fraction must be between 0.05 and 0.5, got {fraction!r}")
        options["val_fraction"] = float(fraction)
    device = params.get("device") or "auto"
    if device not in ("auto", "cpu", "cuda"):
        raise InputError(f"device must be 'auto', 'cpu' or 'cuda', got {device!r}")
    options["device"] = device
    for key in ("base_model", "layer", "name"):
        if params.get(key):
            options[key] = str(params[key])
    return options


def run(params: dict, progress: Optional[Progress] = None) -> dict:
    """Validate the job parameters, fine-tune, and return the result dict (see docs/api_training.md)."""
    options = _check_params(params)
    return finetune_on_polygons(params["raster"], params["labels"], str(params["class_field"]),
                                params["output_dir"], progress=progress or Progress(), **options)


run_finetune = run
