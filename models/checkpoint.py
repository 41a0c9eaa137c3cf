"""Checkpoints: the project's own model files and the official SkySense weights.

Everything is read with ``torch.load(weights_only=True)``, so no pickled code runs.
"""
from __future__ import annotations

import copy
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple, Union

import torch
from torch import nn

FORMAT = "skysense-qgis/1"
TASKS = ("segmentation", "change", "damage", "temporal")
PathLike = Union[str, os.PathLike]


class CheckpointError(Exception):
    """A checkpoint or model file is missing, corrupt, foreign or does not fit the model."""


# --------------------------------------------------------------------------- reading


def read_checkpoint(path: PathLike, map_location: Any = "cpu") -> Any:
    """``torch.load(weights_only=True)`` with errors that name the file and the problem."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: file is empty")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises many types (pickle, zip, runtime) for bad files
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if "weights_only" in str(exc) or "Unsupported global" in str(exc):
            raise CheckpointError(f"{path}: refused, the file contains pickled code/objects, "
                                  f"not plain tensors ({msg})") from None
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({type(exc).__name__}: {msg})") from None


# --------------------------------------------------------------------------- project model files


def save_model_file(path: PathLike, model: nn.Module, meta: Mapping[str, Any]) -> Path:
    """Write model weights + metadata (ARCHITECTURE.md format) atomically (temp file + rename).

    ``meta`` must hold ``task`` and ``classes`` at least; ``arch`` defaults to ``model.arch``
    (set by ``create_model``). Weights are stored as they are in the model (cast to fp16
    beforehand if you want a smaller file; ``load_model_file`` returns fp32).
    """
    path = Path(path)
    meta = copy.deepcopy(dict(meta))
    meta.pop("state_dict", None)
    meta.setdefault("format", FORMAT)
    meta.setdefault("task", getattr(model, "task", None))
    if "arch" not in meta:
        arch = getattr(model, "arch", None)
        if arch is None:
            raise CheckpointError(f"{path}: meta has no 'arch' and the model was not built by create_model")
        meta["arch"] = copy.deepcopy(arch)
    _check_meta(path, meta)
    payload = dict(meta)
    payload["state_dict"] = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        torch.save(payload, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def read_model_meta(path: PathLike) -> Dict[str, Any]:
    """Metadata of a project model file, without building the model."""
    payload = read_checkpoint(path)
    _check_payload(Path(path), payload)
    return {k: v for k, v in payload.items() if k != "state_dict"}


def load_model_file(path: PathLike, map_location: Any = "cpu") -> Tuple[nn.Module, Dict[str, Any]]:
    """Rebuild the model recorded in a project model file; returns ``(model.eval(), meta)``."""
    from .registry import create_model

    path = Path(path)
    payload = read_checkpoint(path, map_location=map_location)
    _check_payload(path, payload)
    meta = {k: v for k, v in payload.items() if k != "state_dict"}
    arch = meta["arch"]
    try:
        model = create_model(arch["name"], **dict(arch.get("kwargs") or {}))
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: cannot build architecture {arch!r}: {exc}") from None
    state = {k: (v.float() if torch.is_floating_point(v) else v) for k, v in payload["state_dict"].items()}
    report = load_state_dict_report(model, state)
    if not report.ok:
        raise CheckpointError(f"{path}: weights do not fit {arch['name']}: {report.summary()}")
    model.to(map_location if isinstance(map_location, (str, torch.device)) else "cpu")
    return model.eval(), meta


def _check_meta(path: Path, meta: Mapping[str, Any]) -> None:
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a SkySense-QGIS model file (format {meta.get('format')!r}, "
                              f"expected {FORMAT!r})")
    if meta.get("task") not in TASKS:
        raise CheckpointError(f"{path}: unknown task {meta.get('task')!r} (expected one of {TASKS})")
    arch = meta.get("arch")
    if not isinstance(arch, Mapping) or not isinstance(arch.get("name"), str):
        raise CheckpointError(f"{path}: 'arch' must be {{'name': str, 'kwargs': dict}}, got {arch!r}")
    classes = meta.get("classes")
    if classes is not None and not (isinstance(classes, list) and all(
            isinstance(c, Mapping) and "value" in c and "name" in c for c in classes)):
        raise CheckpointError(f"{path}: 'classes' must be a list of {{'value', 'name', 'color'}} entries")


def _check_payload(path: Path, payload: Any) -> None:
    if not isinstance(payload, Mapping):
        raise CheckpointError(f"{path}: not a SkySense-QGIS model file (top level is {type(payload).__name__})")
    if "format" not in payload:
        hint = " (looks like a bare state_dict; official weights load with load_official_weights)" \
            if all(isinstance(v, torch.Tensor) for v in payload.values()) else ""
        raise CheckpointError(f"{path}: not a SkySense-QGIS model file: no 'format' entry{hint}")
    _check_meta(path, payload)
    if not isinstance(payload.get("state_dict"), Mapping):
        raise CheckpointError(f"{path}: model file has no 'state_dict'")


# --------------------------------------------------------------------------- strict loading with a report


@dataclass
class LoadReport:
    """What happened when a state dict was loaded into a module."""

    loaded: List[str] = field(default_factory=list)
    missing: List[str] = field(default_factory=list)
    unexpected: List[str] = field(default_factory=list)
    mismatched: List[Tuple[str, Tuple[int, ...], Tuple[int, ...]]] = field(default_factory=list)
    ignored: List[str] = field(default_factory=list)   # known keys deliberately not loaded (e.g. mask_token)
    adapted: List[str] = field(default_factory=list)   # loaded after a documented change (e.g. band count)

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)

    def summary(self, limit: int = 5) -> str:
        def head(items):
            items = [str(i) for i in items]
            more = f" ... (+{len(items) - limit})" if len(items) > limit else ""
            return ", ".join(items[:limit]) + more

        parts = [f"{len(self.loaded)} loaded"]
        if self.adapted:
            parts.append(f"{len(self.adapted)} adapted: {head(self.adapted)}")
        if self.ignored:
            parts.append(f"{len(self.ignored)} ignored: {head(self.ignored)}")
        if self.missing:
            parts.append(f"{len(self.missing)} missing: {head(self.missing)}")
        if self.unexpected:
            parts.append(f"{len(self.unexpected)} unexpected: {head(self.unexpected)}")
        if self.mismatched:
            parts.append(f"{len(self.mismatched)} shape mismatches: "
                         + head(f"{k} {tuple(a)} vs model {tuple(b)}" for k, a, b in self.mismatched))
        return "; ".join(parts)


def load_state_dict_report(module: nn.Module, state: Mapping[str, torch.Tensor],
                           ignore_missing: Tuple[str, ...] = ()) -> LoadReport:
    """Load the entries that fit and report the rest (never raises on mismatch).

    ``ignore_missing``: key suffixes that may be absent (e.g. recomputable buffers).
    """
    own = module.state_dict()
    report = LoadReport()
    fitting = {}
    for key, value in state.items():
        if key not in own:
            report.unexpected.append(key)
        elif tuple(own[key].shape) != tuple(value.shape):
            report.mismatched.append((key, tuple(value.shape), tuple(own[key].shape)))
        else:
            fitting[key] = value
            report.loaded.append(key)
    report.missing = [k for k in own if k not in state and not k.endswith(ignore_missing)]
    module.load_state_dict(fitting, strict=False, assign=_on_meta(module))
    return report


def _on_meta(module: nn.Module) -> bool:
    return any(p.is_meta for p in module.parameters())


# --------------------------------------------------------------------------- official SkySense weights

OFFICIAL_SOURCES = ("hr", "s2", "s1", "fusion", "head_s2", "head_s1")
# attribute of a task model that receives each source
_TARGET_ATTR = {"hr": "backbone", "s2": "backbone_s2", "s1": "backbone_s1", "fusion": "fusion",
                "head_s2": "head_s2", "head_s1": "head_s1"}
# prefixes under which a combined checkpoint stores each part
_SOURCE_PREFIXES = {"hr": ("backbone_hr.",), "s2": ("backbone_s2.",), "s1": ("backbone_s1.",),
                    "fusion": ("fusion.", "necks."), "head_s2": ("head_s2.",), "head_s1": ("head_s1.",)}
_GENERIC_PREFIXES = ("module.", "backbone.", "model.")


def read_official_state(path: PathLike) -> Dict[str, torch.Tensor]:
    """Flat ``{key: tensor}`` of an official file (unwraps ``state_dict`` / ``model`` nesting)."""
    path = Path(path)
    obj = read_checkpoint(path)
    for _ in range(3):
        if isinstance(obj, Mapping) and not _all_tensors(obj):
            for wrapper in ("state_dict", "model", "module"):
                if isinstance(obj.get(wrapper), Mapping):
                    obj = obj[wrapper]
                    break
            else:
                break
    if not isinstance(obj, Mapping) or not obj:
        raise CheckpointError(f"{path}: no state dict found (top level is {type(obj).__name__})")
    if not _all_tensors(obj):
        bad = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)][:3]
        raise CheckpointError(f"{path}: not a weights file; non-tensor entries {bad}")
    return dict(obj)


def _all_tensors(obj: Mapping) -> bool:
    return all(isinstance(v, torch.Tensor) for v in obj.values())


def _select_source(state: Dict[str, torch.Tensor], source: str) -> Dict[str, torch.Tensor]:
    for prefix in _SOURCE_PREFIXES[source]:
        if any(k.startswith(prefix) for k in state):
            return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    for prefix in _GENERIC_PREFIXES:
        keys = [k for k in state if k not in _ignorable_top_level()]
        if keys and all(k.startswith(prefix) for k in keys):
            state = {(k[len(prefix):] if k.startswith(prefix) else k): v for k, v in state.items()}
    return state


def _ignorable_top_level():
    from .official_layout import IGNORED_OFFICIAL_KEYS
    return IGNORED_OFFICIAL_KEYS + ("ctpe",)


def load_official_weights(model: nn.Module, checkpoint: Union[PathLike, Mapping[str, torch.Tensor]],
                          source: str = "hr", strict: bool = True) -> LoadReport:
    """Load an official SkySense file into a task model or a bare encoder.

    ``source``: ``"hr"`` (skysense_model_backbone_hr.pth, keys prefixed ``backbone.``),
    ``"s2"`` / ``"s1"`` (backbone_s2/_s1, no prefix; the S2 file's ``ctpe`` calendar table goes
    to ``model.ctpe`` when the model has one), ``"fusion"``, ``"head_s2"``, ``"head_s1"``.
    ``checkpoint`` is a path or an already-loaded state dict. Pre-training leftovers
    (``mask_token``) and recomputed buffers are reported as ignored; an HR patch embedding
    for a different band count is adapted (RGB weights kept, extra bands get their mean,
    rescaled so activations keep their magnitude). With ``strict`` any missing, unexpected or
    mis-shaped key raises CheckpointError; otherwise the report lists them.
    """
    from .official_layout import IGNORED_OFFICIAL_KEYS, IGNORED_OFFICIAL_SUFFIXES

    if source not in OFFICIAL_SOURCES:
        raise ValueError(f"unknown source {source!r}; expected one of {OFFICIAL_SOURCES}")
    name = str(checkpoint) if not isinstance(checkpoint, Mapping) else f"<{source} state dict>"
    state = dict(checkpoint) if isinstance(checkpoint, Mapping) else read_official_state(checkpoint)
    state = _select_source(state, source)
    target = getattr(model, _TARGET_ATTR[source], None) if hasattr(model, "task") else model
    if target is None:
        raise CheckpointError(f"{name}: the model has no {_TARGET_ATTR[source]!r} part for source {source!r}")

    ignored, adapted = [], []
    if "ctpe" in state:
        ctpe = state.pop("ctpe")
        own = getattr(model, "ctpe", None)
        if isinstance(own, torch.Tensor) and tuple(own.shape) == tuple(ctpe.shape):
            _assign(model, "ctpe", ctpe)
            adapted.append("ctpe")
        else:
            ignored.append("ctpe")
    for key in list(state):
        if key in IGNORED_OFFICIAL_KEYS or key.endswith(IGNORED_OFFICIAL_SUFFIXES):
            state.pop(key)
            ignored.append(key)
    key = "patch_embed.projection.weight"
    own_sd = target.state_dict(keep_vars=True)
    if key in state and key in own_sd and state[key].shape != own_sd[key].shape \
            and state[key].shape[0] == own_sd[key].shape[0] and state[key].shape[2:] == own_sd[key].shape[2:]:
        have = state[key].shape[1]
        state[key] = _adapt_in_chans(state[key], own_sd[key].shape[1])
        adapted.append(f"{key} ({have} -> {own_sd[key].shape[1]} bands)")
    report = load_state_dict_report(target, state)
    report.ignored, report.adapted = ignored, adapted + report.adapted
    if strict and not report.ok:
        raise CheckpointError(f"{name}: does not match the {source} layout: {report.summary()}")
    return report


def _adapt_in_chans(weight: torch.Tensor, in_chans: int) -> torch.Tensor:
    """Patch-embedding weights for another band count: keep the first bands, fill with the mean."""
    have = weight.shape[1]
    if weight.is_meta:
        return weight.new_empty((weight.shape[0], in_chans, *weight.shape[2:]))
    if in_chans <= have:
        out = weight[:, :in_chans].clone()
    else:
        extra = weight.mean(dim=1, keepdim=True).expand(-1, in_chans - have, -1, -1)
        out = torch.cat([weight, extra], dim=1)
    return out * (have / in_chans)


def _assign(module: nn.Module, name: str, value: torch.Tensor) -> None:
    own = getattr(module, name)
    if own.is_meta or value.is_meta:
        setattr(module, name, nn.Parameter(value.to(own.dtype), requires_grad=own.requires_grad))
    else:
        with torch.no_grad():
            own.copy_(value)


def load_pretrained(model: nn.Module, files: Mapping[str, PathLike], strict: bool = True) -> Dict[str, LoadReport]:
    """Load several official files at once, e.g. ``{"hr": ".../skysense_model_backbone_hr.pth",
    "s2": ".../skysense_model_backbone_s2.pth"}``; returns one report per source."""
    return {source: load_official_weights(model, path, source, strict=strict) for source, path in files.items()}
