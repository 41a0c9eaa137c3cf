"""Writing trained segmentation models as project model files (format in docs/ARCHITECTURE.md)."""
from __future__ import annotations

import copy
from pathlib import Path

import torch

from backend.errors import OutputError

MODEL_FORMAT = "skysense-qgis/1"


def segmentation_meta(model: torch.nn.Module, classes: list[dict], normalization: dict, *, bands=None,
                      tile_size: int = 512, gsd=None, metrics=None, trained_on: str = "", **extra) -> dict:
    """Metadata for a segmentation model file; `classes` = [{"value", "name", "color"}, ...] in index order."""
    arch = getattr(model, "arch", None)
    if not arch:
        raise ValueError("model has no .arch (build it with models.registry.create_model)")
    in_chans = int(getattr(model, "in_chans", len(normalization["mean"])))
    meta = {
        "format": MODEL_FORMAT, "task": "segmentation", "arch": copy.deepcopy(arch),
        "classes": [{"value": int(c["value"]), "name": str(c["name"]), "color": str(c["color"])} for c in classes],
        "bands": {"hr": list(bands) if bands else list(range(1, in_chans + 1))},
        "normalization": {"hr": {"mean": [float(v) for v in normalization["mean"]],
                                 "std": [float(v) for v in normalization["std"]]}},
        "tile_size": int(tile_size), "gsd": gsd, "metrics": metrics or {}, "trained_on": trained_on,
    }
    meta.update(extra)
    return meta


def save_segmentation_model(path, model: torch.nn.Module, meta: dict, half: bool = False) -> Path:
    """Write the model file atomically; `half` stores fp16 weights (loaded back as fp32) to halve the size."""
    from models.checkpoint import save_model_file

    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create folder {path.parent}: {exc}") from exc
    to_save = model
    if half:
        to_save = copy.deepcopy(model).half()
        to_save.arch = copy.deepcopy(getattr(model, "arch", None))
    try:
        save_model_file(path, to_save, meta)
    except OSError as exc:
        raise OutputError(f"cannot write model file {path}: {exc}") from exc
    return path
